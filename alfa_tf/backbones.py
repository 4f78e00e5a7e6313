"""Functional backbones: f(params, images) -> features, with parameters passed explicitly.

The inner loop (``inner_loop.adapt``) maps an ordered ``name -> tensor`` mapping of parameters
to a new one, so a backbone never owns variables: it declares the parameters it needs
(``param_specs``) and computes features from whatever mapping it is given. Learners create the
meta-learned initial values theta_0 as Keras weights from these specs.

Every backbone uses BatchNorm with *batch statistics* (no running averages), as the ALFA
reference and upstream Meta-Dataset's MAML do. ``__call__(params, images, moments=None,
collect_moments=False)`` returns the features and, with ``collect_moments``, the per-layer
moments it used; passing those moments back in (``moments=``) normalises another batch (the
query set) with them, which is upstream Meta-Dataset's behaviour. BatchNorm
scale/offset are meta-parameters only: ``ParamSpec.adapted`` is False for them, so the inner
loop never updates them.

Layouts are TensorFlow's: images NHWC, conv kernels HWIO, dense kernels [in, out].
"""
import collections
import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from alfa_tf import second_order_ops

Params = Dict[str, tf.Tensor]
Moments = Dict[str, Tuple[tf.Tensor, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
  """Shape, initialiser and role of one backbone parameter tensor.

  init: 'xavier' (Glorot uniform, the reference's conv/linear init), 'zeros', 'ones',
    'he' (He normal, fan-out, as ResNets use).
  adapted: whether the inner loop updates it (False for BatchNorm scale/offset).
  """
  shape: Tuple[int, ...]
  init: str
  adapted: bool = True


def initial_value(spec: ParamSpec, rng: np.random.Generator) -> np.ndarray:
  """Draws the initial value of one parameter with numpy (identical on every TF version)."""
  shape = spec.shape
  if spec.init == 'zeros':
    return np.zeros(shape)
  if spec.init == 'ones':
    return np.ones(shape)
  receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
  fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
  if spec.init == 'xavier':
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape)
  if spec.init == 'he':
    return rng.normal(0.0, np.sqrt(2.0 / fan_out), size=shape)
  raise ValueError(f'Unknown initialiser {spec.init!r}.')


_ACTIVATIONS = {
    'relu': tf.nn.relu,
    'softplus': tf.nn.softplus,
}


def activation_fn(name: str, leaky_slope: float = 0.01):
  """'leaky_relu' uses ``leaky_slope`` (the reference: 0.01, not TF's default 0.2)."""
  if name == 'leaky_relu':
    return lambda x: _leaky_relu(x, leaky_slope)
  if name not in _ACTIVATIONS:
    raise ValueError(f'Unknown activation {name!r}; expected leaky_relu, relu or softplus.')
  return _ACTIVATIONS[name]


def _leaky_relu(x, slope):
  """max(x, slope * x). The fused op's slope is a float32 attribute (0.01 -> 0.0099999998):
  exact in float32 and faster there, but it would cost float64 runs eight digits."""
  if x.dtype == tf.float64:
    return tf.where(x > 0, x, slope * x)
  return tf.nn.leaky_relu(x, alpha=slope)


def batch_norm(x, scale, offset, eps, moments=None, collect_moments=True,
               max_pool_size=None):
  """BatchNorm with the batch's own statistics, or with given ``moments``.

  Mean and *biased* variance over every axis but the last (the reference's
  ``F.batch_norm(training=True)``). Returns the output and the (mean, variance) used, or
  None for them when ``collect_moments`` is False. Float32/16 feature maps take TensorFlow's
  fused kernels (``second_order_ops``): without moments, with the closed-form second
  derivative; collecting or given moments (the query set normalised with the support set's),
  with first derivatives through the moments. Float64 (and other ranks) use explicit ops,
  differentiable to any order.

  ``max_pool_size``: the output max-pooled over non-overlapping windows of that size. With
  collected or given moments on the fused kernels, BatchNorm and pooling then run as one op
  that recomputes the BatchNorm output in the backward pass instead of keeping it
  (``second_order_ops.batch_norm_max_pool``).
  """
  pool = lambda y: y if max_pool_size is None else _pool(y, 'max', max_pool_size,
                                                          max_pool_size)
  if x.dtype != tf.float64 and x.shape.rank == 4:
    # The fused kernels take float32 scale, offset and moments for float16/bfloat16 inputs.
    scale, offset = tf.cast(scale, tf.float32), tf.cast(offset, tf.float32)
    if moments is None and not collect_moments:
      return pool(second_order_ops.batch_norm_train(x, scale, offset, eps)), None
    given = None if moments is None else tuple(tf.cast(m, tf.float32) for m in moments)
    if max_pool_size is not None:
      y, used = second_order_ops.batch_norm_max_pool(x, scale, offset, eps, max_pool_size,
                                                     given)
    elif given is not None:
      y, used = second_order_ops.batch_norm_given_moments(x, *given, scale, offset, eps), given
    else:
      y, *used = second_order_ops.batch_norm_moments(x, scale, offset, eps)
    return y, (tuple(used) if moments is None else moments)
  y, used = explicit_batch_norm(x, scale, offset, eps, moments)
  return pool(y), used


def explicit_batch_norm(x, scale, offset, eps, moments=None):
  """``batch_norm`` as explicit ops (any dtype and rank, derivatives of any order):
  (output, (mean, variance) used)."""
  if moments is None:
    # Not tf.nn.moments: it stops the gradient through the mean inside the variance, which
    # is exact for first derivatives only and breaks second-order meta-gradients.
    axes = list(range(x.shape.rank - 1))
    mean = tf.reduce_mean(x, axis=axes)
    moments = mean, tf.reduce_mean(tf.math.squared_difference(x, mean), axis=axes)
  mean, variance = moments
  return tf.nn.batch_normalization(x, mean, variance, offset, scale, eps), moments


def _pool(x, kind, size, stride, padding='VALID'):
  if kind == 'max' and size == stride and padding == 'VALID':
    return second_order_ops.max_pool(x, size)
  if kind == 'max':
    return tf.nn.max_pool2d(x, size, stride, padding)
  if kind == 'avg':
    return tf.nn.avg_pool2d(x, size, stride, padding)
  raise ValueError(f'Unknown pooling {kind!r}; expected max or avg.')


class Backbone:
  """Base class: ``param_specs()``, ``output_dim(input_shape)`` and
  ``__call__(params, images, moments=None, collect_moments=False)``."""

  def param_specs(self) -> 'collections.OrderedDict[str, ParamSpec]':
    raise NotImplementedError

  def output_dim(self, input_shape: Sequence[int]) -> int:
    """Feature size for images of ``input_shape`` (H, W, C) or (D,) for an MLP."""
    raise NotImplementedError

  def __call__(self, params: Params, images: tf.Tensor, moments: Optional[Moments] = None,
               collect_moments: bool = False) -> Tuple[tf.Tensor, Optional[Moments]]:
    """Features of ``images``; BatchNorm uses ``moments`` when given, else the batch's own.

    Returns (features, moments): the per-layer (mean, variance) used when
    ``collect_moments``, else None (which lets float32 BatchNorm use the fused kernel).
    """
    raise NotImplementedError


def _conv_bn_specs(prefix, k, c_in, c_out, conv_bias, init='xavier'):
  specs = [(f'{prefix}.w', ParamSpec((k, k, c_in, c_out), init))]
  if conv_bias:
    specs.append((f'{prefix}.b', ParamSpec((c_out,), 'zeros')))
  specs += [(f'{prefix}.bn_scale', ParamSpec((c_out,), 'ones', adapted=False)),
            (f'{prefix}.bn_offset', ParamSpec((c_out,), 'zeros', adapted=False))]
  return specs


class ConvBNMixin:
  """conv -> BatchNorm, reading ``<prefix>.w`` (and ``.b``) and the BN scale/offset."""
  bn_eps: float

  def _conv_bn(self, params, x, prefix, moments_in, moments_out, stride=1, max_pool_size=None):
    kernel = params[f'{prefix}.w']
    if stride > 1 and kernel.shape[0] == 1 and kernel.shape[1] == 1:
      # A strided 1x1 convolution is a 1x1 convolution of the subsampled input. Written so
      # because oneDNN's filter gradient of strided 1x1 convolutions corrupts memory on CPU
      # (TensorFlow 2.15 and 2.21).
      x, stride = x[:, ::stride, ::stride, :], 1
    x = tf.nn.conv2d(x, kernel, stride, 'SAME')
    offset = params[f'{prefix}.bn_offset']
    if f'{prefix}.b' in params:
      # BatchNorm with batch statistics subtracts the conv bias again (whether the moments are
      # the batch's own or the support set's, both include it), so it is not added to the
      # feature map, which saves a pass over the largest tensors and its gradient. Multiplied
      # by zero into the offset, it keeps an (exactly zero) gradient, as in the reference.
      offset += 0.0 * params[f'{prefix}.b']
    x, used = batch_norm(
        x, params[f'{prefix}.bn_scale'], offset, self.bn_eps,
        None if moments_in is None else moments_in[prefix], moments_out is not None,
        max_pool_size)
    if moments_out is not None:
      moments_out[prefix] = used
    return x


class Conv4(ConvBNMixin, Backbone):
  """The 4-CONV backbone: 4 x [conv 3x3 'SAME' + bias, BatchNorm, activation, pool 2x2].

  Defaults follow the ALFA reference (48 filters, leaky ReLU slope 0.01, BN eps 1e-5, max
  pooling, features flattened in (C, H, W) order as PyTorch's ``view`` on NCHW does).
  Meta-Dataset's 4-CONV uses ``filters=64`` (or 32), ``activation='relu'``.
  A smooth variant (``activation='softplus', pooling='avg'``) serves finite-difference tests.
  """

  def __init__(self, filters: int = 48, num_blocks: int = 4, in_channels: int = 3,
               activation: str = 'leaky_relu', leaky_slope: float = 0.01,
               pooling: str = 'max', bn_eps: float = 1e-5, conv_bias: bool = True,
               flatten_order: str = 'chw'):
    if flatten_order not in ('chw', 'hwc'):
      raise ValueError(f"flatten_order must be 'chw' or 'hwc', got {flatten_order!r}.")
    self.filters, self.num_blocks, self.in_channels = filters, num_blocks, in_channels
    self.activation = activation_fn(activation, leaky_slope)
    self.activation_increasing = activation != 'leaky_relu' or leaky_slope >= 0
    self.pooling, self.bn_eps, self.conv_bias = pooling, bn_eps, conv_bias
    self.flatten_order = flatten_order

  def param_specs(self):
    specs = []
    c_in = self.in_channels
    for i in range(self.num_blocks):
      specs += _conv_bn_specs(f'block{i}', 3, c_in, self.filters, self.conv_bias)
      c_in = self.filters
    return collections.OrderedDict(specs)

  def output_dim(self, input_shape):
    h, w = input_shape[0], input_shape[1]
    for _ in range(self.num_blocks):
      h, w = h // 2, w // 2
    if h < 1 or w < 1:
      raise ValueError(f'Images of shape {tuple(input_shape)} are too small for '
                       f'{self.num_blocks} pooling layers.')
    return h * w * self.filters

  def __call__(self, params, images, moments=None, collect_moments=False):
    x, used = images, ({} if collect_moments else None)
    for i in range(self.num_blocks):
      if self.pooling == 'max' and self.activation_increasing:
        # max(f(a), f(b)) = f(max(a, b)) for a non-decreasing f: activating after the pool
        # gives the same values and gradients on a quarter of the elements.
        x = self.activation(self._conv_bn(params, x, f'block{i}', moments, used,
                                          max_pool_size=2))
      else:
        x = _pool(self.activation(self._conv_bn(params, x, f'block{i}', moments, used)),
                  self.pooling, 2, 2)
    if self.flatten_order == 'chw':
      x = tf.transpose(x, [0, 3, 1, 2])
    return tf.reshape(x, [tf.shape(x)[0], -1]), used


class ResNet12(ConvBNMixin, Backbone):
  """ResNet-12: 4 residual blocks of 3 x (conv 3x3, BN, leaky ReLU 0.1), a 1x1 conv + BN
  shortcut, max-pool 2; global average pooling at the end.

  ``channels`` (64, 160, 320, 640) is the common ResNet-12; the ALFA reference used
  (64, 128, 256, 512). Convolutions carry no bias (BatchNorm cancels it), so the inner loop
  adapts 16 conv kernels plus the head's weight and bias: N = 18 tensors, as in the reference.
  """

  def __init__(self, channels: Sequence[int] = (64, 160, 320, 640), in_channels: int = 3,
               leaky_slope: float = 0.1, bn_eps: float = 1e-5, pooling: str = 'max'):
    self.channels, self.in_channels = tuple(channels), in_channels
    self.activation = activation_fn('leaky_relu', leaky_slope)
    self.bn_eps, self.pooling = bn_eps, pooling

  def param_specs(self):
    specs, c_in = [], self.in_channels
    for b, c_out in enumerate(self.channels):
      for k in range(3):
        specs += _conv_bn_specs(f'res{b}.conv{k}', 3, c_in if k == 0 else c_out, c_out, False)
      specs += _conv_bn_specs(f'res{b}.shortcut', 1, c_in, c_out, False)
      c_in = c_out
    return collections.OrderedDict(specs)

  def output_dim(self, input_shape):
    return self.channels[-1]

  def __call__(self, params, images, moments=None, collect_moments=False):
    x, used = images, ({} if collect_moments else None)
    for b in range(len(self.channels)):
      shortcut = self._conv_bn(params, x, f'res{b}.shortcut', moments, used)
      for k in range(3):
        x = self._conv_bn(params, x, f'res{b}.conv{k}', moments, used)
        if k < 2:
          x = self.activation(x)
      x = _pool(self.activation(x + shortcut), self.pooling, 2, 2)
    return tf.reduce_mean(x, axis=[1, 2]), used


class ResNet18(ConvBNMixin, Backbone):
  """ResNet-18 as Meta-Dataset uses it (fo-Proto-MAML at 126x126): conv 7x7/2 + BN + ReLU,
  max-pool 3x3/2, four stages of two basic blocks (64, 128, 256, 512; stride 2 from the
  second stage, 1x1 conv + BN projection where the shape changes), global average pooling.
  """

  def __init__(self, channels: Sequence[int] = (64, 128, 256, 512), in_channels: int = 3,
               bn_eps: float = 1e-5):
    self.channels, self.in_channels, self.bn_eps = tuple(channels), in_channels, bn_eps

  def _blocks(self):
    """Yields (prefix, c_in, c_out, stride) of every basic block."""
    c_in = self.channels[0]
    for s, c_out in enumerate(self.channels):
      for i in range(2):
        stride = 2 if (s > 0 and i == 0) else 1
        yield f'stage{s}.block{i}', c_in, c_out, stride
        c_in = c_out

  def param_specs(self):
    specs = _conv_bn_specs('stem', 7, self.in_channels, self.channels[0], False, 'he')
    for prefix, c_in, c_out, stride in self._blocks():
      specs += _conv_bn_specs(f'{prefix}.conv0', 3, c_in, c_out, False, 'he')
      specs += _conv_bn_specs(f'{prefix}.conv1', 3, c_out, c_out, False, 'he')
      if stride != 1 or c_in != c_out:
        specs += _conv_bn_specs(f'{prefix}.shortcut', 1, c_in, c_out, False, 'he')
    return collections.OrderedDict(specs)

  def output_dim(self, input_shape):
    return self.channels[-1]

  def __call__(self, params, images, moments=None, collect_moments=False):
    used = {} if collect_moments else None
    x = tf.nn.relu(self._conv_bn(params, images, 'stem', moments, used, stride=2))
    x = _pool(x, 'max', 3, 2, 'SAME')
    for prefix, _, _, stride in self._blocks():
      shortcut = x
      if f'{prefix}.shortcut.w' in params:
        shortcut = self._conv_bn(params, x, f'{prefix}.shortcut', moments, used, stride)
      y = tf.nn.relu(self._conv_bn(params, x, f'{prefix}.conv0', moments, used, stride))
      y = self._conv_bn(params, y, f'{prefix}.conv1', moments, used)
      x = tf.nn.relu(y + shortcut)
    return tf.reduce_mean(x, axis=[1, 2]), used


class MLP(Backbone):
  """Fully connected layers with an activation after each (e.g. 2x40 or 3x80 ReLU for the
  sinusoid regression of MAML and ALFA, section 4.5). No BatchNorm."""

  def __init__(self, hidden: Sequence[int] = (40, 40), in_features: int = 1,
               activation: str = 'relu', leaky_slope: float = 0.01):
    self.hidden, self.in_features = tuple(hidden), in_features
    self.activation = activation_fn(activation, leaky_slope)

  def param_specs(self):
    specs, d_in = [], self.in_features
    for i, d_out in enumerate(self.hidden):
      specs += [(f'dense{i}.w', ParamSpec((d_in, d_out), 'xavier')),
                (f'dense{i}.b', ParamSpec((d_out,), 'zeros'))]
      d_in = d_out
    return collections.OrderedDict(specs)

  def output_dim(self, input_shape):
    return self.hidden[-1]

  def __call__(self, params, inputs, moments=None, collect_moments=False):
    x = inputs
    for i in range(len(self.hidden)):
      x = self.activation(tf.matmul(x, params[f'dense{i}.w']) + params[f'dense{i}.b'])
    return x, ({} if collect_moments else None)
