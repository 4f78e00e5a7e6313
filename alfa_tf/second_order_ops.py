"""BatchNorm and max pooling on TensorFlow's fused kernels, with the derivatives a meta-gradient
needs.

A second-order meta-gradient differentiates the inner loop's gradient computation, so it
needs the derivative of every backward op. For the fused BatchNorm gradient TensorFlow
re-derives the gradient with explicit ops and differentiates those (dozens of elementwise ops
and reductions over the full feature map), and for max pooling it runs a generic
MaxPoolGradGrad kernel. After the convolutions these were the largest costs of a second-order
ALFA step (benchmarks/results/meta_step.md). ``batch_norm_train`` and ``max_pool`` give the
same values and the same first derivatives as ``tf.nn.fused_batch_norm`` / ``tf.nn.max_pool2d``
(they call the same kernels), and compute the second derivatives with TensorFlow's fused
kernels and a handful of elementwise ops.

``batch_norm_moments`` and ``batch_norm_given_moments`` serve upstream Meta-Dataset's query
BatchNorm (the query set normalised with the support set's moments at theta_{i,S}): that pass
runs after the inner loop, so a meta-gradient of any order differentiates it once. They give
its first derivatives, moments included, on the fused kernels (a quarter of the passes over
the feature maps that the explicit formula takes) and refuse a second differentiation
(``tf.raw_ops.PreventGradient``) rather than return an incomplete one. Followed by max pooling
(4-CONV), they run as one op, ``batch_norm_max_pool``, whose backward pass recomputes the
BatchNorm output instead of keeping it: of the activations that pass keeps for the
meta-gradient, the full-resolution BatchNorm outputs are about 40%.
"""
import tensorflow as tf

_NHWC_AXES = [0, 1, 2]


def batch_norm_train(x, scale, offset, eps):
  """BatchNorm of an NHWC float tensor with its own batch statistics (training mode).

  y = scale * x_hat + offset, x_hat = (x - mean) / sigma, sigma = sqrt(var + eps), with the
  per-channel mean and biased variance over the N elements of each channel. The backward op
  is TensorFlow's fused one:

      dx = (scale / sigma) (g - mean(g) - x_hat mean(g x_hat)),  dscale = sum(g x_hat),
      doffset = sum(g),

  for the output gradient g. Its own derivative, for cotangents (a, c_scale, c_offset) of
  (dx, dscale, doffset), is

      d/dg     = (scale / sigma) (a - mean(a) - x_hat mean(a x_hat)) + c_scale x_hat + c_offset
      d/dscale = S / sigma,   S = N (mean(a g) - mean(a) mean(g) - mean(a x_hat) mean(g x_hat))
      d/dx     = (v - mean(v) - x_hat mean(v x_hat)) / sigma - scale S x_hat / (N sigma^2),
                 v = -(scale / sigma) (a mean(g x_hat) + g mean(a x_hat)) + c_scale g,

  (d x_hat / dx = (I - 1 1^T / N - x_hat x_hat^T / N) / sigma, exact with eps). The first
  term of d/dg is the fused backward op applied to ``a``, which also returns N mean(a x_hat)
  and N mean(a); mean(g) and mean(g x_hat) come from the first backward pass.

  Args:
    x: [batch, height, width, channels], float16, bfloat16 or float32.
    scale, offset: [channels] float32 (BatchNorm gamma and beta).
    eps: added to the variance.
  """

  @tf.custom_gradient
  def forward(x, scale, offset):
    y, mean, variance, reserve = _fused_batch_norm(x, scale, offset, eps)
    inv_sigma = tf.math.rsqrt(variance + eps)

    def first_derivative(g):
      return _batch_norm_backward(eps)(g, x, scale, mean, inv_sigma, *reserve)
    return y, first_derivative

  return forward(x, scale, offset)


# Every tensor the backward pass reads is an argument, so that in TF1 graph mode the custom
# gradient does not reach back into the variables that produced them.
def _batch_norm_backward(eps):
  """(dx, dscale, doffset) of ``batch_norm_train``; its derivative as in that docstring."""

  @tf.custom_gradient
  def backward(g, x, scale, mean, inv_sigma, reserve_1, reserve_2, reserve_3):
    reserve = (reserve_1, reserve_2, reserve_3)
    dx, sum_g_xhat, sum_g = _fused_batch_norm_grad(g, x, scale, reserve, eps)

    def second_derivative(a, c_scale, c_offset):
      d_g, sum_a_xhat, sum_a = _fused_batch_norm_grad(a, x, scale, reserve, eps)
      n = _elements_per_channel(x)
      m_g, m_g_xhat, m_a, m_a_xhat = sum_g / n, sum_g_xhat / n, sum_a / n, sum_a_xhat / n
      a32, g32, x32 = (tf.cast(t, tf.float32) for t in (a, g, x))
      m_ag = tf.reduce_mean(a32 * g32, _NHWC_AXES)
      k = scale * inv_sigma
      s = n * (m_ag - m_a * m_g - m_a_xhat * m_g_xhat)
      param_cotangents = c_scale is not None or c_offset is not None
      c_scale = tf.zeros_like(scale) if c_scale is None else c_scale
      # v = p a + q g, so mean(v) and mean(v x_hat) are per-channel combinations.
      p, q = -k * m_g_xhat, c_scale - k * m_a_xhat
      mean_v, mean_v_xhat = p * m_a + q * m_g, p * m_a_xhat + q * m_g_xhat

      def xhat_times(c):
        """x_hat * c as x * slope + intercept: one pass over x."""
        return c * inv_sigma, -mean * inv_sigma * c

      slope, intercept = xhat_times(-inv_sigma * mean_v_xhat - scale * s * inv_sigma**2 / n)
      d_x = tf.add_n([a32 * (inv_sigma * p), g32 * (inv_sigma * q), x32 * slope])
      d_x += intercept - inv_sigma * mean_v
      if param_cotangents:
        c_offset = tf.zeros_like(scale) if c_offset is None else c_offset
        slope, intercept = xhat_times(c_scale)
        d_g += tf.cast(x32 * slope + (intercept + c_offset), d_g.dtype)
      return (d_g, tf.cast(d_x, x.dtype), inv_sigma * s) + (None,) * 5

    return (dx, sum_g_xhat, sum_g), second_derivative

  return backward


def batch_norm_moments(x, scale, offset, eps):
  """BatchNorm of an NHWC tensor with its own batch statistics, and those statistics:
  (y, mean, variance), the variance biased, mean and variance float32 [channels].

  The moments are outputs that a gradient flows back through (upstream's
  ``backprop_through_moments``): for cotangents (g, c_mean, c_var) of (y, mean, variance),

      dx = FusedBatchNormGrad(g) + c_mean / N + 2 c_var (x - mean) / N,

  dscale and doffset are the fused op's. First derivatives only (see the module docstring).

  Args: as ``batch_norm_train``.
  """

  @tf.custom_gradient
  def forward(x, scale, offset):
    y, mean, variance, reserve = _fused_batch_norm(x, scale, offset, eps)

    def first_derivative(g, c_mean, c_var):
      return _once(*_moments_backward(g, x, scale, mean, reserve, eps, c_mean, c_var))
    return (y, mean, variance), first_derivative

  return forward(x, scale, offset)


def _moments_backward(g, x, scale, mean, reserve, eps, c_mean, c_var):
  """(dx, dscale, doffset) of ``batch_norm_moments`` (its docstring's formula)."""
  dx, dscale, doffset = _fused_batch_norm_grad(g, x, scale, reserve, eps)
  n = _elements_per_channel(x)
  c_mean = tf.zeros_like(mean) if c_mean is None else c_mean
  c_var = tf.zeros_like(mean) if c_var is None else c_var
  slope = 2.0 * c_var / n
  dx += tf.cast(tf.cast(x, tf.float32) * slope + (c_mean / n - slope * mean), dx.dtype)
  return dx, dscale, doffset


def batch_norm_max_pool(x, scale, offset, eps, size, moments=None):
  """``max_pool(batch_norm_given_moments(x, *moments, ...))``, or without ``moments``
  ``max_pool(batch_norm_moments(x, ...)[0])`` with that BatchNorm's (mean, variance): returns
  (pooled output, (mean, variance) used).

  The same values and first derivatives as those two ops in a row, but the backward pass
  recomputes the BatchNorm output (the same kernel on the same inputs, so the same values and
  the same elements receive max pooling's gradient) once the output gradient exists, instead
  of keeping that full-resolution tensor, and the pooled output, from the forward pass until
  then. First derivatives only (see the module docstring).

  Args: as ``batch_norm_train``; ``size``: the pooling window and stride (VALID);
  ``moments``: float32 (mean, variance) [channels] to normalise with, or None for the
  batch's own (biased variance), which are then outputs a gradient flows back through.
  """
  if moments is not None:
    return _given_moments_max_pool(x, *moments, scale, offset, eps, size), moments

  @tf.custom_gradient
  def forward(x, scale, offset):
    y, mean, variance, reserve = _fused_batch_norm(x, scale, offset, eps)
    pooled = tf.nn.max_pool2d(y, size, size, 'VALID')

    def first_derivative(d_pooled, c_mean, c_var):
      g = _recomputed_max_pool_grad(
          d_pooled, x, lambda x: _fused_batch_norm(x, scale, offset, eps)[0], size)
      return _once(*_moments_backward(g, x, scale, mean, reserve, eps, c_mean, c_var))
    return (pooled, mean, variance), first_derivative

  pooled, mean, variance = forward(x, scale, offset)
  return pooled, (mean, variance)


def _given_moments_max_pool(x, mean, variance, scale, offset, eps, size):
  """``batch_norm_max_pool`` with given moments."""

  @tf.custom_gradient
  def forward(x, mean, variance, scale, offset):
    y, reserve_3 = _normalize(x, mean, variance, scale, offset, eps)
    pooled = tf.nn.max_pool2d(y, size, size, 'VALID')

    def first_derivative(d_pooled):
      g = _recomputed_max_pool_grad(
          d_pooled, x, lambda x: _normalize(x, mean, variance, scale, offset, eps)[0], size)
      return _once(*_given_moments_backward(g, x, mean, variance, scale, reserve_3, eps))
    return pooled, first_derivative

  return forward(x, mean, variance, scale, offset)


def _recomputed_max_pool_grad(d_pooled, x, normalize, size):
  """Max pooling's gradient at ``normalize(x)``, that BatchNorm output recomputed once
  ``d_pooled`` exists: ``x`` is read under a control dependency on it, so the recomputation
  runs in the backward pass rather than as soon as ``x`` is computed (which would keep its
  result alive). The same kernel on the same inputs gives the forward pass's values, so the
  same element of each window receives the gradient."""
  with tf.control_dependencies([d_pooled]):
    y = normalize(tf.identity(x))
  return _max_pool_grad(y, tf.nn.max_pool2d(y, size, size, 'VALID'), d_pooled, size)


def batch_norm_given_moments(x, mean, variance, scale, offset, eps):
  """y = scale (x - mean) / sqrt(variance + eps) + offset for an NHWC tensor and given
  per-channel float32 ``mean`` and ``variance`` (the fused kernel's inference mode).

  Derivatives, for the output cotangent g and inv = 1 / sqrt(variance + eps): dx, dscale =
  sum(g x_hat) and doffset = sum(g) from the fused backward op, and

      d/dmean = -scale inv doffset,    d/dvariance = -scale inv^2 dscale / 2.

  First derivatives only (see the module docstring).
  """

  @tf.custom_gradient
  def forward(x, mean, variance, scale, offset):
    y, reserve_3 = _normalize(x, mean, variance, scale, offset, eps)

    def first_derivative(g):
      return _once(*_given_moments_backward(g, x, mean, variance, scale, reserve_3, eps))
    return y, first_derivative

  return forward(x, mean, variance, scale, offset)


def _normalize(x, mean, variance, scale, offset, eps):
  """The fused forward op in inference mode: (y, the reserve space its backward op reads)."""
  y, _, _, _, _, reserve_3 = tf.raw_ops.FusedBatchNormV3(
      x=x, scale=scale, offset=offset, mean=mean, variance=variance, epsilon=eps,
      exponential_avg_factor=1.0, data_format='NHWC', is_training=False)
  return y, reserve_3


def _given_moments_backward(g, x, mean, variance, scale, reserve_3, eps):
  """(dx, dmean, dvariance, dscale, doffset) of ``batch_norm_given_moments`` (its
  docstring's formula)."""
  dx, dscale, doffset = _fused_batch_norm_grad(g, x, scale, (mean, variance, reserve_3), eps,
                                               is_training=False)
  inv = tf.math.rsqrt(variance + eps)
  return dx, -scale * inv * doffset, -0.5 * scale * inv * inv * dscale, dscale, doffset


def _once(*grads):
  """The gradients, marked so that differentiating them raises instead of giving an
  incomplete second derivative."""
  return tuple(tf.raw_ops.PreventGradient(input=g, message=(
      'The BatchNorm of the query set with the support set\'s moments has first derivatives '
      'only (the meta-gradient needs no more). For higher derivatives use float64, where '
      'BatchNorm runs as explicit ops.')) for g in grads)


def _fused_batch_norm(x, scale, offset, eps):
  """TensorFlow's fused forward op in training mode: (y, batch mean, biased batch variance,
  the reserve spaces its backward op reads)."""
  empty = tf.constant([], tf.float32)
  y, mean, unbiased_var, *reserve = tf.raw_ops.FusedBatchNormV3(
      x=x, scale=scale, offset=offset, mean=empty, variance=empty, epsilon=eps,
      exponential_avg_factor=1.0, data_format='NHWC', is_training=True)
  # The op normalises with the biased variance and returns the unbiased one.
  n = _elements_per_channel(x)
  variance = tf.where(n > 1.0, unbiased_var * ((n - 1.0) / n), tf.zeros_like(unbiased_var))
  return y, mean, variance, reserve


def _elements_per_channel(x):
  return tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)


def _fused_batch_norm_grad(g, x, scale, reserve, eps, is_training=True):
  """TensorFlow's fused backward op: (dx, sum(g x_hat), sum(g)). ``reserve``: the forward
  op's reserve spaces in training mode; in inference mode (mean, variance, its third)."""
  return tf.raw_ops.FusedBatchNormGradV3(
      y_backprop=g, x=x, scale=scale, reserve_space_1=reserve[0], reserve_space_2=reserve[1],
      reserve_space_3=reserve[2], epsilon=eps, data_format='NHWC',
      is_training=is_training)[:3]


def max_pool(x, size):
  """Max pooling over non-overlapping ``size`` x ``size`` windows (stride ``size``, VALID).

  Values and first derivative are ``tf.nn.max_pool2d``'s (MaxPoolGrad sends each window's
  gradient to one element of it). The backward pass is linear in the output gradient, so its
  derivative is its adjoint: read each window's cotangent at the element that received the
  gradient. That element is marked by MaxPoolGrad of ones (the same kernel, so ties resolve
  the same way), and with one mark per window a sum pool reads it (exactly for power-of-two
  windows: the pool's division and the multiplication undoing it are then exact).
  """

  @tf.custom_gradient
  def forward(x):
    y = tf.nn.max_pool2d(x, size, size, 'VALID')

    def first_derivative(dy):
      return _max_pool_backward(size)(dy, x, y)
    return y, first_derivative

  return forward(x)


def _max_pool_grad(x, y, dy, size):
  window = [1, size, size, 1]
  return tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=dy, ksize=window,
                                strides=window, padding='VALID')


def _max_pool_backward(size):
  """The gradient of ``max_pool``; its derivative reads the marked elements."""

  @tf.custom_gradient
  def backward(dy, x, y):
    def second_derivative(a):
      marked = _max_pool_grad(x, y, tf.ones_like(y), size)
      d_dy = tf.nn.avg_pool2d(a * marked, size, size, 'VALID') * float(size * size)
      return d_dy, None, None
    return _max_pool_grad(x, y, dy, size), second_derivative

  return backward
