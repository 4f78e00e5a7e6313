"""Loads the authors' PyTorch golden outputs into alfa_tf learners (layout conversion included).

The files (``shared/golden/alfa_reference`` beside the repository, or $ALFA_GOLDEN_DIR) hold
float64 values of one meta-iteration of the authors' code; their README documents the
conventions: NCHW images, OIHW kernels, [out, in] linear weights, alpha0/beta0 of length S+1.
"""
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

import alfa_tf

GOLDEN_DIR = pathlib.Path(os.environ.get(
    'ALFA_GOLDEN_DIR',
    pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'golden' / 'alfa_reference'))

NUM_BLOCKS = 4
# Inner-loop tensors in the reference's order, with our names.
INNER = [(f'layer_dict.conv{i}.conv.{kind}', f'block{i}.{ours}')
         for i in range(NUM_BLOCKS) for kind, ours in (('weight', 'w'), ('bias', 'b'))]
INNER += [('layer_dict.linear.weights', 'head.w'), ('layer_dict.linear.bias', 'head.b')]
BN = [(f'layer_dict.conv{i}.norm_layer.{kind}', f'block{i}.{ours}')
      for i in range(NUM_BLOCKS) for kind, ours in (('weight', 'bn_scale'), ('bias', 'bn_offset'))]


def load(name):
  path = GOLDEN_DIR / f'{name}.npz'
  if not path.exists():
    message = f'golden file {path} not found (set ALFA_GOLDEN_DIR)'
    if os.environ.get('CI'):
      pytest.fail(message)
    pytest.skip(message)
  return dict(np.load(path))


def to_tf_layout(array):
  """OIHW conv kernels -> HWIO; [out, in] linear weights -> [in, out]; vectors unchanged."""
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def torch_key(inner_key):
  return inner_key.replace('.', '-')


def build_learner(golden, alfa, random_init, first_order, image_size=28):
  """A 4-CONV (8 filters) learner of the reference's configuration, loaded with its values."""
  backbone = alfa_tf.Conv4(filters=8)
  common = dict(num_classes=5, input_shape=(image_size, image_size, 3), num_steps=5,
                first_order=first_order, dtype='float64')
  if alfa:
    learner = alfa_tf.ALFALearner(backbone, random_init=random_init, **common)
  else:
    learner = alfa_tf.MAMLLearner(backbone, **common)
  for torch_name, ours in INNER + BN:
    learner.theta0[ours].assign(to_tf_layout(golden[f'param/classifier.{torch_name}']))
  if alfa:
    rule = learner.update_rule
    opt = 'param/inner_loop_optimizer'
    rule.alpha0.assign(np.stack([golden[f'{opt}.names_alpha_dict.{torch_key(k)}'][:5]
                                 for k, _ in INNER]))
    rule.beta0.assign(np.stack([golden[f'{opt}.names_beta_dict.{torch_key(k)}'][:5]
                                for k, _ in INNER]))
    for layer, (attr_w, attr_b) in ((0, ('w1', 'b1')), (2, ('w2', 'b2'))):
      getattr(rule.g_phi, attr_w).assign(golden[f'param/regularizer.{layer}.weight'].T)
      getattr(rule.g_phi, attr_b).assign(golden[f'param/regularizer.{layer}.bias'])
    if random_init:
      for k, ours in INNER:
        rule.beta_pp[ours].assign(to_tf_layout(
            golden[f'{opt}.names_beta_dict_per_param.{torch_key(k)}']))
  return learner


def episodes(golden):
  """The golden meta-batch as episode dicts (NHWC, class-major flattening)."""
  result = []
  for t in range(golden['x_support'].shape[0]):
    xs, xq = golden['x_support'][t], golden['x_query'][t]
    result.append(dict(
        support_images=tf.constant(xs.reshape((-1,) + xs.shape[-3:]).transpose(0, 2, 3, 1)),
        support_labels=tf.constant(golden['y_support'][t].reshape(-1)),
        query_images=tf.constant(xq.reshape((-1,) + xq.shape[-3:]).transpose(0, 2, 3, 1)),
        query_labels=tf.constant(golden['y_query'][t].reshape(-1))))
  return result


def meta_parameter_targets(learner, alfa, random_init):
  """{golden grad key: (variable, function mapping our gradient to the golden layout)}."""
  targets = {}
  if not random_init:
    for torch_name, ours in INNER + BN:
      targets[f'grad/classifier.{torch_name}'] = (learner.theta0[ours], to_torch_layout)
  if alfa:
    rule = learner.update_rule
    opt = 'grad/inner_loop_optimizer'
    for index, (k, ours) in enumerate(INNER):
      for symbol, var in (('alpha', rule.alpha0), ('beta', rule.beta0)):
        targets[f'{opt}.names_{symbol}_dict.{torch_key(k)}'] = (
            var, lambda g, i=index: g[i])
      if random_init:
        targets[f'{opt}.names_beta_dict_per_param.{torch_key(k)}'] = (
            rule.beta_pp[ours], to_torch_layout)
    for layer, (attr_w, attr_b) in ((0, ('w1', 'b1')), (2, ('w2', 'b2'))):
      targets[f'grad/regularizer.{layer}.weight'] = (getattr(rule.g_phi, attr_w), np.transpose)
      targets[f'grad/regularizer.{layer}.bias'] = (getattr(rule.g_phi, attr_b), np.asarray)
  return targets


def to_torch_layout(array):
  array = np.asarray(array)
  if array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  if array.ndim == 2:
    return array.T
  return array


def assert_close(name, ours, reference, rel=1e-9, zero_atol=1e-12):
  """|ours - reference| <= rel * max|reference|; tensors that are analytically zero in the
  reference (max-abs below ``zero_atol``, round-off only) are compared absolutely."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  assert ours.shape == reference.shape, f'{name}: shape {ours.shape} != {reference.shape}'
  scale = np.max(np.abs(reference)) if reference.size else 0.0
  error = np.max(np.abs(ours - reference)) if reference.size else 0.0
  bound = zero_atol if scale < zero_atol else rel * scale
  assert error <= bound, f'{name}: max error {error:.3e} > {bound:.3e} (scale {scale:.3e})'
