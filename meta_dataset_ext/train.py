r"""Meta-train and evaluate ALFA / MAML / Proto-MAML learners on Meta-Dataset records (or on
synthetic tasks: gin/sinusoid_*.gin, no records needed).

    python -m meta_dataset_ext.train --gin_config=gin/alfa_fo_proto_maml.gin \
        --records_root_dir=RECORDS --train_checkpoint_dir=runs/alfa_fo_proto_maml

    python -m meta_dataset_ext.train --gin_config=gin/alfa_fo_proto_maml.gin \
        --records_root_dir=RECORDS --train_checkpoint_dir=runs/alfa_fo_proto_maml \
        --is_training=False --gin_bindings="benchmark.eval_datasets='omniglot,dtd'"

The flags are upstream Meta-Dataset's. Training resumes from the latest checkpoint in
--train_checkpoint_dir (a killed run loses nothing: run the same command again); Ctrl-C saves
a checkpoint first. With --is_training=False the latest checkpoint (or the ensemble of the best
ones, Trainer.ensemble_top_k) is evaluated on every source of benchmark.eval_datasets (default:
the ten of Meta-Dataset) in one run: a table with 95% confidence intervals is printed and
written as markdown, CSV and results.json, with plots of ALFA's generated alpha and beta.

    python -m meta_dataset_ext.train --gin_config=gin/sinusoid_alfa_maml.gin \
        --train_checkpoint_dir=runs/sinusoid_alfa --gin_bindings="SinusoidTasks.num_support=5"
"""
import os

from absl import flags
import tensorflow as tf

from meta_dataset_ext import cli
from meta_dataset_ext import gin_setup
from meta_dataset_ext import report
from meta_dataset_ext import trainer

FLAGS = flags.FLAGS
flags.DEFINE_multi_string('gin_config', [], 'Gin config files (repeatable); relative paths '
                          'are tried in the working directory, then in the installed configs.')
flags.DEFINE_multi_string('gin_bindings', [], 'Gin bindings (repeatable), e.g. '
                          '"Trainer.num_updates=1000".')
flags.DEFINE_string('records_root_dir', None, 'Folder with one sub-folder of records (and '
                    'dataset_spec.json) per source; unused (may be left out) when every source '
                    'is synthetic, e.g. sinusoid.')
flags.DEFINE_string('train_checkpoint_dir', 'runs/train', 'Checkpoints, the operative gin '
                    'config and (by default) summaries and results go here.')
flags.DEFINE_string('summary_dir', None, 'TensorBoard summaries (default: '
                    '<train_checkpoint_dir>/summaries).')
flags.DEFINE_string('results_dir', None, 'Evaluation tables and plots (default: '
                    '<train_checkpoint_dir>/results).')
flags.DEFINE_bool('is_training', True, 'Meta-train (then evaluate); False: evaluate only.')
flags.DEFINE_bool('evaluate_after_training', True, 'After training, evaluate on '
                  'benchmark.eval_datasets.')


def main(argv):
  del argv
  tf.get_logger().setLevel('WARNING')  # TensorFlow logs every checkpoint save at INFO.
  gin_setup.parse(FLAGS.gin_config, FLAGS.gin_bindings)
  overrides = dict(checkpoint_dir=FLAGS.train_checkpoint_dir, is_training=FLAGS.is_training)
  if FLAGS.records_root_dir:
    overrides['records_root_dir'] = FLAGS.records_root_dir
  if FLAGS.summary_dir:
    overrides['summary_dir'] = FLAGS.summary_dir
  if FLAGS.results_dir:
    overrides['results_dir'] = FLAGS.results_dir
  trainer_ = trainer.Trainer(**overrides)
  if FLAGS.is_training:
    trainer_.train()
  if not FLAGS.is_training or FLAGS.evaluate_after_training:
    summaries = trainer_.evaluate()
    print(report.comparison_table({trainer_.learner_name: list(summaries.values())},
                                  fmt='text', metric=trainer_.format.metric))
    print(f'Results written to {os.path.abspath(trainer_.results_dir)}')


if __name__ == '__main__':
  cli.run(main)
