"""Faults of training and evaluation: every one is found before the first update or stops the
run with one line naming its cause, and nothing on disk is lost or made bad."""
import os
import shutil
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext import cli
from meta_dataset_ext import gin_setup
from meta_dataset_ext import trainer as trainer_lib
from meta_dataset_ext.data import reader
from meta_dataset_ext.errors import ConfigError, DataError, NonFiniteError
from tests.data import records_util
from tests.faults import kill_during_save
from tests.faults import util as faults
from tests.trainer.tiny import TINY, make_trainer, records, weights  # pylint: disable=unused-import

TRAIN = 'meta_dataset_ext.train'
# Bindings that change nothing but make a run's state files comparable before and after.
VOLATILE = ('operative_config', 'train.log', 'summaries')


def one_line(error) -> str:
  line = cli.one_line(error)
  assert '\n' not in line
  return line


def trained(records, run, updates=2):
  trainer = make_trainer(records, run, extra=[f'Trainer.num_updates = {updates}'])
  trainer.train()
  return trainer


# ----- non-finite states are never written ------------------------------------------------

def test_an_update_that_makes_weights_non_finite_is_never_saved(records, tmp_path):
  run = tmp_path / 'run'
  trainer = make_trainer(records, run, extra=['Trainer.num_updates = 3',
                                              'Trainer.learning_rate = 1e39'])  # inf in float32
  with pytest.raises(trainer_lib.NonFiniteLossError) as info:
    trainer.train()
  line = one_line(info.value)
  assert 'update 1: the update made a weight non-finite' in line
  assert "variable '" in line and 'No checkpoint was written yet' in line
  assert tf.train.latest_checkpoint(str(run)) is None and not (run / 'best').exists()


def test_a_non_finite_update_after_good_ones_restores_them_and_changes_no_file(records,
                                                                                tmp_path):
  run = tmp_path / 'run'
  good = weights(trained(records, run))
  before = faults.tree_digest(str(run))
  trainer = make_trainer(records, run, extra=['Trainer.num_updates = 4',
                                              'Trainer.learning_rate = 1e39'],
                         allow_config_change=True)
  with pytest.raises(trainer_lib.NonFiniteLossError,
                     match=r'update 3: the update made a weight non-finite.*Restored the last '
                           r'good state from .*ckpt-2'):
    trainer.train()
  for a, b in zip(good, weights(trainer)):
    np.testing.assert_array_equal(a, b)
  faults.assert_unchanged(before, str(run), ignore=VOLATILE)


def test_validation_rejects_non_finite_outputs_and_keeps_no_best(records, tmp_path,
                                                                 monkeypatch):
  run = tmp_path / 'run'
  trainer = make_trainer(records, run, extra=['Trainer.num_updates = 3'])
  evaluate = trainer._evaluate_batch

  def nan_logits(batch):
    logits, metrics = evaluate(batch)
    return [logits[0] * np.nan], metrics

  monkeypatch.setattr(trainer, '_evaluate_batch', nan_logits)
  with pytest.raises(NonFiniteError, match=r'Validation at update 3 on glyphs VALID episode 0'):
    trainer.train()
  assert not (run / 'best').exists()
  assert tf.train.latest_checkpoint(str(run)).endswith('ckpt-3')  # Saved before validating.


def test_evaluation_rejects_a_checkpoint_with_non_finite_weights(records, tmp_path):
  run = tmp_path / 'run'
  trainer = trained(records, run)
  trainer.evaluate()
  results = faults.tree_digest(str(run / 'results'))
  variable = trainer.learner.trainable_variables[0]
  variable.assign(variable * np.nan)
  trainer.checkpoint.write(str(run / 'ckpt-2'))  # A diverged checkpoint from elsewhere.
  evaluator = make_trainer(records, run, extra=['Trainer.num_updates = 2'], is_training=False)
  with pytest.raises(NonFiniteError) as info:
    evaluator.evaluate()
  assert "Checkpoint '" in one_line(info.value) and 'ckpt-2' in one_line(info.value)
  assert 'glyphs TEST episode 0' in one_line(info.value)
  faults.assert_unchanged(results, str(run / 'results'))


# ----- what the run will read is checked before the first update ---------------------------

def _copy_source(records, tmp_path, name='tiny'):
  root = tmp_path / 'records'
  shutil.copytree(os.path.join(records, name), root / name)
  return root


def test_a_missing_test_class_file_is_reported_before_training(records, tmp_path):
  root = _copy_source(records, tmp_path)
  os.remove(root / 'tiny' / '19.tfrecords')  # The last TEST class.
  run = tmp_path / 'run'
  with pytest.raises(DataError, match=r'19\.tfrecords') as info:
    make_trainer(str(root), run, extra=["benchmark.train_datasets = 'tiny'",
                                        "benchmark.eval_datasets = 'tiny'"])
  one_line(info.value)
  assert not run.exists()


def test_a_valid_split_with_too_few_classes_is_reported_before_training(tmp_path):
  root = str(tmp_path / 'records')
  records_util.make_flat_source(root, 'small_valid', (8, 3, 6), [6] * 17, size=16)
  with pytest.raises(DataError, match=r"split VALID of source 'small_valid' has 3 usable"):
    make_trainer(root, tmp_path / 'run', extra=["benchmark.train_datasets = 'small_valid'",
                                                "benchmark.eval_datasets = 'small_valid'"])
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('binding, named', [
    ("Trainer.num_updates = 'ten'", "Trainer.num_updates = 'ten' must be an integer >= 1"),
    ('Trainer.num_updates = 2.5', 'Trainer.num_updates = 2.5 must be an integer >= 1'),
    ('Trainer.checkpoint_every = 0', 'Trainer.checkpoint_every = 0 must be an integer >= 1'),
    ('Trainer.num_eval_episodes = 0', 'Trainer.num_eval_episodes = 0 must be'),
    ('Trainer.validate_every = -5', 'Trainer.validate_every = -5 must be'),
    ('Trainer.meta_batch_size = 0', 'Trainer.meta_batch_size = 0 must be'),
    ('Trainer.learning_rate = 0.0', 'Trainer.learning_rate = 0.0 must be a number > 0.0'),
    ('Trainer.show_progress = 1', 'Trainer.show_progress = 1 must be True or False'),
    ("Trainer.eval_split = 'TESTING'", "Trainer.eval_split = 'TESTING' must be one of"),
    ('Trainer.ensemble_top_k = 7', 'Trainer.ensemble_top_k = 7 exceeds Trainer.keep_best = 5'),
    ("benchmark.train_datasets = '../glyphs'", "source name '../glyphs' must be a folder"),
])
def test_bad_trainer_values_are_named_before_anything_runs(records, tmp_path, binding, named):
  with pytest.raises(ConfigError) as info:
    make_trainer(records, tmp_path / 'run', extra=[binding])
  assert named in one_line(info.value)
  assert not (tmp_path / 'run').exists()


def test_output_folders_that_are_files_are_reported_before_training(records, tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('keep me')
  for kwargs, named in ((dict(summary_dir=str(blocker)), '--summary_dir'),
                        (dict(results_dir=str(blocker / 'sub')), '--results_dir')):
    with pytest.raises(ConfigError, match=named) as info:
      make_trainer(records, tmp_path / 'run', **kwargs)
    one_line(info.value)
  assert blocker.read_text() == 'keep me' and not (tmp_path / 'run').exists()


def test_cli_names_a_results_folder_that_is_a_file_and_trains_nothing(records, tmp_path):
  blocker = tmp_path / 'results_file'
  blocker.write_text('keep me')
  run = tmp_path / 'run'
  result = faults.run_module(TRAIN, '--gin_config=quickstart_glyphs.gin',
                             f'--records_root_dir={records}', f'--train_checkpoint_dir={run}',
                             f'--results_dir={blocker}',
                             *[f'--gin_bindings={b}' for b in TINY])
  faults.assert_one_line_error(result, TRAIN, '--results_dir', 'results_file', 'is a file')
  assert blocker.read_text() == 'keep me' and not list(run.glob('ckpt-*'))


def test_cli_names_a_records_root_that_is_a_file(tmp_path):
  not_a_folder = tmp_path / 'records.tar'
  not_a_folder.write_text('x')
  result = faults.run_module(TRAIN, '--gin_config=fo_proto_maml.gin',
                             f'--records_root_dir={not_a_folder}',
                             f'--train_checkpoint_dir={tmp_path / "run"}')
  faults.assert_one_line_error(result, TRAIN, 'records.tar', 'is a file')


def test_cli_names_a_bad_flag_value_and_stray_arguments(tmp_path):
  result = faults.run_module(TRAIN, '--is_training=maybe')
  faults.assert_one_line_error(result, TRAIN, '--is_training=maybe')
  result = faults.run_module(TRAIN, 'gin/fo_maml.gin')
  faults.assert_one_line_error(result, TRAIN, "unexpected arguments ['gin/fo_maml.gin']")
  result = faults.run_module(TRAIN, f'--train_checkpoint_dir={tmp_path / "none"}',
                             '--is_training=False')
  faults.assert_one_line_error(result, TRAIN, 'does not exist')


def test_cli_names_a_corrupt_record_found_while_training(records, tmp_path):
  root = _copy_source(records, tmp_path)
  for class_id in range(8):  # Every TRAIN record damaged: the first episode reads one.
    path = root / 'tiny' / f'{class_id}.tfrecords'
    index = reader.index_records(str(path))
    data = bytearray(path.read_bytes())
    for offset, length in zip(index.offsets, index.lengths):
      data[offset + length // 2] ^= 0x01
    path.write_bytes(bytes(data))
  before = faults.tree_digest(str(root))
  run = tmp_path / 'run'
  result = faults.run_module(TRAIN, '--gin_config=quickstart_glyphs.gin',
                             f'--records_root_dir={root}', f'--train_checkpoint_dir={run}',
                             "--gin_bindings=benchmark.train_datasets = 'tiny'",
                             "--gin_bindings=benchmark.eval_datasets = 'tiny'",
                             *[f'--gin_bindings={b}' for b in TINY])
  faults.assert_one_line_error(result, TRAIN, 'Corrupt record', 'tiny', '.tfrecords', 'checksum')
  faults.assert_unchanged(before, str(root))
  assert not list(run.glob('ckpt-*'))


# ----- a run directory is resumed only with its own configuration ---------------------------

def test_resuming_with_another_configuration_is_refused_naming_what_differs(records, tmp_path):
  run = tmp_path / 'run'
  trained(records, run)
  before = faults.tree_digest(str(run))
  with pytest.raises(ConfigError) as info:
    make_trainer(records, run, extra=['Trainer.num_updates = 4', 'Trainer.seed = 1',
                                      'four_layer_convnet.num_filters = 8'])
  line = one_line(info.value)
  assert 'Trainer.seed = 1 (was unbound)' in line
  assert 'four_layer_convnet.num_filters = 8 (was 4)' in line
  assert 'Trainer.num_updates' not in line and '--allow_config_change' in line
  faults.assert_unchanged(before, str(run))
  earlier = (run / 'operative_config.gin').read_text()
  trainer = make_trainer(records, run, extra=['Trainer.num_updates = 3', 'Trainer.seed = 1'],
                         allow_config_change=True)
  trainer.train()
  assert (run / 'operative_config-1.gin').read_text() == earlier
  assert 'Trainer.seed = 1' in (run / 'operative_config.gin').read_text()


def test_evaluating_with_another_architecture_names_the_checkpoint(records, tmp_path):
  run = tmp_path / 'run'
  trained(records, run)
  evaluator = make_trainer(records, run, extra=['four_layer_convnet.num_filters = 8'],
                           is_training=False)
  with pytest.raises(ConfigError, match=r"Checkpoint '.*ckpt-2' does not fit the learner"):
    evaluator.evaluate()


# ----- kill -9 while a checkpoint is written loses nothing ---------------------------------

@pytest.fixture(scope='module')
def uninterrupted(records, tmp_path_factory):
  trainer = make_trainer(records, tmp_path_factory.mktemp('straight'),
                         extra=kill_during_save.BINDINGS)
  trainer.train()
  return weights(trainer)


@pytest.mark.parametrize('delay', [0.0, 0.004, 0.02])
def test_kill_9_during_a_checkpoint_write_then_resume_is_exact(records, tmp_path, uninterrupted,
                                                               delay):
  run = tmp_path / 'run'
  killed = subprocess.run(
      [sys.executable, '-m', 'tests.faults.kill_during_save', records, str(run), '4',
       str(delay)], cwd=faults.REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=faults.REPO))
  assert killed.returncode == -9, killed.stderr[-2000:]
  latest = tf.train.latest_checkpoint(str(run))
  assert latest.rsplit('-', 1)[1] in ('3', '4')  # The save in progress, or the one before.
  resumed = make_trainer(records, run, extra=kill_during_save.BINDINGS)
  resumed.train()
  assert int(resumed.step.numpy()) == 6
  for a, b in zip(uninterrupted, weights(resumed)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
