"""The closed-form second derivatives of BatchNorm and max pooling (alfa_tf.second_order_ops)
against autodiff of the explicit BatchNorm formula in float64 and TensorFlow's MaxPoolGradGrad.
"""
import numpy as np
import pytest
import tensorflow as tf

from alfa_tf import backbones, second_order_ops

EPS = 1e-5


def explicit_batch_norm(x, scale, offset, eps):
  return backbones.explicit_batch_norm(x, scale, offset, eps)[0]


def derivatives(batch_norm, x, scale, offset, param_cotangents, dtype):
  """The output y, the gradient (dx, dscale, doffset) of a loss, and the gradient of a
  function of that gradient, as float64 tensors.

  With ``param_cotangents`` the outer function reads dscale and doffset as well as dx, so the
  second derivative receives cotangents for all three outputs of the backward pass.
  """
  param_dtype = tf.float64 if dtype == tf.float64 else tf.float32
  rng = np.random.default_rng(7)
  w = tf.constant(rng.normal(size=x.shape), dtype)
  w2 = tf.constant(rng.normal(size=x.shape), dtype)
  v = tf.constant(rng.normal(size=scale.shape), param_dtype)
  x = tf.cast(x, dtype)
  scale, offset = tf.cast(scale, param_dtype), tf.cast(offset, param_dtype)
  with tf.GradientTape() as outer:
    outer.watch([x, scale, offset])
    with tf.GradientTape() as inner:
      inner.watch([x, scale, offset])
      y = batch_norm(x, scale, offset, EPS)
      loss = tf.reduce_sum(tf.cast(w * y * y, param_dtype))
    dx, dscale, doffset = inner.gradient(loss, [x, scale, offset])
    meta = tf.reduce_sum(tf.cast(w2 * dx * dx, param_dtype))
    if param_cotangents:
      meta += tf.reduce_sum(v * dscale) + tf.reduce_sum(doffset * doffset)
  second = outer.gradient(meta, [x, scale, offset])
  return [tf.cast(t, tf.float64) for t in [y, dx, dscale, doffset] + second]


def first_and_second_derivatives(*args):
  return [t.numpy() for t in derivatives(*args)]


def assert_relative(ours, reference, tolerance):
  for name, a, b in zip(['y', 'dx', 'dscale', 'doffset', 'd2x', 'd2scale', 'd2offset'],
                        ours, reference):
    scale = np.max(np.abs(b)) + 1e-30
    assert np.max(np.abs(a - b)) <= tolerance * scale, name


def inputs(shape, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(1.0, 2.0, shape), rng.normal(1.0, 0.5, shape[-1:]),
          rng.normal(0.0, 0.5, shape[-1:]))


@pytest.mark.parametrize('param_cotangents', [False, True])
@pytest.mark.parametrize('shape', [(6, 5, 5, 4), (1, 3, 1, 2), (3, 2, 1, 5)])
def test_batch_norm_second_derivative_matches_explicit_float64(param_cotangents, shape):
  x, scale, offset = inputs(shape)
  ours = first_and_second_derivatives(second_order_ops.batch_norm_train, x, scale, offset,
                                      param_cotangents, tf.float32)
  reference = first_and_second_derivatives(explicit_batch_norm, x, scale, offset,
                                           param_cotangents, tf.float64)
  assert_relative(ours, reference, 1e-5)


def test_batch_norm_of_a_single_element_per_channel():
  """N = 1: the output is the offset and every derivative with respect to x is zero (up to
  float32 round-off of terms of size 1 / sqrt(eps))."""
  x, scale, offset = inputs((1, 1, 1, 3))
  ours = first_and_second_derivatives(second_order_ops.batch_norm_train, x, scale, offset,
                                      True, tf.float32)
  np.testing.assert_allclose(ours[0].ravel(), offset, rtol=1e-6)
  assert np.all(np.isfinite(np.concatenate([t.ravel() for t in ours])))
  assert not np.any(ours[1])
  np.testing.assert_allclose(ours[4], 0.0, atol=1e-4)


@pytest.mark.parametrize('jit_compile', [False, True])
def test_batch_norm_second_derivative_compiled(jit_compile):
  """Inside tf.function, and compiled by XLA (whose fused BatchNorm returns its variance
  through its own kernel), the same derivatives as the explicit formula."""
  x, scale, offset = inputs((4, 6, 6, 3), seed=1)
  compiled = tf.function(lambda: derivatives(second_order_ops.batch_norm_train, x, scale,
                                             offset, True, tf.float32),
                         jit_compile=jit_compile)
  reference = first_and_second_derivatives(explicit_batch_norm, x, scale, offset, True,
                                           tf.float64)
  assert_relative([t.numpy() for t in compiled()], reference, 1e-5)


@pytest.mark.parametrize('dtype', [tf.bfloat16, tf.float16])
def test_batch_norm_second_derivative_in_half_precision(dtype):
  x, scale, offset = inputs((6, 5, 5, 4), seed=2)
  half = first_and_second_derivatives(second_order_ops.batch_norm_train, x, scale, offset,
                                      True, dtype)
  full = first_and_second_derivatives(second_order_ops.batch_norm_train, x, scale, offset,
                                      True, tf.float32)
  for a, b in zip(half, full):
    cosine = np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30)
    assert cosine > 0.99


def moments_derivatives(support, query, scale, offset, dtype):
  """Support BatchNorm with its own moments, the query set normalised with them (upstream's
  query BatchNorm), and the gradient of a loss of both outputs, as float64 arrays: the
  values, the moments, and the derivatives for x_support, x_query, scale and offset."""
  param_dtype = tf.float64 if dtype == tf.float64 else tf.float32
  rng = np.random.default_rng(5)
  w_support = tf.constant(rng.normal(size=support.shape), dtype)
  w_query = tf.constant(rng.normal(size=query.shape), dtype)
  support, query = tf.cast(support, dtype), tf.cast(query, dtype)
  scale, offset = tf.cast(scale, param_dtype), tf.cast(offset, param_dtype)
  with tf.GradientTape() as tape:
    tape.watch([support, query, scale, offset])
    y, moments = backbones.batch_norm(support, scale, offset, EPS, collect_moments=True)
    y_query, _ = backbones.batch_norm(query, scale, offset, EPS, moments=moments)
    loss = tf.reduce_sum(tf.cast(w_support * y * y, param_dtype)) + tf.reduce_sum(
        tf.cast(w_query * y_query * y_query, param_dtype))
  grads = tape.gradient(loss, [support, query, scale, offset])
  return [tf.cast(t, tf.float64).numpy() for t in [y, y_query, *moments, *grads]]


@pytest.mark.parametrize('shape', [(6, 5, 5, 4), (2, 1, 1, 3), (1, 3, 2, 2)])
def test_fused_batch_norm_with_moments_matches_explicit_float64(shape):
  """The fused path of the support set's moments and the query set normalised with them:
  values, moments and first derivatives (through the moments too) equal the explicit
  formula's."""
  support, scale, offset = inputs(shape, seed=3)
  query = np.random.default_rng(4).normal(0.5, 1.5, (5,) + shape[1:])
  ours = moments_derivatives(support, query, scale, offset, tf.float32)
  reference = moments_derivatives(support, query, scale, offset, tf.float64)
  for name, a, b in zip(['y', 'y_query', 'mean', 'variance', 'dx_support', 'dx_query',
                         'dscale', 'doffset'], ours, reference):
    assert np.max(np.abs(a - b)) <= 1e-5 * (np.max(np.abs(b)) + 1e-30), name


@pytest.mark.parametrize('jit_compile', [False, True])
def test_fused_batch_norm_with_moments_compiled(jit_compile):
  """Inside tf.function and compiled by XLA: the explicit formula's gradients."""
  support, scale, offset = inputs((4, 6, 6, 3), seed=5)
  query = np.random.default_rng(6).normal(size=(3, 6, 6, 3))
  support_t, query_t = tf.constant(support, tf.float32), tf.constant(query, tf.float32)
  scale_t, offset_t = tf.constant(scale, tf.float32), tf.constant(offset, tf.float32)

  @tf.function(jit_compile=jit_compile)
  def gradients():
    with tf.GradientTape() as tape:
      tape.watch([support_t, query_t, scale_t, offset_t])
      _, moments = backbones.batch_norm(support_t, scale_t, offset_t, EPS,
                                        collect_moments=True)
      y_query, _ = backbones.batch_norm(query_t, scale_t, offset_t, EPS, moments=moments)
      loss = tf.reduce_sum(y_query * y_query * tf.range(3, dtype=tf.float32))
    return tape.gradient(loss, [support_t, query_t, scale_t, offset_t])

  def explicit():
    cast = lambda t: tf.cast(t, tf.float64)
    with tf.GradientTape() as tape:
      ts = [cast(support_t), cast(query_t), cast(scale_t), cast(offset_t)]
      tape.watch(ts)
      _, moments = backbones.explicit_batch_norm(ts[0], ts[2], ts[3], EPS)
      y_query, _ = backbones.explicit_batch_norm(ts[1], ts[2], ts[3], EPS, moments)
      loss = tf.reduce_sum(y_query * y_query * tf.range(3, dtype=tf.float64))
    return tape.gradient(loss, ts)

  for a, b in zip(gradients(), explicit()):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4,
                               atol=1e-5 * np.max(np.abs(b.numpy())))


def test_fused_batch_norm_with_moments_refuses_a_second_derivative():
  """Differentiating its gradient raises (naming what to do) instead of returning a second
  derivative without the moments' terms."""
  support, scale, offset = (tf.constant(t, tf.float32) for t in inputs((4, 3, 3, 2)))
  query = tf.constant(np.random.default_rng(8).normal(size=(2, 3, 3, 2)), tf.float32)
  with tf.GradientTape() as outer:
    outer.watch(support)
    with tf.GradientTape() as inner:
      inner.watch(support)
      _, moments = backbones.batch_norm(support, scale, offset, EPS, collect_moments=True)
      y_query, _ = backbones.batch_norm(query, scale, offset, EPS, moments=moments)
      loss = tf.reduce_sum(y_query ** 2)
    meta = tf.reduce_sum(inner.gradient(loss, support) ** 2)
  with pytest.raises(LookupError, match='first derivatives only'):
    outer.gradient(meta, support)


def pool_derivatives(pool, x, a, dy):
  """max-pool values, the gradient for output cotangent ``dy``, and the derivative of
  <a, gradient> with respect to dy (the second-order term a meta-gradient needs)."""
  with tf.GradientTape() as outer:
    outer.watch(dy)
    with tf.GradientTape() as inner:
      inner.watch(x)
      y = pool(x)
    dx = inner.gradient(y, x, output_gradients=dy)
    inner_product = tf.reduce_sum(a * dx)
  return y, dx, outer.gradient(inner_product, dy)


@pytest.mark.parametrize('dtype', [tf.float32, tf.float64])
@pytest.mark.parametrize('shape,size', [((3, 8, 8, 4), 2), ((2, 7, 9, 3), 2), ((2, 9, 9, 2), 3)])
def test_max_pool_derivatives_equal_tensorflows(dtype, shape, size):
  rng = np.random.default_rng(3)
  x = tf.constant(rng.normal(size=shape), dtype)
  out_shape = (shape[0], shape[1] // size, shape[2] // size, shape[3])
  dy = tf.constant(rng.normal(size=out_shape), dtype)
  a = tf.constant(rng.normal(size=shape), dtype)
  ours = pool_derivatives(lambda t: second_order_ops.max_pool(t, size), x, a, dy)
  theirs = pool_derivatives(lambda t: tf.nn.max_pool2d(t, size, size, 'VALID'), x, a, dy)
  # Exact for power-of-two windows (a sum pool reads the marked element); one rounding of
  # the division and multiplication by 9 for size 3.
  tolerance = 0.0 if size == 2 else 4 * np.finfo(dtype.as_numpy_dtype).eps
  for p, q in zip(ours, theirs):
    np.testing.assert_allclose(p.numpy(), q.numpy(), rtol=tolerance, atol=0)


def test_max_pool_second_derivative_is_the_adjoint_of_the_gradient_with_ties():
  """Windows with tied maxima (flat image regions): the gradient goes to one element per
  window, and the second derivative reads that same element, so <a, grad(dy)> equals
  <second derivative(a), dy> for every dy."""
  rng = np.random.default_rng(4)
  x = tf.constant(np.round(rng.normal(size=(2, 8, 8, 3))), tf.float32)
  a = tf.constant(rng.normal(size=(2, 8, 8, 3)), tf.float32)
  for seed in range(3):
    dy = tf.constant(np.random.default_rng(seed).normal(size=(2, 4, 4, 3)), tf.float32)
    _, dx, d_dy = pool_derivatives(lambda t: second_order_ops.max_pool(t, 2), x, a, dy)
    assert np.count_nonzero(dx.numpy()) == dy.shape.num_elements()
    np.testing.assert_allclose(np.sum(a.numpy() * dx.numpy()), np.sum(d_dy.numpy() * dy.numpy()),
                               rtol=1e-5)


def bn_pool_gradients(fused, support, query, scale, offset, seed=9):
  """Support set BatchNorm (own moments, collected) then 2x2 max pooling, the query set
  normalised with those moments then pooled, and the gradient of a loss of both pooled
  outputs: values, moments and derivatives for x_support, x_query, scale and offset.
  ``fused``: through ``batch_norm_max_pool`` (else the two ops in a row)."""
  rng = np.random.default_rng(seed)
  tensors = [tf.constant(t, tf.float32) for t in (support, query, scale, offset)]
  out = lambda x: (x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3])
  w_support = tf.constant(rng.normal(size=out(support)), tf.float32)
  w_query = tf.constant(rng.normal(size=out(query)), tf.float32)
  w_moments = tf.constant(rng.normal(size=(2,) + support.shape[-1:]), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(tensors)
    x, x_query, scale, offset = tensors
    if fused:
      y, moments = second_order_ops.batch_norm_max_pool(x, scale, offset, EPS, 2)
      y_query, _ = second_order_ops.batch_norm_max_pool(x_query, scale, offset, EPS, 2,
                                                        moments)
    else:
      y, *moments = second_order_ops.batch_norm_moments(x, scale, offset, EPS)
      y_query = second_order_ops.batch_norm_given_moments(x_query, *moments, scale, offset,
                                                          EPS)
      y, y_query = (second_order_ops.max_pool(t, 2) for t in (y, y_query))
    loss = (tf.reduce_sum(w_support * y * y) + tf.reduce_sum(w_query * y_query * y_query) +
            tf.reduce_sum(w_moments * tf.stack(moments)))
  return [t.numpy() for t in [y, y_query, *moments, *tape.gradient(loss, tensors)]]


@pytest.mark.parametrize('shape,ties', [((6, 8, 8, 4), False), ((3, 6, 10, 2), True),
                                        ((1, 2, 2, 3), False)])
def test_batch_norm_max_pool_equals_the_two_ops(shape, ties):
  """One op whose backward recomputes BatchNorm's output: the values, moments and first
  derivatives (through the moments too) of BatchNorm and max pooling in a row, exactly,
  also where windows hold tied maxima (flat regions: the same element gets the gradient)."""
  support, scale, offset = inputs(shape, seed=11)
  query = np.random.default_rng(12).normal(0.5, 1.5, (5,) + shape[1:])
  if ties:
    support, query = np.round(support), np.round(query)
  fused = bn_pool_gradients(True, support, query, scale, offset)
  reference = bn_pool_gradients(False, support, query, scale, offset)
  for name, a, b in zip(['y', 'y_query', 'mean', 'variance', 'dx_support', 'dx_query',
                         'dscale', 'doffset'], fused, reference):
    np.testing.assert_array_equal(a, b, err_msg=name)


def test_batch_norm_max_pool_keeps_no_full_resolution_output():
  """In the compiled forward and backward pass, the forward BatchNorm's output feeds only the
  forward max pooling (the backward pass reads a recomputation made after the output
  gradient exists); and a second differentiation raises."""
  support, scale, offset = (tf.constant(t, tf.float32) for t in inputs((4, 6, 6, 3)))
  query = tf.constant(np.random.default_rng(13).normal(size=(3, 6, 6, 3)), tf.float32)

  def loss_and_gradients():
    with tf.GradientTape() as tape:
      tape.watch([support, query])
      _, moments = backbones.batch_norm(support, scale, offset, EPS, max_pool_size=2)
      y_query, _ = backbones.batch_norm(query, scale, offset, EPS, moments, max_pool_size=2)
      loss = tf.reduce_sum(y_query ** 2)
    return tape.gradient(loss, [support, query])

  graph = tf.function(loss_and_gradients).get_concrete_function().graph
  norms = [op for op in graph.get_operations() if op.type == 'FusedBatchNormV3']
  assert len(norms) == 4  # Two forward, two recomputed.
  forward, recomputed = norms[:2], norms[2:]
  for op in forward:
    assert {c.type for c in op.outputs[0].consumers()} == {'MaxPool'}
  for op in recomputed:
    assert all(inp.op.control_inputs for inp in op.inputs[:1])
  with tf.GradientTape() as outer:
    outer.watch(support)
    meta = tf.reduce_sum(loss_and_gradients()[0] ** 2)
  with pytest.raises(LookupError, match='first derivatives only'):
    outer.gradient(meta, support)
