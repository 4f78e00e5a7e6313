"""Seconds per update of the tuned configs of gin/best/ (126x126, ResNet-18), on this machine.

    python benchmarks/best_configs.py [--updates 3] [--configs fo_proto_maml.gin ...]

Writes a synthetic source named ilsvrc_2012 (the configs' training source: --num_classes
classes of 120 JPEG images of 126 px, TRAIN / VALID / TEST = 80% / 10% / 10% of the classes) to
a temporary directory, then runs each config through the project's Trainer with its own
settings (Meta-Dataset's variable way and shot, up to 500 support images; Baseline batches of
256) except the checkpoint and validation schedule: one update to trace the step, then
--updates more, timed by the Trainer (``updates_per_second``: fetching the data and running
the steps). The meta-training configs start from the pre-training's checkpoint
(``Learner.pretrained_checkpoint``), as the README's steps do. Prints a markdown table with the
seconds per update and what 75,000 updates (50,000 for the pre-training) would take at that
rate.
"""
import argparse
import os
import tempfile
import time

import gin
import numpy as np
import tensorflow as tf

from meta_dataset_ext import gin_setup
from meta_dataset_ext import trainer as trainer_lib
from meta_dataset_ext.data import writer
from meta_dataset_ext.data.spec import Split

CONFIGS = ('pretrain_resnet.gin', 'fo_maml.gin', 'fo_proto_maml.gin', 'alfa_fo_maml.gin',
           'alfa_fo_proto_maml.gin')


def write_source(root, num_classes, images_per_class, size):
  from benchmarks.episode_pipeline import synthetic_jpeg  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  counts = (num_classes * 8 // 10, num_classes // 10, num_classes - num_classes * 9 // 10)
  names, first = {}, 0
  for split, count in zip((Split.TRAIN, Split.VALID, Split.TEST), counts):
    names[split] = [f'class{c}' for c in range(first, first + count)]
    first += count
  examples = ((c, synthetic_jpeg(rng, size)) for c in range(num_classes)
              for _ in range(images_per_class))
  writer.write_source(root, writer.SourceLayout.flat('ilsvrc_2012', names), examples)


def seconds_per_update(config, root, run_dir, updates, extra):
  gin.clear_config()
  tf.keras.backend.clear_session()
  gin_setup.parse([f'best/{config}'], ['Trainer.num_updates = 1',
                                       f'Trainer.checkpoint_every = {updates + 1}',
                                       f'Trainer.validate_every = {updates + 1}',
                                       'Trainer.num_validation_episodes = 1',
                                       'Trainer.show_progress = False'] + extra)
  trainer = trainer_lib.Trainer(records_root_dir=root, checkpoint_dir=run_dir,
                                will_evaluate=False)
  trainer.train()  # Traces the step.
  trainer.num_updates = 1 + updates
  return 1.0 / trainer.train()['updates_per_second']


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--updates', type=int, default=3)
  parser.add_argument('--num_classes', type=int, default=100)
  parser.add_argument('--configs', nargs='+', default=list(CONFIGS))
  args = parser.parse_args()
  tf.get_logger().setLevel('WARNING')
  with tempfile.TemporaryDirectory() as tmp:
    write_source(tmp, args.num_classes, 120, 126)
    print(f'{os.cpu_count()} CPUs, TensorFlow {tf.__version__}, load average '
          f'{os.getloadavg()[0]:.2f} before')
    rows, pretrained = [], []
    for config in args.configs:
      began = time.perf_counter()
      run = os.path.join(tmp, config)
      extra = ([f"Learner.pretrained_checkpoint = '{pretrained[0]}'"]
               if pretrained and config != 'pretrain_resnet.gin' else [])
      if not pretrained and config != 'pretrain_resnet.gin':
        extra = ["Trainer.pretrained_source = 'scratch'"]
      seconds = seconds_per_update(config, tmp, run, args.updates, extra)
      if config == 'pretrain_resnet.gin':
        pretrained.append(run)
      total = (50000 if config == 'pretrain_resnet.gin' else 75000) * seconds
      rows.append((config, seconds, total, time.perf_counter() - began))
    print(f'load average {os.getloadavg()[0]:.2f} after')
    print('\n| config | s / update | updates of the config at that rate | wall time here |')
    print('| --- | --- | --- | --- |')
    for config, seconds, total, wall in rows:
      print(f'| best/{config} | {seconds:.1f} | {total / 86400:.0f} days | {wall:.0f} s |')


if __name__ == '__main__':
  main()
