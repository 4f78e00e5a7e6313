"""The run directory's pieces on their own: config lookup, operative configs, the console log,
file modes, output-folder checks, checkpoints (best-k, omitted variables, finite states)."""
import json
import os
import stat
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext import checkpoints
from meta_dataset_ext import checks
from meta_dataset_ext import config_files
from meta_dataset_ext import run_dir
from meta_dataset_ext.errors import ConfigError, NonFiniteError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_config_lookup_working_directory_first_then_the_shipped_configs(tmp_path,
                                                                         monkeypatch):
  monkeypatch.chdir(tmp_path)
  shipped = config_files.resolve('alfa_fo_proto_maml.gin')
  assert config_files.resolve('gin/alfa_fo_proto_maml.gin') == shipped
  assert os.path.isabs(shipped) and os.path.isfile(shipped)
  gin_package = os.path.dirname(os.path.abspath(gin.__file__))
  assert not shipped.startswith(gin_package + os.sep)  # Never gin-config's own folder.
  assert 'quickstart_glyphs.gin' in config_files.available()
  (tmp_path / 'gin').mkdir()
  (tmp_path / 'gin' / 'alfa_fo_proto_maml.gin').write_text('# mine\n')
  assert config_files.resolve('gin/alfa_fo_proto_maml.gin') == 'gin/alfa_fo_proto_maml.gin'
  with pytest.raises(ConfigError, match=r"'nothere.gin' not found.*quickstart_glyphs.gin"):
    config_files.resolve('nothere.gin')
  with pytest.raises(ConfigError, match='is a folder'):
    config_files.resolve('gin')
  with pytest.raises(ConfigError, match='not found'):
    config_files.resolve('other/alfa_fo_proto_maml.gin')  # Only gin/ or a bare name.


def test_config_files_command_prints_the_path_of_a_config(capsys):
  assert config_files.main(['config_files', 'fo_maml.gin']) == 0
  assert capsys.readouterr().out.strip().endswith('fo_maml.gin')
  assert config_files.main(['config_files', 'nope.gin']) == 2
  assert 'nope.gin' in capsys.readouterr().err


def test_bindings_are_compared_line_by_line():
  old = "import a.b\n\n# Parameters for T:\n# ===\nT.x = 1\nT.y = [1,\n    2]\nm = 3\n"
  new = "import a.b\n\nT.x = 2\nT.y = [1,\n    2]\nT.z = 'q'\n"
  assert run_dir.parse_bindings(old) == {'import a.b': '', 'T.x': '1', 'T.y': '[1, 2]',
                                         'm': '3'}
  changes = run_dir.diff_bindings(old, new)
  assert changes == [('T.x', '1', '2'), ('T.z', None, "'q'"), ('m', '3', None)]
  assert run_dir.describe_changes(changes) == (
      "T.x = 2 (was 1), T.z = 'q' (was unbound), m unbound (was 3)")


def test_operative_config_keeps_earlier_versions(tmp_path):
  config = run_dir.OperativeConfig(str(tmp_path))
  assert config.read() is None
  config.write('A.x = 1\n')
  config.write('A.x = 1\n')  # Unchanged: nothing kept.
  assert config.earlier_versions() == []
  config.write('A.x = 2\n')
  config.write('A.x = 3\n')
  assert config.read() == 'A.x = 3\n'
  assert [open(p).read() for p in config.earlier_versions()] == ['A.x = 1\n', 'A.x = 2\n']


def test_console_log_holds_what_was_printed_with_progress_bars_collapsed(tmp_path):
  path = tmp_path / 'run' / 'train.log'
  with run_dir.ConsoleLog(str(path)):
    print('hello')
    sys.stderr.write('\rbar 1/3\rbar 2/3\rbar 3/3\n')
    sys.stderr.write('\rno newline at the end')
  text = path.read_text()
  lines = text.splitlines()
  assert lines[0].startswith('==== ') and lines[1:] == ['hello', 'bar 3/3',
                                                        'no newline at the end']
  with pytest.raises(ValueError):
    with run_dir.ConsoleLog(str(path)):
      raise ValueError('bad\nthing')
  assert path.read_text().splitlines()[-1] == 'error: ValueError: bad thing'


@pytest.mark.parametrize('mask, file_mode, dir_mode', [(0o022, 0o644, 0o755),
                                                       (0o027, 0o640, 0o750)])
def test_written_files_follow_the_umask(tmp_path, mask, file_mode, dir_mode):
  old = os.umask(mask)
  try:
    run_dir.atomic_write(str(tmp_path / 'results.md'), 'x')
    with run_dir.ConsoleLog(str(tmp_path / 'train.log')):
      pass
    folder = tmp_path / 'made_by_tempfile'
    folder.mkdir(mode=0o700)
    run_dir.readable_mode(str(folder))
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(tmp_path / 'results.md').st_mode) == file_mode
  assert stat.S_IMODE(os.stat(tmp_path / 'train.log').st_mode) == file_mode
  assert stat.S_IMODE(os.stat(folder).st_mode) == dir_mode


def test_output_folder_checks_name_the_folder_and_create_nothing(tmp_path):
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  run_dir.check_output_dir(str(tmp_path / 'new' / 'deeper'), 'results folder (--results_dir)')
  assert not (tmp_path / 'new').exists()
  with pytest.raises(ConfigError,
                     match=r"results folder \(--results_dir\) '.*a_file' is a file"):
    run_dir.check_output_dir(str(a_file), 'results folder (--results_dir)')
  with pytest.raises(ConfigError, match=r"lies below the file"):
    run_dir.check_output_dir(str(a_file / 'sub'), 'summary folder (--summary_dir)')
  with pytest.raises(ConfigError, match='cannot be written'):
    run_dir.check_output_dir('/proc/alfa_tf_run', 'checkpoint folder')  # Even root cannot.


@pytest.mark.parametrize('value', ['ten', 2.5, True, None, -1])
def test_integer_values_are_checked_by_name(value):
  with pytest.raises(ConfigError, match=r'Trainer.num_updates = .* must be an integer >= 1'):
    checks.integer('Trainer.num_updates', value, 1)


def test_value_checks_accept_what_gin_parses():
  assert checks.integer('T.n', 1e5, 1) == 100000 and isinstance(checks.integer('T.n', 3), int)
  assert checks.number('T.r', 1, 0.0, strict=True) == 1.0
  for bad in (0.0, float('nan'), '1e-3'):
    with pytest.raises(ConfigError, match=r'T.r = .* must be a number > 0.0'):
      checks.number('T.r', bad, 0.0, strict=True)
  with pytest.raises(ConfigError, match="T.c = 'x' must be one of 'a', 'b'"):
    checks.choice('T.c', 'x', ['a', 'b'])


def _checkpoint(tmp_path, name='ckpt'):
  kept = tf.Variable([1.0, 2.0], name='linear_classifier/w')
  other = tf.Variable([3.0], name='theta0/w')
  checkpoint = tf.train.Checkpoint(kept=kept, other=other)
  return checkpoint, kept, other, checkpoint.write(str(tmp_path / name))


def test_omitted_variables_are_not_reloaded(tmp_path):
  checkpoint, kept, other, path = _checkpoint(tmp_path)
  kept.assign([9.0, 9.0])
  other.assign([9.0])
  checkpoints.restore(checkpoint, path, omit=('linear_classifier',),
                      variables=[kept, other], partial=True)
  np.testing.assert_array_equal(kept.numpy(), [9.0, 9.0])
  np.testing.assert_array_equal(other.numpy(), [3.0])


def test_a_checkpoint_of_another_architecture_is_a_config_error(tmp_path):
  _, _, _, path = _checkpoint(tmp_path)
  wider = tf.train.Checkpoint(kept=tf.Variable([0.0, 0.0, 0.0]), other=tf.Variable([0.0]))
  with pytest.raises(ConfigError, match=r"Checkpoint '.*ckpt.*' does not fit .*shape"):
    checkpoints.restore(wider, path)


def test_non_finite_variables_are_named():
  good, bad = tf.Variable([1.0], name='good'), tf.Variable([1.0, np.nan], name='theta0/w')
  checkpoints.assert_finite([good, tf.Variable(3, name='count')], 'fine')
  with pytest.raises(NonFiniteError, match=r"before saving: variable 'theta0/w' is not finite"):
    checkpoints.assert_finite([good, bad], 'before saving')
  assert bool(checkpoints.all_finite([good])) and not bool(checkpoints.all_finite([good, bad]))


def test_best_checkpoints_keep_the_best_and_never_drop_a_namesake(tmp_path):
  """Dropping ckpt-5 must not delete ckpt-50 (same prefix)."""
  variable = tf.Variable(0.0)
  checkpoint = tf.train.Checkpoint(v=variable)
  best = checkpoints.BestCheckpoints(str(tmp_path), keep=2, metric='accuracy',
                                     higher_is_better=True)
  for step, value in ((5, 0.2), (50, 0.5), (500, 0.4), (600, float('nan')), (700, 0.1)):
    variable.assign(step)
    best.consider(checkpoint, value, step)
  assert [e['step'] for e in best.entries()] == [50, 500]
  for path in best.paths():
    assert tf.io.gfile.glob(path + '.*'), path
  assert not tf.io.gfile.glob(str(tmp_path / 'best' / 'ckpt-5.*'))
  restored = tf.Variable(0.0)
  tf.train.Checkpoint(v=restored).restore(best.paths(1)[0])
  assert float(restored.numpy()) == 50.0
  assert json.load(open(tmp_path / 'best' / 'best.json'))[0]['accuracy'] == 0.5
