"""Checks of the upstream adapter, run by test_adapter.py in a fresh interpreter each.

Upstream registers gin names that clash with the project's (Trainer, MAMLLearner, ...), so
nothing that imports upstream may run inside the main test process.

    python -m tests.upstream.adapter_checks CHECK
"""
import os
import sys
import tempfile

import numpy as np
import tensorflow as tf

from meta_dataset_ext.upstream import patches

patches.install_shims()  # No-op on TF 2.15 with upstream's dependencies.

# pylint: disable=g-import-not-at-top,wrong-import-position
from meta_dataset.data import config as data_config
from meta_dataset.data import dataset_spec
from meta_dataset.data import learning_spec
from meta_dataset.data import providers
from meta_dataset.data import sampling
from meta_dataset.models import functional_backbones

from meta_dataset_ext.upstream import learners as upstream_learners
from tests.upstream.episodes import LOGIT_DIM, MAML_ARGS, SHAPE, episode_arrays

# The shipped configs' variable-way, variable-shot episodes.
EPISODES = dict(num_ways=None, num_support=None, num_query=None, min_ways=5,
                max_ways_upper_bound=50, max_num_query=10, max_support_set_size=500,
                max_support_size_contrib_per_class=100, min_log_weight=np.log(0.5),
                max_log_weight=np.log(2.0), ignore_dag_ontology=False,
                ignore_bilevel_ontology=False, ignore_hierarchy_probability=0.0,
                simclr_episode_fraction=0.0)


def upstream_episode(arrays):
  tensors = {k: tf.constant(v) for k, v in arrays.items()}
  return providers.Episode(
      support_images=tensors['support_images'], query_images=tensors['query_images'],
      support_labels=tensors['support_labels'], query_labels=tensors['query_labels'],
      support_class_ids=tensors['support_labels'], query_class_ids=tensors['query_labels'])


def adapter(is_training, cls=upstream_learners.ALFAProtoMAMLLearner):
  """One of upstream's two learner instances, as its Trainer constructs them."""
  return cls(is_training=is_training, logit_dim=LOGIT_DIM, input_shape=list(SHAPE),
             embedding_fn=functional_backbones.four_layer_convnet,
             transductive_batch_norm=False, backprop_through_moments=True, **MAML_ARGS)


def alfa_variables():
  return [v for v in tf.compat.v1.global_variables() if v.name.startswith('alfa_meta/')]


def check_shared_saved_restored():
  """Train and eval instances share every meta-parameter; Adam trains them; a Saver
  checkpoints and restores them under names upstream saves and does not treat as backbone."""
  arrays = episode_arrays()
  path = os.path.join(tempfile.mkdtemp(), 'model.ckpt')
  graph = tf.Graph()
  with graph.as_default():
    train, evaluate = adapter(True), adapter(False)
    train.build()
    count = len(tf.compat.v1.trainable_variables())
    evaluate.build()
    assert len(tf.compat.v1.trainable_variables()) == count, 'eval learner made variables'
    names = [v.name for v in alfa_variables()]
    assert len(names) == count and any('g_phi' in n for n in names), names
    for special in upstream_learners.SPECIAL_SUBSTRINGS:
      assert not any(special in n for n in names), (special, names)
    logits = evaluate.forward_pass(upstream_episode(arrays))
    loss = tf.reduce_mean(train.compute_loss(
        tf.one_hot(arrays['query_labels'], 3), train.forward_pass(upstream_episode(arrays))))
    loss += train.compute_regularizer()
    step = tf.compat.v1.train.AdamOptimizer(1e-3).minimize(
        loss, var_list=tf.compat.v1.trainable_variables())
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      before = session.run(logits)
      session.run(step)
      after = session.run(logits)
      assert before.shape == (6, 3) and not np.allclose(before, after)
      saver.save(session, path)
  with tf.Graph().as_default():
    evaluate = adapter(False)
    logits = evaluate.forward_pass(upstream_episode(arrays))
    with tf.compat.v1.Session() as session:
      tf.compat.v1.train.Saver().restore(session, path)
      np.testing.assert_allclose(session.run(logits), after, atol=1e-6)


def check_graph_logits(path):
  """Writes to ``path`` (npz) the query logits of the train and eval instances on
  ``episode_arrays(seed=1)``, after moving every meta-parameter (in creation order:
  ``weight_0``...) away from its seeded initial value; test_adapter.py gives the project's
  own learner the same weights and compares."""
  arrays = episode_arrays(seed=1)
  with tf.Graph().as_default():
    train, evaluate = adapter(True), adapter(False)
    logits = [train.forward_pass(upstream_episode(arrays)),
              evaluate.forward_pass(upstream_episode(arrays))]
    variables = alfa_variables()
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      rng = np.random.default_rng(2)
      values = [v + 0.01 * rng.standard_normal(v.shape).astype(v.dtype)
                for v in session.run(variables)]
      for variable, value in zip(variables, values):
        variable.load(value, session)
      train_logits, eval_logits = session.run(logits)
  np.savez(path, train_logits=train_logits, eval_logits=eval_logits,
           **{f'weight_{i}': value for i, value in enumerate(values)})


def check_sampler(records_root):
  """Upstream's episode sampler with the DAG ontology of the hierarchical test source
  (``tests.upstream.sources``) fails on this numpy exactly where ``patch_sampler`` patches it;
  patched, every episode's classes are all the leaves below one eligible node, and every such
  node is drawn."""
  spec = dataset_spec.load_dataset_spec(os.path.join(records_root, 'ilsvrc_2012'))

  def sampler():
    return sampling.EpisodeDescriptionSampler(
        spec, learning_spec.Split.TRAIN, data_config.EpisodeDescriptionConfig(**EPISODES),
        use_dag_hierarchy=True)

  try:
    sampler().sample_episode_description()
    failed = False
  except ValueError as error:
    assert 'inhomogeneous' in str(error), error
    failed = True
  assert failed == patches.numpy_rejects_ragged_lists(), (failed, np.__version__)
  assert patches.patch_sampler() == ([patches.SAMPLER] if failed else [])
  assert patches.patch_sampler() == []  # Once only.
  patched = sampler()
  nodes = {tuple(sorted(leaves)) for leaves in patched.span_leaves_rel}
  assert sorted(len(leaves) for leaves in nodes) == [5, 6, 11], nodes
  drawn = {tuple(sorted(class_id for class_id, _, _ in patched.sample_episode_description()))
           for _ in range(60)}
  assert drawn == nodes, drawn


if __name__ == '__main__':
  globals()['check_' + sys.argv[1]](*sys.argv[2:])
  print('ok')
