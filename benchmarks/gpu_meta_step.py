"""Updates per second and peak GPU memory: fo-Proto-MAML vs ALFA + fo-Proto-MAML on a GPU.

Backbones: 4-CONV (64 filters) at 84x84 and ResNet-18 at 126x126; first and second order;
four execution modes: plain tf.function, XLA (jit_compile) and mixed precision (bfloat16 or
float16 backbone, float32 meta-parameters and update rule; float16 with loss scaling). 5-way 5-shot, 10 queries per class,
5 inner steps, meta-batch 2, Adam. One prepared run for a lent GPU machine:

    python benchmarks/gpu_meta_step.py --json benchmarks/results/gpu_meta_step.json

``--smoke`` runs every configuration at toy size on any device (checks the script itself).
"""
import argparse
import itertools
import json
import time

import numpy as np
import tensorflow as tf

import alfa_tf

MODES = ('tf.function', 'xla', 'mixed_bfloat16', 'mixed_float16')


def make_learner(learner, backbone, order, mode, image_size, smoke):
  backbones = {'conv4': lambda: alfa_tf.Conv4(filters=4 if smoke else 64, activation='relu'),
               'resnet18': lambda: alfa_tf.ResNet18(
                   channels=(4, 4, 8, 8) if smoke else (64, 128, 256, 512))}
  kwargs = dict(num_classes=5, input_shape=(image_size, image_size, 3), num_steps=5,
                first_order=(order == 'first'), head='proto', query_bn='support',
                check_finite=mode != 'xla', check_inputs=mode != 'xla',
                backbone_dtype=mode[len('mixed_'):] if mode.startswith('mixed_') else None)
  cls = alfa_tf.ALFALearner if learner == 'ALFA+fo-Proto-MAML' else alfa_tf.MAMLLearner
  return cls(backbones[backbone](), **kwargs)


def measure(learner_name, backbone, order, mode, args):
  image_size = {'conv4': 84, 'resnet18': 126}[backbone] if not args.smoke else 16
  learner = make_learner(learner_name, backbone, order, mode, image_size, args.smoke)
  optimizer = tf.keras.optimizers.Adam(1e-3)
  if mode == 'mixed_float16':
    optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
  optimizer.build(learner.trainable_variables)
  rng = np.random.default_rng(0)
  batch = [{'support_images': tf.constant(rng.uniform(-1, 1, (25, image_size, image_size, 3)),
                                          tf.float32),
            'support_labels': tf.constant(np.repeat(np.arange(5), 5), tf.int32),
            'query_images': tf.constant(rng.uniform(-1, 1, (50, image_size, image_size, 3)),
                                        tf.float32),
            'query_labels': tf.constant(np.repeat(np.arange(5), 10), tf.int32)}
           for _ in range(2)]
  step = tf.function(lambda b: learner.meta_update(b, optimizer), jit_compile=mode == 'xla')
  gpu = bool(tf.config.list_logical_devices('GPU'))
  for _ in range(args.warmup):
    step(batch).numpy()
  if gpu:
    tf.config.experimental.reset_memory_stats('GPU:0')
  start = time.perf_counter()
  for _ in range(args.iterations):
    step(batch).numpy()
  seconds = (time.perf_counter() - start) / args.iterations
  peak = tf.config.experimental.get_memory_info('GPU:0')['peak'] / 2**20 if gpu else None
  return dict(learner=learner_name, backbone=backbone, image_size=image_size, order=order,
              mode=mode, updates_per_second=round(1 / seconds, 3),
              peak_gpu_memory_mb=None if peak is None else round(peak),
              device=tf.config.experimental.get_device_details(
                  tf.config.list_physical_devices('GPU')[0]).get('device_name') if gpu else 'CPU',
              tensorflow=tf.__version__)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--iterations', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--smoke', action='store_true')
  parser.add_argument('--json')
  args = parser.parse_args()
  records = []
  for learner, backbone, order, mode in itertools.product(
      ('fo-Proto-MAML', 'ALFA+fo-Proto-MAML'), ('conv4', 'resnet18'), ('first', 'second'),
      MODES):
    try:
      records.append(measure(learner, backbone, order, mode, args))
    except (tf.errors.ResourceExhaustedError, tf.errors.InvalidArgumentError) as error:
      records.append(dict(learner=learner, backbone=backbone, order=order, mode=mode,
                          error=str(error).splitlines()[0][:200]))
    print(json.dumps(records[-1]), flush=True)
  print(f'\n{"learner":20s} {"backbone":9s} {"order":6s} {"mode":15s} {"upd/s":>8s} '
        f'{"peak MB":>8s}')
  for r in records:
    print(f'{r["learner"]:20s} {r["backbone"]:9s} {r["order"]:6s} {r["mode"]:15s} '
          f'{r.get("updates_per_second", float("nan")):8.2f} '
          f'{str(r.get("peak_gpu_memory_mb", r.get("error", ""))):>8s}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(records, f, indent=1)


if __name__ == '__main__':
  main()
