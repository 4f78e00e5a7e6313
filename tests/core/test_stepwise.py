"""The stepwise API: ``task = learner.adapt(...)``, ``task(query_images)``, the outer step
under the caller's own tape; the same numbers as ``episode_output`` and ``meta_gradients``."""
import numpy as np
import pytest
import tensorflow as tf

import alfa_tf
from tests.core.test_learners import SHAPE, make_episode, small_backbone


def learner_of(cls=alfa_tf.ALFALearner, **kwargs):
  return cls(small_backbone(), 3, SHAPE, num_steps=2, dtype='float64', **kwargs)


@pytest.mark.parametrize('head,query_bn', [('linear', 'own'), ('proto', 'support')])
def test_task_logits_and_loss_are_the_episodes(head, query_bn):
  learner = learner_of(head=head, query_bn=query_bn)
  episode = make_episode()
  task = learner.adapt(episode['support_images'], episode['support_labels'])
  out = learner.episode_output(episode)
  np.testing.assert_array_equal(task(episode['query_images']).numpy(),
                                out.query_logits.numpy())
  np.testing.assert_array_equal(
      task.loss(episode['query_images'], episode['query_labels']).numpy(),
      out.query_loss.numpy())
  for name, value in out.adaptation.params.items():
    np.testing.assert_array_equal(task.params[name].numpy(), value.numpy())
  assert len(task.losses) == 2


def test_outer_step_under_the_callers_tape_is_the_meta_gradient():
  learner = learner_of()
  batch = [make_episode(0), make_episode(1)]
  with tf.GradientTape() as tape:
    losses = []
    for episode in batch:
      task = learner.adapt(episode['support_images'], episode['support_labels'])
      losses.append(task.loss(episode['query_images'], episode['query_labels']))
    loss = tf.add_n(losses) / len(losses)
  grads = tape.gradient(loss, learner.trainable_variables)
  expected_loss, expected = learner.meta_gradients(batch)
  np.testing.assert_allclose(float(loss), float(expected_loss), rtol=1e-12)
  for variable, grad, want in zip(learner.trainable_variables, grads, expected):
    if grad is None:  # Unconnected (conv biases before BatchNorm): zero in meta_gradients.
      assert not np.any(want.numpy()), variable.name
    else:
      np.testing.assert_allclose(grad.numpy(), want.numpy(), rtol=1e-9, atol=1e-15)


def test_alpha_and_beta_are_named_by_tensor_per_step():
  learner = learner_of()
  episode = make_episode()
  task = learner.adapt(episode['support_images'], episode['support_labels'], num_steps=3)
  assert len(task.losses) == 3 and len(task.adaptation.trajectory) == 3
  names = list(learner.update_rule.param_names)
  for symbol in ('alpha', 'beta', 'alpha_hat', 'beta_hat'):
    values = task.per_tensor(symbol)
    assert list(values) == names
    for layer, name in enumerate(names):
      assert values[name].shape == (3,)
      for step, diagnostics in enumerate(task.adaptation.diagnostics):
        assert float(values[name][step]) == float(diagnostics[symbol][layer])
  assert task.alpha.keys() == task.beta.keys()
  # Rules without generated rates report none.
  maml = learner_of(alfa_tf.MAMLLearner)
  assert maml.adapt(episode['support_images'], episode['support_labels']).alpha == {}


def test_adapt_runs_compiled_and_checks_its_inputs():
  learner = learner_of()
  episode = make_episode()

  @tf.function
  def logits(support_images, support_labels, query_images):
    return learner.adapt(support_images, support_labels)(query_images)

  np.testing.assert_allclose(
      logits(episode['support_images'], episode['support_labels'], episode['query_images']),
      learner.episode_output(episode).query_logits.numpy(), rtol=1e-10)
  task = learner.adapt(episode['support_images'], episode['support_labels'])
  bad = episode['query_images'].copy()
  bad[0, 0, 0, 0] = np.nan
  with pytest.raises(tf.errors.InvalidArgumentError, match='query_images contain NaN'):
    task(bad)
