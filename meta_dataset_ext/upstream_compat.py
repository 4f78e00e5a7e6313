"""Upstream Meta-Dataset names that the shared gin files bind, accepted by our trainer.

``gin/alfa_fo_maml.gin`` and friends also run under upstream's ``python -m meta_dataset.train``,
which needs its data decoders bound:

    process_episode.support_decoder = @support/ImageDecoder()
    process_episode.query_decoder = @query/ImageDecoder()

Our pipeline always decodes like upstream's ``ImageDecoder`` without data augmentation (decode,
bilinear resize to ``DataConfig.image_height``, scale to [-1, 1]). These configurables accept
exactly that, and ``check()`` (called after parsing) rejects anything else with the binding
named. (Upstream's ``Trainer`` arguments are accepted by ``meta_dataset_ext.trainer.Trainer``.)
"""
import gin


@gin.configurable('ImageDecoder')
class ImageDecoder:
  """Upstream's image decoder, without data augmentation: the only kind our pipeline has."""

  def __init__(self, image_size=None, data_augmentation=None, skip_tfexample_decoding=False):
    if image_size is not None:
      raise ValueError('ImageDecoder.image_size is not supported: images are resized to '
                       'DataConfig.image_height.')
    if data_augmentation is not None:
      raise ValueError('ImageDecoder.data_augmentation is not supported: bind it to None or '
                       'leave it unbound.')
    if skip_tfexample_decoding:
      raise ValueError('ImageDecoder.skip_tfexample_decoding=True is not supported.')


@gin.configurable('process_episode')
def process_episode(support_decoder=None, query_decoder=None):
  """Upstream's episode decoders: each must be unbound or an ``ImageDecoder()``."""
  for name, decoder in (('support_decoder', support_decoder),
                        ('query_decoder', query_decoder)):
    if decoder is not None and not isinstance(decoder, ImageDecoder):
      raise ValueError(f'process_episode.{name} must be an @ImageDecoder() (images, no data '
                       f'augmentation); got {decoder!r}.')


def check() -> None:
  """Validates the parsed upstream compatibility bindings (raises ValueError)."""
  process_episode()
