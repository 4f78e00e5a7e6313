"""Upstream's pretrained Baseline checkpoints: the documented name mapping (pretrained.py) onto
the project's backbones, checked against the variables upstream's backbones create
(tests/upstream/fixtures/backbone_variables.json, written by make_backbone_variables.py), and
loaded from a checkpoint written as upstream writes them (TF1 Saver, upstream's names and
shapes): the restored backbone equals the checkpoint's tensors."""
import json

import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext import backbones
from meta_dataset_ext import learner_builder
from meta_dataset_ext import pretrained
from meta_dataset_ext.errors import ConfigError
from tests.upstream import make_backbone_variables

UPSTREAM = json.load(open(make_backbone_variables.FIXTURE))
OURS = {'four_layer_convnet': learner_builder.four_layer_convnet, 'resnet': backbones.resnet,
        'resnet34': backbones.resnet34, 'wide_resnet': backbones.wide_resnet}


def mapped(backbone):
  """{upstream name: (our name, upstream shape)} of the backbone's mapped parameters."""
  result = {}
  for name, spec in backbone.param_specs().items():
    upstream = pretrained.upstream_variable_name(backbone, name)
    if upstream is not None:
      result[upstream] = (name, list(pretrained.upstream_shape(spec)))
  return result


@pytest.mark.parametrize('kind', sorted(OURS))
def test_every_upstream_variable_maps_to_one_parameter_of_the_same_size(kind):
  backbone = OURS[kind]()
  ours = mapped(backbone)
  assert {name: shape for name, (_, shape) in ours.items()} == UPSTREAM[kind]
  unmapped = set(backbone.param_specs()) - {name for name, _ in ours.values()}
  # Only the 4-CONV's conv biases (cancelled by BatchNorm) have no counterpart upstream.
  assert unmapped == ({f'block{i}.b' for i in range(4)} if kind == 'four_layer_convnet'
                      else set())


def write_upstream_checkpoint(path, variables, seed=0):
  """A TF1 name-based checkpoint of ``variables`` ({name: shape}) with random values, as
  upstream's Saver writes them; returns the values."""
  rng = np.random.default_rng(seed)
  values = {n: rng.normal(size=s).astype(np.float32) for n, s in variables.items()}
  with tf.Graph().as_default():
    tf_variables = [tf.compat.v1.Variable(v, name=n) for n, v in values.items()]
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      tf.compat.v1.train.Saver(tf_variables).save(session, path)
  return values


class Learner:
  """What ``backbone_values`` needs of a learner: its backbone."""

  def __init__(self, backbone):
    self.backbone = backbone


@pytest.mark.parametrize('kind', ['four_layer_convnet', 'resnet', 'wide_resnet'])
def test_an_upstream_checkpoint_loads_into_the_backbone(kind, tmp_path):
  path = str(tmp_path / 'model_27500.ckpt')
  extra = {'fc/linear_classifier/w_fc': [512, 10], 'global_step': []}  # Not loaded.
  values = write_upstream_checkpoint(path, dict(UPSTREAM[kind], **extra))
  backbone = OURS[kind]()
  loaded = pretrained.backbone_values(path, Learner(backbone))
  ours = mapped(backbone)
  assert sorted(loaded) == sorted(name for name, _ in ours.values())
  for upstream, (name, _) in ours.items():
    assert loaded[name].shape == backbone.param_specs()[name].shape
    np.testing.assert_array_equal(loaded[name].ravel(), values[upstream].ravel())


def test_an_upstream_checkpoint_of_another_backbone_is_named(tmp_path):
  path = str(tmp_path / 'model_1.ckpt')
  write_upstream_checkpoint(path, UPSTREAM['four_layer_convnet'])
  with pytest.raises(ConfigError, match="it has no variable 'resnet18/conv1/weight'"):
    pretrained.backbone_values(path, Learner(backbones.resnet()))
  narrow = learner_builder.four_layer_convnet(num_filters=32)
  with pytest.raises(ConfigError, match=r"'four_layer_convnet/layer_0/weight' has shape "
                     r"\(3, 3, 3, 64\), 'block0.w' needs \(3, 3, 3, 32\)"):
    pretrained.backbone_values(path, Learner(narrow))
  leaky = learner_builder.four_layer_convnet(activation='leaky_relu')  # Upstream has none.
  with pytest.raises(ConfigError, match='upstream Meta-Dataset has no backbone like this one'):
    pretrained.backbone_values(path, Learner(leaky))
