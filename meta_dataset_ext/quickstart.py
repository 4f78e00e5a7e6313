r"""The project's main job: ALFA + fo-Proto-MAML against fo-Proto-MAML on embedded data.

    python -m meta_dataset_ext.quickstart [--output_dir=runs/quickstart]

Renders the 'glyphs' source (characters of the fonts matplotlib ships, 28x28; an
Omniglot-like source of alphabets) on first use into a cache folder,
$XDG_CACHE_HOME/alfa-tf/records (default ~/.cache/alfa-tf/records; --records_root_dir puts it
elsewhere), meta-trains both learners
with ``gin/quickstart_glyphs.gin`` (variable way and shot within an alphabet, 4-CONV with 32
filters, 5 first-order inner steps), evaluates them on the TEST alphabets and prints the
comparison with 95% confidence intervals (also written to <output_dir>/comparison.md). Runs
again resume where they stopped; finished runs are only evaluated. Each run's console output
is also in <output_dir>/<run>/train.log. Works from any directory (the config is installed
with the package).
"""
import os

from absl import flags
import gin
import tensorflow as tf

from meta_dataset_ext import cli
from meta_dataset_ext import gin_setup
from meta_dataset_ext import glyphs
from meta_dataset_ext import report
from meta_dataset_ext import run_dir as run_dir_lib
from meta_dataset_ext import trainer as trainer_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('output_dir', 'runs/quickstart', 'Checkpoints, summaries and results.')
flags.DEFINE_string('records_root_dir', None, 'Where the glyphs records are (generated if '
                    'missing); default: a cache folder ($XDG_CACHE_HOME or ~/.cache).')
flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings for both runs, e.g. '
                          '"Trainer.num_updates=300".')
flags.DEFINE_bool('allow_config_change', False, 'Resume runs whose operative config differs '
                  'from the one these flags give (see meta_dataset_ext.train).')

CONFIG = 'quickstart_glyphs.gin'
LEARNERS = (('fo_proto_maml', '@MAMLLearner'), ('alfa_fo_proto_maml', '@ALFAProtoMAMLLearner'))


def default_records_dir() -> str:
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(cache, 'alfa-tf', 'records')


def run_one(run_name, learner_class, records_root_dir, output_dir, bindings):
  """Trains (or resumes) one learner and evaluates it; returns its evaluation results (the
  latest checkpoint, and the ensemble of the best ones if Trainer.ensemble_top_k > 1)."""
  gin.clear_config()
  tf.keras.backend.clear_session()
  gin_setup.parse([CONFIG], [f'Trainer.train_learner_class = {learner_class}',
                             f'Trainer.eval_learner_class = {learner_class}'] + list(bindings))
  run_dir = os.path.join(output_dir, run_name)
  with run_dir_lib.ConsoleLog(os.path.join(run_dir, run_dir_lib.CONSOLE_LOG)):
    trainer = trainer_lib.Trainer(records_root_dir=records_root_dir, checkpoint_dir=run_dir,
                                  allow_config_change=FLAGS.allow_config_change)
    trainer.train()
    return trainer.evaluate(record={'command_line_gin_bindings': list(bindings)})


def main(argv):
  del argv
  tf.get_logger().setLevel('WARNING')
  run_dir_lib.check_output_dir(FLAGS.output_dir, 'output folder (--output_dir)')
  records = FLAGS.records_root_dir or default_records_dir()
  source = glyphs.ensure_glyphs(records, image_size=28)
  print(f'Glyphs source: {source}' + ('' if FLAGS.records_root_dir else
                                      ' (a cache: --records_root_dir puts it elsewhere)'))
  results = {}
  for name, cls in LEARNERS:
    for result in run_one(name, cls, records, FLAGS.output_dir, FLAGS.gin_bindings):
      results[result.name] = result.summaries
  print('\nTest accuracy on the glyphs TEST alphabets (mean ± 95% CI over episodes):')
  print(report.comparison_table(results, fmt='text'))
  run_dir_lib.atomic_write(os.path.join(FLAGS.output_dir, 'comparison.md'),
                           report.comparison_table(results, fmt='markdown') + '\n')
  print(f'Per-run results, checkpoints and plots are in {os.path.abspath(FLAGS.output_dir)}')


if __name__ == '__main__':
  cli.run(main)
