"""GFLOP/s of TensorFlow's convolutions on the ALFA 4-CONV shapes (84x84, 48 filters).

The speed floor of a meta-iteration (``meta_step.py``) is set by these kernels: forward,
filter gradient and input gradient of each block's 3x3 convolution for a 1-shot support set
(5 images), a 5-shot one (25) and a query set (75). Each kernel runs alone in a compiled
function, timed over repeats after a warm-up; 2 FLOP per multiply-add. The first line is the
machine's practical peak for the dtype: a large square matrix product.

    python benchmarks/conv_throughput.py [--repeats 20] [--dtype float32|bfloat16]
"""
import argparse
import time

import tensorflow as tf

BLOCKS = ((84, 3), (42, 48), (21, 48), (10, 48))  # (input size, input channels)


def seconds(fn, repeats):
  fn()
  fn()
  start = time.perf_counter()
  for _ in range(repeats):
    fn().numpy()
  return (time.perf_counter() - start) / repeats


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--filters', type=int, default=48)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  args = parser.parse_args()
  f, dtype = args.filters, args.dtype
  a = tf.random.normal([2048, 2048], dtype=dtype)
  t = seconds(tf.function(lambda: tf.matmul(a, a)), args.repeats)
  print(f'{dtype} peak: 2048x2048 matrix product {t * 1e3:.1f} ms, '
        f'{2 * 2048**3 / t / 1e9:.0f} GFLOP/s')
  print(f'{"images":>6s} {"input":>10s} {"forward":>15s} {"filter grad":>15s} '
        f'{"input grad":>15s}   (ms, GFLOP/s)')
  for n in (5, 25, 75):
    for size, c in BLOCKS:
      x = tf.random.normal([n, size, size, c], dtype=dtype)
      w = tf.random.normal([3, 3, c, f], dtype=dtype)
      dy = tf.random.normal([n, size, size, f], dtype=dtype)
      kernels = (
          tf.function(lambda: tf.nn.conv2d(x, w, 1, 'SAME')),
          tf.function(lambda: tf.compat.v1.nn.conv2d_backprop_filter(
              x, [3, 3, c, f], dy, [1, 1, 1, 1], 'SAME')),
          tf.function(lambda: tf.compat.v1.nn.conv2d_backprop_input(
              [n, size, size, c], w, dy, [1, 1, 1, 1], 'SAME')))
      gflop = 2 * n * size * size * c * f * 9 / 1e9
      cells = []
      for kernel in kernels:
        t = seconds(kernel, args.repeats)
        cells.append(f'{t * 1e3:6.2f} {gflop / t:6.0f}')
      print(f'{n:6d} {f"{size}x{size}x{c}":>10s} {cells[0]:>15s} {cells[1]:>15s} {cells[2]:>15s}')


if __name__ == '__main__':
  main()
