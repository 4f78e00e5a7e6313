"""The ALFA learners for upstream Meta-Dataset's trainer (``meta_dataset_ext.upstream.learners``).

Skipped where upstream is not importable (as in CI). Everything that imports upstream runs in
a fresh interpreter (``adapter_checks``): upstream's gin names would clash with the project's.
"""
import gin
import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext import learners
from tests.upstream.episodes import LOGIT_DIM, MAML_ARGS, SHAPE, episode_arrays
from tests.upstream.upstream_env import run_check

pytestmark = pytest.mark.usefixtures('requires_upstream')


def test_train_and_eval_learners_share_save_and_restore_every_meta_parameter():
  run_check('shared_saved_restored')


def test_same_weights_and_episode_give_the_project_learners_query_logits(tmp_path):
  path = str(tmp_path / 'graph.npz')
  run_check('graph_logits', path)
  graph = np.load(path)
  gin.clear_config()
  created = []

  def record(next_creator, **kwargs):
    variable = next_creator(**kwargs)
    if variable.dtype.is_floating:  # Not Keras 2's int64 step counters.
      created.append(variable)
    return variable

  with tf.variable_creator_scope(record):  # The project's learner, eager.
    learner = learners.alfa_proto_maml_learner(logit_dim=LOGIT_DIM, input_shape=SHAPE,
                                               **MAML_ARGS)
  assert len(created) == len([k for k in graph if k.startswith('weight_')])
  for i, variable in enumerate(created):
    variable.assign(graph[f'weight_{i}'])
  arrays = episode_arrays(seed=1)
  for training, key in ((True, 'train_logits'), (False, 'eval_logits')):
    output = learner.forward_episode(arrays['support_images'], arrays['support_labels'],
                                     arrays['query_images'], way=3, training=training)
    # Float32 round-off of logits of size ~100 after the inner loop (the TF1 graph and eager
    # execution run the fused kernels differently): about 1e-6 relative; a wrong weight or
    # setting differs at 1e-2 and more.
    np.testing.assert_allclose(output.query_logits.numpy()[:, :3], graph[key], rtol=1e-5,
                               atol=1e-5)
