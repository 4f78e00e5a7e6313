"""The user's path from an empty folder of their own, with the installed package (not the
checkout: no PYTHONPATH, another working directory): shipped configs by name, train, then
evaluate the run directory alone (its operative config reloaded), the top-k ensemble in its
own files, TensorBoard summaries of the evaluation, train.log; and the quickstart main job.

Under CI (``CI`` set) the package must be a non-editable install: the README's test command
installs it with ``pip install '.[test]'``.
"""
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from meta_dataset_ext import glyphs
from tests.trainer.tiny import TINY, write_records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cwd, *args, timeout=900):
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'ALFA_TF_TRACEBACK')}
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """The folder the installed package is imported from, seen from an empty folder."""
  where = run(str(tmp_path_factory.mktemp('probe')), '-c',
              'import os, meta_dataset_ext; print(os.path.dirname(meta_dataset_ext.__file__))')
  if where.returncode != 0:
    if os.environ.get('CI'):
      pytest.fail('alfa-tf is not installed in this Python: ' + where.stderr[-500:])
    pytest.skip('alfa-tf is not installed in this Python (pip install .)')
  package = where.stdout.strip()
  if os.environ.get('CI'):
    # The checkout's own folder means an editable install (a virtual environment inside the
    # checkout is fine: its site-packages is another folder).
    assert package != os.path.join(REPO, 'meta_dataset_ext'), f'an editable install: {package}'
    assert 'site-packages' in package.split(os.sep), f'not an installed package: {package}'
  return package


def _tags(folder):
  return {v.tag for name in tf.io.gfile.glob(os.path.join(folder, '*'))
          for event in tf.compat.v1.train.summary_iterator(name) for v in event.summary.value}


def test_train_then_evaluate_the_run_directory_from_an_empty_folder(installed, tmp_path):
  work = tmp_path / 'experiment'
  work.mkdir()
  write_records(str(work / 'records'))
  config = run(str(work), '-m', 'meta_dataset_ext.config_files', 'quickstart_glyphs.gin')
  assert config.returncode == 0  # From the installed package (or its checkout, if editable):
  assert config.stdout.strip().startswith(os.path.dirname(installed) + os.sep)
  bindings = TINY + ['Trainer.num_updates = 4', 'Trainer.ensemble_top_k = 2',
                     'Trainer.show_progress = True']
  train = run(str(work), '-m', 'meta_dataset_ext.train', '--gin_config=quickstart_glyphs.gin',
              '--records_root_dir=records', '--train_checkpoint_dir=runs/alfa',
              *[f'--gin_bindings={b}' for b in bindings])
  assert train.returncode == 0, train.stderr[-3000:]
  run_dir = work / 'runs' / 'alfa'
  # Evaluation with nothing but the run directory (and one binding of its own).
  evaluate = run(str(work), '-m', 'meta_dataset_ext.train', '--records_root_dir=records',
                 '--train_checkpoint_dir=runs/alfa', '--is_training=False',
                 '--gin_bindings=Trainer.num_eval_episodes = 3')
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  assert 'ALFA+fo-Proto-MAML top-2 ensemble' in evaluate.stdout
  single = json.load(open(run_dir / 'results' / 'results.json'))
  ensemble = json.load(open(run_dir / 'results' / 'ensemble_top2.json'))
  best = json.load(open(run_dir / 'best' / 'best.json'))
  assert single['checkpoint_step'] == 4 and single['sources']['glyphs']['num_episodes'] == 3
  assert ensemble['checkpoint_step'] is None
  assert ensemble['ensemble_steps'] == [b['step'] for b in best] and len(best) == 2
  assert single['command_line_gin_bindings'] == ['Trainer.num_eval_episodes = 3']
  title = (run_dir / 'results' / 'ensemble_top2.md').read_text().splitlines()[0]
  assert 'logit ensemble of the 2 best checkpoints' in title
  assert all(str(b['step']) in title for b in best)
  recorded = (run_dir / 'results' / 'operative_config.gin').read_text()
  assert 'Trainer.num_eval_episodes = 3' in recorded  # The command line wins, recorded...
  assert 'DataConfig.image_height = 16' in recorded  # ...over the reloaded training config.
  summaries = run_dir / 'summaries'
  assert {'accuracy', 'accuracy_ci95'} <= _tags(str(summaries / 'eval_test' / 'glyphs'))
  assert {'accuracy', 'accuracy_ci95'} <= _tags(
      str(summaries / 'eval_test_ensemble_top2' / 'glyphs'))
  assert 'accuracy_ci95' in _tags(str(summaries / 'valid'))
  mask = os.umask(0)
  os.umask(mask)
  for root, dirs, files in os.walk(run_dir):  # Readable by colleagues as the umask says.
    for name, base in [(d, 0o777) for d in dirs] + [(f, 0o666) for f in files]:
      mode = os.stat(os.path.join(root, name)).st_mode & 0o777
      assert mode == base & ~mask, (os.path.join(root, name), oct(mode))
  log = (run_dir / 'train.log').read_text()
  assert log.count('==== ') == 2 and 'compiling the meta-step' in log
  assert 'update 3: validation accuracy' in log and 'top-2 ensemble' in log


def test_quickstart_from_an_empty_folder(installed, tmp_path):
  work = tmp_path / 'somewhere'
  work.mkdir()
  glyphs.ensure_glyphs(str(tmp_path / 'records'), image_size=28)  # What quickstart renders.
  tiny = [b for b in TINY if not b.startswith('DataConfig')] + ['Trainer.num_updates = 2']
  done = run(str(work), '-m', 'meta_dataset_ext.quickstart', '--output_dir=out',
             f'--records_root_dir={tmp_path / "records"}',
             *[f'--gin_bindings={b}' for b in tiny])
  assert done.returncode == 0, done.stderr[-3000:]
  comparison = (work / 'out' / 'comparison.md').read_text()
  assert 'fo-Proto-MAML' in comparison and 'ALFA+fo-Proto-MAML' in comparison
  for name in ('fo_proto_maml', 'alfa_fo_proto_maml'):
    assert (work / 'out' / name / 'results' / 'results.json').is_file()
    assert (work / 'out' / name / 'train.log').is_file()
