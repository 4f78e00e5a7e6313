"""Updates per second of the trainer: ALFA + fo-Proto-MAML vs fo-Proto-MAML, and (with
--vs_upstream) the project's trainer against upstream Meta-Dataset's TF1 trainer.

Default mode: runs ``gin/alfa_fo_proto_maml.gin`` and ``gin/fo_proto_maml.gin`` on the glyphs
source at 84x84 with Meta-Dataset's variable way and shot (upstream's episode settings), through
the project's Trainer (data pipeline, compiled meta-step, summaries), and prints updates per
second after a warm-up (the Trainer's own measure: time spent fetching meta-batches and running
steps; validation, one episode here, and checkpoints excluded), and the process's CPU use over
the timed run (1.0 = one core busy, 2.0 = both). Both configurations see the same episodes
(same seed), so their rates compare; the episodes vary a lot in size, so use enough updates.

    python benchmarks/train_speed.py [--updates 30] [--records_root_dir DIR]

--vs_upstream: both configurations trained by both trainers, each run its own process, on the
same records (the glyphs source at 84x84, written by ``meta_dataset_ext.glyphs``) and the same
config files and bindings:

  ours      ``python -m meta_dataset_ext.train`` (this interpreter's environment);
  upstream  upstream's ``meta_dataset.train`` (its ``main``, under --upstream_python).

The runs alternate: in each round every configuration is run by both trainers, one after the
other; which of the two goes first alternates from one configuration to the next and from
one round to the next (ours, upstream, upstream, ours; then the reverse). The episodes are
drawn as upstream's ``benchmark.train_datasets = 'omniglot'`` draws them: upstream samples
alphabets, then characters (its bi-level ontology), for a source named ``omniglot`` only and
refuses a bi-level source under any other name, so the glyphs source is given to both trainers
as ``omniglot`` (a symbolic link to it in a temporary records folder); the project's trainer
samples any bi-level source that way. Variable way and shot as in the configs: 5 to 50 ways
(at most the alphabet's characters), up to 500 support and 10 query images per class. After
the runs, the episode settings both trainers recorded (``EpisodeDescriptionConfig.*``, the
training scope where upstream has one, and ``DataConfig.image_height``) in their
operative_config.gin are compared: the script fails if any setting they share differs. The two
trainers draw different episodes (their random generators differ), so the rates are means over
different samples of the same distribution: use enough updates and rounds.

Timing, the same for both: wall time between the ends of update ``warmup`` and update
``warmup + updates``, as each trainer recorded it with ``Trainer.log_every = 1``: upstream's
log line ``Update N. Train loss ...`` (absl's timestamp, microseconds), ours' first TensorBoard
summary event of step N (its wall time). So the window holds fetching the episodes, running
the steps and logging; the warm-up (tracing / graph building, the first episodes), upstream's
validation before update 1 (one episode) and checkpoints are outside it (validation and
checkpoints every 10^6 updates). Upstream's summary writer is off (its Trainer's
``summary_dir=None``, which its --summary_dir flag cannot express; the launcher sets the flag
to None and runs upstream's ``main``): at every log upstream evaluates its loss and accuracy
summaries with a second ``session.run``, which draws another episode and adapts on it, so
summaries at every update would add an inner loop and a forward pass to every update (at its
usual log_every = 100 that is 1%).
Ours keeps writing its training summaries at every update (loss, accuracy, support losses and,
for ALFA, the generated alpha and beta of every layer and inner step), which counts against
ours. updates/s per trainer and configuration = all timed updates of all rounds / their total time.

The upstream environment (separate from this project's; TensorFlow 2.15, no Bazel; nothing of
upstream is part of this repository), as the README's section "With upstream Meta-Dataset":

    python3.11 -m venv up215 && . up215/bin/activate
    git clone https://github.com/google-research/meta-dataset
    pip install -e ./meta-dataset --no-deps --ignore-requires-python
    pip install 'tensorflow==2.15.1' 'tensorflow-datasets<4.9.5' 'tensorflow-metadata<1.16' \
        'tensorflow-probability==0.23.*' 'tensorflow-addons==0.23.*' 'tensorflow-hub==0.15.*' \
        scipy pillow six
    pip install task-adaptation==0.1 --no-deps
    mkdir -p simclr_path/simclr && curl -fsSL -o simclr_path/simclr/data_util.py \
        https://raw.githubusercontent.com/google-research/simclr/master/data_util.py
    pip install <alfa-tf checkout>     # keeps TensorFlow 2.15
    deactivate

then, from this project's environment:

    python benchmarks/train_speed.py --vs_upstream --upstream_python=up215/bin/python \
        --upstream_pythonpath=simclr_path [--updates 30] [--warmup 3] [--rounds 2] [--json F]

The checkout's own ``meta_dataset_ext`` comes first on both trainers' path. The launcher
imports upstream's ``meta_dataset.train``, then runs ``meta_dataset_ext.upstream.install()``
(registers the ALFA learners: what the configs' ``import meta_dataset_ext.upstream`` line does
under ``python -m meta_dataset.train``), then upstream's ``main`` with the flags above. On
TF >= 2.16 environments the launcher applies ``meta_dataset_ext.upstream.patches``' shims first
(as ``python -m meta_dataset_ext.upstream.train`` does; nothing is patched on TF 2.15, and the
script says when something was). Without --upstream_python, or where upstream does not import
there, --vs_upstream prints one line saying why and exits with status 0.
"""
import argparse
import collections
import datetime
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import gin
import tensorflow as tf

from meta_dataset_ext import gin_setup
from meta_dataset_ext import glyphs
from meta_dataset_ext import trainer as trainer_lib

CONFIGS = ('fo_proto_maml.gin', 'alfa_fo_proto_maml.gin')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNERS = {'fo_proto_maml.gin': 'fo-Proto-MAML', 'alfa_fo_proto_maml.gin': 'ALFA+fo-Proto-MAML'}
# The name under which both trainers read the glyphs source (see the docstring).
UPSTREAM_BILEVEL_NAME = 'omniglot'
# Runs upstream's own ``main`` with its summary writer off (Trainer(summary_dir=None)).
UPSTREAM_LAUNCHER = """
import sys
from absl import app, flags, logging
from meta_dataset_ext.upstream import patches
patched = patches.install_shims()  # Nothing on TF 2.15, where upstream imports unchanged.
if patched:
  print('train_speed launcher: patched ' + ', '.join(patched), file=sys.stderr, flush=True)
from meta_dataset import train
from meta_dataset_ext import upstream
upstream.install()  # The configs' import line does this where upstream's trainer came first.

def main(argv):
  flags.FLAGS.summary_dir = None
  train.main(argv)

logging.set_verbosity(logging.INFO)
app.run(main)
"""
UPSTREAM_UPDATE_LINE = re.compile(
    r'^I(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+) .*\] Update (\d+)\. Train loss', re.M)


def measure(config, records, updates, warmup):
  gin.clear_config()
  tf.keras.backend.clear_session()
  gin_setup.parse([config], [
      "benchmark.train_datasets = 'glyphs'", "benchmark.eval_datasets = 'glyphs'",
      'DataConfig.image_height = 84', f'Trainer.num_updates = {warmup}',
      'Trainer.validate_every = 1000000', 'Trainer.checkpoint_every = 1000000',
      'Trainer.log_every = 10', 'Trainer.show_progress = False',
      'Trainer.num_validation_episodes = 1'])
  with tempfile.TemporaryDirectory() as run_dir:
    trainer = trainer_lib.Trainer(records_root_dir=records, checkpoint_dir=run_dir)
    trainer.train()  # Warm-up: traces the step, fills the pipeline.
    trainer.num_updates = warmup + updates
    wall, cpu = time.perf_counter(), time.process_time()
    rate = trainer.train()['updates_per_second']
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return trainer.learner_name, rate, cpu / wall


def _python_env(extra_path=()):
  """The environment for a trainer process: the checkout's packages first on the path."""
  path = [REPO, *extra_path, os.environ.get('PYTHONPATH', '')]
  return {**os.environ, 'PYTHONPATH': os.pathsep.join(p for p in path if p),
          'TF_CPP_MIN_LOG_LEVEL': '1'}


def upstream_unavailable(python, pythonpath):
  """Why upstream's trainer cannot run under ``python`` (None when it can)."""
  if not python:
    return 'no --upstream_python given (see this script\'s docstring to install one)'
  if not (os.path.isfile(python) and os.access(python, os.X_OK)):
    return f'--upstream_python {python!r} is not an executable file'
  done = subprocess.run(
      [python, '-c', 'from meta_dataset_ext.upstream import patches; '
       'patches.install_shims(); import meta_dataset.train'],
      env=_python_env(pythonpath), capture_output=True, text=True, timeout=600)
  if done.returncode:
    lines = done.stderr.strip().splitlines() or ['(no message)']
    return f'upstream Meta-Dataset does not import under {python}: {lines[-1]}'
  return None


def _bindings(updates):
  """The bindings both trainers get: the source, a short run, a line per update."""
  return [f"benchmark.train_datasets = '{UPSTREAM_BILEVEL_NAME}'",
          f"benchmark.eval_datasets = '{UPSTREAM_BILEVEL_NAME}'",
          'DataConfig.image_height = 84', f'Trainer.num_updates = {updates}',
          'Trainer.log_every = 1', 'Trainer.validate_every = 1000000',
          'Trainer.checkpoint_every = 1000000', 'Trainer.num_eval_episodes = 1']


def _upstream_times(log):
  """{update: seconds} of upstream's ``Update N.`` log lines (absl timestamps)."""
  year, times = datetime.date.today().year, {}
  for month, day, hour, minute, second, micro, update in UPSTREAM_UPDATE_LINE.findall(log):
    stamp = datetime.datetime(year, int(month), int(day), int(hour), int(minute), int(second),
                              int(micro.ljust(6, '0')[:6]))
    times[int(update)] = stamp.timestamp()
  return times


def _ours_times(summary_dir):
  """{update: wall time of its first training summary event}."""
  times = {}
  for path in sorted(glob.glob(os.path.join(summary_dir, 'train', 'events.out.tfevents.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      if event.summary.value:
        times[event.step] = min(times.get(event.step, event.wall_time), event.wall_time)
  return times


def _episode_settings(operative_config):
  """The episode settings a run recorded: ``EpisodeDescriptionConfig.*`` (the training
  scope's where there is one) and ``DataConfig.image_height``."""
  settings, scoped = {}, {}
  with open(operative_config) as f:
    for line in f:
      match = re.match(r'^(train/)?(EpisodeDescriptionConfig\.\w+|DataConfig\.image_height)'
                       r' = (.*)$', line.strip())
      if match:
        (scoped if match.group(1) else settings)[match.group(2)] = match.group(3)
  settings.update(scoped)
  return settings


def run_trainer(kind, config, records_root, warmup, updates, upstream_python=None,
                upstream_pythonpath=()):
  """Trains ``config`` with one trainer in its own process; returns (updates/s over the
  timed window, timed seconds, process wall seconds, episode settings, what was patched)."""
  with tempfile.TemporaryDirectory(prefix=f'train_speed_{kind}_') as work:
    flags = [f'--gin_config={os.path.join(REPO, "gin", config)}',
             f'--records_root_dir={records_root}', f'--train_checkpoint_dir={work}/run']
    flags += [f'--gin_bindings={b}' for b in _bindings(warmup + updates)]
    if kind == 'ours':
      command = [sys.executable, '-m', 'meta_dataset_ext.train', '--evaluate_after_training=False',
                 *flags, '--gin_bindings=Trainer.show_progress = False',
                 '--gin_bindings=Trainer.num_validation_episodes = 1']
      env = _python_env()
    else:
      command = [upstream_python, '-c', UPSTREAM_LAUNCHER, *flags]
      env = _python_env(upstream_pythonpath)
    began = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode:
      raise RuntimeError(f'{kind} trainer failed on {config} (exit {done.returncode}):\n'
                         f'{done.stderr[-4000:]}')
    times = (_ours_times(os.path.join(work, 'run', 'summaries')) if kind == 'ours'
             else _upstream_times(done.stderr))
    first, last = warmup, warmup + updates
    if first not in times or last not in times:
      raise RuntimeError(f'{kind} trainer on {config}: no timing for updates {first} and '
                         f'{last} (found {sorted(times)[:3]}...); stderr:\n'
                         f'{done.stderr[-2000:]}')
    seconds = times[last] - times[first]
    patched = re.findall(r'train_speed launcher: patched (.*)', done.stderr)
    settings = _episode_settings(os.path.join(work, 'run', 'operative_config.gin'))
  return updates / seconds, seconds, wall, settings, patched


def vs_upstream(args):
  """Alternates the two trainers over ``args.rounds`` rounds; prints the markdown table."""
  reason = upstream_unavailable(args.upstream_python, args.upstream_pythonpath)
  if reason:
    print(f'train_speed --vs_upstream: skipped: {reason}.', flush=True)
    return
  glyphs_dir = glyphs.ensure_glyphs(args.records_root_dir, image_size=84)
  load_before = os.getloadavg()
  print(f'load average before: {load_before[0]:.2f} {load_before[1]:.2f} '
        f'{load_before[2]:.2f}', flush=True)
  timed = collections.defaultdict(lambda: [0, 0.0])  # (config, kind): [updates, seconds]
  per_round = collections.defaultdict(list)
  settings, patched = {}, set()
  with tempfile.TemporaryDirectory(prefix='train_speed_records_') as root:
    os.symlink(os.path.abspath(glyphs_dir), os.path.join(root, UPSTREAM_BILEVEL_NAME))
    for round_ in range(args.rounds):
      for config in CONFIGS:
        kinds = ('ours', 'upstream') if (round_ + CONFIGS.index(config)) % 2 == 0 else (
            'upstream', 'ours')
        for kind in kinds:
          rate, seconds, wall, recorded, fixes = run_trainer(
              kind, config, root, args.warmup, args.updates, args.upstream_python,
              args.upstream_pythonpath)
          timed[config, kind][0] += args.updates
          timed[config, kind][1] += seconds
          per_round[config, kind].append(rate)
          settings.setdefault(kind, recorded)
          patched.update(fixes)
          print(f'round {round_ + 1} {LEARNERS[config]:20s} {kind:8s} {rate:7.3f} updates/s '
                f'({args.updates} updates in {seconds:.1f} s; process {wall:.0f} s)',
                flush=True)
  load_after = os.getloadavg()
  shared = sorted(set(settings['ours']) & set(settings['upstream']))
  differ = [k for k in shared if settings['ours'][k] != settings['upstream'][k]]
  if differ or not shared:
    raise RuntimeError('the trainers recorded different episode settings: ' + ', '.join(
        f"{k}: ours {settings['ours'][k]}, upstream {settings['upstream'][k]}" for k in differ))
  print(f'episode settings: the {len(shared)} both trainers record are the same')
  if patched:
    print(f'upstream ran with shims: {", ".join(sorted(patched))}')
  print(f'load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}\n')
  print('| learner | upstream updates/s | ours updates/s | ours / upstream | per round '
        '(upstream; ours) |')
  print('| --- | ---: | ---: | ---: | --- |')
  records = []
  for config in CONFIGS:
    rates = {kind: timed[config, kind][0] / timed[config, kind][1]
             for kind in ('upstream', 'ours')}
    ratio = rates['ours'] / rates['upstream']
    rounds = '; '.join(', '.join(f'{r:.3f}' for r in per_round[config, kind])
                       for kind in ('upstream', 'ours'))
    print(f'| {LEARNERS[config]} | {rates["upstream"]:.3f} | {rates["ours"]:.3f} | '
          f'{ratio:.2f}x | {rounds} |')
    records.append({'learner': LEARNERS[config], 'upstream_updates_per_s': rates['upstream'],
                    'ours_updates_per_s': rates['ours'], 'ratio': ratio})
  print(f'\n{args.rounds} rounds x {args.updates} timed updates after {args.warmup} warm-up '
        'updates per run; goal (issue 18): ours >= 5x.')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(records, f, indent=2)
      f.write('\n')


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--updates', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--records_root_dir', default=os.path.join(
      tempfile.gettempdir(), 'alfa_tf_benchmark_records'))
  parser.add_argument('--vs_upstream', action='store_true',
                      help='our trainer against upstream Meta-Dataset\'s (see above)')
  parser.add_argument('--upstream_python', default=None,
                      help='--vs_upstream: the python of the environment with upstream')
  parser.add_argument('--upstream_pythonpath', default=[], action='append',
                      help='--vs_upstream: a folder on the upstream process\'s path only, e.g. '
                      'the one holding simclr/data_util.py (repeatable)')
  parser.add_argument('--rounds', type=int, default=2,
                      help='--vs_upstream: rounds of alternating runs')
  parser.add_argument('--json', default=None,
                      help='--vs_upstream: also write the table as JSON records here')
  args = parser.parse_args()
  if args.vs_upstream:
    tf.get_logger().setLevel('WARNING')
    vs_upstream(args)
    return
  tf.get_logger().setLevel('WARNING')
  glyphs.ensure_glyphs(args.records_root_dir, image_size=84)
  print(f'{"learner":22s} {"updates/s":>10s} {"CPU cores busy":>15s}', flush=True)
  rows = []
  for config in CONFIGS:  # Each row as soon as it is measured: runs at 84x84 are long.
    rows.append(measure(config, args.records_root_dir, args.updates, args.warmup))
    name, rate, cores = rows[-1]
    print(f'{name:22s} {rate:10.3f} {cores:15.2f}', flush=True)
  print(f'ALFA cost per update: {100 * (rows[0][1] / rows[1][1] - 1):+.1f}% '
        'vs fo-Proto-MAML')


if __name__ == '__main__':
  main()
