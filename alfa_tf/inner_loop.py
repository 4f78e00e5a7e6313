"""The inner loop (Algorithm 1, lines 4-9): S update steps of an ``UpdateRule`` on a task.

Second order: the gradient of each step is computed under ``tf.GradientTape`` while any outer
tape keeps recording, so the outer (meta) gradient flows through it (Hessian-vector products).
First order: the inner gradients are held constant (``tf.stop_gradient``); the outer gradient
still flows through every other path of the update (the (1 - beta) * theta term, and g_phi's
dependence on the weight means, phi, alpha0 and beta0).

One gradient computation per step: g_phi receives the stop-gradient of the same gradient the
update uses. Only TensorFlow ops and ``tf.GradientTape`` are used, so ``adapt`` runs eagerly,
inside ``tf.function`` and in TF1 graph mode.
"""
import collections
from typing import Any, Callable, List, NamedTuple, Tuple

import tensorflow as tf

from alfa_tf.update_rules import UpdateRule

# loss_fn(params) -> (scalar loss, auxiliary output such as logits)
LossFn = Callable[['collections.OrderedDict[str, tf.Tensor]'], Tuple[tf.Tensor, Any]]


class Adaptation(NamedTuple):
  """What ``adapt`` returns.

  params: theta_{i,S}, the adapted parameters.
  trajectory: theta_{i,1} .. theta_{i,S}, the parameters after each step.
  losses: the loss at theta_{i,j} before step j, for j = 0..S-1.
  grads: the gradient of that loss at theta_{i,j} (as the update used it).
  aux: the loss function's auxiliary output at each of those points.
  diagnostics: the rule's per-step diagnostics (e.g. ALFA's alpha, beta, alpha_hat, beta_hat).
  """
  params: 'collections.OrderedDict[str, tf.Tensor]'
  trajectory: List['collections.OrderedDict[str, tf.Tensor]']
  losses: List[tf.Tensor]
  grads: List['collections.OrderedDict[str, tf.Tensor]']
  aux: List[Any]
  diagnostics: List[dict]


def gradients(loss_fn: LossFn, params, check_finite: bool = True, step: int = 0,
              loss_scale: float = 1.0):
  """Returns (loss, aux, grads) of ``loss_fn`` at ``params`` (an ordered name -> tensor map).

  ``loss_scale``: the gradient is taken of ``loss_scale * loss`` and divided by it afterwards,
  so that with a float16 network small backpropagated values do not flush to zero (static
  loss scaling). The returned gradient is that of ``loss`` either way.
  """
  names = list(params)
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch([params[name] for name in names])
    loss, aux = loss_fn(params)
    if check_finite:
      loss = tf.debugging.check_numerics(
          loss, f'Non-finite inner-loop (support) loss at inner step {step}')
    scaled = loss if loss_scale == 1.0 else loss * loss_scale
  grads = tape.gradient(scaled, [params[name] for name in names],
                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
  if loss_scale != 1.0:
    grads = [g / loss_scale for g in grads]
  if check_finite:  # Also the gradients: max-pooling can turn a NaN into a finite loss.
    grads = [tf.debugging.check_numerics(
        g, f'Non-finite inner-loop (support) gradient of {name} at inner step {step}')
             for name, g in zip(names, grads)]
  return loss, aux, collections.OrderedDict(zip(names, grads))


def adapt(params, loss_fn: LossFn, rule: UpdateRule, num_steps: int,
          first_order: bool = False, check_finite: bool = True,
          loss_scale: float = 1.0) -> Adaptation:
  """Runs ``num_steps`` steps of ``rule`` from ``params`` (theta_{i,0}) on ``loss_fn``.

  Args:
    params: ordered name -> tensor mapping of the adapted tensors (tensors, not variables:
      read variables with ``tf.convert_to_tensor`` so an outer tape sees the read).
    loss_fn: params -> (support loss, aux).
    rule: the update rule (its meta-parameters are read inside, so an outer tape records them).
    num_steps: S; may exceed the rule's training steps at evaluation.
    first_order: hold the inner gradients constant.
    check_finite: raise ``tf.errors.InvalidArgumentError`` naming the step (and the tensor)
      when the support loss or its gradient is NaN or infinite.
    loss_scale: static loss scale of every inner gradient (see ``gradients``).
  """
  params = collections.OrderedDict(params)
  if rule.needs_initial_gradient:
    _, _, grads = gradients(loss_fn, params, check_finite, loss_scale=loss_scale)
    params = rule.initialize(params, _maybe_stop(grads, True))
  trajectory, losses, all_grads, auxes, diagnostics = [], [], [], [], []
  for step in range(num_steps):
    loss, aux, grads = gradients(loss_fn, params, check_finite, step, loss_scale)
    grads = _maybe_stop(grads, first_order)
    params, info = rule.update(params, grads, step)
    for record, value in ((trajectory, params), (losses, loss), (all_grads, grads),
                          (auxes, aux), (diagnostics, info)):
      record.append(value)
  return Adaptation(params, trajectory, losses, all_grads, auxes, diagnostics)


def _maybe_stop(grads, stop: bool):
  if not stop:
    return grads
  return collections.OrderedDict((name, tf.stop_gradient(g)) for name, g in grads.items())
