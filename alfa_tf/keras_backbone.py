"""Any Keras 3 model as a backbone: f(params, images) -> features, run by ``stateless_call``.

A user's ``keras.Model`` (Sequential, functional, subclassed, a ``keras.applications``
architecture) becomes a backbone like the functional ones of ``alfa_tf.backbones``: the inner
loop passes an ordered ``name -> tensor`` mapping, and the model runs on those tensors in place
of its variables (Keras 3's ``Layer.stateless_call``), so nothing is assigned inside the inner
loop and the nested tapes see every parameter. The model's own variables are theta_0: the
learner meta-learns them, so after meta-training the model holds the meta-learned
initialisation.

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(32, 3), ...])
    learner = alfa_tf.ALFALearner(alfa_tf.KerasBackbone(model), num_classes=5,
                                  input_shape=(28, 28, 1))
    task = learner.adapt(support_images, support_labels)    # an AdaptedTask
    logits = task(query_images)

Names: each trainable variable's Keras ``path`` relative to the model (without the model's own
name: 'conv0/kernel', 'block1_bn/gamma'); they name the adapted tensors (the rule's alpha and
beta per layer), theta_0's entries and their checkpoint entries.

What is adapted (``adapt``): every trainable variable (default), or those selected by layer
or variable names, layer objects or a predicate (``adapt='embedding'``: only the layer of that
name; ``adapt=()``: nothing of the model, only the learner's own head, which is ANIL).
BatchNormalization's gamma/beta are meta-parameters only unless ``adapt_batch_norm`` (as in
the ALFA reference, MAML's and Meta-Dataset's ``adapt_batch_norm=False``, and the functional
backbones). Variables that are not adapted are still meta-learned; non-trainable ones
(BatchNorm moving statistics, frozen layers) are read as they are.

The model runs in inference mode (``training=False``: no dropout or noise layers), except
that every trainable BatchNormalization layer normalises with the batch's own statistics (the
MAML convention; its moving averages are never updated). Inside the backbone's calls (and only
there: per thread, so ``tf.distribute`` replicas do not interfere; the model behaves as Keras
defines it everywhere else) some Keras layers run through the project's ops, with the same
values and derivatives:

- BatchNormalization through ``backbones.batch_norm``. Keras' own takes its moments from
  ``tf.nn.moments``, which stops the gradient through the mean inside the variance: exact for
  first derivatives, wrong for second-order meta-gradients. The project's op is exact, and
  fused with the closed-form second derivative of ``second_order_ops`` in float32.
- MaxPooling2D with pool size = strides, 'valid', through ``second_order_ops.max_pool``
  (Keras' values and first derivative; its second derivative without TensorFlow's slow
  MaxPoolGradGrad kernel).
- Where a Conv2D without activation feeds a batch-statistics BatchNormalization, the
  normalisation reads the convolution before its bias (the batch mean removes the bias
  exactly; the bias keeps an exactly zero gradient), and where a ReLU, LeakyReLU or a
  non-decreasing Activation feeds a max pooling, the pooling takes the activation's input and
  activates the pooled values (max and a non-decreasing function commute), as the functional
  ``Conv4`` computes. The skipped bias addition and full-size activation stay in the graph
  for any other consumer of theirs and are pruned by ``tf.function`` otherwise.

A BatchNormalization layer that is not trainable keeps Keras' frozen behaviour (its moving
statistics). Layers whose class overrides Keras' ``call`` run as they are.

Keras 3 only (TensorFlow >= 2.16): on Keras 2 (TensorFlow 2.15) the constructor raises.
Mixed precision is the model's own dtype policy (e.g. ``keras.mixed_precision.
set_dtype_policy('mixed_bfloat16')`` before building it), not the learner's ``backbone_dtype``.
"""
import collections
import functools
import inspect
import math
import threading
from typing import Callable, Iterable, Sequence, Union

import tensorflow as tf

from alfa_tf import backbones
from alfa_tf import second_order_ops

Selector = Union[None, str, Callable, Iterable]

# The backbone call in progress on this thread (None outside): its BatchNorm moments.
_ACTIVE = threading.local()


class _CallState:
  """What one backbone call passes between the substituted layers: BatchNorm moments (given
  and collected), and the tensors whose cheaper equivalent a later layer may take."""

  def __init__(self, moments, collect_moments):
    self.moments_in = moments
    self.moments_out = {} if collect_moments else None
    self.calls = collections.Counter()
    self.biased = {}     # ref(conv(x) + b) -> (conv(x), b)
    self.activated = {}  # ref(f(x)) -> (x, f), f non-decreasing and elementwise

  def key(self, layer):
    """'<layer name>:<k>' for the layer's k-th call in this model call (a shared layer is
    called more than once)."""
    self.calls[id(layer)] += 1
    return f'{layer.name}:{self.calls[id(layer)] - 1}'


def _keras():
  import keras  # pylint: disable=g-import-not-at-top
  return keras


class KerasBackbone(backbones.Backbone):
  """A Keras 3 model as a backbone (see the module docstring).

  Args:
    model: a ``keras.Model`` (or layer) mapping images [n, *input_shape] to features [n, ...]
      (flattened to [n, d]); built here on the learner's input shape if it is not built.
    adapt: which trainable variables the inner loop adapts: None (all), or a name, a layer, a
      predicate ``f(variable) -> bool``, or a sequence of names and layers. A name selects
      the variables whose name (above) contains it as whole '/'-separated parts: a layer's
      name ('head') or a variable's ('head/kernel').
    adapt_batch_norm: adapt BatchNormalization's gamma and beta too (default: meta-learned
      only).
  """

  def __init__(self, model, adapt: Selector = None, adapt_batch_norm: bool = False):
    keras = _keras()
    if not hasattr(model, 'stateless_call'):
      raise RuntimeError(
          f'alfa_tf.KerasBackbone needs a Keras 3 model (TensorFlow >= 2.16), for '
          f'Layer.stateless_call; got a {type(model).__name__} of Keras {keras.__version__} '
          f'(TensorFlow {tf.__version__}). Upgrade TensorFlow, or use a functional backbone '
          f'(alfa_tf.Conv4, ResNet12, ResNet18, MLP).')
    self.model, self.adapt, self.adapt_batch_norm = model, adapt, adapt_batch_norm
    self._variables = None
    self._output_shape = None

  # ----- building ----------------------------------------------------------------------------

  def build(self, input_shape: Sequence[int], dtype='float32'):
    """Builds the model for examples of ``input_shape`` and returns its trainable variables,
    ``{name: variable}`` (theta_0 of the backbone). Raises ValueError for variables of
    another ``dtype`` than the learner's, names that are not unique, selectors that select
    nothing, outputs that are not one tensor and BatchNorm layers this backbone cannot run."""
    keras = _keras()
    probe = tf.zeros((1,) + tuple(input_shape), dtype)
    if not self.model.built:
      self.model(probe, training=False)
    self._install_substitutions()
    variables = collections.OrderedDict()
    for variable in self.model.trainable_variables:
      name = self._name(variable)
      if name in variables:
        raise ValueError(f'KerasBackbone: two trainable variables of the model are named '
                         f'{name!r}: give its layers unique names.')
      variables[name] = variable
    wrong = [n for n, v in variables.items() if tf.as_dtype(v.dtype) != tf.as_dtype(dtype)]
    if wrong:
      raise ValueError(
          f'KerasBackbone: the learner computes in {tf.as_dtype(dtype).name} but the model\'s '
          f'variables {wrong[:3]} are {tf.as_dtype(variables[wrong[0]].dtype).name}: build '
          f'the model with dtype={tf.as_dtype(dtype).name!r} (or the learner with the '
          f'model\'s dtype).')
    bn = {id(v) for layer in self._layers(keras.layers.BatchNormalization)
          for v in layer.trainable_variables}
    selected = self._select(variables)
    self._adapted = {n for n, v in variables.items()
                     if n in selected and (self.adapt_batch_norm or id(v) not in bn)}
    parameters = inspect.signature(self.model.call).parameters.values()
    self._takes_training = any(p.name == 'training' or p.kind == p.VAR_KEYWORD
                               for p in parameters)
    self._variables = variables
    features, _ = self._run({}, probe)
    if not tf.is_tensor(features):
      raise ValueError(f'KerasBackbone: the model must return one tensor of features, got '
                       f'{type(features).__name__}.')
    self._output_shape = tuple(features.shape[1:])
    return variables

  def _name(self, variable):
    """The variable's path without the model's own name."""
    prefix = self.model.name + '/'
    path = variable.path
    return path[len(prefix):] if path.startswith(prefix) else path

  def _layers(self, kind):
    return [layer for layer in self.model._flatten_layers(include_self=True)  # pylint: disable=protected-access
            if isinstance(layer, kind)]

  def _select(self, variables):
    """Names of the variables that ``adapt`` selects."""
    if self.adapt is None:
      return set(variables)
    if callable(self.adapt) and not isinstance(self.adapt, _keras().layers.Layer):
      return {n for n, v in variables.items() if self.adapt(v)}
    selectors = [self.adapt] if isinstance(self.adapt, (str, _keras().layers.Layer)) else list(
        self.adapt)
    selected = set()
    for selector in selectors:
      if isinstance(selector, str):
        matches = {n for n in variables if f'/{selector}/' in f'/{n}/'}
      else:
        ids = {id(v) for v in selector.trainable_variables}
        matches = {n for n, v in variables.items() if id(v) in ids}
      if not matches:
        layers = sorted({n.rsplit('/', 1)[0] for n in variables})
        raise ValueError(f'KerasBackbone: adapt={selector!r} selects no trainable variable of '
                         f'the model; its layers with trainable variables: {layers}.')
      selected |= matches
    return selected

  def _install_substitutions(self):
    """Routes the model's layers of ``_substitutions()`` through the project's ops while (and
    only while) this thread runs a backbone call. Installed once per layer."""
    for kind, replacement in _substitutions().items():
      for layer in self._layers(kind):
        if type(layer).call is kind.call:  # pylint: disable=unidiomatic-typecheck
          _substitute(layer, replacement)

  # ----- the Backbone interface ----------------------------------------------------------

  def _check_built(self):
    if self._variables is None:
      raise ValueError('KerasBackbone: call build(input_shape) first (learners do).')

  def param_specs(self):
    """theta_0 of the model: its trainable variables by name (init 'model': their values)."""
    self._check_built()
    return collections.OrderedDict(
        (name, backbones.ParamSpec(tuple(v.shape), 'model', adapted=name in self._adapted))
        for name, v in self._variables.items())

  def output_dim(self, input_shape):
    self._check_built()
    return math.prod(self._output_shape)

  def __call__(self, params, images, moments=None, collect_moments=False):
    """The model's features [n, d] with ``params[name]`` in place of each variable (the
    variables themselves where ``params`` has no entry), and the BatchNorm moments used
    (``collect_moments``) as in ``backbones.Backbone``."""
    self._check_built()
    outputs, moments = self._run(params, images, moments, collect_moments)
    return tf.reshape(outputs, [tf.shape(outputs)[0], -1]), moments

  def _run(self, params, images, moments=None, collect_moments=False):
    """(the model's outputs on ``images`` with ``params``, the moments collected)."""
    names = {id(v): n for n, v in self._variables.items()}

    def value(variable):
      return params.get(names.get(id(variable)), variable)

    # stateless_call runs model.call itself, which may not take a training argument.
    kwargs = {'training': False} if self._takes_training else {}
    state = _CallState(moments, collect_moments)
    previous = getattr(_ACTIVE, 'state', None)
    _ACTIVE.state = state
    try:
      outputs, _ = self.model.stateless_call(
          [value(v) for v in self.model.trainable_variables],
          [value(v) for v in self.model.non_trainable_variables], images, **kwargs)
    finally:
      _ACTIVE.state = previous
    return outputs, state.moments_out


def _substitute(layer, replacement):
  """Makes ``layer.call`` run ``replacement(state, layer, original_call, ...)`` inside a
  backbone call, and the layer's own ``call`` outside."""
  if getattr(layer, '_alfa_tf_substituted', False):
    return
  original = layer.call

  @functools.wraps(original)
  def call(*args, **kwargs):
    state = getattr(_ACTIVE, 'state', None)
    if state is None:
      return original(*args, **kwargs)
    return replacement(state, layer, original, *args, **kwargs)

  layer.call = call
  layer._alfa_tf_substituted = True  # pylint: disable=protected-access


def _batch_norm_call(state, layer, original, inputs, training=None, mask=None):
  """A trainable BatchNormalization layer with batch statistics (or the given moments) via
  ``backbones.batch_norm``; a frozen one as Keras runs it (its moving statistics)."""
  del training
  if not layer.trainable:
    return original(inputs, training=False, mask=mask)
  rank = inputs.shape.rank
  if mask is not None or layer.renorm or layer.axis % rank != rank - 1:
    raise ValueError(
        f'KerasBackbone: BatchNormalization layer {layer.name!r} normalises over axis '
        f'{layer.axis} of rank-{rank} inputs{" with a mask" if mask is not None else ""}'
        f'{" with renorm" if layer.renorm else ""}; only the last (channels) axis, without '
        f'masks or renorm, is supported.')
  x, bias = state.biased.get(inputs.ref(), (inputs, None))
  if x.dtype in (tf.float16, tf.bfloat16) and rank != 4:  # The fused kernel takes halves.
    x = tf.cast(x, tf.float32)
  channels = x.shape[-1]
  scale = tf.cast(layer.gamma, x.dtype) if layer.scale else tf.ones([channels], x.dtype)
  offset = tf.cast(layer.beta, x.dtype) if layer.center else tf.zeros([channels], x.dtype)
  if bias is not None:  # Batch statistics cancel the bias; its gradient stays an exact zero.
    offset += 0.0 * tf.cast(bias, x.dtype)
  key = state.key(layer)
  moments = None if state.moments_in is None else state.moments_in[key]
  outputs, used = backbones.batch_norm(x, scale, offset, layer.epsilon, moments,
                                       state.moments_out is not None)
  if state.moments_out is not None:
    state.moments_out[key] = used
  return tf.cast(outputs, layer.compute_dtype)


def _max_pool_call(state, layer, original, inputs):
  """Non-overlapping 2D max pooling through ``second_order_ops.max_pool``, after a deferred
  activation (other pooling geometries as Keras runs them)."""
  if not (len(set(layer.pool_size + layer.strides)) == 1 and layer.padding == 'valid' and
          layer.data_format == 'channels_last'):
    return original(inputs)
  x, activation = state.activated.get(inputs.ref(), (inputs, None))
  pooled = second_order_ops.max_pool(x, layer.pool_size[0])
  return pooled if activation is None else activation(pooled)


def _conv_call(state, layer, original, inputs):
  """Keras' Conv2D, noting conv(x) + b as the sum it is (for a following BatchNorm)."""
  if (not layer.use_bias or layer.activation is not _keras().activations.linear or
      layer.data_format != 'channels_last'):
    return original(inputs)
  convolved = layer.convolution_op(inputs, layer.kernel)
  bias = layer.bias.value
  outputs = convolved + bias
  state.biased[outputs.ref()] = (convolved, bias)
  return outputs


_NON_DECREASING = ('relu', 'relu6', 'leaky_relu', 'elu', 'selu', 'sigmoid', 'tanh', 'softplus')


def _activation_call(state, layer, original, inputs):
  """A non-decreasing elementwise activation, noted (for a following max pooling)."""
  keras = _keras()
  outputs = original(inputs)
  if not isinstance(layer, keras.layers.Activation) or any(
      layer.activation is keras.activations.get(name) for name in _NON_DECREASING):
    state.activated[outputs.ref()] = (inputs, original)
  return outputs


def _substitutions():
  """{Keras layer class: replacement(state, layer, original_call, *args, **kwargs)}."""
  layers = _keras().layers
  return {layers.BatchNormalization: _batch_norm_call, layers.MaxPooling2D: _max_pool_call,
          layers.Conv2D: _conv_call, layers.ReLU: _activation_call,
          layers.LeakyReLU: _activation_call, layers.Activation: _activation_call}


def conv4_model(filters: int = 48, num_blocks: int = 4, activation: str = 'leaky_relu',
                leaky_slope: float = 0.01, bn_eps: float = 1e-5, flatten_order: str = 'chw',
                dtype=None, name: str = 'conv4'):
  """``backbones.Conv4`` (max pooling) written as a Keras Sequential, built on first call.

  Per block: Conv2D 3x3 'same' with bias ('conv<i>'), BatchNormalization ('bn<i>'), the
  activation ('relu' or 'leaky_relu' with ``leaky_slope``), MaxPooling2D 2; then the
  features flattened in Conv4's ``flatten_order`` ('chw': the ALFA reference's, 'hwc':
  Meta-Dataset's). With Conv4's initial values it computes what Conv4 computes
  (``tests/core/test_keras_backbone.py``), so it serves as the template of a user's model and
  as the Keras side of ``benchmarks/meta_step.py --backbone keras_conv4``.
  """
  keras = _keras()
  if activation not in ('relu', 'leaky_relu'):
    raise ValueError(f"activation must be 'relu' or 'leaky_relu', got {activation!r}.")
  layers = []
  for i in range(num_blocks):
    layers += [keras.layers.Conv2D(filters, 3, padding='same', name=f'conv{i}', dtype=dtype),
               keras.layers.BatchNormalization(epsilon=bn_eps, name=f'bn{i}', dtype=dtype),
               keras.layers.ReLU(dtype=dtype) if activation == 'relu' else
               keras.layers.LeakyReLU(leaky_slope, dtype=dtype),
               keras.layers.MaxPooling2D(2, dtype=dtype)]
  if flatten_order == 'chw':
    layers.append(keras.layers.Permute((3, 1, 2), dtype=dtype))
  layers.append(keras.layers.Flatten(dtype=dtype))
  return keras.Sequential(layers, name=name)
