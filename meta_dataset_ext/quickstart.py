r"""The project's main job: ALFA + fo-Proto-MAML against fo-Proto-MAML on embedded data.

    python -m meta_dataset_ext.quickstart [--output_dir=runs/quickstart]

Renders the 'glyphs' source (characters of the fonts matplotlib ships, 28x28; an
Omniglot-like source of alphabets) into a cache folder on first use, meta-trains both learners
with ``gin/quickstart_glyphs.gin`` (variable way and shot within an alphabet, 4-CONV with 32
filters, 5 first-order inner steps), evaluates them on the TEST alphabets and prints the
comparison with 95% confidence intervals (also written to <output_dir>/comparison.md). Runs
again resume where they stopped; finished runs are only evaluated.
"""
import os

from absl import app
from absl import flags
import gin
import tensorflow as tf

from meta_dataset_ext import gin_setup
from meta_dataset_ext import glyphs
from meta_dataset_ext import report
from meta_dataset_ext import trainer as trainer_lib

FLAGS = flags.FLAGS
flags.DEFINE_string('output_dir', 'runs/quickstart', 'Checkpoints, summaries and results.')
flags.DEFINE_string('records_root_dir', None, 'Where the glyphs records are (generated if '
                    'missing); default: a cache folder ($XDG_CACHE_HOME or ~/.cache).')
flags.DEFINE_multi_string('gin_bindings', [], 'Extra gin bindings for both runs, e.g. '
                          '"Trainer.num_updates=300".')

CONFIG = 'quickstart_glyphs.gin'
LEARNERS = (('fo_proto_maml', '@MAMLLearner'), ('alfa_fo_proto_maml', '@ALFAProtoMAMLLearner'))


def default_records_dir() -> str:
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(cache, 'alfa-tf', 'records')


def run_one(run_name, learner_class, records_root_dir, output_dir, bindings):
  """Trains (or resumes) one learner and evaluates it; returns (name, summaries)."""
  gin.clear_config()
  tf.keras.backend.clear_session()
  gin_setup.parse([CONFIG], [f'Trainer.train_learner_class = {learner_class}',
                             f'Trainer.eval_learner_class = {learner_class}'] + list(bindings))
  run_dir = os.path.join(output_dir, run_name)
  trainer = trainer_lib.Trainer(records_root_dir=records_root_dir, checkpoint_dir=run_dir)
  trainer.train()
  summaries = trainer.evaluate()
  return trainer.learner_name, list(summaries.values())


def main(argv):
  del argv
  tf.get_logger().setLevel('WARNING')
  records = FLAGS.records_root_dir or default_records_dir()
  print(f'Glyphs source: {glyphs.ensure_glyphs(records, image_size=28)}')
  results = dict(run_one(name, cls, records, FLAGS.output_dir, FLAGS.gin_bindings)
                 for name, cls in LEARNERS)
  table = report.comparison_table(results, fmt='text')
  print('\nTest accuracy on the glyphs TEST alphabets (mean ± 95% CI over episodes):')
  print(table)
  with open(os.path.join(FLAGS.output_dir, 'comparison.md'), 'w') as f:
    f.write(report.comparison_table(results, fmt='markdown') + '\n')
  print(f'Per-run results, checkpoints and plots are in {os.path.abspath(FLAGS.output_dir)}')


if __name__ == '__main__':
  app.run(main)
