"""Upstream Meta-Dataset's ResNets as functional alfa_tf backbones, layer for layer.

``Learner.embedding_fn = @resnet`` (ResNet-18), ``@resnet34`` and ``@wide_resnet`` build these,
so that a learner computes what upstream's learner computes with the same weights, and loads
upstream's pretrained checkpoints (``meta_dataset_ext.pretrained``). Both follow upstream's
``models/functional_backbones.py`` (facts, not code):

``UpstreamResNet(blocks)``: ResNet-18 with ``blocks=(2, 2, 2, 2)``, ResNet-34 with (3, 4, 6, 3).
  Input resized (bilinear, corners aligned) to ceil(h / 32) * 32 + 1 pixels (upstream's
  "DeepLab alignment": 126 -> 129; ``deeplab_alignment=False`` skips it); conv 7x7/2 (64) + BN +
  ReLU; max-pool 3x3/2 'SAME'; four stages (64, 128, 256, 512 channels; stride 2 from the
  second) of basic blocks conv 3x3 + BN + ReLU, conv 3x3 + BN, plus a shortcut, ReLU; the
  first block of *every* stage has a 1x1 conv + BN projection shortcut (also the first stage,
  where the shape does not change); global average pooling. (``alfa_tf.ResNet18`` has no
  first-stage projection and no input resize.)
``UpstreamWideResNet(n=2, k=2)``: conv 3x3 (16, no BN); three stages (16k, 32k, 64k channels;
  stride 2 from the second) of n pre-activation blocks BN + ReLU + conv 3x3, BN + ReLU +
  conv 3x3, plus the input or a 1x1 conv of the first activation (no ReLU after the sum); the
  first stage's blocks project when 16k != 16, later stages' first blocks always, their other
  blocks as the first stage's; BN + ReLU; global average pooling.

Convolutions are 'SAME', without bias; BatchNorm uses batch statistics (eps 1e-5), or the
support set's moments for the query set, as every alfa_tf backbone. Parameter names follow
upstream's variable scopes ('conv2_x.bottleneck_0.conv1.w' is upstream's
'resnet18/conv2_x/bottleneck_0/conv1/weight'); ``pretrained.upstream_variable_name`` maps them.
Initial values: He normal convolutions (upstream draws a truncated normal of std 0.1), BN
scale 1 and offset 0.
"""
import collections
import math
from typing import Sequence

import gin
import tensorflow as tf

from alfa_tf import backbones as alfa_backbones

STAGE_CHANNELS = (64, 128, 256, 512)


def _conv_specs(prefix, k, c_in, c_out):
  return [(f'{prefix}.w', alfa_backbones.ParamSpec((k, k, c_in, c_out), 'he'))]


def _bn_specs(prefix, channels):
  return [(f'{prefix}.bn_scale', alfa_backbones.ParamSpec((channels,), 'ones', adapted=False)),
          (f'{prefix}.bn_offset', alfa_backbones.ParamSpec((channels,), 'zeros',
                                                           adapted=False))]


def _conv(params, x, prefix, stride=1):
  return tf.nn.conv2d(x, params[f'{prefix}.w'], stride, 'SAME')


def _bn(params, x, prefix, moments_in, moments_out, eps):
  """BatchNorm of ``x`` with ``<prefix>.bn_scale`` / ``.bn_offset`` (batch statistics, or
  ``moments_in[prefix]``); records the moments used in ``moments_out``."""
  x, used = alfa_backbones.batch_norm(
      x, params[f'{prefix}.bn_scale'], params[f'{prefix}.bn_offset'], eps,
      None if moments_in is None else moments_in[prefix], moments_out is not None)
  if moments_out is not None:
    moments_out[prefix] = used
  return x


def aligned_size(size: int) -> int:
  """Upstream's DeepLab alignment of the input size: ceil(size / 32) * 32 + 1."""
  return math.ceil(size / 32) * 32 + 1


class UpstreamResNet(alfa_backbones.ConvBNMixin, alfa_backbones.Backbone):
  """Upstream's ResNet-18 / ResNet-34 (module docstring)."""

  def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), deeplab_alignment: bool = True,
               in_channels: int = 3, bn_eps: float = 1e-5):
    self.blocks, self.deeplab_alignment = tuple(blocks), deeplab_alignment
    self.in_channels, self.bn_eps = in_channels, bn_eps
    self.upstream_scope = {(2, 2, 2, 2): 'resnet18', (3, 4, 6, 3): 'resnet34'}.get(
        self.blocks)

  def _blocks(self):
    """Yields (prefix, c_in, c_out, stride, projects) of every block."""
    c_in = STAGE_CHANNELS[0]
    for stage, (count, c_out) in enumerate(zip(self.blocks, STAGE_CHANNELS)):
      for i in range(count):
        stride = 2 if stage > 0 and i == 0 else 1
        yield f'conv{stage + 2}_x.bottleneck_{i}', c_in, c_out, stride, i == 0
        c_in = c_out

  def param_specs(self):
    specs = _conv_specs('conv1', 7, self.in_channels, STAGE_CHANNELS[0])
    specs += _bn_specs('conv1', STAGE_CHANNELS[0])
    for prefix, c_in, c_out, _, projects in self._blocks():
      for name, k, c in (('conv1', 3, c_in), ('conv2', 3, c_out)) + (
          (('identity.projection_conv', 1, c_in),) if projects else ()):
        specs += _conv_specs(f'{prefix}.{name}', k, c, c_out) + _bn_specs(f'{prefix}.{name}',
                                                                           c_out)
    return collections.OrderedDict(specs)

  def output_dim(self, input_shape):
    return STAGE_CHANNELS[-1]

  def __call__(self, params, images, moments=None, collect_moments=False):
    used = {} if collect_moments else None
    x = images
    if self.deeplab_alignment:
      size = aligned_size(int(images.shape[1]))
      x = tf.cast(tf.raw_ops.ResizeBilinear(images=x, size=[size, size], align_corners=True),
                  images.dtype)
    x = tf.nn.relu(self._conv_bn(params, x, 'conv1', moments, used, stride=2))
    x = tf.nn.max_pool2d(x, 3, 2, 'SAME')
    for prefix, _, _, stride, projects in self._blocks():
      h = tf.nn.relu(self._conv_bn(params, x, f'{prefix}.conv1', moments, used, stride))
      h = self._conv_bn(params, h, f'{prefix}.conv2', moments, used)
      if projects:
        x = self._conv_bn(params, x, f'{prefix}.identity.projection_conv', moments, used,
                          stride)
      x = tf.nn.relu(x + h)
    return tf.reduce_mean(x, axis=[1, 2]), used


class UpstreamWideResNet(alfa_backbones.Backbone):
  """Upstream's Wide ResNet (module docstring); upstream's ``wide_resnet`` is n = k = 2."""

  def __init__(self, n: int = 2, k: int = 2, in_channels: int = 3, bn_eps: float = 1e-5):
    self.n, self.k, self.in_channels, self.bn_eps = n, k, in_channels, bn_eps
    self.widths = tuple(w * k for w in (16, 32, 64))
    self.upstream_scope = 'wide_resnet'

  def _blocks(self):
    """Yields (prefix, c_in, c_out, stride, projects) of every block."""
    later_blocks_project = self.widths[0] != 16
    c_in = 16
    for stage, c_out in enumerate(self.widths):
      for i in range(self.n):
        projects = later_blocks_project if i > 0 or stage == 0 else True
        stride = 2 if stage > 0 and i == 0 else 1
        yield f'conv{stage + 2}_x.wide_block_{i}', c_in, c_out, stride, projects
        c_in = c_out

  def param_specs(self):
    specs = _conv_specs('conv1', 3, self.in_channels, 16)
    for prefix, c_in, c_out, _, projects in self._blocks():
      specs += _bn_specs(f'{prefix}.conv1', c_in) + _conv_specs(f'{prefix}.conv1', 3, c_in,
                                                                c_out)
      specs += _bn_specs(f'{prefix}.conv2', c_out) + _conv_specs(f'{prefix}.conv2', 3, c_out,
                                                                 c_out)
      if projects:
        specs += _conv_specs(f'{prefix}.identity.projection_conv', 1, c_in, c_out)
    specs += _bn_specs('embedding_layer', self.widths[-1])
    return collections.OrderedDict(specs)

  def output_dim(self, input_shape):
    return self.widths[-1]

  def __call__(self, params, images, moments=None, collect_moments=False):
    used = {} if collect_moments else None
    bn_relu = lambda x, prefix: tf.nn.relu(_bn(params, x, prefix, moments, used, self.bn_eps))
    x = _conv(params, images, 'conv1')
    for prefix, _, _, stride, projects in self._blocks():
      out_1 = bn_relu(x, f'{prefix}.conv1')
      h = _conv(params, out_1, f'{prefix}.conv1', stride)
      h = _conv(params, bn_relu(h, f'{prefix}.conv2'), f'{prefix}.conv2')
      if projects:
        x = _conv(params, out_1, f'{prefix}.identity.projection_conv', stride)
      x = x + h
    x = bn_relu(x, 'embedding_layer')
    return tf.reduce_mean(x, axis=[1, 2]), used


def _with_weight_decay(backbone, weight_decay: float):
  backbone.weight_decay = weight_decay
  return backbone


def resnet(weight_decay: float = 0.0, deeplab_alignment: bool = True, max_stride=None):
  """Upstream's ``resnet`` (ResNet-18) as ``Learner.embedding_fn = @resnet``; ``weight_decay``
  is the outer-loss L2 weight of its convolution kernels."""
  _check_max_stride('resnet', max_stride)
  return _with_weight_decay(UpstreamResNet((2, 2, 2, 2), deeplab_alignment), weight_decay)


@gin.configurable('resnet34')
def resnet34(weight_decay: float = 0.0, deeplab_alignment: bool = True, max_stride=None):
  """Upstream's ``resnet34``: ``Learner.embedding_fn = @resnet34``."""
  _check_max_stride('resnet34', max_stride)
  return _with_weight_decay(UpstreamResNet((3, 4, 6, 3), deeplab_alignment), weight_decay)


@gin.configurable('wide_resnet')
def wide_resnet(weight_decay: float = 0.0):
  """Upstream's ``wide_resnet`` (n = k = 2): ``Learner.embedding_fn = @wide_resnet``."""
  return _with_weight_decay(UpstreamWideResNet(2, 2), weight_decay)


def _check_max_stride(name: str, max_stride) -> None:
  if max_stride is not None:
    raise ValueError(f'{name}.max_stride = {max_stride!r} is not supported (only None: the '
                     'full strides, as upstream\'s default).')
