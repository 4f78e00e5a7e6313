"""A learner's backbone initialised from a pretrained checkpoint (``Learner.pretrained_checkpoint``).

Meta-Dataset's fo-MAML and fo-Proto-MAML results start meta-training from a backbone that the
supervised Baseline learner pre-trained on the training classes. Two kinds of checkpoint hold
one:

- this project's: a run of the Baseline learner in batch mode (``meta_dataset_ext.train`` with
  ``Trainer.train_learner_class = @BaselineLearner``; the run directory, meaning its latest
  checkpoint, or one ``ckpt-<n>`` prefix), or any of its runs whose learner has the same
  backbone (theta_0 names the backbone's parameters alike in every learner);
- upstream Meta-Dataset's (TF1 ``model_<n>.ckpt`` of its BaselineLearner, e.g. the ones its
  ``best/pretrained_*.gin`` point at), read by upstream's variable names:

  ==========================  ==========================================================
  this project (theta_0)      upstream (variable in the checkpoint)
  ==========================  ==========================================================
  four_layer_convnet (Conv4)  ``block<i>.w`` -> ``four_layer_convnet/layer_<i>/weight``;
                              ``block<i>.bn_scale`` / ``bn_offset`` ->
                              ``four_layer_convnet/layer_<i>/batch_norm/scale`` / ``offset``
                              (``block<i>.b``, a bias that BatchNorm cancels, has none and
                              keeps its initial value)
  resnet, resnet34,           ``<a>.<b>.w`` -> ``<scope>/<a>/<b>/weight``, ``<a>.bn_scale`` ->
  wide_resnet                 ``<scope>/<a>/batch_norm/scale`` (and offset), scope
  (``backbones``)             ``resnet18``, ``resnet34`` or ``wide_resnet``: e.g.
                              ``conv2_x.bottleneck_0.identity.projection_conv.w`` ->
                              ``resnet18/conv2_x/bottleneck_0/identity/projection_conv/weight``
  ==========================  ==========================================================

  Upstream keeps BatchNorm's scale and offset as [1, 1, 1, C]; here they are [C].

Only the backbone is loaded: not the Baseline's classifier over the training classes, nor any
head, update rule or optimizer state. ``backbone_values`` reads and checks everything (a
missing checkpoint, or one of another architecture, is a ConfigError naming the binding and
the first parameter that does not fit) before anything is assigned.
"""
import os
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

import alfa_tf
from alfa_tf import weights
from meta_dataset_ext import backbones as backbones_lib
from meta_dataset_ext.errors import ConfigError

BINDING = 'Learner.pretrained_checkpoint'
_OBJECT_GRAPH = '_CHECKPOINTABLE_OBJECT_GRAPH'  # Present in object-based (TF2) checkpoints.


def upstream_scope(backbone) -> Optional[str]:
  """Upstream's variable scope of the backbone's architecture, or None if upstream has none
  like it."""
  if isinstance(backbone, alfa_tf.Conv4):
    upstream_like = (backbone.num_blocks == 4 and backbone.pooling == 'max' and
                     backbone.flatten_order == 'hwc' and
                     backbone.activation is tf.nn.relu)
    return 'four_layer_convnet' if upstream_like else None
  if isinstance(backbone, (backbones_lib.UpstreamResNet, backbones_lib.UpstreamWideResNet)):
    return backbone.upstream_scope
  return None


def upstream_variable_name(backbone, name: str) -> Optional[str]:
  """Upstream's name of the backbone parameter ``name`` (module docstring), or None for a
  parameter upstream's backbone has not (Conv4's bias) or a backbone upstream has not."""
  scope = upstream_scope(backbone)
  parts = name.split('.')
  if scope is None or parts[-1] not in ('w', 'bn_scale', 'bn_offset'):
    return None
  if isinstance(backbone, alfa_tf.Conv4):
    parts[0] = parts[0].replace('block', 'layer_')
  tail = ['weight'] if parts[-1] == 'w' else ['batch_norm', parts[-1][len('bn_'):]]
  return '/'.join([scope] + parts[:-1] + tail)


def upstream_shape(spec: alfa_tf.backbones.ParamSpec):
  """The parameter's shape in upstream's checkpoints: BatchNorm's [C] is [1, 1, 1, C]."""
  return (1, 1, 1) + spec.shape if len(spec.shape) == 1 else spec.shape


def checkpoint_path(path: str, binding: str = BINDING) -> str:
  """The checkpoint prefix ``path`` names: itself, or a run directory's latest checkpoint.

  Raises:
    ConfigError: nothing readable as a checkpoint is there.
  """
  prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
  if prefix is None:
    raise ConfigError(f'{binding} = {path!r} is a folder without checkpoints: give a run '
                      'directory of batch training, or a checkpoint prefix (ckpt-<n>, '
                      'model_<n>.ckpt).')
  try:
    tf.train.load_checkpoint(prefix)
  except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as error:
    raise ConfigError(f'{binding} = {path!r} is not a checkpoint ('
                      f'{" ".join(str(error).split())[:200]}): give a run directory of batch '
                      'training, or a checkpoint prefix (ckpt-<n>, model_<n>.ckpt).') from None
  return prefix


def _backbone_specs(learner, binding):
  backbone = learner.backbone
  if isinstance(backbone, alfa_tf.KerasBackbone):
    raise ConfigError(f'{binding}: a pretrained backbone initialises the functional backbones '
                      '(four_layer_convnet, resnet, ...), not a Keras model (load its weights '
                      'in the model builder instead).')
  return backbone.param_specs()


def _mismatch(binding, prefix, what):
  return ConfigError(f'{binding} = {prefix!r} does not hold this learner\'s backbone: {what}. '
                     'Give a checkpoint of the same Learner.embedding_fn (and its options).')


def _from_project(prefix, specs, binding) -> Dict[str, np.ndarray]:
  """Reads theta_0's backbone parameters of a checkpoint this project's trainer wrote."""
  holder = weights.ParameterSet(
      {name: np.zeros(spec.shape, np.float32) for name, spec in specs.items()},
      name='theta0')
  try:
    status = tf.train.Checkpoint(learner=tf.train.Checkpoint(theta0=holder)).read(prefix)
    status.expect_partial()
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
    raise _mismatch(binding, prefix, ' '.join(str(error).split())[:300]) from None
  return {name: holder[name].numpy() for name in specs}


def _from_upstream(prefix, backbone, specs, binding) -> Dict[str, np.ndarray]:
  """Reads an upstream checkpoint's backbone variables by the module docstring's mapping."""
  reader = tf.train.load_checkpoint(prefix)
  shapes = reader.get_variable_to_shape_map()
  values = {}
  for name, spec in specs.items():
    upstream = upstream_variable_name(backbone, name)
    if upstream is None:
      continue
    if upstream not in shapes:
      raise _mismatch(binding, prefix, f'it has no variable {upstream!r} (for {name!r})')
    if tuple(shapes[upstream]) != upstream_shape(spec):
      raise _mismatch(binding, prefix, f'{upstream!r} has shape {tuple(shapes[upstream])}, '
                      f'{name!r} needs {upstream_shape(spec)}')
    values[name] = reader.get_tensor(upstream).reshape(spec.shape).astype(np.float32)
  return values


def backbone_values(path: str, learner, binding: str = BINDING) -> Dict[str, np.ndarray]:
  """{theta_0 name: value} of ``learner``'s backbone parameters in the checkpoint ``path``
  (either kind; module docstring).

  Raises:
    ConfigError: no checkpoint at ``path``, a Keras backbone, or a checkpoint of another
      architecture (naming the first parameter that is missing or of another shape).
  """
  specs = _backbone_specs(learner, binding)
  prefix = checkpoint_path(path, binding)
  if _OBJECT_GRAPH in tf.train.load_checkpoint(prefix).get_variable_to_shape_map():
    return _from_project(prefix, specs, binding)
  if upstream_scope(learner.backbone) is None:
    raise _mismatch(binding, prefix, 'it is not a checkpoint of this project, and upstream '
                    'Meta-Dataset has no backbone like this one (four_layer_convnet, resnet, '
                    'resnet34 and wide_resnet map to its)')
  return _from_upstream(prefix, learner.backbone, specs, binding)


def initialise(learner, values: Dict[str, np.ndarray]) -> None:
  """Assigns ``values`` (``backbone_values``) to the learner's theta_0."""
  for name, value in values.items():
    learner.theta0[name].assign(value)
