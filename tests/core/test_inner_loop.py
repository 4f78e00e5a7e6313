"""``alfa_tf.adapt`` used directly: an unbuilt rule is built from the tensors it is given."""
import collections

import numpy as np
import pytest
import tensorflow as tf

import alfa_tf

NUM_STEPS = 2


def problem(dtype=tf.float64):
  """A least-squares task: params {w [3, 2], b [2]} and its loss function."""
  rng = np.random.default_rng(0)
  x = tf.constant(rng.normal(size=(5, 3)), dtype)
  y = tf.constant(rng.normal(size=(5, 2)), dtype)
  params = collections.OrderedDict(w=tf.constant(rng.normal(size=(3, 2)), dtype),
                                   b=tf.zeros([2], dtype))

  def loss_fn(p):
    outputs = tf.matmul(x, p['w']) + p['b']
    return tf.reduce_mean(tf.square(outputs - y)), outputs
  return params, loss_fn


def adapted(rule):
  params, loss_fn = problem()
  return alfa_tf.adapt(params, loss_fn, rule, NUM_STEPS)


@pytest.mark.parametrize('make_rule', [
    lambda: alfa_tf.ALFA(dtype='float64'),
    lambda: alfa_tf.ALFA(random_init=True, l2f=True, dtype='float64'),
    lambda: alfa_tf.PerStepLearningRates(dtype='float64'),
    lambda: alfa_tf.SGD()])
def test_adapt_builds_an_unbuilt_rule_with_seed_0(make_rule):
  """Two fresh rules give identical results, equal to building with default_rng(0)."""
  first, second, explicit = make_rule(), make_rule(), make_rule()
  params, _ = problem()
  explicit.build_state(collections.OrderedDict((k, tuple(v.shape)) for k, v in params.items()),
                       NUM_STEPS, np.random.default_rng(0))
  runs = [adapted(rule) for rule in (first, second, explicit)]
  assert first.param_names == ('w', 'b') and first.num_steps == NUM_STEPS
  for run in runs[1:]:
    for name in ('w', 'b'):
      np.testing.assert_array_equal(run.params[name].numpy(), runs[0].params[name].numpy())


def test_adapt_builds_the_rule_inside_tf_function():
  rule = alfa_tf.ALFA(dtype='float64')
  params, loss_fn = problem()
  compiled = tf.function(lambda p: alfa_tf.adapt(p, loss_fn, rule, NUM_STEPS).params)
  result = compiled(params)
  np.testing.assert_allclose(result['w'].numpy(), adapted(alfa_tf.ALFA(dtype='float64'))
                             .params['w'].numpy(), rtol=1e-12)
  compiled(params)  # no new variables on a second call


def test_adapt_names_build_state_when_shapes_are_not_static():
  rule = alfa_tf.ALFA(dtype='float64')
  _, loss_fn = problem()
  spec = dict(w=tf.TensorSpec([None, 2], tf.float64), b=tf.TensorSpec([2], tf.float64))
  compiled = tf.function(lambda p: alfa_tf.adapt(p, loss_fn, rule, NUM_STEPS).params,
                         input_signature=[spec])
  with pytest.raises(ValueError, match=r"shapes of \['w'\].*rule\.build_state\(param_shapes"):
    compiled.get_concrete_function()


def test_adapt_rejects_a_rule_built_for_other_tensors():
  rule = alfa_tf.ALFA(dtype='float64')
  rule.build_state({'w': (3, 2)}, NUM_STEPS, np.random.default_rng(0))
  with pytest.raises(ValueError, match=r"built for the tensors \['w'\] but adapt got "
                                       r"\['w', 'b'\]"):
    adapted(rule)


def test_adapt_rejects_a_rule_of_another_dtype():
  with pytest.raises(ValueError, match="dtype float32.*construct the rule with "
                                       "dtype='float64'"):
    adapted(alfa_tf.ALFA())


def test_a_learner_rejects_a_rule_that_is_already_built():
  rule = alfa_tf.ALFA()
  alfa_tf.GradientLearner(alfa_tf.MLP((4,)), 1, (1,), rule, loss='mse')
  with pytest.raises(ValueError, match='already built.*new, unbuilt rule'):
    alfa_tf.GradientLearner(alfa_tf.MLP((4,)), 1, (1,), rule, loss='mse')


def test_l2f_intermediates_are_exposed():
  """Adaptation.initial_params is gamma * theta_0; init_diagnostics holds the support loss at
  theta_0, the task embedding (layer means of its gradient) and gamma."""
  rule = alfa_tf.ALFA(l2f=True, dtype='float64')
  params, loss_fn = problem()
  result = alfa_tf.adapt(params, loss_fn, rule, NUM_STEPS)
  info = result.init_diagnostics
  loss, _, grads = alfa_tf.inner_loop.gradients(loss_fn, params)
  np.testing.assert_allclose(float(info['loss']), float(loss), rtol=1e-12)
  np.testing.assert_allclose(info['embedding'].numpy(),
                             [grads[k].numpy().mean() for k in params], rtol=1e-12)
  for l, name in enumerate(params):
    np.testing.assert_allclose(result.initial_params[name].numpy(),
                               info['gamma'].numpy()[l] * params[name].numpy(), rtol=1e-12)
  plain = alfa_tf.adapt(params, loss_fn, alfa_tf.ALFA(dtype='float64'), NUM_STEPS)
  assert plain.init_diagnostics == {}
  np.testing.assert_array_equal(plain.initial_params['w'].numpy(), params['w'].numpy())
