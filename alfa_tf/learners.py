"""Learners: a backbone, a head and an update rule, meta-trained through the inner loop.

A learner is a Keras model whose weights are the meta-parameters: theta_0 (the backbone's and
the linear head's initial values, with BatchNorm scale/offset; with a ``KerasBackbone``, the
model's own variables), and the update rule's own (ALFA: phi, alpha0, beta0, and beta_pp for
random init). They are tracked, listed by ``summary()`` and saved by ``tf.train.Checkpoint``.

One episode (task T_i): theta_{i,0} = theta_0 (or, with the Proto-MAML head, theta_0 plus a
head initialised from the support prototypes), S inner steps on the support loss, then the
query logits at theta_{i,S}. The meta-objective (Eq. 2 / Eq. 6) is the mean over the
meta-batch of the query losses.

Usage (an episode is a dict: support_images [n, 84, 84, 3], support_labels [n] integers,
query_images, query_labels)::

    learner = alfa_tf.ALFALearner(alfa_tf.Conv4(filters=32), num_classes=5,
                                  input_shape=(84, 84, 3), num_steps=5)
    optimizer = tf.keras.optimizers.Adam(1e-3)
    out = learner.episode_output(episode)   # EpisodeOutput: query logits and loss, adaptation
    loss = learner.meta_update([episode, other_episode], optimizer)

or step by step, the outer step under the caller's tape::

    with tf.GradientTape() as tape:
      task = learner.adapt(support_images, support_labels)   # an AdaptedTask
      loss = task.loss(query_images, query_labels)            # from task(query_images)
    grads = tape.gradient(loss, learner.trainable_variables)
"""
import collections
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import tensorflow as tf

from alfa_tf import backbones as backbones_lib
from alfa_tf import inner_loop
from alfa_tf import keras_backbone
from alfa_tf import update_rules
from alfa_tf import weights

HEADS = ('linear', 'proto')
LOSSES = ('cross_entropy', 'mse')
QUERY_BN_MODES = ('own', 'support')
# Default static loss scale of the inner gradients of a float16 backbone: 2^10 lifts the
# backpropagated values of a mean loss over a few hundred examples well above float16's
# smallest normal (6e-5) while leaving room below its largest value (65504).
FLOAT16_INNER_LOSS_SCALE = 2.0 ** 10


class EpisodeOutput(NamedTuple):
  """query_logits: [n_query, num_classes] at theta_{i,S}; query_loss: their mean loss (None
  when no query labels were given); adaptation: the inner loop's ``Adaptation`` (support
  losses and logits per step, adapted parameters, the rule's diagnostics)."""
  query_logits: tf.Tensor
  query_loss: Optional[tf.Tensor]
  adaptation: inner_loop.Adaptation


class AdaptedTask:
  """One task after the inner loop (``GradientLearner.adapt``); call it on query images.

  ``task(images)``: logits (or regression outputs) [n, num_classes] at theta_{i,S};
  ``task.loss(images, labels)``: their mean loss (the learner's); both check their inputs as
  the learner does, and the query BatchNorm follows the learner's ``query_bn``.

  Attributes:
    params: theta_{i,S}, the adapted tensors by name (a Keras backbone's variable names,
      'head.w' and 'head.b').
    losses: the support loss before each inner step.
    alpha, beta: the rates the rule applied, ``{name: [steps] tensor}`` per adapted tensor
      (ALFA: alpha0 * alpha_hat and beta0 * beta_hat, Eq. 4-7 as the authors implemented them;
      learned per-step rates: alpha); empty for rules without them (MAML's fixed SGD).
    adaptation: the inner loop's full ``inner_loop.Adaptation`` (trajectory, gradients,
      support logits, every diagnostic of the rule).
  """

  def __init__(self, learner: 'GradientLearner', adaptation: inner_loop.Adaptation,
               final_params, moments, way):
    self.learner, self.adaptation, self.way = learner, adaptation, way
    self._final, self._moments = final_params, moments

  @property
  def params(self):
    return self.adaptation.params

  @property
  def losses(self) -> List[tf.Tensor]:
    return self.adaptation.losses

  def per_tensor(self, symbol: str) -> 'collections.OrderedDict[str, tf.Tensor]':
    """``{name: [steps]}`` of the rule's per-tensor diagnostic ``symbol`` ('alpha', 'beta',
    'alpha_hat', 'beta_hat'); empty if the rule does not report it."""
    steps = self.adaptation.diagnostics
    if not steps or symbol not in steps[0]:
      return collections.OrderedDict()
    values = tf.stack([d[symbol] for d in steps], axis=1)  # [tensors, steps]
    return collections.OrderedDict(zip(self.learner.update_rule.param_names,
                                       tf.unstack(values)))

  @property
  def alpha(self):
    return self.per_tensor('alpha')

  @property
  def beta(self):
    return self.per_tensor('beta')

  def logits_and_loss(self, images, labels=None):
    """(outputs at theta_{i,S}, their mean loss or None without ``labels``)."""
    learner = self.learner
    images, labels = learner._check_set('query', images, labels, self.way)  # pylint: disable=protected-access
    logits, _ = learner._outputs(self._final, images, self._moments, self.way)  # pylint: disable=protected-access
    return logits, None if labels is None else learner.loss_fn(logits, labels)

  def __call__(self, images):
    return self.logits_and_loss(images)[0]

  def loss(self, images, labels):
    return self.logits_and_loss(images, labels)[1]


class GradientLearner(tf.keras.Model):
  """Gradient-based meta-learner with any ``UpdateRule``.

  Args:
    backbone: a functional backbone (``alfa_tf.backbones``) or a Keras model in a
      ``KerasBackbone`` (built here; its variables are theta_0, tracked as ``keras_model``;
      ``learn_init=False`` sets them non-trainable).
    num_classes: logits per example (the way, or upstream's logit_dim with ``way`` masking;
      1 for regression).
    input_shape: shape of one example, e.g. (84, 84, 3) or (1,).
    update_rule: an unbuilt ``UpdateRule`` of the learner's dtype (the learner builds it).
    num_steps: inner steps S in training; ``eval_num_steps`` at evaluation (default S).
    first_order: hold inner gradients constant (fo-MAML, fo-Proto-MAML).
    head: 'linear' (meta-learned initial weights) or 'proto' (Proto-MAML: W = 2 * prototypes,
      b = -||prototype||^2 from the support features at theta_0, then adapted).
    query_bn: 'own' normalises the query set with its own batch statistics (ALFA reference),
      'support' with the support set's at theta_{i,S} (upstream Meta-Dataset).
    learn_init: meta-learn theta_0 (False: frozen at its seeded init, ALFA + Random).
    zero_head: start the linear head's weight at zero (upstream's zero_fc_layer).
    loss: 'cross_entropy' (classification) or 'mse' (regression).
    check_finite: fail with the inner step named when a support loss or gradient is not finite.
    check_inputs: check each episode's values in the graph, once per tensor: images finite,
      class labels whole numbers in range (regression targets finite), sets non-empty; a
      failure names the tensor ('support_images', 'query_labels', ...). Off, float class
      labels are cast to integers unchecked. XLA (``tf.function(jit_compile=True)``) has no
      kernels for these checks: turn both off. Shapes and dtypes are checked either way.
    seed: seeds the numpy draw of theta_0 and of the rule's meta-parameters.
    backbone_dtype: mixed precision, e.g. 'bfloat16' or 'float16': the backbone computes in
      it; meta-parameters, head, losses and the update rule stay in ``dtype``. (A Keras
      model's precision is its dtype policy instead.)
    inner_loss_scale: static scale of the support loss before each inner gradient (divided
      out after). Default: ``FLOAT16_INNER_LOSS_SCALE`` for a float16 backbone (whose
      backpropagated values would otherwise underflow), 1 otherwise. The outer gradient's
      scale is the optimizer's business (``tf.keras.mixed_precision.LossScaleOptimizer``).
  """

  def __init__(self, backbone: backbones_lib.Backbone, num_classes: int,
               input_shape: Sequence[int], update_rule: update_rules.UpdateRule,
               num_steps: int = 5, eval_num_steps: Optional[int] = None,
               first_order: bool = False, head: str = 'linear', query_bn: str = 'own',
               learn_init: bool = True, zero_head: bool = False, loss: str = 'cross_entropy',
               check_finite: bool = True, check_inputs: bool = True, seed: int = 0,
               dtype='float32',
               backbone_dtype: Optional[str] = None,
               inner_loss_scale: Optional[float] = None, name=None):
    super().__init__(name=name, dtype=dtype)
    for arg, value, allowed in (('head', head, HEADS), ('loss', loss, LOSSES),
                                ('query_bn', query_bn, QUERY_BN_MODES)):
      if value not in allowed:
        raise ValueError(f'{arg} must be one of {allowed}, got {value!r}.')
    if num_steps < 1:
      raise ValueError(f'num_steps must be at least 1, got {num_steps}.')
    if update_rule.dtype != self.dtype:
      raise ValueError(f'The update rule has dtype {update_rule.dtype} but the learner '
                       f'{self.dtype}: construct it with dtype={self.dtype!r}.')
    if update_rule.param_names is not None:
      raise ValueError('The update rule is already built (another learner, or adapt, built '
                       'it): give each learner a new, unbuilt rule.')
    self.backbone, self.num_classes = backbone, num_classes
    self.example_shape = tuple(input_shape)
    self.num_steps = num_steps
    self.eval_num_steps = num_steps if eval_num_steps is None else eval_num_steps
    self.first_order, self.head, self.query_bn = first_order, head, query_bn
    self.learn_init, self.loss_name, self.check_finite = learn_init, loss, check_finite
    self.check_inputs = check_inputs
    self.backbone_dtype = tf.as_dtype(backbone_dtype or dtype).name
    if inner_loss_scale is None:
      inner_loss_scale = FLOAT16_INNER_LOSS_SCALE if self.backbone_dtype == 'float16' else 1.0
    if not inner_loss_scale > 0:
      raise ValueError(f'inner_loss_scale must be positive, got {inner_loss_scale}.')
    self.inner_loss_scale = float(inner_loss_scale)

    rng = np.random.default_rng(seed)
    model_variables = {}  # theta_0 that a Keras backbone holds: its model's variables
    if isinstance(backbone, keras_backbone.KerasBackbone):
      if self.backbone_dtype != self.dtype:
        raise ValueError(
            f'backbone_dtype={self.backbone_dtype!r} does not apply to a KerasBackbone: give '
            f'the model a mixed-precision dtype policy instead (keras.mixed_precision.'
            f'set_dtype_policy("mixed_{self.backbone_dtype}") before building it).')
      model_variables = backbone.build(self.example_shape, self.dtype)
      self.keras_model = backbone.model  # Tracked: checkpoints hold all of the model's state.
      if not learn_init:  # ALFA + Random init: the model's initial values stay as they are.
        for variable in model_variables.values():
          variable.trainable = False
    specs = backbone.param_specs()
    if head == 'linear':
      dim = backbone.output_dim(self.example_shape)
      specs['head.w'] = backbones_lib.ParamSpec((dim, num_classes),
                                                'zeros' if zero_head else 'xavier')
      specs['head.b'] = backbones_lib.ParamSpec((num_classes,), 'zeros')
    self.theta0 = weights.ParameterSet(
        collections.OrderedDict((name, backbones_lib.initial_value(spec, rng))
                                for name, spec in specs.items() if name not in model_variables),
        trainable=learn_init, variables=model_variables, dtype=dtype, name='theta0')
    self.adapted_names = [name for name, spec in specs.items() if spec.adapted]
    self.fixed_names = [name for name, spec in specs.items() if not spec.adapted]
    shapes = collections.OrderedDict((name, specs[name].shape) for name in self.adapted_names)
    if head == 'proto':
      dim = backbone.output_dim(self.example_shape)
      shapes['head.w'], shapes['head.b'] = (dim, num_classes), (num_classes,)
    self.update_rule = update_rule
    update_rule.build_state(shapes, num_steps, rng)
    self.built = True

  # ----- forward pieces -----------------------------------------------------------------------

  def _read_theta0(self):
    """theta_0 as tensors (reads that an outer tape records): (adapted, fixed)."""
    read = lambda name: tf.convert_to_tensor(self.theta0[name])
    adapted = collections.OrderedDict((n, read(n)) for n in self.adapted_names)
    return adapted, {n: read(n) for n in self.fixed_names}

  def features(self, params, inputs, moments=None, collect_moments=False):
    """Backbone features, in the learner's dtype, and the BatchNorm moments used.

    With a ``backbone_dtype`` (mixed precision) the backbone runs in it on cast copies of the
    parameters; theta_0, the head and the update rule stay in the learner's dtype.
    """
    if self.backbone_dtype != self.dtype:
      params = {k: tf.cast(v, self.backbone_dtype) for k, v in params.items()
                if not k.startswith('head.')}
      inputs = tf.cast(inputs, self.backbone_dtype)
    features, used = self.backbone(params, inputs, moments, collect_moments)
    return tf.cast(features, self.dtype), used

  def _outputs(self, params, inputs, moments=None, way=None):
    """Logits (or regression outputs) and the BatchNorm moments used."""
    features, used = self.features(params, inputs, moments)
    logits = tf.matmul(features, params['head.w']) + params['head.b']
    if way is not None:
      valid = tf.range(self.num_classes) < tf.cast(way, tf.int32)
      logits = tf.where(valid[tf.newaxis], logits, tf.constant(-1e9, logits.dtype))
    return logits, used

  def loss_fn(self, outputs, labels):
    """Mean cross-entropy over examples, or mean squared error for regression."""
    if self.loss_name == 'mse':
      return tf.reduce_mean(tf.square(tf.reshape(outputs, tf.shape(labels)) - labels))
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=outputs))

  def proto_head(self, features, labels):
    """Proto-MAML's head: W = 2 * prototypes^T, b = -||prototype||^2 (absent classes: 0)."""
    prototypes = tf.math.unsorted_segment_mean(features, labels, self.num_classes)
    return 2.0 * tf.transpose(prototypes), -tf.reduce_sum(tf.square(prototypes), axis=1)

  def _check_set(self, role, images, labels=None, way=None):
    """The ``role`` ('support' or 'query') set's images and labels (None: none given) in the
    learner's dtypes. Shape and dtype problems raise ValueError here; with ``check_inputs``,
    value problems fail in the graph (``tf.errors.InvalidArgumentError``), one check per
    tensor. Every message names the tensor as the episode's field."""
    images_name, labels_name = f'{role}_images', f'{role}_labels'
    images = tf.cast(images, self.dtype)
    if images.shape.rank is not None and tuple(images.shape[1:]) != self.example_shape:
      raise ValueError(f'{images_name} have shape {tuple(images.shape)}; the learner expects '
                       f'[n, {", ".join(map(str, self.example_shape))}].')
    if images.shape[0] == 0:
      raise ValueError(f'The {role} set is empty ({images_name} has no examples): every '
                       f'episode needs at least one {role} example.')
    checks = []
    if self.check_inputs:
      images = tf.debugging.check_numerics(images, (
          f'{images_name} contain NaN or infinite values: fix the data (decoding, '
          f'normalisation) or drop those images before they reach the learner'))
      checks.append(tf.debugging.assert_positive(tf.shape(images)[0], message=(
          f'The {role} set is empty ({images_name} has no examples): every episode needs at '
          f'least one {role} example.')))
    if labels is not None:
      labels = tf.convert_to_tensor(labels)
      counts = images.shape[0], labels.shape[0] if labels.shape.rank else None
      if None not in counts and counts[0] != counts[1]:
        raise ValueError(f'{images_name} has {images.shape[0]} examples but {labels_name} '
                         f'{labels.shape[0]}: give one label per example.')
      if self.loss_name == 'mse':
        labels = tf.cast(labels, self.dtype)
        if self.check_inputs:
          labels = tf.debugging.check_numerics(labels, (
              f'{labels_name} (regression targets) contain NaN or infinite values: fix or '
              f'drop those examples'))
      else:
        labels, label_checks = self._class_labels(labels, labels_name, way)
        checks += label_checks
    if checks:
      with tf.control_dependencies(checks):
        images = tf.identity(images)
        labels = None if labels is None else tf.identity(labels)
    return images, labels

  def _class_labels(self, labels, name, way):
    """Class labels as int32, and (with ``check_inputs``) the checks of their values."""
    if not (labels.dtype.is_integer or labels.dtype.is_floating):
      raise ValueError(f'{name} have dtype {labels.dtype.name}: class labels must be integer '
                       f'class indices 0 .. way - 1.')
    if labels.shape.rank not in (None, 1):
      raise ValueError(f'{name} have shape {tuple(labels.shape)}: class labels must be a '
                       f'vector [n] of class indices (for one-hot labels pass '
                       f'tf.argmax(labels, -1)).')
    checks = []
    if self.check_inputs and labels.dtype.is_floating:
      checks.append(tf.debugging.assert_equal(labels, tf.round(labels), message=(
          f'{name} are floats that are not whole numbers: class labels must be class '
          f'indices 0 .. way - 1 (pass integer labels, not probabilities or soft labels)'),
          summarize=8))
    labels = tf.cast(labels, tf.int32)
    if self.check_inputs:
      limit = self.num_classes if way is None else tf.cast(way, tf.int32)
      checks += [
          tf.debugging.assert_non_negative(labels, message=(
              f'{name} are negative: class indices start at 0 (drop padded examples, whose '
              f'label is -1, before the learner)')),
          tf.debugging.assert_less(labels, limit, message=(
              f'{name} out of range: they must be < the number of classes '
              f'({self.num_classes} logits, or the episode\'s way); relabel the episode\'s '
              f'classes 0 .. way - 1'))]
    return labels, checks

  # ----- episodes ---------------------------------------------------------------------------

  def adapt(self, support_images, support_labels, num_steps: Optional[int] = None,
            way=None) -> 'AdaptedTask':
    """The stepwise API: adapts to one task's support set and returns the ``AdaptedTask``.

    theta_{i,0} = theta_0 (with the Proto-MAML head: plus the head from the support
    prototypes), then ``num_steps`` inner steps on the support loss (default: the training
    S, ``num_steps``). Call the task on query images for their logits; under the caller's
    ``tf.GradientTape`` the query loss differentiates into every meta-parameter (the outer
    step, Algorithm 1 line 10)::

        with tf.GradientTape() as tape:
          task = learner.adapt(support_images, support_labels)
          loss = task.loss(query_images, query_labels)
        grads = tape.gradient(loss, learner.trainable_variables)

    Images [n, *input_shape]; labels [n] (class indices 0 .. way - 1, or regression targets);
    ``way``: the episode's number of classes (logits beyond it are masked).
    """
    support_images, support_labels = self._check_set('support', support_images,
                                                     support_labels, way)
    theta, fixed = self._read_theta0()
    if self.head == 'proto':
      features, _ = self.features({**fixed, **theta}, support_images)
      theta['head.w'], theta['head.b'] = self.proto_head(features, support_labels)

    def support_loss(params):
      logits, _ = self._outputs({**fixed, **params}, support_images, way=way)
      return self.loss_fn(logits, support_labels), logits

    steps = self.num_steps if num_steps is None else num_steps
    adaptation = inner_loop.adapt(theta, support_loss, self.update_rule, steps,
                                  self.first_order, self.check_finite, self.inner_loss_scale)
    final = {**fixed, **adaptation.params}
    moments = None
    if self.query_bn == 'support':
      _, moments = self.features(final, support_images, collect_moments=True)
    return AdaptedTask(self, adaptation, final, moments, way)

  def forward_episode(self, support_images, support_labels, query_images,
                      query_labels=None, way=None, training: bool = True) -> EpisodeOutput:
    """Adapts to the support set (S inner steps) and returns the query outputs.

    As ``adapt`` and the task's ``loss``; ``query_labels`` None: no query loss.
    ``training``: S = num_steps, else eval_num_steps.
    """
    task = self.adapt(support_images, support_labels,
                      self.num_steps if training else self.eval_num_steps, way)
    query_logits, query_loss = task.logits_and_loss(query_images, query_labels)
    return EpisodeOutput(query_logits, query_loss, task.adaptation)

  def episode_output(self, episode: Dict[str, tf.Tensor], training: bool = True):
    """``forward_episode`` on an episode dict (support_images, support_labels, query_images,
    query_labels and optionally way: the field names of Meta-Dataset's episodes)."""
    return self.forward_episode(episode['support_images'], episode['support_labels'],
                                episode['query_images'], episode.get('query_labels'),
                                episode.get('way'), training)

  def meta_loss(self, episodes: List[Dict[str, tf.Tensor]], training: bool = True):
    """The meta-objective: mean over the meta-batch of the query losses at theta_{i,S}."""
    if not episodes:
      raise ValueError('meta_loss needs at least one episode.')
    return tf.add_n([self.episode_output(ep, training).query_loss
                     for ep in episodes]) / len(episodes)

  def episode_share(self, episode, weight: float = 1.0, scale: Optional[Callable] = None):
    """(gradients of ``scale(weight * query loss)`` for every trainable meta-parameter, the
    episode's ``EpisodeOutput``): one task's share of the meta-gradient (Algorithm 1, line 10).

    ``weight``: the task's weight in the meta-objective (1 / meta-batch size); ``scale``: a
    linear map applied before differentiating (loss scaling), identity by default.
    """
    with tf.GradientTape() as tape:
      output = self.episode_output(episode)
      share = output.query_loss * weight
      scaled = share if scale is None else scale(share)
    return gradients_or_zeros(tape, scaled, self.trainable_variables), output

  def episode_gradients(self, episodes, scale: Optional[Callable] = None,
                        share_fn: Optional[Callable] = None):
    """(meta-loss, gradients of ``scale(meta-loss)`` for every trainable meta-parameter, the
    episodes' ``EpisodeOutput``s).

    The meta-loss of Algorithm 1 (line 10) is a mean over tasks, so its gradient is the sum
    of per-task gradients: they are accumulated episode by episode, and each episode starts
    once the previous one's gradient is computed. Only one task's activations (the nested
    tapes of its inner loop) are alive at a time: peak memory is one task's whatever the
    meta-batch size, at no cost in time (both cores work inside each task's kernels).
    ``scale``: a linear map applied to each episode's share before differentiating (loss
    scaling); identity by default.
    ``share_fn``: episode -> (gradients, ``EpisodeOutput``) in place of ``episode_share``
    with weight 1 / len(episodes) and ``scale`` (those two are then its business), e.g. that
    call wrapped in a ``tf.function`` of a shape-free episode signature, so that a compiled
    meta-step traces one task whatever the meta-batch size and calls it once per episode.
    """
    if not episodes:
      raise ValueError('The meta-batch needs at least one episode.')
    if share_fn is None:
      share_fn = lambda episode: self.episode_share(episode, 1.0 / len(episodes), scale)
    loss, grads, outputs, previous = 0.0, None, [], []
    for episode in episodes:
      with tf.control_dependencies(previous):  # A no-op when executing eagerly.
        episode = {key: tf.identity(value) for key, value in episode.items()}
      previous, output = share_fn(episode)
      grads = previous if grads is None else [a + b for a, b in zip(grads, previous)]
      loss += output.query_loss / len(episodes)
      outputs.append(output)
    return loss, grads, outputs

  def meta_gradients(self, episodes):
    """(meta-loss, gradients of it for every trainable meta-parameter)."""
    loss, grads, _ = self.episode_gradients(episodes)
    return loss, grads

  def meta_update(self, episodes, optimizer):
    """One outer step (Algorithm 1, line 10): computes the meta-gradient, applies it.

    Inside ``tf.function``, call ``optimizer.build(learner.trainable_variables)`` first so
    that the optimizer's slots are not created during the trace (which would trace twice).
    A ``tf.keras.mixed_precision.LossScaleOptimizer`` (for float16 backbones) scales the
    meta-loss, unscales the gradient and skips updates whose gradient overflowed.
    """
    loss, grads, _ = self.episode_gradients(episodes, lambda x: scale_loss(optimizer, x))
    apply_scaled_gradients(optimizer, grads, self.trainable_variables)
    return loss


def gradients_or_zeros(tape, target, variables):
  """``tape.gradient`` with zeros for variables ``target`` does not depend on (Keras 3
  variables break ``UnconnectedGradients.ZERO``)."""
  grads = tape.gradient(target, variables)
  return [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]


def scale_loss(optimizer, loss):
  """``loss`` as ``optimizer`` wants it differentiated: multiplied by the current scale of a
  loss-scale optimizer (Keras 3 ``scale_loss``, Keras 2 ``get_scaled_loss``), else as is."""
  if hasattr(optimizer, 'scale_loss'):
    return optimizer.scale_loss(loss)
  if hasattr(optimizer, 'get_scaled_loss'):
    return optimizer.get_scaled_loss(loss)
  return loss


def apply_scaled_gradients(optimizer, grads, variables):
  """Applies gradients of a ``scale_loss``-scaled loss: a Keras 2 loss-scale optimizer needs
  them unscaled first; Keras 3's unscales (and skips overflowed ones) in ``apply``."""
  if hasattr(optimizer, 'get_unscaled_gradients'):
    grads = optimizer.get_unscaled_gradients(grads)
  optimizer.apply_gradients(zip(grads, variables))


class MAMLLearner(GradientLearner):
  """MAML: meta-learned theta_0, inner SGD with fixed rate ``alpha`` (Eq. 1).
  With ``head='proto'`` and ``first_order=True``: fo-Proto-MAML."""

  def __init__(self, backbone, num_classes, input_shape, alpha: float = 0.01,
               dtype='float32', **kwargs):
    super().__init__(backbone, num_classes, input_shape,
                     update_rules.SGD(alpha, dtype=dtype, name='sgd'), dtype=dtype, **kwargs)


class ALFALearner(GradientLearner):
  """ALFA + MAML (meta-learned theta_0) or, with ``random_init=True``, ALFA + Random init
  (theta_0 frozen at its seeded init; beta_pp meta-learned). ``alfa_kwargs`` go to
  ``update_rules.ALFA`` (alpha_init, beta_init, beta_pp_init, alpha_mode, beta_mode,
  learning_state, l2f, l2f_detach_embedding)."""

  def __init__(self, backbone, num_classes, input_shape, random_init: bool = False,
               dtype='float32', alfa_kwargs: Optional[dict] = None, **kwargs):
    rule = update_rules.ALFA(random_init=random_init, dtype=dtype, name='alfa',
                             **(alfa_kwargs or {}))
    super().__init__(backbone, num_classes, input_shape, rule, learn_init=not random_init,
                     dtype=dtype, **kwargs)
