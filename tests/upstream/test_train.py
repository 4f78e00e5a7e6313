"""``python -m meta_dataset_ext.upstream.train`` (and its former name
``meta_dataset_ext.upstream_train``): --gin_config resolution and one-line errors, which need
no upstream (they run in CI), and upstream's flags through both names where it is importable."""
import importlib.util
import os

import pytest

from meta_dataset_ext import config_files
from meta_dataset_ext.upstream import train
from tests.upstream.upstream_env import run_python

COMMANDS = ['meta_dataset_ext.upstream.train', 'meta_dataset_ext.upstream_train']


def test_every_gin_config_is_resolved_and_nothing_else(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  shipped = config_files.resolve('alfa_fo_proto_maml.gin')
  assert os.path.isabs(shipped)
  args = ['--gin_config=alfa_fo_proto_maml.gin', '--gin_bindings=Trainer.num_updates = 1',
          '-gin_config', 'gin/fo_maml.gin', '--records_root_dir=gin/fo_maml.gin']
  assert train.resolve_gin_configs(args) == [
      f'--gin_config={shipped}', args[1], '-gin_config', config_files.resolve('fo_maml.gin'),
      args[4]]
  (tmp_path / 'alfa_fo_proto_maml.gin').write_text('')  # A user's own file wins.
  assert train.resolve_gin_configs(args[:1]) == args[:1]


@pytest.mark.parametrize('command', COMMANDS)
def test_a_missing_config_is_one_line_naming_it(command, tmp_path):
  done = run_python('-m', command, '--gin_config=missing.gin', cwd=str(tmp_path))
  assert done.returncode == 2
  assert done.stderr.count('\n') == 1 and 'missing.gin' in done.stderr, done.stderr
  assert done.stderr.startswith(f'{train.PROGRAM}: error: ')


@pytest.mark.skipif(importlib.util.find_spec('meta_dataset') is not None,
                    reason='upstream Meta-Dataset is installed')
def test_without_upstream_says_so_in_one_line(tmp_path):
  done = run_python('-m', COMMANDS[0], '--gin_config=alfa_fo_proto_maml.gin',
                    cwd=str(tmp_path))
  assert done.returncode == 2
  assert done.stderr.count('\n') == 1 and 'not installed' in done.stderr, done.stderr


@pytest.mark.usefixtures('requires_upstream')
@pytest.mark.parametrize('command', COMMANDS)
def test_both_names_run_upstreams_main(command, tmp_path):
  done = run_python('-m', command, '--helpshort', cwd=str(tmp_path))
  assert done.returncode == 1, done.stderr[-3000:]  # absl's status after printing help.
  assert '--gin_config: List of paths to the config files.' in done.stdout, done.stdout[-3000:]
