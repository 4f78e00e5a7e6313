"""KerasBackbone: a Keras 3 model as the backbone of every learner.

Equivalence with the functional Conv4 in float64 (adapted parameters, query logits,
meta-gradients; MAML and ALFA with its variants, first and second order), finite differences
of second-order meta-gradients through a smooth Keras model (and the same check rejecting
Keras' own BatchNorm), Sequential / functional / subclassed / keras.applications models, what
is adapted, BatchNorm's statistics, checkpoints, mixed precision, tf.function and XLA
(tf.distribute: ``tests/trainer/test_keras_backbone.py``). On Keras 2 (TensorFlow 2.15) only
the clear error is checked.
"""
import numpy as np
import pytest
import tensorflow as tf

import alfa_tf
from alfa_tf import keras_backbone
from tests.core import test_gradients
from tests.core.test_learners import make_episode

keras = pytest.importorskip('keras')
KERAS3 = hasattr(keras.layers.Layer, 'stateless_call')
needs_keras3 = pytest.mark.skipif(not KERAS3, reason='KerasBackbone needs Keras 3 (TF >= 2.16)')
SHAPE = (16, 16, 3)


@pytest.mark.skipif(KERAS3, reason='Keras 2 only')
def test_keras2_model_is_refused_with_a_clear_error():
  model = tf.keras.Sequential([tf.keras.layers.Dense(3)])
  with pytest.raises(RuntimeError, match=r'needs a Keras 3 model \(TensorFlow >= 2.16\)'):
    alfa_tf.KerasBackbone(model)


# ----- equivalence with the functional Conv4 ---------------------------------------------------

def keras_name(functional_name):
  """'block2.bn_scale' -> 'bn2/gamma' (the names of ``keras_backbone.conv4_model``)."""
  block, _, kind = functional_name.partition('.')
  if block == 'head':
    return functional_name
  i = block[len('block'):]
  return {'w': f'conv{i}/kernel', 'b': f'conv{i}/bias', 'bn_scale': f'bn{i}/gamma',
          'bn_offset': f'bn{i}/beta'}[kind]


def variable_name(variable):
  return getattr(variable, 'path', None) or variable.name


def twin_learners(cls, conv4_kwargs, **kwargs):
  """A functional-Conv4 learner and a conv4_model learner with the same initial values."""
  conv4 = dict(filters=4, num_blocks=3, **conv4_kwargs)
  functional = cls(alfa_tf.Conv4(**conv4), 3, SHAPE, dtype='float64', **kwargs)
  model = keras_backbone.conv4_model(dtype='float64', **conv4)
  twin = cls(alfa_tf.KerasBackbone(model), 3, SHAPE, dtype='float64', **kwargs)
  assert list(twin.theta0.names) == [keras_name(n) for n in functional.theta0.names]
  for name in functional.theta0.names:
    twin.theta0[keras_name(name)].assign(functional.theta0[name])
  assert len(twin.update_rule.weights) == len(functional.update_rule.weights)
  for mine, theirs in zip(twin.update_rule.weights, functional.update_rule.weights):
    mine.assign(theirs)
  return functional, twin


def assert_close(actual, expected, tolerance, what):
  actual, expected = np.asarray(actual), np.asarray(expected)
  scale = np.max(np.abs(expected))
  error = np.max(np.abs(actual - expected))
  assert error <= tolerance * scale, (what, error, scale)


# Meta-Dataset's 4-CONV (ReLU, features in (H, W, C) order) and the ALFA reference's (leaky
# ReLU 0.01, (C, H, W) order). Keras' LeakyReLU runs TensorFlow's fused op, whose slope is a
# float32 attribute (0.01 -> 0.0099999998) in float64 too: 1e-8 there.
ARCHITECTURES = {'meta_dataset': (dict(activation='relu', flatten_order='hwc'), 1e-10),
                 'alfa_reference': (dict(activation='leaky_relu', flatten_order='chw'), 1e-8)}
VARIANTS = {
    'maml': (alfa_tf.MAMLLearner, {}),
    'alfa': (alfa_tf.ALFALearner, {}),
    'alfa_random_init': (alfa_tf.ALFALearner, dict(random_init=True)),
    'alfa_l2f': (alfa_tf.ALFALearner, dict(alfa_kwargs=dict(l2f=True))),
    'alfa_weights_only_fixed_beta': (alfa_tf.ALFALearner, dict(alfa_kwargs=dict(
        learning_state='weights', beta_mode='per_layer_per_step'))),
}
CASES = ([(v, 'meta_dataset', order, 'linear') for v in ('maml', 'alfa')
          for order in ('first', 'second')] +
         [('maml', 'meta_dataset', 'second', 'proto'), ('alfa', 'alfa_reference', 'second',
                                                       'proto')] +
         [(v, 'meta_dataset', 'second', 'linear') for v in list(VARIANTS)[2:]])


@needs_keras3
@pytest.mark.parametrize('variant,architecture,order,head', CASES)
def test_keras_conv4_equals_the_functional_conv4(variant, architecture, order, head):
  """Same initial values: the same adapted parameters, query logits and meta-gradients."""
  cls, kwargs = VARIANTS[variant]
  conv4_kwargs, tolerance = ARCHITECTURES[architecture]
  functional, twin = twin_learners(cls, conv4_kwargs, num_steps=2, head=head,
                                   first_order=order == 'first', **kwargs)
  batch = [make_episode(0, shape=SHAPE), make_episode(1, shape=SHAPE)]
  loss_f, grads_f, outs_f = functional.episode_gradients(batch)
  loss_k, grads_k, outs_k = twin.episode_gradients(batch)
  assert_close(loss_k, loss_f, tolerance, 'meta-loss')
  for out_f, out_k in zip(outs_f, outs_k):
    assert_close(out_k.query_logits, out_f.query_logits, tolerance, 'query logits')
    for name, value in out_f.adaptation.params.items():
      assert_close(out_k.adaptation.params[keras_name(name)], value, tolerance, name)
  by_name = dict(zip(map(variable_name, twin.trainable_variables), grads_k))
  compared = 0
  for variable, grad in zip(functional.trainable_variables, grads_f):
    name = variable_name(variable)
    if name.startswith('theta0/'):
      theirs = name[len('theta0/'):]
      name = (f'conv4/{keras_name(theirs)}' if not theirs.startswith('head')
              else f'theta0/{theirs}')
    elif name.startswith('beta_pp/'):
      continue  # Compared below: beta_pp is named by the adapted tensors' names.
    assert_close(by_name[name], grad, tolerance, name)
    compared += 1
  assert compared == len(twin.trainable_variables) - (
      len(twin.update_rule.beta_pp) if kwargs.get('random_init') else 0)
  if kwargs.get('random_init'):
    position = lambda learner, variable: [id(v) for v in learner.trainable_variables].index(
        id(variable))
    for name in functional.update_rule.beta_pp:
      mine = position(twin, twin.update_rule.beta_pp[keras_name(name)])
      theirs = position(functional, functional.update_rule.beta_pp[name])
      assert_close(grads_k[mine], grads_f[theirs], tolerance, f'beta_pp/{name}')


@needs_keras3
def test_keras_conv4_runs_the_functional_conv4s_heavy_ops():
  """BatchNorm through the fused kernels (never tf.nn.moments), max pooling with the
  closed-form second derivative (no MaxPoolGradGrad), the activation on the pooled quarter
  and no bias addition before BatchNorm: the gradient ops of a second-order meta-step are
  those of the functional Conv4, in the same numbers."""
  batch = [{k: tf.constant(v, tf.float32) if v.dtype.kind == 'f' else tf.constant(v)
            for k, v in make_episode().items()}]

  def heavy_ops(backbone):
    learner = alfa_tf.ALFALearner(backbone, 3, SHAPE, num_steps=2)
    graph = tf.function(learner.meta_gradients).get_concrete_function(batch).graph
    kinds = [op.type for op in graph.get_operations()]
    return {kind: kinds.count(kind) for kind in set(kinds)
            if kind.startswith(('Conv2D', 'FusedBatchNorm', 'MaxPool', 'LeakyRelu', 'Mean',
                                'SquaredDifference'))}

  functional = heavy_ops(alfa_tf.Conv4(filters=4, num_blocks=3))
  twin = heavy_ops(alfa_tf.KerasBackbone(keras_backbone.conv4_model(filters=4, num_blocks=3)))
  assert 'MaxPoolGradGrad' not in twin and 'FusedBatchNormGradV3' in twin
  for kind in ('Conv2DBackpropFilter', 'Conv2DBackpropInput', 'FusedBatchNormGradV3',
               'MaxPoolGrad', 'LeakyReluGrad', 'SquaredDifference'):
    assert twin.get(kind) == functional.get(kind), (kind, twin, functional)


# ----- finite differences ----------------------------------------------------------------------

def smooth_model(dtype='float64'):
  """A smooth functional Keras model: conv + bias -> BatchNorm -> softplus -> average pool,
  conv -> BatchNorm -> tanh, dense -> BatchNorm over features (rank 2) -> softplus."""
  layers = keras.layers
  inputs = keras.Input((8, 8, 3), dtype=dtype)
  x = layers.Conv2D(4, 3, padding='same', name='conv0', dtype=dtype)(inputs)
  x = layers.BatchNormalization(name='bn0', dtype=dtype)(x)
  x = layers.Activation('softplus', dtype=dtype)(x)
  x = layers.AveragePooling2D(2, dtype=dtype)(x)
  x = layers.Conv2D(4, 3, padding='same', use_bias=False, name='conv1', dtype=dtype)(x)
  x = layers.BatchNormalization(name='bn1', dtype=dtype)(x)
  x = layers.Activation('tanh', dtype=dtype)(x)
  x = layers.Dense(5, name='dense', dtype=dtype)(layers.Flatten(dtype=dtype)(x))
  x = layers.BatchNormalization(name='bn2', dtype=dtype)(x)
  return keras.Model(inputs, layers.Activation('softplus', dtype=dtype)(x), name='smooth')


def smooth_learner(first_order=False):
  keras.utils.set_random_seed(3)
  return alfa_tf.ALFALearner(alfa_tf.KerasBackbone(smooth_model()), 3, (8, 8, 3),
                             num_steps=2, first_order=first_order, dtype='float64', seed=3,
                             alfa_kwargs=dict(beta_init=0.05))


@needs_keras3
@pytest.mark.parametrize('first_order', [False, True])
def test_meta_gradients_through_a_keras_model_match_finite_differences(first_order,
                                                                       monkeypatch):
  errors = test_gradients.finite_difference_errors(
      smooth_learner(first_order), test_gradients.episodes(), monkeypatch)
  test_gradients.assert_match(errors, ('conv0/kernel', 'bn0/gamma', 'bn2/beta', 'dense/kernel',
                                       'head.w', 'alpha0', 'beta0', 'w1'))


@needs_keras3
def test_keras_own_batch_norm_gets_second_order_wrong(monkeypatch):
  """Why BatchNorm runs through the project's op: Keras' batch statistics (tf.nn.moments,
  stop_gradient on the mean inside the variance) fail the check above in second order."""
  monkeypatch.setattr(keras_backbone, '_batch_norm_call',
                      lambda state, layer, original, inputs, training=None, mask=None:
                      original(inputs, training=True, mask=mask))
  learner = smooth_learner()
  assert 'moments' in ' '.join(op.type.lower() + op.name.lower() for op in tf.function(
      learner.meta_loss).get_concrete_function(
          [{k: tf.constant(v) for k, v in test_gradients.episodes(1)[0].items()}])
                               .graph.get_operations())
  errors = test_gradients.finite_difference_errors(learner, test_gradients.episodes(),
                                                   monkeypatch, num_directions=1)
  wrong = {name.split('#')[0] for name, (error, _, _) in errors.items()
           if error > 10 * test_gradients.TOLERANCE}
  assert {'conv0/kernel', 'bn0/beta', 'bn1/gamma', 'conv1/kernel', 'dense/kernel'} <= wrong, errors


# ----- models of every kind ------------------------------------------------------------------

class Subclassed(keras.Model):
  """A subclassed model whose call takes no training argument."""

  def __init__(self):
    super().__init__(name='subclassed')
    self.conv = keras.layers.Conv2D(4, 3, name='conv')
    self.norm = keras.layers.BatchNormalization(name='norm')
    self.dense = keras.layers.Dense(6, activation='relu', name='dense')

  def call(self, images):
    x = tf.nn.relu(self.norm(self.conv(images)))
    return self.dense(tf.reduce_mean(x, axis=[1, 2]))


def functional_model():
  inputs = keras.Input(SHAPE)
  x = keras.layers.Conv2D(4, 3, strides=2, name='stem')(inputs)
  skip = keras.layers.BatchNormalization(name='stem_bn')(x)
  x = keras.layers.ReLU()(skip)
  x = keras.layers.Conv2D(4, 3, padding='same', name='conv')(x)
  x = keras.layers.BatchNormalization(name='conv_bn')(x)
  x = keras.layers.Add()([x, skip])  # The BatchNorm input is also used elsewhere.
  x = keras.layers.MaxPooling2D(3, strides=2)(keras.layers.LeakyReLU(0.1)(x))  # Overlapping.
  return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name='residual')


def applications(name):
  return lambda: getattr(keras.applications, name)(input_shape=(32, 32, 3), weights=None,
                                                     include_top=False, pooling='avg')


MODELS = {
    'sequential': (lambda: keras_backbone.conv4_model(filters=4, num_blocks=3), SHAPE),
    'functional': (functional_model, SHAPE),
    'subclassed': (Subclassed, SHAPE),
    'mobilenet_v3_small': (applications('MobileNetV3Small'), (32, 32, 3)),
    'resnet50': (applications('ResNet50'), (32, 32, 3)),
}


@needs_keras3
@pytest.mark.parametrize('kind', list(MODELS))
def test_every_kind_of_model_meta_trains(kind):
  """One second-order ALFA outer step: finite, every trainable variable of the model moves
  (biases excepted: those before BatchNorm have a zero gradient), BatchNorm's moving
  statistics do not, BatchNorm gamma/beta are meta-learned but not adapted."""
  build, shape = MODELS[kind]
  keras.utils.set_random_seed(0)
  model = build()
  learner = alfa_tf.ALFALearner(alfa_tf.KerasBackbone(model), 2, shape, num_steps=1,
                                head='proto')
  variables = learner.theta0
  bn = [layer for layer in model._flatten_layers()  # pylint: disable=protected-access
        if isinstance(layer, keras.layers.BatchNormalization)]
  bn_names = {n for n in variables.names for layer in bn if n.startswith(f'{layer.name}/')}
  assert bn_names and set(learner.update_rule.param_names) == (
      set(variables.names) - bn_names | {'head.w', 'head.b'})
  before = {n: v.numpy().copy() for n, v in variables.items()}
  moving = [v.numpy().copy() for v in model.non_trainable_variables]
  # Two examples per set would make BatchNorm over MobileNet's 1x1 maps a constant +-1.
  episode = make_episode(way=2, shots=2, queries=2, shape=shape)
  loss = learner.meta_update([episode], tf.keras.optimizers.SGD(0.1))
  assert np.isfinite(float(loss))
  moved = {n for n, v in variables.items() if np.any(v.numpy() != before[n])}
  assert {n for n in variables.names if not n.endswith('bias')} <= moved, set(
      variables.names) - moved
  for value, variable in zip(moving, model.non_trainable_variables):
    np.testing.assert_array_equal(variable.numpy(), value)


# ----- what is adapted -------------------------------------------------------------------------

def anil_model():
  return keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(4, 3, name='conv'),
                           keras.layers.BatchNormalization(name='bn'),
                           keras.layers.GlobalAveragePooling2D(),
                           keras.layers.Dense(5, name='features')], name='net')


@needs_keras3
@pytest.mark.parametrize('adapt,adapt_batch_norm,expected', [
    (None, False, ['conv/kernel', 'conv/bias', 'features/kernel', 'features/bias']),
    (None, True, ['conv/kernel', 'conv/bias', 'bn/gamma', 'bn/beta', 'features/kernel',
                  'features/bias']),
    ('features', False, ['features/kernel', 'features/bias']),
    (['features/kernel', 'conv'], False, ['conv/kernel', 'conv/bias', 'features/kernel']),
    ((), False, []),
    (lambda variable: variable.path.endswith('kernel'), False, ['conv/kernel',
                                                                'features/kernel']),
])
def test_adapted_variables_are_chosen_by_name_layer_or_predicate(adapt, adapt_batch_norm,
                                                                 expected):
  """ANIL (adapt the features layer, or only the learner's head with ``adapt=()``): the other
  variables are still meta-learned."""
  model = anil_model()
  learner = alfa_tf.ALFALearner(alfa_tf.KerasBackbone(model, adapt, adapt_batch_norm), 3,
                                SHAPE, num_steps=1)
  assert list(learner.update_rule.param_names) == expected + ['head.w', 'head.b']
  assert learner.update_rule.g_phi.w1.shape[0] == 2 * (len(expected) + 2)
  _, grads = learner.meta_gradients([make_episode()])
  by_name = dict(zip(map(variable_name, learner.trainable_variables), grads))
  for name in ('conv/kernel', 'bn/gamma', 'features/kernel'):
    assert np.any(by_name[f'net/{name}'].numpy() != 0), name


@needs_keras3
def test_layers_select_what_is_adapted_and_unknown_names_are_named():
  model = anil_model()
  learner = alfa_tf.MAMLLearner(alfa_tf.KerasBackbone(model, adapt=[model.layers[-1]]), 3,
                                SHAPE, num_steps=1)
  assert list(learner.update_rule.param_names) == ['features/kernel', 'features/bias',
                                                   'head.w', 'head.b']
  with pytest.raises(ValueError, match=r"adapt='classifier' selects no trainable variable.*"
                                       r"\['bn', 'conv', 'features'\]"):
    alfa_tf.MAMLLearner(alfa_tf.KerasBackbone(anil_model(), adapt='classifier'), 3, SHAPE)


# ----- BatchNorm -------------------------------------------------------------------------------

@needs_keras3
def test_batch_norm_over_another_axis_is_refused_when_the_learner_is_built():
  model = keras.Sequential([keras.Input(SHAPE), keras.layers.Conv2D(4, 3, name='conv'),
                            keras.layers.BatchNormalization(axis=1, name='bn_rows'),
                            keras.layers.Flatten()])
  with pytest.raises(ValueError, match="'bn_rows' normalises over axis 1 of rank-4 inputs; "
                                       "only the last"):
    alfa_tf.MAMLLearner(alfa_tf.KerasBackbone(model), 3, SHAPE)


@needs_keras3
def test_batch_norm_uses_batch_statistics_and_frozen_layers_their_moving_ones():
  model = anil_model()
  learner = alfa_tf.MAMLLearner(alfa_tf.KerasBackbone(model), 3, SHAPE, num_steps=1)
  bn = model.get_layer('bn')
  episode = make_episode()
  logits = learner.episode_output(episode).query_logits.numpy()
  bn.moving_mean.assign(bn.moving_mean + 5.0)
  np.testing.assert_array_equal(learner.episode_output(episode).query_logits.numpy(), logits)
  bn.trainable = False  # Keras' frozen BatchNorm: moving statistics, also here.
  frozen = alfa_tf.MAMLLearner(alfa_tf.KerasBackbone(model), 3, SHAPE, num_steps=1)
  assert not np.allclose(frozen.episode_output(episode).query_logits.numpy(), logits)
  bn.trainable = True
  # Outside the backbone's calls the model is Keras' own: training updates moving averages.
  mean = bn.moving_mean.numpy().copy()
  model(episode['query_images'], training=True)
  assert np.any(bn.moving_mean.numpy() != mean)


@needs_keras3
def test_query_set_normalised_with_the_support_moments():
  learner = alfa_tf.MAMLLearner(alfa_tf.KerasBackbone(functional_model()), 3, SHAPE,
                                num_steps=1, query_bn='support', dtype='float32')
  episode = make_episode()
  batch = learner.episode_output(episode).query_logits.numpy()
  single = dict(episode, query_images=episode['query_images'][:1],
                query_labels=episode['query_labels'][:1])
  np.testing.assert_allclose(learner.episode_output(single).query_logits.numpy(), batch[:1],
                             rtol=1e-5, atol=1e-6)


# ----- the learner around the model ----------------------------------------------------------

@needs_keras3
def test_checkpoints_hold_the_model_variables_by_their_paths(tmp_path):
  learner, other = [alfa_tf.ALFALearner(
      alfa_tf.KerasBackbone(keras_backbone.conv4_model(filters=4, num_blocks=3)), 3, SHAPE,
      num_steps=1, seed=seed) for seed in (0, 1)]
  learner.meta_update([make_episode()], tf.keras.optimizers.SGD(0.1))
  path = tf.train.Checkpoint(learner=learner).save(str(tmp_path / 'ckpt'))
  keys = [name.replace('.S', '/') for name, _ in tf.train.list_variables(path)]
  for name in learner.theta0.names:
    attribute = name.replace('.', '__')
    assert any(f'learner/theta0/param_{attribute}/' in key for key in keys), (name, keys)
  tf.train.Checkpoint(learner=other).restore(path).assert_existing_objects_matched()
  for a, b in zip(learner.weights, other.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  np.testing.assert_array_equal(
      learner.keras_model.get_layer('conv0').kernel.numpy(),
      other.keras_model.get_layer('conv0').kernel.numpy())


@needs_keras3
def test_random_init_keeps_the_model_and_learns_beta_pp():
  model = anil_model()
  learner = alfa_tf.ALFALearner(alfa_tf.KerasBackbone(model), 3, SHAPE, num_steps=1,
                                random_init=True)
  assert not any(v.trainable for v in model.variables)
  before = [v.numpy().copy() for v in model.variables]
  beta_pp = [v.numpy().copy() for v in learner.update_rule.beta_pp.values()]
  learner.meta_update([make_episode()], tf.keras.optimizers.Adam(1e-2))
  for value, variable in zip(before, model.variables):
    np.testing.assert_array_equal(variable.numpy(), value)
  assert all(np.any(v.numpy() != b) for v, b in zip(
      learner.update_rule.beta_pp.values(), beta_pp) if not v.path.endswith(('bias', '.b')))


@needs_keras3
def test_dtypes_are_checked_and_mixed_precision_is_the_models_policy():
  with pytest.raises(ValueError, match="build the model with dtype='float64'"):
    alfa_tf.MAMLLearner(alfa_tf.KerasBackbone(anil_model()), 3, SHAPE, dtype='float64')
  with pytest.raises(ValueError, match='mixed-precision dtype policy'):
    alfa_tf.MAMLLearner(alfa_tf.KerasBackbone(anil_model()), 3, SHAPE,
                        backbone_dtype='bfloat16')
  model = keras_backbone.conv4_model(filters=4, num_blocks=3, dtype='mixed_bfloat16')
  learner = alfa_tf.ALFALearner(alfa_tf.KerasBackbone(model), 3, SHAPE, num_steps=2)
  loss, grads = learner.meta_gradients([make_episode()])
  assert np.isfinite(float(loss)) and all(g.dtype == tf.float32 for g in grads)
  assert learner.episode_output(make_episode()).query_logits.dtype == tf.float32


@needs_keras3
@pytest.mark.parametrize('first_order,tolerance', [(True, 1e-5), (False, 1e-2)])
def test_compiled_once_and_under_xla(first_order, tolerance):
  learner = alfa_tf.ALFALearner(alfa_tf.KerasBackbone(functional_model()), 3, SHAPE,
                                num_steps=2, first_order=first_order, check_finite=False,
                                check_inputs=False)
  batch = [{k: tf.constant(v) for k, v in make_episode(seed).items()} for seed in (0, 1)]
  traces = []

  def meta_gradients(episodes):
    traces.append(1)
    return learner.meta_gradients(episodes)

  plain = tf.function(meta_gradients)
  first = plain(batch)
  plain([{k: tf.constant(v) for k, v in make_episode(seed).items()} for seed in (2, 3)])
  assert len(traces) == 1
  xla = tf.function(learner.meta_gradients, jit_compile=True)(batch)
  np.testing.assert_allclose(float(xla[0]), float(first[0]), rtol=1e-5)
  scale = max(np.max(np.abs(g.numpy())) for g in first[1])
  for a, b in zip(first[1], xla[1]):
    assert np.max(np.abs(a.numpy() - b.numpy())) <= tolerance * scale
