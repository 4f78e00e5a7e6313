r"""Meta-train and evaluate ALFA / MAML / Proto-MAML learners on Meta-Dataset records (or on
synthetic tasks: gin/sinusoid_*.gin, no records needed).

    python -m meta_dataset_ext.train --gin_config=alfa_fo_proto_maml.gin \
        --records_root_dir=RECORDS --train_checkpoint_dir=runs/alfa_fo_proto_maml

    python -m meta_dataset_ext.train --records_root_dir=RECORDS \
        --train_checkpoint_dir=runs/alfa_fo_proto_maml --is_training=False \
        [--gin_bindings="benchmark.eval_datasets='omniglot,dtd'"]

The flags are upstream Meta-Dataset's (plus --results_dir, --evaluate_after_training,
--allow_config_change, --verbose). A --gin_config path is looked up in the working directory,
then among the configs installed with alfa-tf (``config_files``). Training resumes from the
latest checkpoint in --train_checkpoint_dir (a killed run loses nothing: run the same command
again); Ctrl-C saves a checkpoint first; a rerun with another configuration is refused
(naming what differs) unless --allow_config_change. What the console shows is also appended
to <train_checkpoint_dir>/train.log.

With --is_training=False the run is evaluated with the configuration it was trained with: its
operative_config.gin is reloaded (upstream's --reload_checkpoint_gin_config, on by default
here for evaluation), over any --gin_config files, and --gin_bindings override it (recorded in
<results_dir>/operative_config.gin). The latest checkpoint (or Trainer.checkpoint_to_restore)
and, with Trainer.ensemble_top_k > 1, the logit ensemble of the best ones are evaluated on
every source of benchmark.eval_datasets (default: the ten of Meta-Dataset) in one run: tables
with 95% confidence intervals are printed and written as markdown, CSV and JSON, with plots
of ALFA's generated alpha and beta.

    python -m meta_dataset_ext.train --gin_config=sinusoid_alfa_maml.gin \
        --train_checkpoint_dir=runs/sinusoid_alfa --gin_bindings="SinusoidTasks.num_support=5"
"""
import os

from absl import flags
import gin
import tensorflow as tf

from meta_dataset_ext import cli
from meta_dataset_ext import errors
from meta_dataset_ext import gin_setup
from meta_dataset_ext import report
from meta_dataset_ext import run_dir
from meta_dataset_ext import trainer

FLAGS = flags.FLAGS
flags.DEFINE_multi_string('gin_config', [], 'Gin config files (repeatable); a path is looked '
                          'up in the working directory, then among the installed configs.')
flags.DEFINE_multi_string('gin_bindings', [], 'Gin bindings (repeatable), e.g. '
                          '"Trainer.num_updates=1000".')
flags.DEFINE_string('records_root_dir', None, 'Folder with one sub-folder of records (and '
                    'dataset_spec.json) per source; unused (may be left out) when every source '
                    'is synthetic, e.g. sinusoid.')
flags.DEFINE_string('train_checkpoint_dir', 'runs/train', 'The run directory: checkpoints, '
                    'the operative gin config, train.log and (by default) summaries and '
                    'results.')
flags.DEFINE_string('summary_dir', None, 'TensorBoard summaries (default: '
                    '<train_checkpoint_dir>/summaries).')
flags.DEFINE_string('results_dir', None, 'Evaluation tables and plots (default: '
                    '<train_checkpoint_dir>/results).')
flags.DEFINE_bool('is_training', True, 'Meta-train (then evaluate); False: evaluate only.')
flags.DEFINE_bool('evaluate_after_training', True, 'After training, evaluate on '
                  'benchmark.eval_datasets.')
flags.DEFINE_bool('reload_checkpoint_gin_config', None, 'Parse the run\'s '
                  'operative_config.gin (from the folder of Trainer.checkpoint_to_restore, '
                  'else --train_checkpoint_dir) after the --gin_config files and before the '
                  '--gin_bindings. Default: True with --is_training=False, else False.')
flags.DEFINE_enum('eval_split', '', ['', 'train', 'valid', 'test', 'TRAIN', 'VALID', 'TEST'],
                  'The split to evaluate on; "" keeps Trainer.eval_split (default TEST).')
flags.DEFINE_multi_enum('omit_from_saving_and_reloading', list(trainer.OMIT_DEFAULT),
                        list(trainer.OMIT_CHOICES), 'Variables whose names contain one of '
                        'these substrings are not reloaded from checkpoints (upstream\'s flag).')
flags.DEFINE_bool('allow_config_change', False, 'Resume a run with a configuration that '
                  'differs from its operative_config.gin (kept as operative_config-<n>.gin).')


def _reload_source() -> str:
  """The run's operative_config.gin to reload: beside Trainer.checkpoint_to_restore (or in
  the run directory above a best/ checkpoint), else in --train_checkpoint_dir."""
  checkpoint = gin_setup.bound_value('Trainer.checkpoint_to_restore')
  folders = ([os.path.dirname(checkpoint), os.path.dirname(os.path.dirname(checkpoint))]
             if checkpoint else [FLAGS.train_checkpoint_dir])
  for folder in folders:
    path = os.path.join(folder, run_dir.OPERATIVE_CONFIG)
    if os.path.isfile(path):
      return path
  return os.path.join(folders[0], run_dir.OPERATIVE_CONFIG)


def parse_configuration() -> None:
  """The --gin_config files, the run's operative config when reloading, the bindings."""
  reload = FLAGS.reload_checkpoint_gin_config
  explicit = reload is not None
  if reload is None:
    reload = not FLAGS.is_training
  gin_setup.parse(FLAGS.gin_config, FLAGS.gin_bindings)
  if not reload:
    return
  path = _reload_source()
  if not os.path.isdir(os.path.dirname(path)):
    raise errors.ConfigError(f'The run directory {os.path.dirname(path)!r} does not exist: '
                             'give the folder of the run to evaluate (--train_checkpoint_dir).')
  if not os.path.isfile(path):
    if explicit or not FLAGS.gin_config:
      raise errors.ConfigError(
          f'No {run_dir.OPERATIVE_CONFIG} to reload at {path!r}: check '
          '--train_checkpoint_dir, or give the configuration with --gin_config and '
          '--reload_checkpoint_gin_config=False.')
    errors.warn(f'No {run_dir.OPERATIVE_CONFIG} at {path!r}: evaluating with the '
                '--gin_config files and --gin_bindings only.')
    return
  gin.clear_config()
  gin_setup.parse(FLAGS.gin_config, FLAGS.gin_bindings, operative_config=path)


def trainer_arguments() -> dict:
  """The Trainer arguments that come from flags."""
  arguments = dict(checkpoint_dir=FLAGS.train_checkpoint_dir, is_training=FLAGS.is_training,
                   will_evaluate=not FLAGS.is_training or FLAGS.evaluate_after_training)
  for flag, argument in (('records_root_dir', 'records_root_dir'),
                         ('summary_dir', 'summary_dir'), ('results_dir', 'results_dir'),
                         ('eval_split', 'eval_split')):
    if getattr(FLAGS, flag):
      arguments[argument] = getattr(FLAGS, flag)
  if FLAGS['omit_from_saving_and_reloading'].present:
    arguments['omit_from_saving_and_reloading'] = FLAGS.omit_from_saving_and_reloading
  if FLAGS.allow_config_change:
    arguments['allow_config_change'] = True
  return arguments


def run() -> None:
  trainer_ = trainer.Trainer(**trainer_arguments())
  if FLAGS.is_training:
    trainer_.train()
  if not FLAGS.is_training or FLAGS.evaluate_after_training:
    results = trainer_.evaluate(record={'command_line_gin_bindings': list(FLAGS.gin_bindings)})
    print(report.comparison_table({r.name: r.summaries for r in results}, fmt='text',
                                  metric=trainer_.format.metric))
    print(f'Results written to {os.path.abspath(trainer_.results_dir)}')


def main(argv):
  del argv
  tf.get_logger().setLevel('WARNING')  # TensorFlow logs every checkpoint save at INFO.
  parse_configuration()
  folder = FLAGS.train_checkpoint_dir
  if FLAGS.is_training:
    run_dir.check_output_dir(folder, 'checkpoint folder (--train_checkpoint_dir)')
  elif not os.path.isdir(folder):
    if not gin_setup.bound_value('Trainer.checkpoint_to_restore'):
      raise errors.ConfigError(f'The run directory {folder!r} (--train_checkpoint_dir) does '
                               'not exist: give the folder of the run to evaluate.')
    run()  # A checkpoint outside any run directory: no train.log to append to.
    return
  with run_dir.ConsoleLog(os.path.join(folder, run_dir.CONSOLE_LOG)):
    run()


if __name__ == '__main__':
  cli.run(main)
