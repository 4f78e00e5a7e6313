"""Agreement with the authors' PyTorch ALFA code, tensor by tensor, in float64.

For MAML, ALFA+MAML, ALFA+Random and ALFA+L2F, first and second order, every value a file
holds: support losses and logits per step, adapted weights after every step, the support
gradient at the first step, g_phi's input and outputs, L2F's support loss at theta_0, task
embedding, gamma and attenuated theta_0', query logits and losses, the meta-loss and every
meta-gradient, to 1e-9 of each tensor's scale. Each file's configuration and inner-loop
tensors are read from the file (``golden.read_config``, ``golden.inner_tensors``).
"""
import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf

import alfa_tf
from tests.core import golden as G

FILES = [f'{variant}_{order}' for variant in ('maml', 'alfa_maml', 'alfa_random', 'alfa_l2f')
         for order in ('second', 'first')]
# Inputs and metadata; 'accuracy' is informational (it follows from the query logits).
NOT_COMPARED = ('config_json', 'dtype', 'torch_version', 'meta_learned_names', 'inner_keys',
                'x_support', 'y_support', 'x_query', 'y_query', 'accuracy')
# Per-step diagnostics of the ALFA rule under the reference's names.
ALFA_DIAGNOSTICS = (('embedding', 'learning_state'), ('alpha_hat', 'alpha_hat'),
                    ('beta_hat', 'beta_hat'))
L2F_DIAGNOSTICS = (('l2f_support_loss', 'loss'), ('l2f_embedding', 'embedding'),
                   ('l2f_gamma', 'gamma'))


def our_values(learner, ref, config):
  """{golden key: our value in the golden layout} for every value our meta-iteration has."""
  targets = G.meta_parameter_targets(learner, ref, config)
  with tf.GradientTape() as tape:
    outs = [learner.episode_output(ep) for ep in G.episodes(ref)]
    loss = tf.add_n([o.query_loss for o in outs]) / len(outs)
  grads = tape.gradient(loss, {k: v for k, (v, _) in targets.items()})
  per_task = lambda value: np.stack([value(o) for o in outs])
  values = {'loss': loss,
            'support_loss': per_task(lambda o: tf.stack(o.adaptation.losses)),
            'query_logits': per_task(lambda o: o.query_logits),
            'query_loss': per_task(lambda o: o.query_loss)}
  if config.alfa:
    for key, ours in ALFA_DIAGNOSTICS:
      values[key] = per_task(lambda o, k=ours: tf.stack([d[k] for d in o.adaptation.diagnostics]))
  if config.l2f:
    for key, ours in L2F_DIAGNOSTICS:
      values[key] = per_task(lambda o, k=ours: o.adaptation.init_diagnostics[k])
  for t, out in enumerate(outs):
    adaptation = out.adaptation
    values[f'task{t}/support_logits'] = tf.stack(adaptation.aux)
    for torch_name, ours in G.inner_tensors(ref):
      values[f'task{t}/adapted/{torch_name}'] = [G.to_torch_layout(p[ours])
                                                 for p in adaptation.trajectory]
      values[f'task{t}/support_grad_step0/{torch_name}'] = G.to_torch_layout(
          adaptation.grads[0][ours])
      if config.l2f:
        values[f'task{t}/attenuated/{torch_name}'] = G.to_torch_layout(
            adaptation.initial_params[ours])
  for key, (_, to_reference_layout) in targets.items():
    values[key] = to_reference_layout(grads[key].numpy())
  return values


def compared_keys(ref, config):
  """The golden keys to compare: all but inputs, metadata and initial parameters (and, for
  random init, the classifier's gradients, which the reference computes but does not use)."""
  unused = r'grad/classifier\.' if config.random_init else None
  return {key for key in ref if key not in NOT_COMPARED and not key.startswith('param/')
          and not (unused and re.match(unused, key))}


@pytest.mark.parametrize('name', FILES)
def test_matches_reference(name):
  ref = G.load(name)
  config = G.read_config(ref)
  values = our_values(G.build_learner(ref, config), ref, config)
  expected = compared_keys(ref, config)
  assert expected <= set(values), sorted(expected - set(values))
  for key in sorted(expected):
    G.assert_close(key, values[key], ref[key])


@pytest.mark.parametrize('name', FILES)
def test_configuration_is_read_from_the_file(name):
  ref = G.load(name)
  config = G.read_config(ref)
  variant, order = name.rsplit('_', 1)
  assert (config.alfa, config.random_init, config.l2f) == {
      'maml': (False, False, False), 'alfa_maml': (True, False, False),
      'alfa_random': (True, True, False), 'alfa_l2f': (True, False, True)}[variant]
  assert config.first_order == (order == 'first')
  assert (config.filters, config.image_shape, config.way, config.shot, config.queries,
          config.num_steps, config.num_tasks) == (8, (28, 28, 3), 5, 1, 3, 5, 2)


def test_alpha0_and_beta0_are_identified_by_name_not_shape():
  """With S = 4 inner steps, alpha0/beta0 (S + 1 entries) have the shape of the 5-way linear
  bias: the targets still map only names_alpha_dict / names_beta_dict to the rule."""
  ref = G.load('alfa_maml_second')
  config = dataclasses.replace(G.read_config(ref), num_steps=4)
  learner = G.build_learner(ref, config)
  targets = G.meta_parameter_targets(learner, ref, config)
  bias = targets['grad/classifier.layer_dict.linear.bias']
  assert bias[0] is learner.theta0['head.b']
  np.testing.assert_array_equal(bias[1](np.arange(5.0)), np.arange(5.0))
  alpha = targets['grad/inner_loop_optimizer.names_alpha_dict.layer_dict-linear-bias']
  assert alpha[0] is learner.update_rule.alpha0
  assert alpha[1](np.ones((10, 4))).shape == (5,)
  np.testing.assert_array_equal(learner.update_rule.alpha0.numpy(), np.full((10, 4), 0.01))


@pytest.mark.parametrize('variant', ['maml', 'alfa_maml', 'alfa_random', 'alfa_l2f'])
def test_every_meta_learned_tensor_is_compared(variant):
  """The comparison above covers exactly what the reference's Adam updates."""
  ref = G.load(f'{variant}_second')
  config = G.read_config(ref)
  learner = G.build_learner(ref, config)
  targets = G.meta_parameter_targets(learner, ref, config)
  # BatchNorm running statistics are listed but never used (no gradient): not ours.
  expected = {f'grad/{name}' for name in ref['meta_learned_names'] if 'running_' not in name}
  assert set(targets) == expected, variant
  assert len(learner.trainable_variables) == len({id(v) for v, _ in targets.values()})


def test_flatten_order_matches_reference_at_32px():
  """At 32x32 the last feature map is 2x2: features are flattened in (C, H, W) order."""
  ref = G.load('aux_flatten_32px')
  # The file holds the classifier only (its run's g_phi is not stored): a MAML learner.
  learner = G.build_learner(ref, dataclasses.replace(G.read_config(ref), alfa=False))
  theta, fixed = learner._read_theta0()
  images = tf.constant(ref['x'].transpose(0, 2, 3, 1))
  labels = tf.constant(ref['y'])
  loss, logits, grads = alfa_tf.inner_loop.gradients(
      lambda p: _loss_and_logits(learner, {**fixed, **p}, images, labels), theta)
  G.assert_close('logits', logits, ref['logits'])
  G.assert_close('loss', loss, ref['loss'])
  for torch_name, ours in G.inner_tensors(ref):
    G.assert_close(torch_name, G.to_torch_layout(grads[ours]),
                   ref[f'support_grad/{torch_name}'])


def _loss_and_logits(learner, params, images, labels):
  logits, _ = learner._outputs(params, images)
  return learner.loss_fn(logits, labels), logits


def test_alfa_and_random_init_forward_values_coincide_at_init():
  """At the reference's init (beta0 = 1, beta_pp = 5e-6 vs beta0 = 5e-6) both variants
  compute the same forward values; only the gradients differ."""
  a, b = G.load('alfa_maml_second'), G.load('alfa_random_second')
  np.testing.assert_array_equal(a['query_logits'], b['query_logits'])
