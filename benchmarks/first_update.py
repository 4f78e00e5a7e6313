r"""Time to the first update: from starting the training process to the end of update 1, and
where that time goes.

    python benchmarks/first_update.py [--rounds 3] [--configs NAME ...]
        [--json benchmarks/results/first_update.json]

For each config (the quickstart's, and the ImageNet-style fo-Proto-MAML at 84 px read from the
glyphs records: variable way and shot, 4-CONV 64), a fresh process runs the trainer as
``python -m meta_dataset_ext.train`` would (imports, gin, the trainer's up-front checks, the
input pipeline, tracing the meta-step, the update itself); the clock runs from spawning the
process until it reports the end of update 1. "resumed": the same, in a run directory that
already holds a checkpoint of update 1 (restore, then update 2).

Phases (seconds, from the child's clock): ``imports`` (Python, TensorFlow, the project),
``build`` (gin, the up-front checks of every split and output folder, the learner),
``trace`` (restoring, opening the input pipeline, tracing the meta-step), ``data`` (waiting
for the first meta-batch), ``step`` (the first run of the step on it: gradients and update),
and ``again``: the same meta-batch's gradients computed once more in the same process, so
that ``step - again`` is what running the step the first time costs beyond the computation
itself (graph optimisation, kernel set-up, memory the process touches for the first time).
Also the episode's support and query sizes (variable-shot episodes differ several times in
size, and a new run's update is episode 0, a resumed run's episode 1), and, once, how long
this machine takes to fill 1 GB of memory the process has not used before and the same
gigabyte again. Prints the median over rounds per row and writes the JSON records (config,
resumed, seconds, rounds, phases).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = 'FIRST-UPDATE-DONE'
PHASES = ('imports', 'build', 'trace', 'data', 'step', 'again')
CONFIGS = {
    'quickstart_glyphs': ('quickstart_glyphs.gin', []),
    'fo_proto_maml_84px': ('fo_proto_maml.gin', ["benchmark.train_datasets = 'glyphs'",
                                                 "benchmark.eval_datasets = 'glyphs'"]),
}


def child(config: str, records: str, run_dir: str, bindings) -> None:
  """Trains until one more update is done, printing each phase's end (PHASE lines), then
  MARKER, and exits (run in a fresh process)."""
  began = time.perf_counter()
  phase = lambda name, **extra: print(json.dumps(dict(
      phase=name, at=time.perf_counter() - began, **extra)), flush=True)
  from meta_dataset_ext import gin_setup  # pylint: disable=g-import-not-at-top
  from meta_dataset_ext import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  phase('imports')
  gin_setup.parse([config], list(bindings) + ['Trainer.show_progress = False'])
  trainer = trainer_lib.Trainer(records_root_dir=records, checkpoint_dir=run_dir,
                                will_evaluate=False)
  phase('build')
  update, gradients = trainer._update, trainer._gradients  # pylint: disable=protected-access

  class Traced:
    """The trainer's compiled gradients, reporting the end of tracing."""

    def get_concrete_function(self, *args):
      function = gradients.get_concrete_function(*args)
      phase('trace')
      return function

    def __call__(self, batch):
      return gradients(batch)

  def report(batch, number):
    phase('data', support=int(batch[0]['support_labels'].shape[0]),
          query=int(batch[0]['query_labels'].shape[0]))
    metrics = update(batch, number)
    float(metrics['loss'])
    phase('step')
    trainer._save(number + 1)  # pylint: disable=protected-access
    print(MARKER, flush=True)
    again = time.perf_counter()
    float(gradients(batch)[1]['loss'])
    print(json.dumps(dict(phase='again', seconds=time.perf_counter() - again)), flush=True)
    os._exit(0)  # pylint: disable=protected-access

  trainer._gradients = Traced()  # pylint: disable=protected-access
  trainer._update = report  # pylint: disable=protected-access
  trainer.train()


def phase_seconds(events):
  """{phase: seconds} from the child's PHASE events: each phase's end minus the previous
  one's (the first from the child's start), 'again' as measured, and the episode's sizes."""
  seconds, previous = {}, 0.0
  for event in events:
    if event['phase'] == 'again':
      seconds['again'] = round(event['seconds'], 2)
      continue
    seconds[event['phase']] = round(event['at'] - previous, 2)
    previous = event['at']
    for key in ('support', 'query'):
      if key in event:
        seconds[key] = event[key]
  return seconds


def fresh_memory_seconds(gigabytes: float = 1.0):
  """Seconds to fill ``gigabytes`` of memory this process never used, then the same again
  (freed and allocated anew): the first is what touching new memory costs on this machine."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  size = int(gigabytes * 2**30) // 4
  times = []
  for _ in range(2):
    began = time.perf_counter()
    block = np.ones(size, np.float32)
    times.append(time.perf_counter() - began)
    del block
  return times


def measure(config: str, records: str, run_dir: str, bindings):
  """(seconds from spawning the child to its MARKER line, its phases)."""
  command = [sys.executable, os.path.abspath(__file__), '--child', config, records, run_dir,
             json.dumps(bindings)]
  began = time.perf_counter()
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, PYTHONPATH=REPO))
  seconds, events = None, []
  for line in process.stdout:
    if line.strip() == MARKER:
      seconds = time.perf_counter() - began
    elif line.startswith('{'):
      events.append(json.loads(line))
  if process.wait() != 0 or seconds is None:
    raise RuntimeError(f'{config}: the child ended without reaching update 1 '
                       f'(exit status {process.returncode}).')
  return seconds, phase_seconds(events)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--json', default=None, help='Write the records here.')
  parser.add_argument('--configs', nargs='+', choices=sorted(CONFIGS), default=list(CONFIGS),
                      help='Measure these configs only (default: all).')
  parser.add_argument('--child', nargs=4, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    config, records, run_dir, bindings = args.child
    child(config, records, run_dir, json.loads(bindings))
    return
  sys.path.insert(0, REPO)
  from meta_dataset_ext import glyphs  # pylint: disable=g-import-not-at-top
  scratch = tempfile.mkdtemp(prefix='first_update_')
  records = os.path.join(scratch, 'records')
  glyphs.ensure_glyphs(records, image_size=28)
  fresh, reused = fresh_memory_seconds()
  print(f'Filling 1 GB of memory: {fresh:.2f} s the first time, {reused:.2f} s again')
  rows = []
  for name in args.configs:
    config, bindings = CONFIGS[name]
    runs = {False: [], True: []}
    for round_ in range(args.rounds):
      run_dir = os.path.join(scratch, f'{name}_{round_}')
      for resumed in (False, True):
        runs[resumed].append(measure(config, records, run_dir, bindings))
    for resumed in (False, True):
      seconds = [round(s, 2) for s, _ in runs[resumed]]
      median = statistics.median(seconds)
      phases = runs[resumed][seconds.index(min(seconds, key=lambda s: abs(s - median)))][1]
      rows.append(dict(config=name, resumed=resumed, seconds=round(median, 2),
                       rounds=seconds, phases=phases))
      print(f'{name:22s} {"resumed" if resumed else "new":8s} {median:6.2f} s  '
            f'(rounds: {seconds})', flush=True)
  print('\nPhases of the median round (s): ' + ', '.join(PHASES) + '; episode sizes')
  for row in rows:
    phases = row['phases']
    print(f'{row["config"]:22s} {"resumed" if row["resumed"] else "new":8s} ' + ' '.join(
        f'{phases.get(k, float("nan")):6.2f}' for k in PHASES) +
          f'  support {phases.get("support")}, query {phases.get("query")}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(machine=f'{platform.processor() or platform.machine()}, '
                              f'{os.cpu_count()} CPU cores',
                     fill_1gb_seconds=dict(fresh=round(fresh, 2), reused=round(reused, 2)),
                     rows=rows), f, indent=1)


if __name__ == '__main__':
  main()
