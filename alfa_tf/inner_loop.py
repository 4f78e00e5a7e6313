"""The inner loop (Algorithm 1, lines 4-9): S update steps of an ``UpdateRule`` on a task.

Second order: the gradient of each step is computed under ``tf.GradientTape`` while any outer
tape keeps recording, so the outer (meta) gradient flows through it (Hessian-vector products).
First order: the inner gradients are held constant (``tf.stop_gradient``); the outer gradient
still flows through every other path of the update (the (1 - beta) * theta term, and g_phi's
dependence on the weight means, phi, alpha0 and beta0).

One gradient computation per step: g_phi receives the stop-gradient of the same gradient the
update uses. A rule that ``needs_initial_gradient`` (ALFA + L2F) gets the support-loss
gradient at theta_0 first, never detached here: L2F's task embedding is differentiable in
both orders, as in the authors' code. Only TensorFlow ops and ``tf.GradientTape`` are used,
so ``adapt`` runs eagerly, inside ``tf.function`` and in TF1 graph mode.
"""
import collections
from typing import Any, Callable, List, NamedTuple, Tuple

import numpy as np
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
  diagnostics: the rule's per-step diagnostics (e.g. ALFA's alpha, beta, alpha_hat, beta_hat
    and learning_state, the input tau of g_phi).
  initial_params: theta_{i,0}, the point step 0 starts from: theta_0, or for ALFA + L2F the
    attenuated gamma * theta_0.
  init_diagnostics: for a rule that ``needs_initial_gradient``, 'loss' (the support loss at
    theta_0) and the rule's ``initialize`` diagnostics (L2F: 'embedding', 'gamma');
    empty otherwise.
  """
  params: 'collections.OrderedDict[str, tf.Tensor]'
  trajectory: List['collections.OrderedDict[str, tf.Tensor]']
  losses: List[tf.Tensor]
  grads: List['collections.OrderedDict[str, tf.Tensor]']
  aux: List[Any]
  diagnostics: List[dict]
  initial_params: 'collections.OrderedDict[str, tf.Tensor]'
  init_diagnostics: dict


def gradients(loss_fn: LossFn, params, check_finite: bool = True,
              where: str = 'inner step 0', loss_scale: float = 1.0):
  """Returns (loss, aux, grads) of ``loss_fn`` at ``params`` (an ordered name -> tensor map).

  ``where``: the point named by the ``check_finite`` errors.
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
          loss, f'Non-finite inner-loop (support) loss at {where}')
    scaled = loss if loss_scale == 1.0 else loss * loss_scale
  grads = tape.gradient(scaled, [params[name] for name in names],
                        unconnected_gradients=tf.UnconnectedGradients.ZERO)
  if loss_scale != 1.0:
    grads = [g / loss_scale for g in grads]
  if check_finite:  # Also the gradients: max-pooling can turn a NaN into a finite loss.
    grads = [tf.debugging.check_numerics(
        g, f'Non-finite inner-loop (support) gradient of {name} at {where}')
             for name, g in zip(names, grads)]
  return loss, aux, collections.OrderedDict(zip(names, grads))


def adapt(params, loss_fn: LossFn, rule: UpdateRule, num_steps: int,
          first_order: bool = False, check_finite: bool = True,
          loss_scale: float = 1.0) -> Adaptation:
  """Runs ``num_steps`` steps of ``rule`` from ``params`` (theta_0) on ``loss_fn``.

  Args:
    params: ordered name -> tensor mapping of the adapted tensors (variables and arrays are
      read with ``tf.convert_to_tensor`` here, a read that an outer tape records).
    loss_fn: params -> (support loss, aux).
    rule: the update rule (its meta-parameters are read inside, so an outer tape records them).
      An unbuilt rule is built here, for these tensors and S = ``num_steps``, as
      ``rule.build_state({name: shape}, num_steps, np.random.default_rng(0))``: the same rule
      and tensors always start from the same meta-parameters. Call ``build_state`` first for
      another seed or another S. A built rule must have been built for these names, in this
      order, and for their dtype.
    num_steps: S; may exceed the rule's training steps at evaluation.
    first_order: hold the inner gradients constant.
    check_finite: raise ``tf.errors.InvalidArgumentError`` naming the step (and the tensor)
      when the support loss or its gradient is NaN or infinite.
    loss_scale: static loss scale of every inner gradient (see ``gradients``).
  """
  params = collections.OrderedDict(
      (name, tf.convert_to_tensor(value)) for name, value in params.items())
  _build_or_check(rule, params, num_steps)
  init_diagnostics = {}
  if rule.needs_initial_gradient:
    loss, _, grads = gradients(loss_fn, params, check_finite, 'theta_0 (before inner step 0)',
                               loss_scale)
    params, info = rule.initialize(params, grads)
    init_diagnostics = dict(info, loss=loss)
  initial_params = params
  trajectory, losses, all_grads, auxes, diagnostics = [], [], [], [], []
  for step in range(num_steps):
    loss, aux, grads = gradients(loss_fn, params, check_finite, f'inner step {step}',
                                 loss_scale)
    grads = _maybe_stop(grads, first_order)
    params, info = rule.update(params, grads, step)
    for record, value in ((trajectory, params), (losses, loss), (all_grads, grads),
                          (auxes, aux), (diagnostics, info)):
      record.append(value)
  return Adaptation(params, trajectory, losses, all_grads, auxes, diagnostics, initial_params,
                    init_diagnostics)


def _build_or_check(rule: UpdateRule, params, num_steps: int) -> None:
  """Builds an unbuilt ``rule`` for ``params`` (seed 0); checks that a built one fits them."""
  names = tuple(params)
  if rule.param_names is None:
    unknown = [name for name, p in params.items() if not p.shape.is_fully_defined()]
    if unknown:
      raise ValueError(
          f'adapt cannot build the update rule: the shapes of {unknown} are not static. Call '
          f'rule.build_state(param_shapes, num_steps, np.random.default_rng(seed)) first, '
          f'with param_shapes an ordered {{name: shape}} of {list(names)}.')
    rule.build_state(
        collections.OrderedDict((name, tuple(p.shape.as_list())) for name, p in params.items()),
        num_steps, np.random.default_rng(0))
  elif rule.param_names != names:
    raise ValueError(f'The update rule was built for the tensors {list(rule.param_names)} but '
                     f'adapt got {list(names)}: pass the same names in the same order, or a '
                     f'new (unbuilt) rule.')
  wrong = [name for name, p in params.items() if p.dtype != tf.as_dtype(rule.dtype)]
  if rule.weights and wrong:
    raise ValueError(f'The update rule has dtype {rule.dtype} but {wrong} are '
                     f'{params[wrong[0]].dtype.name}: construct the rule with '
                     f'dtype={params[wrong[0]].dtype.name!r}.')


def _maybe_stop(grads, stop: bool):
  if not stop:
    return grads
  return collections.OrderedDict((name, tf.stop_gradient(g)) for name, g in grads.items())
