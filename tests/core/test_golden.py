"""Agreement with the authors' PyTorch ALFA code, tensor by tensor, in float64.

For MAML, ALFA+MAML and ALFA+Random, first and second order: support losses and logits per
step, adapted weights after every step, the support gradient at theta_0, g_phi's input and
outputs, query logits and losses, the meta-loss and every meta-gradient, to 1e-9 of each
tensor's scale.
"""
import numpy as np
import pytest
import tensorflow as tf

import alfa_tf
from tests.core import golden as G

VARIANTS = [('maml', False, False), ('alfa_maml', True, False), ('alfa_random', True, True)]


@pytest.mark.parametrize('order', ['second', 'first'])
@pytest.mark.parametrize('variant,alfa,random_init', VARIANTS)
def test_matches_reference(variant, alfa, random_init, order):
  ref = G.load(f'{variant}_{order}')
  learner = G.build_learner(ref, alfa, random_init, first_order=(order == 'first'))
  targets = G.meta_parameter_targets(learner, alfa, random_init)
  with tf.GradientTape() as tape:
    outs = [learner.episode_output(ep) for ep in G.episodes(ref)]
    loss = tf.add_n([o.query_loss for o in outs]) / len(outs)
  grads = tape.gradient(loss, {k: v for k, (v, _) in targets.items()})

  G.assert_close('loss', loss, ref['loss'])
  for t, out in enumerate(outs):
    adaptation = out.adaptation
    G.assert_close(f'support_loss[{t}]', tf.stack(adaptation.losses), ref['support_loss'][t])
    G.assert_close(f'query_logits[{t}]', out.query_logits, ref['query_logits'][t])
    G.assert_close(f'query_loss[{t}]', out.query_loss, ref['query_loss'][t])
    if alfa:
      for key, ours in (('embedding', 'learning_state'), ('alpha_hat', 'alpha_hat'),
                        ('beta_hat', 'beta_hat')):
        G.assert_close(f'{key}[{t}]', tf.stack([d[ours] for d in adaptation.diagnostics]),
                       ref[key][t])
  first = outs[0].adaptation
  G.assert_close('task0/support_logits', tf.stack(first.aux), ref['task0/support_logits'])
  for torch_name, ours in G.INNER:
    G.assert_close(f'task0/adapted/{torch_name}',
                   [G.to_torch_layout(p[ours]) for p in first.trajectory],
                   ref[f'task0/adapted/{torch_name}'])
    G.assert_close(f'task0/support_grad_step0/{torch_name}',
                   G.to_torch_layout(first.grads[0][ours]),
                   ref[f'task0/support_grad_step0/{torch_name}'])

  for key, (_, to_reference_layout) in targets.items():
    reference = ref[key]
    ours = to_reference_layout(grads[key].numpy())
    if reference.shape == (learner.num_steps + 1,):
      # alpha0/beta0 have S+1 entries in the reference; the last is never used.
      assert abs(reference[-1]) == 0.0, key
      reference = reference[:-1]
    G.assert_close(key, ours, reference)


def test_every_meta_learned_tensor_is_compared():
  """The comparison above covers exactly what the reference's Adam updates."""
  for variant, alfa, random_init in VARIANTS:
    ref = G.load(f'{variant}_second')
    learner = G.build_learner(ref, alfa, random_init, first_order=False)
    targets = G.meta_parameter_targets(learner, alfa, random_init)
    # BatchNorm running statistics are listed but never used (no gradient): not ours.
    expected = {f'grad/{name}' for name in ref['meta_learned_names'] if 'running_' not in name}
    assert set(targets) == expected, variant
    assert len(learner.trainable_variables) == len({id(v) for v, _ in targets.values()})


def test_flatten_order_matches_reference_at_32px():
  """At 32x32 the last feature map is 2x2: features are flattened in (C, H, W) order."""
  ref = G.load('aux_flatten_32px')
  learner = G.build_learner(ref, alfa=False, random_init=False, first_order=True,
                            image_size=32)
  theta, fixed = learner._read_theta0()
  images = tf.constant(ref['x'].transpose(0, 2, 3, 1))
  labels = tf.constant(ref['y'])
  loss, logits, grads = alfa_tf.inner_loop.gradients(
      lambda p: _loss_and_logits(learner, {**fixed, **p}, images, labels), theta)
  G.assert_close('logits', logits, ref['logits'])
  G.assert_close('loss', loss, ref['loss'])
  for torch_name, ours in G.INNER:
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
