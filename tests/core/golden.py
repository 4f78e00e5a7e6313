"""Loads the authors' PyTorch golden outputs into alfa_tf learners (layout conversion included).

The files (``shared/golden/alfa_reference`` beside the repository, or $ALFA_GOLDEN_DIR) hold
float64 values of one meta-iteration of the authors' code; their README documents the keys and
conventions: NCHW images, OIHW kernels, [out, in] linear weights, alpha0/beta0 of length S+1.
Everything a run depends on is read from its file: the configuration from ``config_json``
(the authors' argument names), the adapted tensors and their order from ``inner_keys``. So any
set of files in the README's key format runs unchanged.
"""
import dataclasses
import json
import os
import pathlib
import re
from typing import Tuple

import numpy as np
import pytest
import tensorflow as tf

import alfa_tf

GOLDEN_DIR = pathlib.Path(os.environ.get(
    'ALFA_GOLDEN_DIR',
    pathlib.Path(__file__).resolve().parents[2].parent / 'shared' / 'golden' / 'alfa_reference'))

# Options of the authors' code that the learners below reproduce only at these values.
REPRODUCED = {'backbone': '4-CONV', 'cnn_blocks_per_stage': 1, 'conv_padding': True,
              'max_pooling': True, 'norm_layer': 'batch_norm', 'per_step_bn_statistics': False,
              'enable_inner_loop_optimizable_bn_params': False, 'learnable_bn_gamma': True,
              'learnable_bn_beta': True, 'use_multi_step_loss_optimization': False,
              'first_order_to_second_order_epoch': -1}
OPTIMIZER = 'inner_loop_optimizer'


@dataclasses.dataclass(frozen=True)
class Config:
  """A golden run's configuration, from the authors' arguments in its ``config_json``."""
  filters: int             # cnn_num_filters
  num_blocks: int          # num_stages
  image_shape: Tuple[int, int, int]  # image_height, image_width, image_channels (as HWC)
  way: int                 # num_classes_per_set
  shot: int                # num_samples_per_class
  queries: int             # num_target_samples (per class)
  num_steps: int           # number_of_training_steps_per_iter
  num_tasks: int           # batch_size
  alfa: bool
  random_init: bool
  l2f: bool                # attenuate
  first_order: bool        # not second_order
  inner_lr: float          # init_inner_loop_learning_rate (MAML's fixed rate)


def load(name):
  path = GOLDEN_DIR / f'{name}.npz'
  if not path.exists():
    message = f'golden file {path} not found (set ALFA_GOLDEN_DIR)'
    if os.environ.get('CI'):
      pytest.fail(message)
    pytest.skip(message)
  return dict(np.load(path))


def read_config(golden) -> Config:
  """The run's ``Config``; checks that its options are reproducible and that the stored
  inputs have the shapes it implies."""
  args = json.loads(str(golden['config_json']))
  different = {key: args.get(key) for key, value in REPRODUCED.items() if args.get(key) != value}
  assert not different, f'options the learners do not reproduce: {different}'
  config = Config(
      filters=args['cnn_num_filters'], num_blocks=args['num_stages'],
      image_shape=(args['image_height'], args['image_width'], args['image_channels']),
      way=args['num_classes_per_set'], shot=args['num_samples_per_class'],
      queries=args['num_target_samples'], num_steps=args['number_of_training_steps_per_iter'],
      num_tasks=args['batch_size'], alfa=args['alfa'], random_init=args['random_init'],
      l2f=args.get('attenuate', False), first_order=not args['second_order'],
      inner_lr=args['init_inner_loop_learning_rate'])
  if 'x_support' in golden:
    h, w, c = config.image_shape
    for key, shape in (('x_support', (config.num_tasks, config.way, config.shot, c, h, w)),
                       ('x_query', (config.num_tasks, config.way, config.queries, c, h, w)),
                       ('y_support', (config.num_tasks, config.way, config.shot)),
                       ('y_query', (config.num_tasks, config.way, config.queries))):
      assert golden[key].shape == shape, (key, golden[key].shape, shape)
  return config


def our_name(inner_key):
  """An inner-loop tensor's name in alfa_tf: ``layer_dict.conv<i>.conv.weight`` ->
  ``block<i>.w``, ``.bias`` -> ``block<i>.b``, ``layer_dict.linear.weights`` -> ``head.w``."""
  conv = re.fullmatch(r'layer_dict\.conv(\d+)\.conv\.(weight|bias)', inner_key)
  if conv:
    return f'block{conv.group(1)}.{conv.group(2)[0]}'
  linear = re.fullmatch(r'layer_dict\.linear\.(weights|bias)', inner_key)
  assert linear, f'unknown inner-loop tensor {inner_key!r}'
  return f'head.{linear.group(1)[0]}'


def inner_tensors(golden):
  """[(authors' inner key, our name)] in the file's ``inner_keys`` order."""
  return [(key, our_name(key)) for key in map(str, golden['inner_keys'])]


def batch_norm_tensors(config):
  """[(authors' name, our name)] of the BatchNorm scales and offsets (not adapted)."""
  return [(f'layer_dict.conv{i}.norm_layer.{kind}', f'block{i}.{ours}')
          for i in range(config.num_blocks)
          for kind, ours in (('weight', 'bn_scale'), ('bias', 'bn_offset'))]


def to_tf_layout(array):
  """OIHW conv kernels -> HWIO; [out, in] linear weights -> [in, out]; vectors unchanged."""
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  if array.ndim == 2:
    return array.T
  return array


def to_torch_layout(array):
  array = np.asarray(array)
  if array.ndim == 4:
    return array.transpose(3, 2, 0, 1)
  if array.ndim == 2:
    return array.T
  return array


def torch_key(inner_key):
  return inner_key.replace('.', '-')


def _mlps(rule):
  """{authors' module name: our HyperparameterGenerator}: g_phi, and L2F's attenuator."""
  mlps = {'regularizer': rule.g_phi}
  if rule.l2f:
    mlps['attenuator'] = rule.attenuation.net
  return mlps


# The authors' nn.Linear layers of an MLP (indices 0 and 2 of their nn.Sequential) and ours.
MLP_LAYERS = ((0, 'w1', 'b1'), (2, 'w2', 'b2'))


def build_learner(golden, config: Config):
  """A 4-CONV learner of the run's configuration, loaded with its initial values."""
  backbone = alfa_tf.Conv4(filters=config.filters, num_blocks=config.num_blocks,
                           in_channels=config.image_shape[2])
  common = dict(num_classes=config.way, input_shape=config.image_shape,
                num_steps=config.num_steps, first_order=config.first_order, dtype='float64')
  if config.alfa:
    learner = alfa_tf.ALFALearner(backbone, random_init=config.random_init,
                                  alfa_kwargs=dict(l2f=config.l2f), **common)
  else:
    learner = alfa_tf.MAMLLearner(backbone, alpha=config.inner_lr, **common)
  inner = inner_tensors(golden)
  assert [ours for _, ours in inner] == learner.adapted_names, 'inner-loop order differs'
  for torch_name, ours in inner + batch_norm_tensors(config):
    learner.theta0[ours].assign(to_tf_layout(golden[f'param/classifier.{torch_name}']))
  if config.alfa:
    rule, opt = learner.update_rule, f'param/{OPTIMIZER}'
    for symbol, var in (('alpha', rule.alpha0), ('beta', rule.beta0)):
      # Entry S of the reference's vectors is never used.
      var.assign(np.stack([golden[f'{opt}.names_{symbol}_dict.{torch_key(k)}']
                           for k, _ in inner])[:, :config.num_steps])
    for module, mlp in _mlps(rule).items():
      for index, w, b in MLP_LAYERS:
        getattr(mlp, w).assign(golden[f'param/{module}.{index}.weight'].T)
        getattr(mlp, b).assign(golden[f'param/{module}.{index}.bias'])
    if config.random_init:
      for k, ours in inner:
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


def meta_parameter_targets(learner, golden, config: Config):
  """{golden grad key: (variable, function mapping our gradient to the golden layout)}.

  alpha0 and beta0 are found by their names (``names_alpha_dict``, ``names_beta_dict``):
  each is one row of our [N, S] variable, and the reference's entry S (never used, so its
  gradient is zero) is appended as 0.
  """
  targets = {}
  inner = inner_tensors(golden)
  if not config.random_init:
    for torch_name, ours in inner + batch_norm_tensors(config):
      targets[f'grad/classifier.{torch_name}'] = (learner.theta0[ours], to_torch_layout)
  if config.alfa:
    rule, opt = learner.update_rule, f'grad/{OPTIMIZER}'
    for index, (k, ours) in enumerate(inner):
      for symbol, var in (('alpha', rule.alpha0), ('beta', rule.beta0)):
        targets[f'{opt}.names_{symbol}_dict.{torch_key(k)}'] = (
            var, lambda g, i=index: np.append(g[i], 0.0))
      if config.random_init:
        targets[f'{opt}.names_beta_dict_per_param.{torch_key(k)}'] = (
            rule.beta_pp[ours], to_torch_layout)
    for module, mlp in _mlps(rule).items():
      for index, w, b in MLP_LAYERS:
        targets[f'grad/{module}.{index}.weight'] = (getattr(mlp, w), np.transpose)
        targets[f'grad/{module}.{index}.bias'] = (getattr(mlp, b), np.asarray)
  return targets


def assert_close(name, ours, reference, rel=1e-9, zero_atol=1e-12):
  """|ours - reference| <= rel * max|reference|; tensors that are analytically zero in the
  reference (max-abs below ``zero_atol``, round-off only) are compared absolutely. Returns the
  error relative to the scale (absolute for such zeros)."""
  ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
  assert ours.shape == reference.shape, f'{name}: shape {ours.shape} != {reference.shape}'
  scale = np.max(np.abs(reference)) if reference.size else 0.0
  error = np.max(np.abs(ours - reference)) if reference.size else 0.0
  bound = zero_atol if scale < zero_atol else rel * scale
  assert error <= bound, f'{name}: max error {error:.3e} > {bound:.3e} (scale {scale:.3e})'
  return error if scale < zero_atol else error / scale
