"""Upstream Meta-Dataset names that the shared gin files bind, accepted by our trainer.

``gin/alfa_fo_maml.gin`` and friends also run under upstream's ``python -m meta_dataset.train``,
which needs its data decoders bound, with their data augmentation (upstream's
``setups/data_config.gin``):

    process_episode.support_decoder = @support/ImageDecoder()
    support/ImageDecoder.data_augmentation = @support/DataAugmentation()
    support/DataAugmentation.enable_jitter = True
    ...
    process_episode.query_decoder = @query/ImageDecoder()
    process_batch.batch_decoder = @batch/ImageDecoder()

Our pipeline decodes as ``DataConfig.image_decoding`` says (by default exactly as upstream's
``ImageDecoder``: decode, bilinear resize to ``DataConfig.image_height``, scale to [-1, 1]) and
applies each decoder's ``DataAugmentation`` (``meta_dataset_ext.data.augmentation``) to the
support set, the query set and the batches of batch training. As upstream's trainer does, the
decoders of training episodes are read in the gin scope ``train/`` and those of validation and
evaluation episodes in ``evaluation/`` (so ``train/process_episode.support_decoder = ...``
applies to training only). ``check()`` (called after parsing) rejects what this trainer cannot
honour, naming the binding. (Upstream's ``Trainer`` arguments are accepted by
``meta_dataset_ext.trainer.Trainer``.)

No upstream binding is ignored silently: ``differences()`` lists, for each upstream binding
that this trainer accepts but that does nothing here (or something else than upstream's), one
warning naming it; the trainer prints them when it is built.
"""
from typing import Dict, List, Optional

import gin

from meta_dataset_ext.data import augmentation as augmentation_lib

TRAIN_SCOPE, EVALUATION_SCOPE = 'train', 'evaluation'  # Upstream's trainer's scopes.


@gin.configurable('ImageDecoder')
class ImageDecoder:
  """Upstream's image decoder: images decoded as ``DataConfig.image_decoding`` says, then
  perturbed by ``data_augmentation`` (a ``@DataAugmentation()``, or None)."""

  def __init__(self, image_size=None, data_augmentation=None, skip_tfexample_decoding=False):
    if image_size is not None:
      raise ValueError('ImageDecoder.image_size is not supported: images are resized to '
                       'DataConfig.image_height.')
    if data_augmentation is not None and not isinstance(data_augmentation,
                                                        augmentation_lib.DataAugmentation):
      raise ValueError('ImageDecoder.data_augmentation must be a @DataAugmentation() or None; '
                       f'got {data_augmentation!r}.')
    if skip_tfexample_decoding:
      raise ValueError('ImageDecoder.skip_tfexample_decoding=True is not supported.')
    self.data_augmentation = data_augmentation


def _augmentation(binding: str, decoder) -> Optional[augmentation_lib.DataAugmentation]:
  if decoder is not None and not isinstance(decoder, ImageDecoder):
    raise ValueError(f'{binding} must be an @ImageDecoder() (images); got {decoder!r}.')
  return None if decoder is None else decoder.data_augmentation


@gin.configurable('process_episode')
def process_episode(support_decoder=None, query_decoder=None
                    ) -> Dict[str, Optional[augmentation_lib.DataAugmentation]]:
  """Upstream's episode decoders (each unbound or an ``ImageDecoder()``): their data
  augmentation, ``{'support': ..., 'query': ...}``."""
  return {'support': _augmentation('process_episode.support_decoder', support_decoder),
          'query': _augmentation('process_episode.query_decoder', query_decoder)}


@gin.configurable('process_batch')
def process_batch(batch_decoder=None) -> Optional[augmentation_lib.DataAugmentation]:
  """Upstream's batch decoder (unbound or an ``ImageDecoder()``): its data augmentation."""
  return _augmentation('process_batch.batch_decoder', batch_decoder)


def episode_augmentation(training: bool
                         ) -> Dict[str, Optional[augmentation_lib.DataAugmentation]]:
  """The support and query sets' augmentation of training (or of validation and evaluation)
  episodes."""
  with gin.config_scope(TRAIN_SCOPE if training else EVALUATION_SCOPE):
    return process_episode()


def batch_augmentation() -> Optional[augmentation_lib.DataAugmentation]:
  """The augmentation of the batches of batch training."""
  with gin.config_scope(TRAIN_SCOPE):
    return process_batch()


def check() -> None:
  """Validates the parsed upstream compatibility bindings (raises ValueError; a ConfigError,
  a ValueError too, for a bad augmentation value)."""
  episode_augmentation(True)
  episode_augmentation(False)
  batch_augmentation()


# Upstream bindings that have no effect here (or another one), and why. Upstream's trainer
# requires some of them, so the shared configs bind them.
_DIFFERENCES = {
    'Trainer.batch_size': 'it sizes the batches of batch learners only (Trainer.'
                          'train_learner_class = @BaselineLearner); this one is episodic',
    'DataConfig.shuffle_buffer_size': 'records are drawn uniformly at random by index here '
                                      '(batches: each epoch in a new random order), as an '
                                      'unbounded shuffle buffer would',
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


def differences(batch_learner: bool = False) -> List[str]:
  """One message per bound upstream binding that has no effect here, or another one
  (``batch_learner``: the run trains a batch learner, which Trainer.batch_size sizes)."""
  messages = []
  for binding, why in _DIFFERENCES.items():
    bound, value = _bound(binding)
    if bound and not (batch_learner and binding == 'Trainer.batch_size'):
      messages.append(f'{binding} = {value!r} has no effect here: {why}.')
  for binding, (same, why) in _DIFFERENT_UNLESS.items():
    bound, value = _bound(binding)
    if bound and value != same:
      messages.append(f'{binding} = {value!r} differs from upstream\'s meaning: {why}.')
  return messages
