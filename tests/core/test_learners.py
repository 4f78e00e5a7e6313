"""Learners: outer steps, the Proto-MAML head, tracing, checkpoints, graph mode, mixed precision,
XLA (bad input: ``test_input_checks.py``)."""
import numpy as np
import pytest
import tensorflow as tf

import alfa_tf

SHAPE = (16, 16, 3)


def small_backbone():
  return alfa_tf.Conv4(filters=4, num_blocks=3)


def make_episode(seed=0, way=3, shots=2, queries=2, shape=SHAPE):
  rng = np.random.default_rng(seed)
  return dict(support_images=rng.normal(size=(way * shots,) + shape).astype(np.float32),
              support_labels=np.repeat(np.arange(way), shots).astype(np.int32),
              query_images=rng.normal(size=(way * queries,) + shape).astype(np.float32),
              query_labels=np.repeat(np.arange(way), queries).astype(np.int32))


def test_random_init_keeps_theta0_and_learns_beta_pp():
  learner = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, random_init=True, num_steps=2)
  theta0 = {k: v.numpy().copy() for k, v in learner.theta0.items()}
  beta_pp = [v.numpy().copy() for v in learner.update_rule.beta_pp.values()]
  assert all(not v.trainable for v in learner.theta0.values())
  learner.meta_update([make_episode(0), make_episode(1)], tf.keras.optimizers.Adam(1e-3))
  for name, value in theta0.items():
    np.testing.assert_array_equal(learner.theta0[name].numpy(), value)
  changed = [np.any(v.numpy() != b)
             for v, b in zip(learner.update_rule.beta_pp.values(), beta_pp)]
  assert sum(changed) >= len(changed) - 4  # conv biases get no gradient (BN cancels them)


def test_maml_outer_step_changes_theta0():
  learner = alfa_tf.MAMLLearner(small_backbone(), 3, SHAPE, num_steps=1)
  before = learner.theta0['block0.w'].numpy().copy()
  loss = learner.meta_update([make_episode()], tf.keras.optimizers.Adam(1e-2))
  assert np.isfinite(float(loss))
  assert np.any(learner.theta0['block0.w'].numpy() != before)


def test_proto_head_before_adaptation_is_the_prototype_classifier():
  learner = alfa_tf.MAMLLearner(small_backbone(), 3, SHAPE, head='proto', dtype='float64')
  episode = make_episode(shots=3)
  theta, fixed = learner._read_theta0()
  params = {**fixed, **theta}
  features, _ = learner.backbone(params, tf.constant(episode['support_images'], tf.float64))
  labels = tf.constant(episode['support_labels'])
  params['head.w'], params['head.b'] = learner.proto_head(features, labels)
  logits = tf.matmul(features, params['head.w']) + params['head.b']
  prototypes = tf.math.unsorted_segment_mean(features, labels, 3)
  distances = tf.reduce_sum(tf.square(features[:, None] - prototypes[None]), axis=-1)
  np.testing.assert_allclose(tf.nn.softmax(logits).numpy(), tf.nn.softmax(-distances).numpy(),
                             rtol=1e-10, atol=1e-12)
  # The learner's step-0 support logits are exactly these.
  out = learner.episode_output(episode)
  np.testing.assert_allclose(out.adaptation.aux[0].numpy(), logits.numpy(), rtol=1e-10)


def test_compiled_meta_step_traces_once_for_episodes_of_one_shape():
  learner = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, num_steps=2, first_order=True)
  optimizer = tf.keras.optimizers.Adam(1e-3)
  optimizer.build(learner.trainable_variables)  # slots exist before tracing
  traces = []

  @tf.function
  def step(batch):
    traces.append(1)
    return learner.meta_update(batch, optimizer)

  for seed in range(4):
    step([make_episode(2 * seed), make_episode(2 * seed + 1)])
  assert len(traces) == 1


def test_variable_way_is_masked_and_tolerates_unknown_batch_sizes():
  learner = alfa_tf.ALFALearner(small_backbone(), 6, SHAPE, num_steps=1, head='proto')
  spec = dict(support_images=tf.TensorSpec((None,) + SHAPE), support_labels=tf.TensorSpec(
      (None,), tf.int32), query_images=tf.TensorSpec((None,) + SHAPE),
              query_labels=tf.TensorSpec((None,), tf.int32), way=tf.TensorSpec((), tf.int32))
  logits_fn = tf.function(lambda ep: learner.episode_output(ep).query_logits,
                          input_signature=[spec])
  for way in (3, 5):
    episode = make_episode(way=way)
    logits = logits_fn(dict(episode, way=np.int32(way))).numpy()
    assert logits.shape == (2 * way, 6)
    assert np.all(logits[:, way:] < -1e8)
  assert len(logits_fn.get_concrete_function().structured_outputs.shape) == 2


def test_query_batch_norm_modes_differ():
  kwargs = dict(num_steps=1, dtype='float64', seed=1)
  own = alfa_tf.MAMLLearner(small_backbone(), 3, SHAPE, query_bn='own', **kwargs)
  support = alfa_tf.MAMLLearner(small_backbone(), 3, SHAPE, query_bn='support', **kwargs)
  episode = make_episode()
  a = own.episode_output(episode).query_logits.numpy()
  b = support.episode_output(episode).query_logits.numpy()
  assert not np.allclose(a, b)
  # Normalising the query with the support's statistics: a single query image gives the
  # same logits alone or in a batch.
  single = dict(episode, query_images=episode['query_images'][:1],
                query_labels=episode['query_labels'][:1])
  np.testing.assert_allclose(support.episode_output(single).query_logits.numpy(), b[:1],
                             rtol=1e-10)


@pytest.mark.parametrize('random_init', [False, True])
def test_checkpoint_round_trip(tmp_path, random_init):
  learner, other = [alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, num_steps=2, seed=seed,
                                        random_init=random_init) for seed in (0, 1)]
  saved = tf.train.list_variables(
      tf.train.Checkpoint(learner=learner).save(str(tmp_path / 'listing')))
  assert len([name for name, _ in saved if 'VARIABLE_VALUE' in name]) == len(learner.weights) + 1
  path = tf.train.Checkpoint(learner=learner).save(str(tmp_path / 'ckpt'))
  tf.train.Checkpoint(learner=other).restore(path).assert_existing_objects_matched()
  for a, b in zip(learner.weights, other.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  episode = make_episode()
  np.testing.assert_array_equal(learner.episode_output(episode).query_logits.numpy(),
                                other.episode_output(episode).query_logits.numpy())


def test_learner_is_a_keras_model_with_summary(capsys):
  learner = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE)
  assert isinstance(learner, tf.keras.Model)
  learner.summary()
  total = sum(int(np.prod(v.shape)) for v in learner.trainable_variables)
  printed = capsys.readouterr().out.replace(',', '')
  assert f'Trainable params: {total}' in printed, printed


def test_regression_with_mlp_and_mse():
  learner = alfa_tf.ALFALearner(alfa_tf.MLP((40, 40)), 1, (1,), loss='mse', num_steps=1)
  rng = np.random.default_rng(0)
  x = rng.uniform(-5, 5, size=(10, 1)).astype(np.float32)
  episode = dict(support_images=x[:5], support_labels=np.sin(x[:5, 0]),
                 query_images=x[5:], query_labels=np.sin(x[5:, 0]))
  loss = learner.meta_update([episode], tf.keras.optimizers.Adam(1e-3))
  assert np.isfinite(float(loss))


def test_evaluation_can_run_more_steps():
  learner = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, num_steps=2, eval_num_steps=4)
  assert len(learner.episode_output(make_episode(), training=False).adaptation.losses) == 4
  assert len(learner.episode_output(make_episode(), training=True).adaptation.losses) == 2


@pytest.mark.parametrize('backbone,shape,dim', [
    (alfa_tf.ResNet12(channels=(8, 8, 16, 16)), (32, 32, 3), 16),
    (alfa_tf.ResNet18(channels=(8, 8, 16, 16)), (40, 40, 3), 16),
    (alfa_tf.Conv4(filters=8), (84, 84, 3), 8 * 5 * 5),
])
def test_backbones_adapt_end_to_end(backbone, shape, dim):
  assert backbone.output_dim(shape) == dim
  learner = alfa_tf.ALFALearner(backbone, 3, shape, num_steps=1, head='proto',
                                first_order=True)
  out = learner.episode_output(make_episode(way=3, shots=1, queries=1, shape=shape))
  assert out.query_logits.shape == (3, 3) and np.isfinite(float(out.query_loss))
  n_adapted = len(learner.update_rule.param_names)
  assert n_adapted == sum(s.adapted for s in backbone.param_specs().values()) + 2


def test_reference_resnet12_size_and_tensor_count():
  specs = alfa_tf.ResNet12(channels=(64, 128, 256, 512)).param_specs()
  assert sum(s.adapted for s in specs.values()) + 2 == 18  # N = 18 as in the reference
  assert 7.9e6 < sum(int(np.prod(s.shape)) for s in specs.values()) < 8.1e6


@pytest.mark.parametrize('l2f', [False, True])
def test_graph_mode_meta_training_step(l2f):
  """TF1 graph mode (upstream Meta-Dataset's trainer): build, initialise, run, train."""
  graph = tf.Graph()
  with graph.as_default():
    learner = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, num_steps=2,
                                  alfa_kwargs=dict(l2f=l2f))
    episode = {k: tf.constant(v) for k, v in make_episode().items()}
    loss = learner.meta_loss([episode])
    # Keras 3 wraps each tf.Variable (its .value); Keras 2 variables are tf.Variables.
    variables = [v.value if isinstance(getattr(v, 'value', None), tf.Variable) else v
                 for v in learner.trainable_variables]
    grads = tf.compat.v1.gradients(loss, variables)
    assert all(g is not None for g in grads)
    train_op = tf.compat.v1.train.AdamOptimizer(1e-3).minimize(loss, var_list=variables)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      first = session.run(loss)
      for _ in range(3):
        session.run(train_op)
      assert np.isfinite(first) and session.run(loss) != first


@pytest.mark.parametrize('query_bn', ['own', 'support'])
@pytest.mark.parametrize('first_order', [False, True])
def test_fused_float32_batch_norm_matches_the_explicit_formula(first_order, query_bn,
                                                               monkeypatch):
  """float32 BatchNorm takes the fused kernels; its values and (second-order) meta-gradients
  agree with the explicit formula that float64 and the golden tests use, also when the query
  set is normalised with the support set's moments (first derivatives through them)."""
  from alfa_tf import backbones
  batch = [make_episode(0), make_episode(1)]

  def meta_gradients():
    learner = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, num_steps=2, seed=0,
                                  first_order=first_order, query_bn=query_bn)
    return learner.meta_gradients(batch)

  loss_fused, grads_fused = meta_gradients()

  def explicit(x, scale, offset, eps, moments=None, collect_moments=True, max_pool_size=None):
    y, used = backbones.explicit_batch_norm(x, scale, offset, eps, moments)
    if max_pool_size is not None:
      y = tf.nn.max_pool2d(y, max_pool_size, max_pool_size, 'VALID')
    return y, used

  monkeypatch.setattr(backbones, 'batch_norm', explicit)
  loss_explicit, grads_explicit = meta_gradients()
  np.testing.assert_allclose(float(loss_fused), float(loss_explicit), rtol=1e-5)
  for a, b in zip(grads_fused, grads_explicit):
    scale = np.max(np.abs(b.numpy()))
    assert np.max(np.abs(a.numpy() - b.numpy())) <= 2e-3 * scale + 1e-6


@pytest.mark.parametrize('first_order', [True, False])
@pytest.mark.parametrize('backbone_dtype', ['bfloat16', 'float16'])
def test_mixed_precision_keeps_meta_parameters_float32(backbone_dtype, first_order):
  """The backbone computes in 16 bits; meta-parameters, the update rule, losses and their
  (first- or second-order) meta-gradients stay float32 and close to the float32 run."""
  kwargs = dict(num_steps=2, seed=0, first_order=first_order)
  full = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, **kwargs)
  mixed = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, backbone_dtype=backbone_dtype,
                              **kwargs)
  batch = [make_episode(0)]
  loss_full, grads_full = full.meta_gradients(batch)
  loss_mixed, grads_mixed = mixed.meta_gradients(batch)
  assert all(v.dtype == tf.float32 for v in mixed.trainable_variables)
  assert all(g.dtype == tf.float32 for g in grads_mixed)
  assert loss_mixed.dtype == tf.float32
  np.testing.assert_allclose(float(loss_mixed), float(loss_full), rtol=0.05)
  cosine = [np.sum(a.numpy() * b.numpy()) / (np.linalg.norm(a.numpy()) * np.linalg.norm(
      b.numpy()) + 1e-12) for a, b in zip(grads_full, grads_mixed) if a.shape.rank > 1]
  assert np.median(cosine) > 0.9


@pytest.mark.parametrize('first_order,tolerance', [(True, 1e-5), (False, 1e-2)])
def test_xla_compiled_meta_gradients_match(first_order, tolerance):
  """jit_compile=True (XLA) needs the in-graph checks off; it computes the same step."""
  learner = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, num_steps=2, seed=0,
                                first_order=first_order, check_finite=False,
                                check_inputs=False)
  batch = [{k: tf.constant(v) for k, v in make_episode().items()}]
  plain = tf.function(learner.meta_gradients)(batch)
  xla = tf.function(learner.meta_gradients, jit_compile=True)(batch)
  np.testing.assert_allclose(float(xla[0]), float(plain[0]), rtol=1e-5)
  # Relative to the largest gradient: conv-bias gradients are round-off (BN cancels them).
  scale = max(np.max(np.abs(a.numpy())) for a in plain[1])
  for a, b in zip(plain[1], xla[1]):
    assert np.max(np.abs(a.numpy() - b.numpy())) <= tolerance * scale


def test_inner_loss_scale_lifts_float16_gradients_out_of_underflow():
  """A mean over many examples times small activations: each backpropagated product (1e-8)
  is below float16's smallest subnormal (6e-8) and flushes to zero unless the loss is scaled;
  the scaled gradient is divided back to the true one."""
  x = tf.fill([10000], tf.constant(1e-4, tf.float16))
  loss_fn = lambda p: (tf.reduce_mean(tf.cast(tf.cast(p['w'], tf.float16) * x, tf.float32)),
                       None)
  params = {'w': tf.constant(1.0)}
  _, _, plain = alfa_tf.inner_loop.gradients(loss_fn, params)
  _, _, scaled = alfa_tf.inner_loop.gradients(loss_fn, params, loss_scale=1024.0)
  assert float(plain['w']) == 0.0
  np.testing.assert_allclose(float(scaled['w']), 1e-4, rtol=1e-2)


def test_inner_loss_scale_leaves_float32_meta_gradients_unchanged():
  """Scaling by a power of two and dividing it out is exact in float32 (both orders)."""
  batch = [make_episode(0)]
  for first_order in (True, False):
    kwargs = dict(num_steps=2, seed=0, first_order=first_order)
    plain = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, **kwargs)
    scaled = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, inner_loss_scale=256.0, **kwargs)
    assert plain.inner_loss_scale == 1.0
    for a, b in zip(plain.meta_gradients(batch)[1], scaled.meta_gradients(batch)[1]):
      np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-12)


def test_float16_learner_steps_with_a_loss_scale_optimizer():
  learner = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, num_steps=2,
                                backbone_dtype='float16')
  assert learner.inner_loss_scale == alfa_tf.learners.FLOAT16_INNER_LOSS_SCALE
  optimizer = tf.keras.mixed_precision.LossScaleOptimizer(tf.keras.optimizers.Adam(1e-3))
  before = [v.numpy().copy() for v in learner.trainable_variables]
  loss = learner.meta_update([make_episode(0)], optimizer)
  assert np.isfinite(float(loss))
  changed = [np.any(v.numpy() != b) for v, b in zip(learner.trainable_variables, before)]
  assert sum(changed) > len(changed) // 2
  with pytest.raises(ValueError, match='inner_loss_scale must be positive'):
    alfa_tf.MAMLLearner(small_backbone(), 3, SHAPE, inner_loss_scale=0.0)


def test_episode_by_episode_gradients_equal_the_meta_batch_gradient():
  """The meta-gradient accumulated one episode at a time (one task's activations alive at a
  time) equals the gradient of the meta-batch's mean query loss, in both orders; compiled,
  the second episode waits for the first one's gradient."""
  batch = [make_episode(0), make_episode(1)]
  for first_order in (True, False):
    learner = alfa_tf.ALFALearner(small_backbone(), 3, SHAPE, num_steps=2, seed=0,
                                  first_order=first_order, dtype='float64')
    with tf.GradientTape() as tape:
      joint_loss = learner.meta_loss(batch)
    joint = tape.gradient(joint_loss, learner.trainable_variables,
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    loss, grads, outputs = learner.episode_gradients(batch)
    assert len(outputs) == 2
    np.testing.assert_allclose(float(loss), float(joint_loss), rtol=1e-12)
    for a, b in zip(joint, grads):
      np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-9, atol=1e-15)
  graph = tf.function(learner.episode_gradients).get_concrete_function(
      [{k: tf.constant(v) for k, v in ep.items()} for ep in batch]).graph
  waiting = [op for op in graph.get_operations() if op.type == 'Identity' and op.control_inputs]
  assert len(waiting) >= len(batch[1])
