"""Checks against upstream Meta-Dataset's own code, run by test_pretrained_upstream.py in a
fresh interpreter each (upstream's gin names clash with the project's).

    python -m tests.upstream.pretrained_checks CHECK [ARGS]
"""
import sys

import numpy as np

from meta_dataset_ext.upstream import patches

patches.install_shims()  # No-op on TF 2.15 with upstream's dependencies.

# pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf
from meta_dataset.models import functional_backbones

from meta_dataset_ext import backbones
from meta_dataset_ext import learner_builder
from meta_dataset_ext import pretrained

OURS = {'four_layer_convnet': learner_builder.four_layer_convnet, 'resnet': backbones.resnet,
        'resnet34': backbones.resnet34, 'wide_resnet': backbones.wide_resnet}


def upstream_embeddings(kind, support, query, seed=0):
  """Upstream's embeddings of the support set and of the query set (with the support set's
  moments), and its variables' values, BatchNorm's scale and offset drawn at random."""
  embed = getattr(functional_backbones, kind)
  rng = np.random.default_rng(seed)
  with tf.Graph().as_default():
    out = embed(tf.constant(support), is_training=True, weight_decay=0.0)
    query_out = embed(tf.constant(query), is_training=True, weight_decay=0.0,
                      moments=out['moments'])
    variables = tf.compat.v1.global_variables()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      for v in variables:
        if 'batch_norm' in v.name:
          mean = 1.0 if v.name.endswith('scale:0') else 0.0
          v.load(rng.normal(mean, 0.3, v.shape.as_list()).astype(np.float32), session)
      values = {v.name.split(':')[0]: session.run(v) for v in variables}
      return session.run([out['embeddings'], query_out['embeddings']]) + [values]


def check_backbones_compute_upstreams_embeddings():
  """With upstream's weights (by the name mapping), each backbone computes upstream's
  embeddings: the support set's, and the query set's with the support set's moments."""
  rng = np.random.default_rng(1)
  for kind, size in (('four_layer_convnet', 28), ('resnet', 28), ('resnet', 40),
                     ('resnet34', 20), ('wide_resnet', 24)):
    support = rng.uniform(-1, 1, (6, size, size, 3)).astype(np.float32)
    query = rng.uniform(-1, 1, (5, size, size, 3)).astype(np.float32)
    expected_support, expected_query, values = upstream_embeddings(kind, support, query)
    backbone = OURS[kind]()
    params = {}
    for name, spec in backbone.param_specs().items():
      upstream = pretrained.upstream_variable_name(backbone, name)
      params[name] = (tf.zeros(spec.shape) if upstream is None else
                      tf.constant(values.pop(upstream).reshape(spec.shape)))
    assert not values, (kind, sorted(values))  # Every upstream variable has its parameter.
    features, moments = backbone(params, tf.constant(support), collect_moments=True)
    query_features, _ = backbone(params, tf.constant(query), moments)
    # Float32 round-off: upstream's moments are explicit ops (tf.nn.moments), ours the fused
    # kernel's, and their differences grow with depth (1.6e-5 after ResNet-34's 36 layers).
    for got, want in ((features, expected_support), (query_features, expected_query)):
      scale = np.abs(want).max()
      assert np.abs(got.numpy() - want).max() <= 5e-5 * scale, (kind, size)


def check_write_upstream_checkpoint(kind, image_size, path):
  """Writes a checkpoint of upstream's ``kind`` backbone as upstream's Saver does, with random
  values (every variable, BatchNorm's included)."""
  rng = np.random.default_rng(5)
  with tf.Graph().as_default():
    getattr(functional_backbones, kind)(tf.zeros([2, int(image_size), int(image_size), 3]),
                                        is_training=True, weight_decay=0.0)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      for v in tf.compat.v1.global_variables():
        v.load(rng.normal(0.0, 0.1, v.shape.as_list()).astype(np.float32), session)
      tf.compat.v1.train.Saver().save(session, path)


if __name__ == '__main__':
  globals()['check_' + sys.argv[1]](*sys.argv[2:])
  print('ok')
