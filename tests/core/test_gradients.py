"""Meta-gradients against central finite differences, in float64 on a smooth network.

ALFA feeds g_phi the *stop-gradient* of the layer-mean gradients, and first-order MAML holds
the inner gradients constant; autodiff is meant to treat those values as constants. The
finite differences therefore evaluate the meta-loss with every ``tf.stop_gradient`` value
frozen at the unperturbed point (``FrozenStopGradients``); with that, second-order
meta-gradients of every meta-parameter (theta_0, phi, alpha0, beta0, beta_pp) and first-order
ones must both match to 1e-4. Freezing would also hide a detachment the method does not
prescribe, so L2F's differentiable task embedding is checked where nothing needs freezing.
"""
import numpy as np
import pytest
import tensorflow as tf

import alfa_tf

EPS = 1e-6
TOLERANCE = 1e-4
NOISE_FLOOR = 1e-9  # absolute: float64 round-off of the meta-loss divided by 2 * EPS


def smooth_learner(random_init=False, first_order=False, head='linear', **alfa_kwargs):
  """A softplus / average-pooling 4-CONV, with weight decay large enough to be measurable."""
  backbone = alfa_tf.Conv4(filters=4, num_blocks=2, activation='softplus', pooling='avg')
  alfa_kwargs = dict(dict(beta_init=0.05, beta_pp_init=0.05), **alfa_kwargs)
  return alfa_tf.ALFALearner(backbone, num_classes=3, input_shape=(8, 8, 3), num_steps=2,
                             random_init=random_init, first_order=first_order, head=head,
                             dtype='float64', seed=3, alfa_kwargs=alfa_kwargs)


def episodes(num=2, seed=0):
  rng = np.random.default_rng(seed)
  return [dict(support_images=rng.normal(size=(6, 8, 8, 3)),
               support_labels=np.repeat(np.arange(3), 2),
               query_images=rng.normal(size=(6, 8, 8, 3)),
               query_labels=np.repeat(np.arange(3), 2)) for _ in range(num)]


class FrozenStopGradients:
  """Stands in for ``tf.stop_gradient``: records its values on the first call sequence, then
  returns the recorded values (in call order) on every later evaluation."""

  def __init__(self):
    self.real, self.values, self.recording, self.position = tf.stop_gradient, [], True, 0

  def __call__(self, value, name=None):
    if self.recording:
      self.values.append(tf.constant(self.real(value).numpy()))
      return self.real(value)
    frozen = self.values[self.position]
    self.position += 1
    return frozen

  def replay(self):
    self.recording, self.position = False, 0


def finite_difference_errors(learner, batch, monkeypatch, num_directions=2, seed=1,
                             freeze=True):
  """{variable#k: (error, fd, autodiff)} along random directions of every meta-parameter;
  ``freeze``: with every stop-gradient value frozen (else the plain meta-loss)."""
  frozen = FrozenStopGradients()
  if freeze:
    monkeypatch.setattr(tf, 'stop_gradient', frozen)
  _, grads = learner.meta_gradients(batch)
  rng = np.random.default_rng(seed)
  errors = {}
  for var, grad in zip(learner.trainable_variables, grads):
    base = var.numpy()
    for k in range(num_directions):
      direction = rng.normal(size=base.shape)
      values = []
      for sign in (1, -1):
        var.assign(base + sign * EPS * direction)
        frozen.replay()
        values.append(float(learner.meta_loss(batch)))
      var.assign(base)
      fd = (values[0] - values[1]) / (2 * EPS)
      autodiff = float(np.sum(grad.numpy() * direction))
      error = abs(fd - autodiff)
      relative = 0.0 if error < NOISE_FLOOR else error / max(abs(fd), abs(autodiff))
      errors[f'{getattr(var, "path", var.name)}#{k}'] = (relative, fd, autodiff)
  return errors


def assert_match(errors, expected_names):
  names = ' '.join(errors)
  for expected in expected_names:
    assert expected in names, (expected, names)
  bad = {k: v for k, v in errors.items() if v[0] > TOLERANCE}
  assert not bad, bad


@pytest.mark.parametrize('first_order', [False, True])
def test_alfa_maml_meta_gradients_match_finite_differences(first_order, monkeypatch):
  errors = finite_difference_errors(smooth_learner(first_order=first_order), episodes(),
                                    monkeypatch)
  assert_match(errors, ('block0.w', 'bn_scale', 'head.w', 'alpha0', 'beta0', 'w1', 'b2'))


def test_alfa_random_meta_gradients_match_finite_differences(monkeypatch):
  errors = finite_difference_errors(smooth_learner(random_init=True), episodes(), monkeypatch)
  assert_match(errors, ('beta_pp/block0.w', 'beta_pp/head.b', 'alpha0', 'beta0', 'w1'))
  assert not any('block0.w#' in name and 'beta_pp' not in name for name in errors)


def test_proto_head_and_l2f_meta_gradients_match_finite_differences(monkeypatch):
  errors = finite_difference_errors(smooth_learner(head='proto', l2f=True), episodes(),
                                    monkeypatch, num_directions=1)
  assert_match(errors, ('block1.w', 'attenuator', 'alpha0'))


def l2f_only_learner(first_order, **alfa_kwargs):
  """ALFA + L2F where no detached value reaches the meta-loss: alpha fixed at 0 (the inner
  gradients, constant in first order, do not move theta) and g_phi sees only the weights
  (not the detached gradient means). What the inner loop still does: L2F's attenuation and
  the generated weight decay. The attenuator's first layer is scaled up so that gamma depends
  measurably on the embedding (the layer means of the gradients are small)."""
  learner = smooth_learner(first_order=first_order, l2f=True, alpha_mode='constant',
                           alpha_init=0.0, learning_state='weights', **alfa_kwargs)
  w1 = learner.update_rule.attenuation.net.w1
  w1.assign(30.0 * w1.numpy())
  return learner


@pytest.mark.parametrize('first_order', [False, True])
def test_l2f_task_embedding_is_differentiable_in_both_orders(first_order, monkeypatch):
  """As in the authors' code, the meta-gradient flows theta_0 and BatchNorm's scale/offset ->
  support gradient at theta_0 -> task embedding -> gamma, in first order too. Nothing is
  frozen here, so a detached embedding (or its gradient taken outside the outer tape) fails."""
  errors = finite_difference_errors(l2f_only_learner(first_order), episodes(), monkeypatch,
                                    freeze=False)
  assert_match(errors, ('block0.w', 'bn_scale', 'bn_offset', 'head.w', 'attenuator', 'beta0'))


def test_detached_l2f_embedding_is_an_option_the_check_above_rejects(monkeypatch):
  """``l2f_detach_embedding=True`` cuts that path: the same check finds the gradients of
  theta_0 and BatchNorm wrong (it would catch the detachment if it were the default)."""
  errors = finite_difference_errors(
      l2f_only_learner(first_order=True, l2f_detach_embedding=True), episodes(), monkeypatch,
      freeze=False)
  wrong = {name for name, (error, _, _) in errors.items() if error > 100 * TOLERANCE}
  assert any('bn_scale' in name for name in wrong) and any('block0.w' in name for name in wrong)
  assert not any('attenuator' in name for name in wrong), wrong


def test_first_and_second_order_differ_but_share_forward_values():
  batch = episodes(1)
  loss_1, grads_1 = smooth_learner(first_order=True).meta_gradients(batch)
  loss_2, grads_2 = smooth_learner(first_order=False).meta_gradients(batch)
  assert float(loss_1) == float(loss_2)
  assert max(np.max(np.abs(a.numpy() - b.numpy())) for a, b in zip(grads_1, grads_2)) > 1e-6
