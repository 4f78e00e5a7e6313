"""Seconds per meta-iteration: the authors' PyTorch ALFA code against alfa_tf, side by side.

The workload of ``benchmarks/meta_step.py`` (5-way, 15 queries per class, 84x84x3, 4-CONV with
48 filters, 5 inner steps, meta-batch 2, second order, float32) for MAML and ALFA+MAML at 1 and
5 shots. The authors' side constructs their ``MAMLFewShotClassifier`` (repository
baiksung/ALFA, ``few_shot_learning_system.py``) with their argument object (their
``experiment_config/alfa+maml.json``, the workload's values set over it) and times
``run_train_iter`` on random tensors shaped as their data loader's batches, on the CPU with
``--threads`` threads. Our side is ``benchmarks/meta_step.py --only`` (its ``run_one``). Each
measurement is a fresh process and the two alternate (theirs, ours, theirs, ours, ...) for
``--rounds`` rounds, so both see the same machine load; the table shows per-configuration
medians over the rounds, the median of the rounds' ratios (theirs / ours) and peak resident
memory. CPU s/iter is the process's CPU time per iteration (both threads' work; PyTorch's
OpenMP threads also count their time spent waiting at barriers).

Nothing of the authors' code is part of this repository. Fetch it and a PyTorch CPU
environment into a scratch folder outside the checkout, for example:

    git clone https://github.com/baiksung/ALFA ~/scratch/alfa_ref/ALFA
    python3 -m venv ~/scratch/alfa_ref/venv
    ~/scratch/alfa_ref/venv/bin/pip install numpy torch \\
        --index-url https://download.pytorch.org/whl/cpu

then, from the repository root with this project's environment active:

    python benchmarks/vs_reference.py --reference_dir ~/scratch/alfa_ref/ALFA \\
        --reference_python ~/scratch/alfa_ref/venv/bin/python [--rounds 3] [--iterations 10]
        [--shot 1 5] [--learner maml alfa_maml] [--json vs_reference.json]

Without both (or when they do not hold the authors' code and torch) it prints one line and
exits with status 0.
"""
import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
META_STEP = os.path.join(HERE, 'meta_step.py')
WAY, QUERIES, SIZE, STEPS, META_BATCH = 5, 15, 84, 5, 2
GOAL_RATIO = 3.0


def reference_args(reference_dir, learner, shot):
  """The authors' argument object for this workload: their ALFA+MAML miniImageNet config with
  the workload's values (and ``learner``'s ALFA switch) set over it."""
  from utils.parser_utils import Bunch  # Theirs, found through sys.path.
  config = {}
  path = os.path.join(reference_dir, 'experiment_config', 'alfa+maml.json')
  if os.path.exists(path):
    with open(path) as f:
      config = json.load(f)
  config.update(
      seed=104, use_cuda=False, backbone='4-CONV', alfa=(learner == 'alfa_maml'),
      random_init=False, attenuate=False, batch_size=META_BATCH, num_classes_per_set=WAY,
      num_samples_per_class=shot, num_target_samples=QUERIES, image_height=SIZE,
      image_width=SIZE, image_channels=3, cnn_num_filters=48, num_stages=4, conv_padding=True,
      max_pooling=True, norm_layer='batch_norm', per_step_bn_statistics=False,
      learnable_bn_gamma=True, learnable_bn_beta=True,
      enable_inner_loop_optimizable_bn_params=False,
      number_of_training_steps_per_iter=STEPS, number_of_evaluation_steps_per_iter=STEPS,
      second_order=True, first_order_to_second_order_epoch=-1,
      use_multi_step_loss_optimization=False, multi_step_loss_num_epochs=15,
      init_inner_loop_learning_rate=0.01, init_inner_loop_weight_decay=5e-4,
      meta_learning_rate=1e-3, min_learning_rate=1e-3, total_epochs=100)
  return Bunch(config)


def run_reference(reference_dir, learner, shot, threads, iterations, warmup):
  """Times the authors' ``run_train_iter`` in this process (run by the python that has torch,
  their folder on sys.path); returns the record."""
  import numpy as np
  import torch
  sys.path.insert(0, reference_dir)
  torch.set_num_threads(threads)
  with contextlib.redirect_stdout(sys.stderr):  # Their constructor prints its parameters.
    from few_shot_learning_system import MAMLFewShotClassifier
    model = MAMLFewShotClassifier(im_shape=(META_BATCH, 3, SIZE, SIZE),
                                  device=torch.device('cpu'),
                                  args=reference_args(reference_dir, learner, shot))
  rng = np.random.default_rng(0)

  def batch():  # Their loader's layout: (task, class, sample, channel, height, width).
    def images(n):
      return torch.tensor(rng.uniform(-1, 1, (META_BATCH, WAY, n, 3, SIZE, SIZE)),
                          dtype=torch.float32)

    def labels(n):
      return torch.arange(WAY).view(1, WAY, 1).repeat(META_BATCH, 1, n)

    return images(shot), images(QUERIES), labels(shot), labels(QUERIES)

  batches = [batch() for _ in range(3)]
  times, cpu_times = [], []
  with contextlib.redirect_stdout(sys.stderr):
    for i in range(warmup + iterations):
      start, cpu_start = time.perf_counter(), time.process_time()
      losses, _ = model.run_train_iter(data_batch=batches[i % 3], epoch=0)
      float(losses['loss'])
      if i >= warmup:
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
  return dict(side='reference', learner=learner, shot=shot,
              seconds_per_iter=round(statistics.median(times), 4),
              cpu_seconds_per_iter=round(statistics.median(cpu_times), 4),
              peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              torch=torch.__version__, threads=threads, iterations=iterations)


def run_side(side, learner, shot, args):
  """The record of one measurement, in a fresh process."""
  # The same thread count for both: TensorFlow's intra-op pool and, as torch runs its ops one
  # at a time, its inter-op pool (which otherwise runs independent ops concurrently).
  threads = str(args.threads)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', OMP_NUM_THREADS=threads,
             MKL_NUM_THREADS=threads, TF_NUM_INTRAOP_THREADS=threads,
             TF_NUM_INTEROP_THREADS=threads)
  common = ['--iterations', str(args.iterations), '--warmup', str(args.warmup)]
  if side == 'reference':
    command = [args.reference_python, os.path.abspath(__file__), '--reference_only', learner,
               str(shot), '--reference_dir', args.reference_dir, '--threads',
               str(args.threads)] + common
  else:
    command = [sys.executable, META_STEP, '--only', learner, str(shot), 'second', 'float32',
               'conv4'] + common
  result = subprocess.run(command, capture_output=True, text=True, env=env)
  if result.returncode:
    sys.exit(f'{side} {learner} {shot}-shot failed:\n{result.stderr[-3000:]}')
  record = json.loads(result.stdout.strip().splitlines()[-1])
  print(f'done: {side} {record}', file=sys.stderr, flush=True)
  return record


def reference_missing(args):
  """Why the authors' side cannot run (None when it can)."""
  if not args.reference_dir or not args.reference_python:
    return 'pass --reference_dir (a clone of baiksung/ALFA) and --reference_python (with torch)'
  if not os.path.exists(os.path.join(args.reference_dir, 'few_shot_learning_system.py')):
    return f'{args.reference_dir} does not hold baiksung/ALFA (few_shot_learning_system.py)'
  try:
    subprocess.run([args.reference_python, '-c', 'import torch, numpy'], check=True,
                   capture_output=True)
  except (OSError, subprocess.CalledProcessError):
    return f'{args.reference_python} cannot import torch and numpy'
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--reference_dir', help="a clone of the authors' repository baiksung/ALFA")
  parser.add_argument('--reference_python', help='a python interpreter that has torch and numpy')
  parser.add_argument('--rounds', type=int, default=3,
                      help='measurements of each side per configuration, alternating')
  parser.add_argument('--iterations', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--threads', type=int, default=2,
                      help="CPU threads of each side (torch.set_num_threads; TensorFlow's "
                           'intra- and inter-op pools)')
  parser.add_argument('--shot', type=int, nargs='+', default=[1, 5], choices=(1, 5))
  parser.add_argument('--learner', nargs='+', default=['maml', 'alfa_maml'],
                      choices=('maml', 'alfa_maml'))
  parser.add_argument('--json', help='also write the per-configuration records to this file')
  parser.add_argument('--reference_only', nargs=2, metavar=('LEARNER', 'SHOT'),
                      help="time the authors' code in this process (used internally)")
  args = parser.parse_args()
  if args.reference_only:
    learner, shot = args.reference_only
    print(json.dumps(run_reference(os.path.abspath(args.reference_dir), learner, int(shot),
                                   args.threads, args.iterations, args.warmup)))
    return
  missing = reference_missing(args)
  if missing:
    print(f"vs_reference: skipped, the authors' code is not available: {missing}.")
    return
  args.reference_dir = os.path.abspath(args.reference_dir)
  configs = [(learner, shot) for shot in args.shot for learner in args.learner]
  load_before = os.getloadavg()
  runs = {(side, c): [] for side in ('reference', 'ours') for c in configs}
  for round_index in range(args.rounds):
    print(f'round {round_index + 1} of {args.rounds}, load average {os.getloadavg()}',
          file=sys.stderr, flush=True)
    for config in configs:
      for side in ('reference', 'ours'):  # Alternating: both see the same load.
        runs[(side, config)].append(run_side(side, *config, args))
  load_after = os.getloadavg()

  records = []
  for learner, shot in configs:
    theirs, ours = runs[('reference', (learner, shot))], runs[('ours', (learner, shot))]
    ratios = [t['seconds_per_iter'] / o['seconds_per_iter'] for t, o in zip(theirs, ours)]
    records.append(dict(
        learner=learner, shot=shot,
        reference_s=statistics.median(r['seconds_per_iter'] for r in theirs),
        ours_s=statistics.median(r['seconds_per_iter'] for r in ours),
        ratio=round(statistics.median(ratios), 3),
        reference_cpu_s=statistics.median(r['cpu_seconds_per_iter'] for r in theirs),
        ours_cpu_s=statistics.median(r['cpu_seconds_per_iter'] for r in ours),
        reference_rss_mb=statistics.median(r['peak_rss_mb'] for r in theirs),
        ours_rss_mb=statistics.median(r['peak_rss_mb'] for r in ours),
        reference_runs_s=[r['seconds_per_iter'] for r in theirs],
        ours_runs_s=[r['seconds_per_iter'] for r in ours], rounds=args.rounds,
        iterations=args.iterations, threads=args.threads, torch=theirs[0]['torch'],
        tensorflow=ours[0]['tensorflow']))
  names = {'maml': 'MAML', 'alfa_maml': 'ALFA+MAML'}
  print(f"Authors' PyTorch code (torch {records[0]['torch']}) vs alfa_tf (TensorFlow "
        f"{records[0]['tensorflow']}), second order, float32, {args.threads} threads, "
        f'{args.rounds} rounds x {args.iterations} iterations (+{args.warmup} warm-up); '
        f'load average (1/5/15 min) before {" ".join(f"{x:.2f}" for x in load_before)}, '
        f'after {" ".join(f"{x:.2f}" for x in load_after)}\n')
  print('| configuration | theirs s/iter | ours s/iter | ratio (theirs/ours) | '
        'CPU s/iter theirs / ours | peak RSS theirs / ours MB |')
  print('|---|---|---|---|---|---|')
  for r in records:
    print(f'| {names[r["learner"]]} {r["shot"]}-shot | {r["reference_s"]:.3f} | '
          f'{r["ours_s"]:.3f} | {r["ratio"]:.2f}x | '
          f'{r["reference_cpu_s"]:.2f} / {r["ours_cpu_s"]:.2f} | '
          f'{r["reference_rss_mb"]:.0f} / {r["ours_rss_mb"]:.0f} |')
  short = [f'{names[r["learner"]]} {r["shot"]}-shot' for r in records if r['ratio'] < GOAL_RATIO]
  print(f'\nGoal (>= {GOAL_RATIO:g}x at every configuration): '
        + ('met' if not short else 'not met at ' + ', '.join(short)))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(records, f, indent=1)


if __name__ == '__main__':
  main()
