"""Inner-loop update rules: given theta_{i,j}, its gradient and the step j, the new parameters.

Symbols (paper section 3; ``../shared`` reference notes):
  theta_{i,j}  inner-loop parameters of task i after j steps (theta_0: the initialisation).
  alpha        learning rate; beta: weight-decay coefficient of the update.
  tau_{i,j}    learning state: layer-wise means of the weights and of their gradients.
  g_phi        the hyperparameter generator, an MLP with weights phi: tau -> (alpha_hat, beta_hat).
  alpha0, beta0  meta-learned per-layer, per-step post-multipliers of the generated values.

Every rule is a Keras layer holding only its own meta-parameters. It is built once with
``rule.build_state(param_shapes, num_steps, rng)``: the ordered shapes of the adapted tensors
(N "layers": weights and biases count separately) and S = num_steps (learners call it;
``inner_loop.adapt`` builds an unbuilt rule itself, seeded with 0). Then, per task,
``rule.initialize(params, grads) -> (theta_{i,0}, diagnostics)`` maps theta_0 to the task's
starting point (only when ``needs_initial_gradient``; identity otherwise) and
``rule.update(params, grads, step) -> (new_params, diagnostics)`` runs inner step j = step.
Evaluation may run more steps than training: steps >= num_steps reuse the last step's
per-step meta-parameters.
"""
import collections
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from alfa_tf import weights

Params = 'collections.OrderedDict[str, tf.Tensor]'


class UpdateRule(tf.keras.layers.Layer):
  """Base class. ``needs_initial_gradient``: call ``initialize`` before the first step, with
  the support-loss gradient at theta_0. ``param_names`` is None until ``build_state``."""

  needs_initial_gradient = False
  param_names = None

  def build_state(self, param_shapes: Dict[str, Tuple[int, ...]], num_steps: int,
                  rng: np.random.Generator) -> None:
    """Creates the rule's meta-parameters for these adapted tensors and S = num_steps."""
    self.param_names = tuple(param_shapes)
    self.param_shapes = dict(param_shapes)
    self.num_steps = num_steps
    self._create_weights(rng)
    self.built = True

  def _create_weights(self, rng: np.random.Generator) -> None:
    """Subclasses add their weights here."""

  def step_index(self, step: int) -> int:
    """Index into per-step meta-parameters: later evaluation steps reuse the last one."""
    return min(step, self.num_steps - 1)

  def initialize(self, params, grads):
    """(theta_{i,0}, diagnostics): the task's starting point from theta_0 and the support-loss
    gradient there (identity, no diagnostics, unless overridden)."""
    del grads
    return params, {}

  def update(self, params, grads, step: int):
    """(theta_{i,j+1}, diagnostics) from theta_{i,j}, its gradient and j = ``step``."""
    raise NotImplementedError


class SGD(UpdateRule):
  """MAML's inner step (Eq. 1): theta <- theta - alpha * grad, alpha a fixed constant."""

  def __init__(self, alpha: float = 0.01, **kwargs):
    super().__init__(**kwargs)
    self.alpha = alpha

  def update(self, params, grads, step):
    del step
    new = collections.OrderedDict(
        (name, theta - self.alpha * grads[name]) for name, theta in params.items())
    return new, {}


class PerStepLearningRates(UpdateRule):
  """Learned per-layer, per-step learning rates (MAML++'s LSLR, Meta-SGD per layer):
  theta_l <- theta_l - alpha[l, j] * grad_l, alpha meta-learned, initialised to ``alpha_init``.
  """

  def __init__(self, alpha_init: float = 0.01, **kwargs):
    super().__init__(**kwargs)
    self.alpha_init = alpha_init

  def _create_weights(self, rng):
    self.alpha = weights.add_weight_from_value(
        self, 'alpha', np.full((len(self.param_names), self.num_steps), self.alpha_init))

  def update(self, params, grads, step):
    rates = tf.unstack(self.alpha[:, self.step_index(step)])
    new = collections.OrderedDict(
        (name, params[name] - rate * grads[name]) for name, rate in zip(self.param_names, rates))
    return new, {'alpha': tf.stack(rates)}


class HyperparameterGenerator(tf.keras.layers.Layer):
  """g_phi (Eq. 5, section 3.3): Linear(d, d) -> ReLU -> Linear(d, out), no output activation.

  The hidden width equals the input width d (2N for the full learning state), as in the
  reference; weights and biases start from PyTorch's default Linear initialisation.
  """

  def __init__(self, num_inputs: int, num_outputs: int, rng: np.random.Generator, **kwargs):
    super().__init__(**kwargs)
    w1, b1 = weights.pytorch_linear_init(rng, num_inputs, num_inputs)
    w2, b2 = weights.pytorch_linear_init(rng, num_inputs, num_outputs)
    self.w1 = weights.add_weight_from_value(self, 'w1', w1)
    self.b1 = weights.add_weight_from_value(self, 'b1', b1)
    self.w2 = weights.add_weight_from_value(self, 'w2', w2)
    self.b2 = weights.add_weight_from_value(self, 'b2', b2)
    self.built = True

  def call(self, tau):
    """tau: [d] learning state -> [out] generated hyperparameters."""
    hidden = tf.nn.relu(tf.linalg.matvec(self.w1, tau, transpose_a=True) + self.b1)
    return tf.linalg.matvec(self.w2, hidden, transpose_a=True) + self.b2


# How a hyperparameter (alpha or beta) of ALFA is obtained (the ablations of Table 6):
#   'adaptive'            generated by g_phi, times a meta-learned post-multiplier [N, S] (ALFA)
#   'per_layer_per_step'  meta-learned value per layer and step [N, S] (MAML++ / "fixed")
#   'per_layer'           meta-learned value per layer [N], shared by all steps
#   'per_step'            meta-learned value per step [S], shared by all layers
#   'constant'            the initial value, not learned
#   'off'                 (beta only) no weight decay
HYPERPARAMETER_MODES = ('adaptive', 'per_layer_per_step', 'per_layer', 'per_step', 'constant',
                        'off')
LEARNING_STATES = ('both', 'weights', 'gradients')


class ALFA(UpdateRule):
  """ALFA's update (Eqs. 4-7) as the authors implemented it, per tensor l at step j:

      theta_l <- (1 - beta_hat_l * beta0[l, j]) * theta_l - alpha_hat_l * alpha0[l, j] * grad_l

  with (alpha_hat, beta_hat) = g_phi(tau), tau = [mean(theta_l) for l] + [mean(grad_l) for l].
  The weight means are differentiable; the gradient means are a constant (stop_gradient).
  No squashing: generated values and effective rates may be negative.

  Args:
    alpha_init: initial alpha0 (the inner learning rate, 0.01).
    beta_init: initial beta0 (weight decay 5e-4 times the rate: 5e-6); 1.0 by default with
      ``random_init``.
    random_init: the ALFA + Random-init variant: a meta-learned per-parameter weight decay
      beta_pp (same shape as each tensor, init ``beta_pp_init``) multiplies the decay:
      theta <- (1 - beta_pp * beta_hat * beta0[l, j]) * theta - alpha_hat * alpha0[l, j] * grad.
    alpha_mode, beta_mode: one of HYPERPARAMETER_MODES (Table 6 ablations).
    learning_state: 'both', 'weights' or 'gradients': what g_phi sees (Table 5).
    l2f: ALFA + L2F: also attenuate theta_0 per task (``L2FAttenuation``); its task
      embedding stays differentiable, in both orders, as in the authors' code.
    l2f_detach_embedding: treat L2F's task embedding as a constant instead (no second
      derivatives of the support loss in first-order runs; not the authors' behaviour).
  """

  def __init__(self, alpha_init: float = 0.01, beta_init: float = None,
               random_init: bool = False, beta_pp_init: float = 5e-6,
               alpha_mode: str = 'adaptive', beta_mode: str = 'adaptive',
               learning_state: str = 'both', l2f: bool = False,
               l2f_detach_embedding: bool = False, **kwargs):
    super().__init__(**kwargs)
    if alpha_mode not in HYPERPARAMETER_MODES[:-1]:
      raise ValueError(f'alpha_mode must be one of {HYPERPARAMETER_MODES[:-1]}, '
                       f'got {alpha_mode!r}.')
    if beta_mode not in HYPERPARAMETER_MODES:
      raise ValueError(f'beta_mode must be one of {HYPERPARAMETER_MODES}, got {beta_mode!r}.')
    if learning_state not in LEARNING_STATES:
      raise ValueError(f'learning_state must be one of {LEARNING_STATES}, '
                       f'got {learning_state!r}.')
    if random_init and beta_mode == 'off':
      raise ValueError('random_init needs a weight-decay term: beta_mode cannot be "off".')
    self.alpha_init = alpha_init
    self.beta_init = (1.0 if random_init else 5e-6) if beta_init is None else beta_init
    self.random_init, self.beta_pp_init = random_init, beta_pp_init
    self.alpha_mode, self.beta_mode = alpha_mode, beta_mode
    self.learning_state, self.l2f = learning_state, l2f
    self.l2f_detach_embedding = l2f_detach_embedding
    self.needs_initial_gradient = l2f

  @property
  def _generated(self):
    """Which hyperparameters g_phi generates, in output order."""
    return [h for h, mode in (('alpha', self.alpha_mode), ('beta', self.beta_mode))
            if mode == 'adaptive']

  def _create_weights(self, rng):
    n, s = len(self.param_names), self.num_steps
    shapes = {'adaptive': (n, s), 'per_layer_per_step': (n, s), 'per_layer': (n,),
              'per_step': (s,)}
    for symbol, mode, init in (('alpha0', self.alpha_mode, self.alpha_init),
                               ('beta0', self.beta_mode, self.beta_init)):
      value = (weights.add_weight_from_value(self, symbol, np.full(shapes[mode], init))
               if mode in shapes else (init if mode == 'constant' else 0.0))
      setattr(self, symbol, value)
    if self._generated:
      width = n if self.learning_state != 'both' else 2 * n
      self.g_phi = HyperparameterGenerator(width, n * len(self._generated), rng,
                                           dtype=self.dtype, name='g_phi')
    if self.random_init:
      self.beta_pp = weights.ParameterSet(
          collections.OrderedDict((name, np.full(self.param_shapes[name], self.beta_pp_init))
                                  for name in self.param_names),
          dtype=self.dtype, name='beta_pp')
    if self.l2f:
      self.attenuation = L2FAttenuation(n, rng, self.l2f_detach_embedding, dtype=self.dtype,
                                        name='l2f_attenuation')

  def _multiplier(self, value, mode, j):
    """The meta-learned factor of every tensor at step j, as a [N] tensor."""
    n = len(self.param_names)
    if mode in ('adaptive', 'per_layer_per_step'):
      return value[:, j]
    if mode == 'per_layer':
      return tf.convert_to_tensor(value)
    if mode == 'per_step':
      return tf.fill([n], value[j])
    return tf.fill([n], tf.constant(value, self.dtype))

  def learning_state_of(self, params, grads):
    """tau_{i,j}: layer means of the weights (differentiable), then of the gradients (not)."""
    weight_means = tf.stack([tf.reduce_mean(params[name]) for name in self.param_names])
    grad_means = tf.stop_gradient(
        tf.stack([tf.reduce_mean(grads[name]) for name in self.param_names]))
    return {'both': lambda: tf.concat([weight_means, grad_means], 0),
            'weights': lambda: weight_means,
            'gradients': lambda: grad_means}[self.learning_state]()

  def initialize(self, params, grads):
    """ALFA + L2F: gamma * theta_0 (``L2FAttenuation.attenuate``); theta_0 otherwise."""
    if not self.l2f:
      return params, {}
    return self.attenuation.attenuate(params, grads, self.param_names)

  def update(self, params, grads, step):
    j = self.step_index(step)
    diagnostics = {}
    hats = {}
    if self._generated:
      tau = self.learning_state_of(params, grads)
      generated = tf.split(self.g_phi(tau), len(self._generated))
      hats = dict(zip(self._generated, generated))
      diagnostics['learning_state'] = tau
      diagnostics.update({f'{h}_hat': v for h, v in hats.items()})
    alpha = self._multiplier(self.alpha0, self.alpha_mode, j)
    alpha = alpha * hats['alpha'] if 'alpha' in hats else alpha
    beta = self._multiplier(self.beta0, self.beta_mode, j)
    beta = beta * hats['beta'] if 'beta' in hats else beta
    diagnostics.update(alpha=alpha, beta=beta)
    new = collections.OrderedDict()
    for name, a, b in zip(self.param_names, tf.unstack(alpha), tf.unstack(beta)):
      decay = self.beta_pp[name] * b if self.random_init else b
      new[name] = (1.0 - decay) * params[name] - a * grads[name]
    return new, diagnostics


class L2FAttenuation(tf.keras.layers.Layer):
  """L2F's task-conditioned attenuation of theta_0 (Baik et al., CVPR 2020), for ALFA + L2F.

  The task embedding is e = [mean(grad_l) for l], the layer means of the support-loss gradient
  at the unattenuated theta_0; gamma = sigmoid(Linear(N, N)(ReLU(Linear(N, N)(e)))), one
  scalar per adapted tensor, and the task starts from theta_0'[l] = gamma_l * theta_0[l].

  As in the authors' code, e is differentiable (its gradient is taken under the outer tape,
  in first- and second-order runs alike): the meta-gradient reaches theta_0 and BatchNorm's
  scale/offset also through e -> gamma, which takes second derivatives of the support loss
  once per task. ``detach_embedding`` makes e a constant instead.
  """

  def __init__(self, num_tensors: int, rng: np.random.Generator,
               detach_embedding: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.net = HyperparameterGenerator(num_tensors, num_tensors, rng, dtype=self.dtype,
                                       name='attenuator')
    self.detach_embedding = detach_embedding
    self.built = True

  def attenuate(self, params, grads, names):
    """({name: gamma_l * theta_l} for the adapted tensors ``names``, diagnostics): the
    diagnostics are 'embedding' (e, [N]) and 'gamma' ([N])."""
    embedding = tf.stack([tf.reduce_mean(grads[name]) for name in names])
    if self.detach_embedding:
      embedding = tf.stop_gradient(embedding)
    gamma = tf.sigmoid(self.net(embedding))
    attenuated = collections.OrderedDict(
        (name, g * params[name]) for name, g in zip(names, tf.unstack(gamma)))
    return attenuated, {'embedding': embedding, 'gamma': gamma}
