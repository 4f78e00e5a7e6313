"""Few-shot sinusoid regression, the ALFA paper's Table 8, through the project's Trainer.

Trains and evaluates twelve cells: MAML (gin/sinusoid_maml.gin) and ALFA + MAML
(gin/sinusoid_alfa_maml.gin) on the 2x40 and 3x80 ReLU networks with k = 5, 10, 20 support
points; each is evaluated on held-out TEST tasks (600 by default; 95% CIs). The schedule is
the configs' (a CPU schedule, see benchmarks/results/sinusoid_table8.md); ``--quick`` trains
a fraction of it. Prints our table beside the paper's and writes
benchmarks/results/sinusoid_table8{,_quick}.{json,md}.

    python benchmarks/sinusoid_table8.py [--quick] [--run_dir runs/sinusoid_table8]

A cell whose results exist in --run_dir is not run again (a killed run resumes, the cell in
progress from its latest checkpoint).
"""
import argparse
import json
import os
import platform
import sys
import time

import gin
import tensorflow as tf

from meta_dataset_ext import gin_setup
from meta_dataset_ext import trainer as trainer_lib

CONFIGS = {'MAML': 'sinusoid_maml.gin', 'ALFA+MAML': 'sinusoid_alfa_maml.gin'}
NETS = {'2x40': (40, 40), '3x80': (80, 80, 80)}
SHOTS = (5, 10, 20)
# Table 8 of the paper: MSE and 95% CI per (model, net, k).
PAPER = {
    ('MAML', '2x40'): ((1.24, 0.21), (0.75, 0.15), (0.49, 0.11)),
    ('MAML', '3x80'): ((0.84, 0.14), (0.56, 0.09), (0.33, 0.06)),
    ('ALFA+MAML', '2x40'): ((0.92, 0.19), (0.62, 0.16), (0.34, 0.07)),
    ('ALFA+MAML', '3x80'): ((0.70, 0.15), (0.51, 0.10), (0.25, 0.06)),
}
QUICK_FRACTION = 10  # --quick trains 1/10 of the configs' updates.
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')


def paper(model, net, k):
  return PAPER[(model, net)][SHOTS.index(k)]


def run_cell(model, net, k, run_dir, bindings, quick):
  """Trains and evaluates one cell; returns its record (cached in its run folder)."""
  cell_dir = os.path.join(run_dir, f'{model}_{net}_k{k}'.replace('+', '_'))
  record_path = os.path.join(cell_dir, 'cell.json')
  if os.path.exists(record_path):
    with open(record_path) as f:
      return json.load(f)
  gin.clear_config()
  tf.keras.backend.clear_session()
  gin_setup.parse([CONFIGS[model]], [f'mlp.hidden = {NETS[net]}',
                                     f'SinusoidTasks.num_support = {k}',
                                     'Trainer.show_progress = False'] + list(bindings))
  if quick:
    updates = gin.query_parameter('Trainer.num_updates') // QUICK_FRACTION
    gin.parse_config([f'Trainer.num_updates = {updates}',
                      f'Trainer.validate_every = {updates // 2}',
                      f'Trainer.checkpoint_every = {updates // 2}'])
  start = time.perf_counter()
  trainer = trainer_lib.Trainer(checkpoint_dir=cell_dir)
  trainer.train()
  summary = trainer.evaluate()[0].by_source()['sinusoid']
  record = dict(model=model, hidden=list(NETS[net]), k=k, mse=summary['mean'],
                ci95=summary['ci95'], num_tasks=summary['num_episodes'],
                updates=trainer.num_updates, seconds=round(time.perf_counter() - start, 1))
  with open(record_path, 'w') as f:
    json.dump(record, f, indent=1)
  return record


def table(records, fmt=lambda r: f'{r["mse"]:.2f} ± {r["ci95"]:.2f}'):
  """Markdown: one row per model (ours and the paper's), one column per (net, k)."""
  by_cell = {(r['model'], _net_name(r['hidden']), r['k']): r for r in records}
  columns = [(net, k) for net in NETS for k in SHOTS]
  lines = ['| model | ' + ' | '.join(f'{net}, k={k}' for net, k in columns) + ' |',
           '|---' * (len(columns) + 1) + '|']
  for model in CONFIGS:
    ours = [fmt(by_cell[(model, *c)]) if (model, *c) in by_cell else '-' for c in columns]
    theirs = ['%.2f ± %.2f' % paper(model, *c) for c in columns]
    lines += [f'| {model} (ours) | ' + ' | '.join(ours) + ' |',
              f'| {model} (paper) | ' + ' | '.join(theirs) + ' |']
  return '\n'.join(lines) + '\n'


def _net_name(hidden):
  return next(name for name, value in NETS.items() if list(value) == list(hidden))


def checks(records):
  """The acceptance checks per setting: ALFA+MAML below MAML, and at most paper + CI."""
  by_cell = {(r['model'], _net_name(r['hidden']), r['k']): r['mse'] for r in records}
  lines = []
  for net in NETS:
    for k in SHOTS:
      alfa, maml = by_cell.get(('ALFA+MAML', net, k)), by_cell.get(('MAML', net, k))
      if alfa is None or maml is None:
        continue
      bound = sum(paper('ALFA+MAML', net, k))
      lines.append(f'- {net}, k={k}: ALFA+MAML {alfa:.3f} '
                   f'{"<" if alfa < maml else ">="} MAML {maml:.3f}; '
                   f'{"<=" if alfa <= bound else ">"} paper + CI {bound:.2f}')
  return '\n'.join(lines) + '\n'


def machine():
  return (f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, '
          f'{platform.system()}, Python {platform.python_version()}, TensorFlow '
          f'{tf.__version__}')


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--quick', action='store_true',
                      help=f'train 1/{QUICK_FRACTION} of the configs\' updates')
  parser.add_argument('--run_dir', default=None, help='checkpoints and per-cell results '
                      '(default runs/sinusoid_table8 or runs/sinusoid_table8_quick)')
  parser.add_argument('--models', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
  parser.add_argument('--nets', nargs='+', default=list(NETS), choices=list(NETS))
  parser.add_argument('--shots', nargs='+', type=int, default=list(SHOTS), choices=SHOTS)
  parser.add_argument('--gin_bindings', action='append', default=[],
                      help='extra bindings for every cell (schedule experiments)')
  parser.add_argument('--output', default=None, help='results file stem (default '
                      'benchmarks/results/sinusoid_table8[_quick])')
  args = parser.parse_args()
  tf.get_logger().setLevel('WARNING')
  name = 'sinusoid_table8' + ('_quick' if args.quick else '')
  run_dir = args.run_dir or os.path.join('runs', name)
  output = args.output or os.path.join(RESULTS, name)
  start = time.perf_counter()
  records = []
  for net in args.nets:
    for k in args.shots:
      for model in args.models:
        records.append(run_cell(model, net, k, run_dir, args.gin_bindings, args.quick))
        print(f'{model:10s} {net} k={k:2d}: MSE {records[-1]["mse"]:.3f} ± '
              f'{records[-1]["ci95"]:.3f} ({records[-1]["seconds"]:.0f} s)', flush=True)
  minutes = (time.perf_counter() - start) / 60
  text = table(records) + '\n' + checks(records)
  print(text)
  os.makedirs(os.path.dirname(output), exist_ok=True)
  with open(output + '.json', 'w') as f:
    json.dump(records, f, indent=1)
  command = ' '.join(['python', 'benchmarks/sinusoid_table8.py'] + sys.argv[1:])
  with open(output + '.md', 'w') as f:
    f.write(f'# Sinusoid regression (ALFA Table 8){" - quick" if args.quick else ""}\n\n'
            f'Command: `{command}`\n\nMachine: {machine()}\n\n'
            f'Wall time: {minutes:.1f} min for {len(records)} cells (cells already in '
            f'--run_dir are not rerun; see each record\'s seconds).\n\n'
            f'Test MSE over {records[0]["num_tasks"]} held-out tasks ± 95% CI:\n\n{text}')


if __name__ == '__main__':
  main()
