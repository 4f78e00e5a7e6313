"""Updates per second of the trainer: ALFA + fo-Proto-MAML vs fo-Proto-MAML.

Runs ``gin/alfa_fo_proto_maml.gin`` and ``gin/fo_proto_maml.gin`` on the glyphs source at
84x84 with Meta-Dataset's variable way and shot (upstream's episode settings), through the
project's Trainer (data pipeline, compiled meta-step, summaries), and prints updates per second
after a warm-up (the Trainer's own measure: time spent fetching meta-batches and running steps;
validation, one episode here, and checkpoints excluded), and the process's CPU use over the
timed run (1.0 = one core busy, 2.0 = both). Both configurations see the same episodes (same
seed), so their rates compare; the episodes vary a lot in size, so use enough updates.

    python benchmarks/train_speed.py [--updates 30] [--records_root_dir DIR]
"""
import argparse
import os
import tempfile
import time

import gin
import tensorflow as tf

from meta_dataset_ext import gin_setup
from meta_dataset_ext import glyphs
from meta_dataset_ext import trainer as trainer_lib

CONFIGS = ('fo_proto_maml.gin', 'alfa_fo_proto_maml.gin')


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


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--updates', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--records_root_dir', default=os.path.join(
      tempfile.gettempdir(), 'alfa_tf_benchmark_records'))
  args = parser.parse_args()
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
