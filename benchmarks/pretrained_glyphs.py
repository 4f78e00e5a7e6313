"""fo-Proto-MAML on glyphs from a pretrained backbone vs from scratch, at the same
meta-training budget.

    python benchmarks/pretrained_glyphs.py --output_dir=runs/pretrained_glyphs
        [--budgets 250 1500] [--pretrain_updates 1000] [--records_root_dir DIR]

1. Batch mode: the Baseline learner (the 4-CONV of ``gin/quickstart_glyphs.gin``, 32 filters,
   28x28, with a linear classifier over the glyphs' TRAIN classes) trains on batches of
   ``--batch_size`` TRAIN images for ``--pretrain_updates`` updates (Adam 1e-3), validated by
   cosine nearest neighbour on VALID episodes; its best checkpoint by validation is kept.
2. fo-Proto-MAML (``quickstart_glyphs.gin`` with ``@MAMLLearner``) meta-trains for each budget
   of ``--budgets`` updates, from scratch and from that checkpoint
   (``Learner.pretrained_checkpoint``): the same seed, episodes, schedule and evaluation.
3. Prints the test accuracy (300 TEST episodes, mean and 95% CI) of each run, and the wall time
   of each stage. Runs resume from ``--output_dir`` (a rerun evaluates what is there).
"""
import argparse
import os
import time

import gin
import tensorflow as tf

from meta_dataset_ext import checkpoints
from meta_dataset_ext import gin_setup
from meta_dataset_ext import glyphs
from meta_dataset_ext import quickstart
from meta_dataset_ext import trainer as trainer_lib

CONFIG = 'quickstart_glyphs.gin'


def run(name, bindings, args):
  """Trains the run ``name`` of ``CONFIG`` with ``bindings``; returns (trainer, seconds)."""
  gin.clear_config()
  tf.keras.backend.clear_session()
  gin_setup.parse([CONFIG], list(bindings) + ['Trainer.show_progress = False'])
  began = time.perf_counter()
  trainer = trainer_lib.Trainer(records_root_dir=args.records_root_dir,
                                checkpoint_dir=os.path.join(args.output_dir, name))
  trainer.train()
  return trainer, time.perf_counter() - began


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--output_dir', required=True)
  parser.add_argument('--records_root_dir', default=quickstart.default_records_dir())
  parser.add_argument('--budgets', type=int, nargs='+', default=[250, 1500])
  parser.add_argument('--pretrain_updates', type=int, default=1000)
  parser.add_argument('--batch_size', type=int, default=64)
  args = parser.parse_args()
  tf.get_logger().setLevel('WARNING')
  glyphs.ensure_glyphs(args.records_root_dir, image_size=28)
  baseline = ['Trainer.train_learner_class = @BaselineLearner',
              'Trainer.eval_learner_class = @BaselineLearner',
              f'Trainer.batch_size = {args.batch_size}',
              f'Trainer.num_updates = {args.pretrain_updates}',
              f'Trainer.validate_every = {max(1, args.pretrain_updates // 4)}',
              f'Trainer.checkpoint_every = {max(1, args.pretrain_updates // 4)}',
              "BaselineLearner.knn_distance = 'cosine'"]
  pretrain, seconds = run('pretrain', baseline, args)
  best = checkpoints.BestCheckpoints(pretrain.checkpoint_dir, pretrain.keep_best, 'accuracy',
                                     True)
  entry = best.entries()[0]
  pretrained = os.path.join(best.directory, entry['path'])
  print(f'Baseline pre-training: {args.pretrain_updates} batches of {args.batch_size}, '
        f'{seconds:.0f} s; best validation accuracy {entry["accuracy"]:.4f} at update '
        f'{entry["step"]} ({pretrained})')
  rows = []
  for budget in args.budgets:
    schedule = [f'Trainer.num_updates = {budget}', f'Trainer.validate_every = {budget}',
                f'Trainer.checkpoint_every = {budget}',
                f'Trainer.decay_every = {max(1, budget * 2 // 3)}',
                'Trainer.train_learner_class = @MAMLLearner',
                'Trainer.eval_learner_class = @MAMLLearner']
    for start, extra in (('scratch', []),
                         ('pretrained', [f"Learner.pretrained_checkpoint = '{pretrained}'",
                                         "Trainer.pretrained_source = 'glyphs'"])):
      trainer, seconds = run(f'fo_proto_maml_{budget}_{start}', schedule + extra, args)
      (summary,) = trainer.evaluate(['glyphs'])[0].summaries
      rows.append((budget, start, summary, seconds))
  print('\n| meta-training updates | start | test accuracy (%) | episodes | wall time |')
  print('| --- | --- | --- | --- | --- |')
  for budget, start, summary, seconds in rows:
    print(f'| {budget} | {start} | {100 * summary["mean"]:.2f} ± {100 * summary["ci95"]:.2f} '
          f'| {summary["num_episodes"]} | {seconds / 60:.1f} min |')


if __name__ == '__main__':
  main()
