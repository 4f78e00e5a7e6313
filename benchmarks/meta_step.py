"""Seconds per meta-iteration and peak memory of MAML vs ALFA+MAML, first vs second order.

The workload of the ALFA paper's 4-CONV experiments: 5-way, 1 or 5 shots, 15 queries per
class, 84x84x3 images, 48 filters, 5 inner steps, meta-batch 2, one compiled (tf.function)
outer step with Adam. Each configuration runs in a fresh process so that its peak resident
memory (ru_maxrss) is its own; besides the wall time, the CPU time of the process (both
cores' work, less sensitive to other jobs on the machine). ``--backbone_dtype`` adds
mixed-precision rows: the backbone computes in bfloat16 (or float16) while meta-parameters, losses and the update rule stay
float32 (``GradientLearner(backbone_dtype=...)``; for the Keras model, its layers' dtype
policy ``mixed_bfloat16``). ``--backbone``: the functional ``alfa_tf.Conv4`` ('conv4') and/or
the same network as a Keras Sequential (``alfa_tf.keras_backbone.conv4_model`` through
``alfa_tf.KerasBackbone``: 'keras_conv4'), each configuration of the two run one after the
other; with ``--repeats`` rounds, their difference is the median over rounds of the ratio
within a round.

    python benchmarks/meta_step.py [--iterations 10] [--backbone_dtype float32 bfloat16]
        [--backbone conv4 keras_conv4] [--order second first] [--repeats 1]
        [--json benchmarks/results/meta_step.json]
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

CONFIGS = [(learner, shot, order) for shot in (1, 5) for order in ('second', 'first')
           for learner in ('maml', 'alfa_maml')]


def run_one(learner_name, shot, order, backbone_dtype, backbone_name, iterations, warmup):
  """Times one configuration in this process; returns its record."""
  import numpy as np
  import tensorflow as tf
  import alfa_tf
  from alfa_tf import keras_backbone

  way, queries, size = 5, 15, 84
  kwargs = dict(num_classes=way, input_shape=(size, size, 3), num_steps=5,
                first_order=(order == 'first'))
  if backbone_name == 'keras_conv4':
    policy = None if backbone_dtype == 'float32' else f'mixed_{backbone_dtype}'
    backbone = alfa_tf.KerasBackbone(keras_backbone.conv4_model(filters=48, dtype=policy))
  else:
    backbone = alfa_tf.Conv4(filters=48)
    kwargs['backbone_dtype'] = backbone_dtype
  learner = (alfa_tf.ALFALearner(backbone, **kwargs) if learner_name == 'alfa_maml'
             else alfa_tf.MAMLLearner(backbone, **kwargs))
  optimizer = tf.keras.optimizers.Adam(1e-3)
  optimizer.build(learner.trainable_variables)
  rng = np.random.default_rng(0)

  def episode():
    return dict(
        support_images=tf.constant(rng.uniform(-1, 1, (way * shot, size, size, 3)), tf.float32),
        support_labels=tf.constant(np.repeat(np.arange(way), shot), tf.int32),
        query_images=tf.constant(rng.uniform(-1, 1, (way * queries, size, size, 3)),
                                 tf.float32),
        query_labels=tf.constant(np.repeat(np.arange(way), queries), tf.int32))

  batches = [[episode(), episode()] for _ in range(3)]
  step = tf.function(lambda batch: learner.meta_update(batch, optimizer))
  for i in range(warmup):
    step(batches[i % 3]).numpy()
  times, cpu_times = [], []
  for i in range(iterations):
    start, cpu_start = time.perf_counter(), time.process_time()
    step(batches[i % 3]).numpy()
    times.append(time.perf_counter() - start)
    cpu_times.append(time.process_time() - cpu_start)
  return dict(learner=learner_name, backbone=backbone_name, shot=shot, order=order,
              backbone_dtype=backbone_dtype, seconds_per_iter=round(statistics.median(times), 4),
              cpu_seconds_per_iter=round(statistics.median(cpu_times), 4),
              peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              tensorflow=tf.__version__, iterations=iterations)


def run_process(learner, shot, order, dtype, backbone, args, env):
  """The record of one configuration, timed in a fresh process."""
  out = subprocess.run([sys.executable, __file__, '--only', learner, str(shot), order, dtype,
                        backbone, '--iterations', str(args.iterations),
                        '--warmup', str(args.warmup)],
                       check=True, capture_output=True, text=True, env=env).stdout
  record = json.loads(out.strip().splitlines()[-1])
  print(f'done: {record}', file=sys.stderr)
  return record


def median_record(runs):
  """The first run's record with the medians over ``runs`` (and, for several, each run's
  seconds per iteration)."""
  record = dict(runs[0])
  for key in ('seconds_per_iter', 'cpu_seconds_per_iter', 'peak_rss_mb'):
    record[key] = statistics.median(r[key] for r in runs)
  if len(runs) > 1:
    record['runs_seconds_per_iter'] = [r['seconds_per_iter'] for r in runs]
    record['runs_cpu_seconds_per_iter'] = [r['cpu_seconds_per_iter'] for r in runs]
  return record


def paired_change(record, baseline, key):
  """The median over rounds of record/baseline - 1 (in %), the two timed one after the other
  in each round, so that a change of the machine's load between rounds cancels; with one
  round, the ratio of the two."""
  runs = f'runs_{key}'
  pairs = (zip(record[runs], baseline[runs]) if runs in record else
           [(record[key], baseline[key])])
  return 100 * (statistics.median(a / b for a, b in pairs) - 1)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--iterations', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--backbone_dtype', nargs='+', default=['float32'],
                      choices=('float32', 'bfloat16', 'float16'),
                      help='the dtype(s) the backbone computes in; one table row set each')
  parser.add_argument('--backbone', nargs='+', default=['conv4'],
                      choices=('conv4', 'keras_conv4'),
                      help='the functional Conv4 and/or the same network as a Keras model')
  parser.add_argument('--order', nargs='+', default=['second', 'first'],
                      choices=('second', 'first'), help='the meta-gradients measured')
  parser.add_argument('--repeats', type=int, default=1,
                      help='runs of each configuration, the backbones alternating; the table '
                           'shows their medians (for a machine shared with other jobs)')
  parser.add_argument('--json', help='also write the records to this JSON file')
  parser.add_argument('--only', nargs=5,
                      metavar=('LEARNER', 'SHOT', 'ORDER', 'DTYPE', 'BACKBONE'),
                      help='run a single configuration in this process (used internally)')
  args = parser.parse_args()
  if args.only:
    learner, shot, order, dtype, backbone = args.only
    print(json.dumps(run_one(learner, int(shot), order, dtype, backbone, args.iterations,
                             args.warmup)))
    return
  configs = [c for c in CONFIGS if c[2] in args.order]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  records = []
  for dtype in args.backbone_dtype:
    for learner, shot, order in configs:
      runs = {backbone: [] for backbone in args.backbone}
      for _ in range(args.repeats):  # Alternating, so that both see the same machine load.
        for backbone in args.backbone:
          runs[backbone].append(run_process(learner, shot, order, dtype, backbone, args, env))
      records += [median_record(runs[backbone]) for backbone in args.backbone]
  print(f'{"learner":10s} {"backbone":>11s} {"dtype":>8s} {"shot":>4s} {"order":>6s} '
        f'{"s/iter":>8s} {"CPU s/iter":>10s} {"peak RSS MB":>12s}')
  for r in records:
    print(f'{r["learner"]:10s} {r["backbone"]:>11s} {r["backbone_dtype"]:>8s} {r["shot"]:4d} '
          f'{r["order"]:>6s} {r["seconds_per_iter"]:8.3f} {r["cpu_seconds_per_iter"]:10.3f} '
          f'{r["peak_rss_mb"]:12.0f}')
  by_key = {(r['learner'], r['backbone'], r['backbone_dtype'], r['shot'], r['order']): r
            for r in records}
  for backbone in args.backbone:
    for dtype in args.backbone_dtype:
      for shot in (1, 5):
        for order in args.order:
          ratio = (by_key[('alfa_maml', backbone, dtype, shot, order)]['seconds_per_iter'] /
                   by_key[('maml', backbone, dtype, shot, order)]['seconds_per_iter'])
          print(f'ALFA overhead, {backbone} {dtype}, {shot}-shot {order}-order: '
                f'{100 * (ratio - 1):+.1f}%')
  if 'keras_conv4' in args.backbone and 'conv4' in args.backbone:
    for dtype in args.backbone_dtype:
      for learner, shot, order in configs:
        keras_record = by_key[(learner, 'keras_conv4', dtype, shot, order)]
        functional = by_key[(learner, 'conv4', dtype, shot, order)]
        change = {key: paired_change(keras_record, functional, key)
                  for key in ('seconds_per_iter', 'cpu_seconds_per_iter')}
        change['peak_rss_mb'] = 100 * (keras_record['peak_rss_mb'] / functional['peak_rss_mb'] - 1)
        print(f'Keras Conv4 vs Conv4, {learner} {dtype} {shot}-shot {order}-order: time '
              f'{change["seconds_per_iter"]:+.1f}%, CPU time '
              f'{change["cpu_seconds_per_iter"]:+.1f}%, memory {change["peak_rss_mb"]:+.1f}%')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(records, f, indent=1)


if __name__ == '__main__':
  main()
