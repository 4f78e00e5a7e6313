"""Update rules: reductions to SGD, the random-init variant, ablation switches, extra steps."""
import collections

import numpy as np
import pytest
import tensorflow as tf

import alfa_tf
from alfa_tf import update_rules

SHAPES = collections.OrderedDict([('a.w', (3, 2)), ('a.b', (2,)), ('c.w', (4,))])


def built(rule, num_steps=3, seed=0):
  rule.build_state(SHAPES, num_steps, np.random.default_rng(seed))
  return rule


def params_and_grads(seed=1):
  rng = np.random.default_rng(seed)
  make = lambda: collections.OrderedDict(
      (k, tf.constant(rng.normal(size=s))) for k, s in SHAPES.items())
  return make(), make()


def fix_generator(rule, alpha_hat=1.0, beta_hat=0.0):
  """Sets g_phi so that it outputs alpha_hat for every tensor, then beta_hat."""
  n = len(SHAPES)
  for var in (rule.g_phi.w1, rule.g_phi.b1, rule.g_phi.w2):
    var.assign(np.zeros(var.shape))
  rule.g_phi.b2.assign(np.concatenate([np.full(n, alpha_hat), np.full(n, beta_hat)]))


def test_alfa_with_fixed_outputs_is_sgd_with_rate_alpha0():
  rule = built(update_rules.ALFA(dtype='float64'))
  fix_generator(rule)
  params, grads = params_and_grads()
  for step in range(3):
    new, info = rule.update(params, grads, step)
    np.testing.assert_array_equal(info['alpha_hat'], np.ones(3))
    expected, _ = update_rules.SGD(0.01, dtype='float64').update(params, grads, step)
    for name in SHAPES:
      np.testing.assert_array_equal(new[name].numpy(), expected[name].numpy())


def test_alfa_learner_with_fixed_outputs_adapts_exactly_like_maml():
  backbone = alfa_tf.Conv4(filters=4, num_blocks=2)
  kwargs = dict(num_classes=3, input_shape=(8, 8, 3), num_steps=3, dtype='float64', seed=5)
  alfa = alfa_tf.ALFALearner(backbone, **kwargs)
  maml = alfa_tf.MAMLLearner(backbone, alpha=0.01, **kwargs)
  n = len(alfa.update_rule.param_names)
  for var in (alfa.update_rule.g_phi.w1, alfa.update_rule.g_phi.b1, alfa.update_rule.g_phi.w2):
    var.assign(np.zeros(var.shape))
  alfa.update_rule.g_phi.b2.assign(np.concatenate([np.ones(n), np.zeros(n)]))
  rng = np.random.default_rng(0)
  episode = dict(support_images=rng.normal(size=(6, 8, 8, 3)), support_labels=[0, 1, 2] * 2,
                 query_images=rng.normal(size=(3, 8, 8, 3)), query_labels=[0, 1, 2])
  a, m = alfa.episode_output(episode), maml.episode_output(episode)
  np.testing.assert_array_equal(a.query_logits.numpy(), m.query_logits.numpy())
  for pa, pm in zip(a.adaptation.trajectory, m.adaptation.trajectory):
    for name in pa:
      np.testing.assert_array_equal(pa[name].numpy(), pm[name].numpy())


def test_update_form_matches_the_reference_formula():
  rule = built(update_rules.ALFA(dtype='float64', beta_init=0.1))
  params, grads = params_and_grads()
  new, info = rule.update(params, grads, 1)
  tau = np.concatenate([[params[k].numpy().mean() for k in SHAPES],
                        [grads[k].numpy().mean() for k in SHAPES]])
  g = rule.g_phi
  out = np.maximum(tau @ g.w1.numpy() + g.b1.numpy(), 0) @ g.w2.numpy() + g.b2.numpy()
  for l, name in enumerate(SHAPES):
    a = out[l] * rule.alpha0.numpy()[l, 1]
    b = out[3 + l] * rule.beta0.numpy()[l, 1]
    np.testing.assert_allclose(new[name].numpy(),
                               (1 - b) * params[name].numpy() - a * grads[name].numpy(),
                               rtol=1e-12)
  np.testing.assert_allclose(info['learning_state'].numpy(), tau, rtol=1e-12)


def test_g_phi_uses_pytorch_default_initialisation():
  rule = built(update_rules.ALFA(dtype='float64'))
  bound = 1 / np.sqrt(6)
  for var in (rule.g_phi.w1, rule.g_phi.b1, rule.g_phi.w2, rule.g_phi.b2):
    values = var.numpy()
    assert np.all(np.abs(values) <= bound) and np.std(values) > bound / 4
  assert rule.g_phi.w1.shape == (6, 6) and rule.g_phi.w2.shape == (6, 6)
  np.testing.assert_array_equal(rule.alpha0.numpy(), np.full((3, 3), 0.01))
  np.testing.assert_array_equal(rule.beta0.numpy(), np.full((3, 3), 5e-6))


def test_random_init_variant_has_per_parameter_decay_and_beta0_one():
  rule = built(update_rules.ALFA(random_init=True, dtype='float64'))
  np.testing.assert_array_equal(rule.beta0.numpy(), np.ones((3, 3)))
  assert [tuple(v.shape) for v in rule.beta_pp.values()] == list(SHAPES.values())
  params, grads = params_and_grads()
  new, info = rule.update(params, grads, 0)
  b = info['beta'].numpy()
  a = info['alpha'].numpy()
  for l, name in enumerate(SHAPES):
    decay = rule.beta_pp[name].numpy() * b[l]
    np.testing.assert_allclose(new[name].numpy(),
                               (1 - decay) * params[name].numpy() - a[l] * grads[name].numpy(),
                               rtol=1e-12)


@pytest.mark.parametrize('mode,shape', [('adaptive', (3, 3)), ('per_layer_per_step', (3, 3)),
                                        ('per_layer', (3,)), ('per_step', (3,)),
                                        ('constant', None)])
def test_hyperparameter_modes(mode, shape):
  rule = built(update_rules.ALFA(alpha_mode=mode, dtype='float64'))
  assert (getattr(rule.alpha0, 'shape', None) and tuple(rule.alpha0.shape)) == shape
  params, grads = params_and_grads()
  _, info = rule.update(params, grads, 2)
  if mode == 'adaptive':
    assert 'alpha_hat' in info
  else:
    assert 'alpha_hat' not in info
    np.testing.assert_allclose(info['alpha'].numpy(), np.full(3, 0.01))


def test_beta_off_and_alpha_only_generation():
  rule = built(update_rules.ALFA(beta_mode='off', dtype='float64'))
  assert not hasattr(rule.beta0, 'shape')
  assert rule.g_phi.w2.shape == (6, 3)  # generates alpha only
  params, grads = params_and_grads()
  _, info = rule.update(params, grads, 0)
  np.testing.assert_array_equal(info['beta'].numpy(), np.zeros(3))


@pytest.mark.parametrize('state,width', [('both', 6), ('weights', 3), ('gradients', 3)])
def test_learning_state_ablation(state, width):
  rule = built(update_rules.ALFA(learning_state=state, dtype='float64'))
  assert rule.g_phi.w1.shape == (width, width)
  params, grads = params_and_grads()
  _, info = rule.update(params, grads, 0)
  means = {'weights': [params[k].numpy().mean() for k in SHAPES],
           'gradients': [grads[k].numpy().mean() for k in SHAPES]}
  expected = (means['weights'] + means['gradients'] if state == 'both' else means[state])
  np.testing.assert_allclose(info['learning_state'].numpy(), expected, rtol=1e-12)


def test_evaluation_steps_beyond_training_reuse_the_last_multipliers():
  rule = built(update_rules.ALFA(alpha_mode='per_layer_per_step', beta_mode='off',
                                 dtype='float64'))
  rule.alpha0.assign(np.arange(9.0).reshape(3, 3))
  params, grads = params_and_grads()
  _, late = rule.update(params, grads, 7)
  np.testing.assert_array_equal(late['alpha'].numpy(), [2.0, 5.0, 8.0])


def test_per_step_learning_rates_rule():
  rule = built(update_rules.PerStepLearningRates(alpha_init=0.1, dtype='float64'))
  rule.alpha.assign(np.array([[0.1, 0.2, 0.3]] * 3))
  params, grads = params_and_grads()
  new, _ = rule.update(params, grads, 1)
  for name in SHAPES:
    np.testing.assert_allclose(new[name].numpy(),
                               params[name].numpy() - 0.2 * grads[name].numpy())


def test_invalid_switches_are_rejected_with_their_names():
  with pytest.raises(ValueError, match='alpha_mode'):
    update_rules.ALFA(alpha_mode='off')
  with pytest.raises(ValueError, match='learning_state'):
    update_rules.ALFA(learning_state='momentum')
  with pytest.raises(ValueError, match='random_init'):
    update_rules.ALFA(random_init=True, beta_mode='off')
