"""Upstream Meta-Dataset names that the shared gin files bind, accepted by our trainer.

``gin/alfa_fo_maml.gin`` and friends also run under upstream's ``python -m meta_dataset.train``,
which needs its data decoders bound:

    process_episode.support_decoder = @support/ImageDecoder()
    process_episode.query_decoder = @query/ImageDecoder()

Our pipeline always decodes like upstream's ``ImageDecoder`` without data augmentation (decode,
bilinear resize to ``DataConfig.image_height``, scale to [-1, 1]). These configurables accept
exactly that, and ``check()`` (called after parsing) rejects anything else with the binding
named. (Upstream's ``Trainer`` arguments are accepted by ``meta_dataset_ext.trainer.Trainer``.)

No upstream binding is ignored silently: ``differences()`` lists, for each upstream binding
that this trainer accepts but that does nothing here (or something else than upstream's), one
warning naming it; the trainer prints them when it is built.
"""
from typing import List

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


# Upstream bindings that have no effect here (or another one), and why. Upstream's trainer
# requires some of them, so the shared configs bind them.
_DIFFERENCES = {
    'Trainer.batch_size': 'it sizes the batches of non-episodic (batch) learners only; this '
                          'trainer is episodic',
    'DataConfig.shuffle_buffer_size': 'records are drawn uniformly at random by index here, '
                                      'as an unbounded shuffle buffer would',
    'MAMLLearner.debug': 'the learners here print no debugging output',
    'Trainer.eval_finegrainedness_split': 'only the fine-grainedness analysis '
                                          '(Trainer.eval_finegrainedness) reads it',
}
# Bound to a value other than the one given, these do something else than upstream's.
_DIFFERENT_UNLESS = {
    'DataConfig.num_prefetch': (0, 'upstream prefetches that many examples per class file; '
                                'here records are read by index, and that many decoded '
                                'episodes are buffered ahead instead'),
}


def _bound(binding: str):
  """(True, value) if ``binding`` is bound in the parsed configuration, else (False, None)."""
  try:
    return True, gin.query_parameter(binding)
  except ValueError:
    return False, None


def differences() -> List[str]:
  """One message per bound upstream binding that has no effect here, or another one."""
  messages = []
  for binding, why in _DIFFERENCES.items():
    bound, value = _bound(binding)
    if bound:
      messages.append(f'{binding} = {value!r} has no effect here: {why}.')
  for binding, (same, why) in _DIFFERENT_UNLESS.items():
    bound, value = _bound(binding)
    if bound and value != same:
      messages.append(f'{binding} = {value!r} differs from upstream\'s meaning: {why}.')
  return messages
