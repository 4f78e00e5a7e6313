"""End to end through the trainer and its CLI, tiny: 16x16 glyphs, 4 filters, few updates."""
import glob
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext import gin_setup
from meta_dataset_ext import trainer as trainer_lib
from meta_dataset_ext.errors import DataError
from tests.faults import util as faults
from tests.trainer.tiny import TINY, make_trainer, records, weights  # pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cli_trains_checkpoints_evaluates_two_sources_and_writes_reports(records, tmp_path):
  run = tmp_path / 'run'
  bindings = TINY + ['Trainer.num_updates = 4', "benchmark.eval_datasets = 'glyphs,tiny'"]
  command = [sys.executable, '-m', 'meta_dataset_ext.train',
             '--gin_config=gin/quickstart_glyphs.gin', f'--records_root_dir={records}',
             f'--train_checkpoint_dir={run}'] + [f'--gin_bindings={b}' for b in bindings]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, PYTHONPATH=REPO))
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'glyphs' in done.stdout and 'tiny' in done.stdout
  results = json.load(open(run / 'results' / 'results.json'))
  assert results['learner'] == 'ALFA+fo-Proto-MAML' and results['checkpoint_step'] == 4
  assert set(results['sources']) == {'glyphs', 'tiny'}
  assert all(s['num_episodes'] == 4 for s in results['sources'].values())
  for name in ('results.md', 'results.csv', 'alpha_beta_glyphs.png', 'alpha_beta_tiny.png',
               'training_curves.png'):
    assert os.path.getsize(run / 'results' / name) > 0, name
  assert tf.train.latest_checkpoint(str(run)).endswith('ckpt-4')
  assert (run / 'operative_config.gin').read_text().count('ALFAProtoMAMLLearner') >= 1
  assert len(json.load(open(run / 'best' / 'best.json'))) >= 1
  tags = {t for e in glob.glob(str(run / 'summaries' / 'train' / '*'))
          for t in _tags(e)}
  assert {'loss', 'accuracy', 'learning_rate', 'updates_per_second'} <= tags
  assert any(t.startswith('alpha/') for t in tags) and any(t.startswith('beta/') for t in tags)


def _tags(event_file):
  return {v.tag for e in tf.compat.v1.train.summary_iterator(event_file)
          for v in e.summary.value}


def test_interrupted_run_resumes_to_identical_results(records, tmp_path, monkeypatch):
  straight = make_trainer(records, tmp_path / 'straight', extra=['Trainer.num_updates = 5'])
  straight.train()
  expected = weights(straight)

  interrupted = make_trainer(records, tmp_path / 'resumed', extra=['Trainer.num_updates = 5'])
  real_apply, calls = interrupted._apply, []

  def apply_then_interrupt(grads):
    calls.append(1)
    if len(calls) == 4:  # Ctrl-C while the fourth update is being computed.
      raise KeyboardInterrupt
    return real_apply(grads)

  monkeypatch.setattr(interrupted, '_apply', apply_then_interrupt)
  with pytest.raises(KeyboardInterrupt):
    interrupted.train()
  assert tf.train.latest_checkpoint(str(tmp_path / 'resumed')).endswith('ckpt-3')

  resumed = make_trainer(records, tmp_path / 'resumed', extra=['Trainer.num_updates = 5'])
  resumed.train()
  assert int(resumed.step.numpy()) == 5
  for a, b in zip(expected, weights(resumed)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert int(resumed.optimizer.iterations.numpy()) == 5


def test_train_returns_the_rate_of_the_updates_it_ran(records, tmp_path):
  trainer = make_trainer(records, tmp_path / 'run', extra=['Trainer.num_updates = 2'])
  first = trainer.train()
  trainer.num_updates = 4
  again = trainer.train()
  assert 0 < first['updates_per_second'] < again['updates_per_second']  # First one traces.
  trainer.num_updates = 4
  assert 'updates_per_second' not in trainer.train()  # Nothing left to run.


@pytest.mark.parametrize('options', [["Trainer.compute_dtype = 'float16'"],
                                     ["Trainer.compute_dtype = 'bfloat16'",
                                      'Trainer.jit_compile = True']])
def test_mixed_precision_and_xla_train(records, tmp_path, options):
  trainer = make_trainer(records, tmp_path / 'run', extra=['Trainer.num_updates = 2'] + options)
  before = weights(trainer)
  metrics = trainer.train()
  assert np.isfinite(metrics['loss'])
  assert trainer.learner.backbone_dtype in ('float16', 'bfloat16')
  float16 = trainer.learner.backbone_dtype == 'float16'
  assert isinstance(trainer.optimizer, tf.keras.mixed_precision.LossScaleOptimizer) == float16
  assert trainer.learner.check_inputs == (not trainer.jit_compile)
  assert any(np.any(a != b) for a, b in zip(before, weights(trainer)))
  assert all(v.dtype == tf.float32 for v in trainer.learner.trainable_variables)


def test_float16_overflow_skips_the_update_and_lowers_the_scale(records, tmp_path):
  """An overflowed scaled meta-gradient is the loss-scale optimizer's business: the update
  is skipped and the scale lowered, and training goes on (no NonFiniteLossError)."""
  trainer = make_trainer(records, tmp_path / 'run', extra=[
      'Trainer.num_updates = 1', "Trainer.compute_dtype = 'float16'"])
  trainer.optimizer.dynamic_scale.assign(2.0 ** 100)  # Overflows float16 backpropagation.
  before = weights(trainer)
  trainer.train()
  assert float(trainer.optimizer.dynamic_scale.numpy()) < 2.0 ** 100
  for a, b in zip(before, weights(trainer)):
    np.testing.assert_array_equal(a, b)


def test_unknown_compute_dtype_is_named(records, tmp_path):
  with pytest.raises(gin_setup.ConfigError,
                     match=r"Trainer.compute_dtype = 'float8' must be one of"):
    make_trainer(records, tmp_path, extra=["Trainer.compute_dtype = 'float8'"])


def test_non_finite_loss_stops_restores_and_names_the_layer(records, tmp_path, monkeypatch):
  trainer = make_trainer(records, tmp_path / 'run', extra=['Trainer.num_updates = 2'])
  trainer.train()
  good = weights(trainer)
  trainer.num_updates = 4
  rule, restore = trainer.learner.update_rule, trainer.restore

  def restore_then_explode():
    step = restore()
    exploding = rule.g_phi.b2.numpy()
    exploding[2] = np.inf  # alpha_hat of the third adapted tensor.
    rule.g_phi.b2.assign(exploding)
    return step

  monkeypatch.setattr(trainer, 'restore', restore_then_explode)
  with pytest.raises(trainer_lib.NonFiniteLossError,
                     match=(r"update 3: .*not finite.*generated alpha: inf at layer "
                            rf"'{rule.param_names[2]}', inner step 1.*"
                            r"Restored the last good state")):
    trainer.train()
  for a, b in zip(good, weights(trainer)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('config', sorted(os.path.basename(p) for p in
                                          glob.glob(os.path.join(REPO, 'gin', '*.gin'))))
def test_every_config_parses_and_builds_its_learner(config, records, tmp_path):
  gin.clear_config()
  gin_setup.parse([config], ['DataConfig.image_height = 16',
                             'four_layer_convnet.num_filters = 4'])
  if gin.query_parameter('benchmark.train_datasets') == 'ilsvrc_2012':  # Not in `records`.
    gin.parse_config(["benchmark.train_datasets = 'tiny'", "benchmark.eval_datasets = 'tiny'"])
  trainer = trainer_lib.Trainer(records_root_dir=records, checkpoint_dir=str(tmp_path))
  assert trainer.learner.trainable_variables
  assert trainer.learner.num_classes >= (5 if trainer.format.metric == 'accuracy' else 1)


def test_unknown_gin_name_is_named(records):
  gin.clear_config()
  with pytest.raises(gin_setup.ConfigError, match='MAMLLearner.not_an_argument'):
    gin_setup.parse(['quickstart_glyphs.gin'], ['MAMLLearner.not_an_argument = 3'])
  with pytest.raises(gin_setup.ConfigError, match='NoSuchLearner'):
    gin_setup.parse([], ['Trainer.train_learner_class = @NoSuchLearner'])
  with pytest.raises(gin_setup.ConfigError, match='nothere.gin'):
    gin_setup.parse(['nothere.gin'], [])


def test_missing_records_folder_is_named(tmp_path):
  gin.clear_config()
  gin_setup.parse(['quickstart_glyphs.gin'], [])
  missing = str(tmp_path / 'no_records')
  with pytest.raises(DataError, match='no_records.*does not exist'):
    trainer_lib.Trainer(records_root_dir=missing, checkpoint_dir=str(tmp_path / 'c'))


def test_cli_reports_configuration_errors_cleanly(tmp_path):
  result = faults.run_module('meta_dataset_ext.train', '--gin_config=gin/fo_maml.gin',
                             '--gin_bindings=Trainer.no_such_flag=1',
                             f'--records_root_dir={tmp_path}')
  faults.assert_one_line_error(result, 'meta_dataset_ext.train', 'no_such_flag')


def test_upstream_bindings_without_effect_here_are_named_once(records, tmp_path, capsys):
  make_trainer(records, tmp_path / 'run', extra=[
      'Trainer.batch_size = 256', 'DataConfig.shuffle_buffer_size = 1000',
      'DataConfig.num_prefetch = 4', 'MAMLLearner.debug = True'])
  warnings = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith('warning: ')]
  assert len(warnings) == 4
  for named in ('Trainer.batch_size = 256 has no effect here',
                'DataConfig.shuffle_buffer_size = 1000 has no effect here',
                "DataConfig.num_prefetch = 4 differs from upstream's meaning",
                'MAMLLearner.debug = True has no effect here'):
    assert sum(named in w for w in warnings) == 1, (named, warnings)
  make_trainer(records, tmp_path / 'other', extra=['DataConfig.num_prefetch = 0'])
  assert 'warning:' not in capsys.readouterr().err


def test_tf_optimizations_off_as_upstream_turns_them_off(records, tmp_path):
  try:
    make_trainer(records, tmp_path / 'run', extra=['Trainer.enable_tf_optimizations = False'])
    options = tf.config.optimizer.get_experimental_options()
    assert options['constant_folding'] is False and options['disable_model_pruning'] is True
  finally:
    tf.config.optimizer.set_experimental_options(
        dict({name: True for name in trainer_lib._TF_OPTIMIZATIONS},
             disable_model_pruning=False))


def test_the_step_traces_one_task_and_calls_it_per_episode(records, tmp_path):
  """The compiled meta-step holds one traced task, called once per episode of the
  meta-batch (the trace does not grow with the meta-batch size), and its gradient is the
  learner's episode-by-episode meta-gradient."""
  trainer = make_trainer(records, tmp_path / 'run', extra=['Trainer.meta_batch_size = 3'])
  graph = trainer._gradients.get_concrete_function().graph  # pylint: disable=protected-access
  called = [op.get_attr('f').name for op in graph.get_operations()
            if op.type in ('PartitionedCall', 'StatefulPartitionedCall')]
  assert len(called) == 3 and len(set(called)) == 1
  batch = next(trainer._train_batches(0))  # pylint: disable=protected-access
  grads, metrics, finite = trainer._gradients(batch)  # pylint: disable=protected-access
  assert bool(finite)
  loss, expected, _ = trainer.learner.episode_gradients(batch)
  np.testing.assert_allclose(float(metrics['loss']), float(loss), rtol=1e-6)
  for got, want in zip(grads, expected):
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6)
