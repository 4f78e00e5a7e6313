r"""Time to the first update: from starting the training process to the end of update 1.

    python benchmarks/first_update.py [--rounds 3] [--json benchmarks/results/first_update.json]

For each config (the quickstart's, and the ImageNet-style fo-Proto-MAML at 84 px read from the
glyphs records: variable way and shot, 4-CONV 64), a fresh process runs the trainer as
``python -m meta_dataset_ext.train`` would (imports, gin, the trainer's up-front checks, the
input pipeline, tracing and compiling the meta-step, the update itself); the clock runs from
spawning the process until it reports the end of update 1. "resumed": the same, in a run
directory that already holds a checkpoint of update 1 (restore, then update 2). Prints the
median over rounds per row and writes the JSON records (config, resumed, seconds).
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
CONFIGS = {
    'quickstart_glyphs': ('quickstart_glyphs.gin', []),
    'fo_proto_maml_84px': ('fo_proto_maml.gin', ["benchmark.train_datasets = 'glyphs'",
                                                 "benchmark.eval_datasets = 'glyphs'"]),
}


def child(config: str, records: str, run_dir: str, bindings) -> None:
  """Trains until one more update is done, prints MARKER and exits (run in a fresh process)."""
  from meta_dataset_ext import gin_setup  # pylint: disable=g-import-not-at-top
  from meta_dataset_ext import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  gin_setup.parse([config], list(bindings) + ['Trainer.show_progress = False'])
  trainer = trainer_lib.Trainer(records_root_dir=records, checkpoint_dir=run_dir,
                                will_evaluate=False)
  update = trainer._update  # pylint: disable=protected-access

  def report(batch, number):
    metrics = update(batch, number)
    float(metrics['loss'])
    trainer._save(number + 1)  # pylint: disable=protected-access
    print(MARKER, flush=True)
    os._exit(0)  # pylint: disable=protected-access

  trainer._update = report  # pylint: disable=protected-access
  trainer.train()


def measure(config: str, records: str, run_dir: str, bindings) -> float:
  """Seconds from spawning the child to its MARKER line."""
  command = [sys.executable, os.path.abspath(__file__), '--child', config, records, run_dir,
             json.dumps(bindings)]
  began = time.perf_counter()
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, PYTHONPATH=REPO))
  for line in process.stdout:
    if line.strip() == MARKER:
      seconds = time.perf_counter() - began
      process.wait()
      return seconds
  raise RuntimeError(f'{config}: the child ended without reaching update 1 '
                     f'(exit status {process.wait()}).')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--json', default=None, help='Write the records here.')
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
  rows = []
  for name, (config, bindings) in CONFIGS.items():
    seconds = {False: [], True: []}
    for round_ in range(args.rounds):
      run_dir = os.path.join(scratch, f'{name}_{round_}')
      seconds[False].append(measure(config, records, run_dir, bindings))
      seconds[True].append(measure(config, records, run_dir, bindings))
    for resumed in (False, True):
      rows.append(dict(config=name, resumed=resumed,
                       seconds=round(statistics.median(seconds[resumed]), 2),
                       rounds=[round(s, 2) for s in seconds[resumed]]))
      print(f'{name:22s} {"resumed" if resumed else "new":8s} '
            f'{rows[-1]["seconds"]:6.2f} s  (rounds: {rows[-1]["rounds"]})', flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(dict(machine=f'{platform.processor() or platform.machine()}, '
                              f'{os.cpu_count()} CPU cores', rows=rows), f, indent=1)


if __name__ == '__main__':
  main()
