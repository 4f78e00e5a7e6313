r"""In-process patches that let upstream Meta-Dataset run unchanged on current TensorFlow and
numpy. Each changes only what is missing or broken here; upstream's files are never edited.

``install_shims``, before importing upstream (it does not import on TF >= 2.16):
  - sets ``tf.estimator = SimpleNamespace(SessionRunHook=object)`` (gin.tf needs it);
  - gives ``tf.compat.v1.layers`` the two functions upstream's backbones call that Keras 3
    removed (``max_pooling2d``, ``flatten``), as plain TF ops, and lets
    ``tf.keras.regularizers.l2`` take Keras 2's ``l=`` (used at import by upstream's
    experimental backbones);
  - puts placeholder modules in ``sys.modules`` for imports upstream's train entry point makes
    but the episodic learners never use (tensorflow_addons, task_adaptation, tensorflow_hub,
    tensorflow_probability, simclr): touching them is fine, calling anything from them raises
    an ImportError that names the missing package.
  On TF 2.15 with upstream's dependencies installed it changes nothing.

``patch_sampler``, once upstream is importable: its episode sampler for a source with a DAG
ontology (``ilsvrc_2012``, the shipped configs' training source) fails on numpy >= 1.24, which
no longer makes arrays of lists of different lengths; the patch makes the sampler draw the
same episodes as on older numpy. It changes nothing on numpy < 1.24.

``meta_dataset_ext.upstream.install`` calls ``patch_sampler`` (the configs' gin import line runs
it under upstream's trainer); ``meta_dataset_ext.upstream.train`` calls ``install_shims`` and
``install`` before upstream's ``main``.
"""
import functools
import importlib
import sys
import types
import warnings

import numpy as np
import tensorflow as tf

OPTIONAL_MODULES = ('tensorflow_addons', 'task_adaptation', 'tensorflow_hub',
                    'tensorflow_probability', 'simclr')
SAMPLER = 'meta_dataset.data.sampling.EpisodeDescriptionSampler'


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


def numpy_rejects_ragged_lists() -> bool:
  """Whether ``np.array`` refuses lists of different lengths (numpy >= 1.24) instead of
  making a 1-D array of objects (older numpy, with a deprecation warning)."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    try:
      np.array([[0], [0, 1]])
    except ValueError:
      return True
  return False


def object_array(items) -> np.ndarray:
  """A 1-D array of dtype object whose elements are ``items``, unchanged (lists of any
  lengths, as numpy < 1.24 made from a ragged list)."""
  array = np.empty(len(items), dtype=object)
  for i, item in enumerate(items):
    array[i] = item
  return array


def patch_sampler() -> list:
  """Lets upstream's episode sampler use a DAG ontology on numpy >= 1.24; returns what was
  patched (nothing on older numpy, or when patched already). Imports upstream's sampler.

  For a source with a DAG ontology, upstream's ``EpisodeDescriptionSampler`` keeps, per
  eligible node, the list of the leaf classes below it (``span_leaves_rel``, lists of different
  lengths) and draws an episode's classes with ``rng.choice(span_leaves_rel)``: numpy >= 1.24
  raises "inhomogeneous shape" there. After each sampler is built, the patch stores those
  lists as the 1-D object array that numpy < 1.24 made from them, so ``choice`` draws the same
  node from the same random state as upstream did there.
  """
  from meta_dataset.data import sampling  # pylint: disable=g-import-not-at-top
  sampler = sampling.EpisodeDescriptionSampler
  if getattr(sampler.__init__, 'patched_by_alfa_tf', False) or not numpy_rejects_ragged_lists():
    return []
  original = sampler.__init__

  @functools.wraps(original)
  def __init__(self, *args, **kwargs):
    original(self, *args, **kwargs)
    if hasattr(self, 'span_leaves_rel'):  # Set only when sampling with the DAG ontology.
      self.span_leaves_rel = object_array(self.span_leaves_rel)

  __init__.patched_by_alfa_tf = True
  sampler.__init__ = __init__
  return [SAMPLER]
