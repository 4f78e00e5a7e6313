r"""In-process patches that let upstream Meta-Dataset run unchanged on current TensorFlow.

Upstream does not import on TF >= 2.16. ``install_shims``, called before importing upstream,
changes only what is missing:
  - sets ``tf.estimator = SimpleNamespace(SessionRunHook=object)`` (gin.tf needs it);
  - gives ``tf.compat.v1.layers`` the two functions upstream's backbones call that Keras 3
    removed (``max_pooling2d``, ``flatten``), as plain TF ops, and lets
    ``tf.keras.regularizers.l2`` take Keras 2's ``l=`` (used at import by upstream's
    experimental backbones);
  - puts placeholder modules in ``sys.modules`` for imports upstream's train entry point makes
    but the episodic learners never use (tensorflow_addons, task_adaptation, tensorflow_hub,
    tensorflow_probability, simclr): touching them is fine, calling anything from them raises
    an ImportError that names the missing package.
On TF 2.15 with upstream's dependencies installed nothing is changed. Upstream's files are
never edited.
"""
import importlib
import sys
import types

import numpy as np
import tensorflow as tf

OPTIONAL_MODULES = ('tensorflow_addons', 'task_adaptation', 'tensorflow_hub',
                    'tensorflow_probability', 'simclr')


class MissingModule(types.ModuleType):
  """A placeholder for a package that is not installed: every attribute is another
  placeholder (so ``from pkg import sub`` works); calling one raises ImportError."""

  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    return MissingModule(f'{self.__name__}.{name}')

  def __call__(self, *args, **kwargs):
    package = self.__name__.split('.')[0]
    raise ImportError(f'{self.__name__} needs the package {package!r}, which is not '
                      'installed (meta_dataset_ext.upstream.patches put a placeholder in its '
                      'place).')


def max_pooling2d(inputs, pool_size, strides, padding='valid', data_format='channels_last',
                  name=None):
  """``tf.compat.v1.layers.max_pooling2d`` as a TF op (channels_last)."""
  if data_format != 'channels_last':
    raise ValueError('max_pooling2d: only data_format="channels_last" is supported.')
  return tf.nn.max_pool2d(inputs, pool_size, strides, padding.upper(), name=name)


def flatten(inputs, name=None, data_format='channels_last'):
  """``tf.compat.v1.layers.flatten`` as a TF op (channels_last)."""
  if data_format != 'channels_last':
    raise ValueError('flatten: only data_format="channels_last" is supported.')
  return tf.reshape(inputs, [-1, int(np.prod(inputs.shape[1:]))], name=name)


class LegacyLayers(types.ModuleType):
  """``tf.compat.v1.layers`` with ``max_pooling2d`` and ``flatten``; the rest delegated."""

  def __init__(self, original):
    super().__init__('tensorflow.compat.v1.layers')
    self.original = original
    self.max_pooling2d = max_pooling2d
    self.flatten = flatten

  def __getattr__(self, name):
    return getattr(self.original, name)


def _keras2_l2(original):
  """``tf.keras.regularizers.l2`` that also takes Keras 2's argument name ``l``."""

  def l2(l=0.01, **kwargs):  # pylint: disable=invalid-name
    return original(kwargs.pop('l2', l), **kwargs)

  return l2


def _keras3_l2_rejects_l() -> bool:
  try:
    tf.keras.regularizers.l2(l=0.0)
    return False
  except TypeError:
    return True


def _keras3_removed_v1_layers() -> bool:
  try:
    tf.compat.v1.layers.max_pooling2d  # pylint: disable=pointless-statement
    return False
  except (AttributeError, ImportError):
    return True


def install_shims() -> list:
  """Makes upstream's train entry point importable; returns what was patched."""
  patched = []
  if not hasattr(tf, 'estimator'):
    tf.estimator = types.SimpleNamespace(SessionRunHook=object)
    patched.append('tf.estimator')
  if _keras3_removed_v1_layers():
    v1 = importlib.import_module('tensorflow.compat.v1')
    layers = LegacyLayers(v1.layers)
    for module in {id(m): m for m in (v1, tf.compat.v1)}.values():
      module.layers = layers
    patched.append('tf.compat.v1.layers')
  if _keras3_l2_rejects_l():
    tf.keras.regularizers.l2 = _keras2_l2(tf.keras.regularizers.l2)
    patched.append('tf.keras.regularizers.l2')
  for name in OPTIONAL_MODULES:
    try:
      importlib.import_module(name)
    except ImportError:  # Not installed, or does not import on this TensorFlow.
      sys.modules[name] = MissingModule(name)
      patched.append(name)
  return patched
