"""Upstream Meta-Dataset's own trainer on the shipped configs, through upstream's pipeline.

Each run trains a few updates on a tiny source (``tests.upstream.sources``): the hierarchical
``ilsvrc_2012`` (the configs' training source; its sampler needs ``patches.patch_sampler`` on
numpy >= 1.24) or the bi-level ``omniglot``. It runs from an empty working directory with the
command the README gives for this environment: ``python -m meta_dataset.train`` with the
config's installed path where upstream imports unchanged (TF 2.15; the configs' import line
patches upstream), else ``python -m meta_dataset_ext.upstream.train`` with the config's name.
Skipped where upstream is not importable.
"""
import os

import pytest

from tests.upstream import sources
from tests.upstream.upstream_env import run_python, upstream_imports_unchanged

pytestmark = pytest.mark.usefixtures('requires_upstream')

UPDATES = 2
SHORT_RUN = [f'Trainer.num_updates = {UPDATES}', f'Trainer.validate_every = {UPDATES}',
             f'Trainer.checkpoint_every = {UPDATES}', 'Trainer.log_every = 1',
             'Trainer.num_eval_episodes = 2', f'DataConfig.image_height = {sources.IMAGE_SIZE}']
RUNS = [('alfa_fo_proto_maml.gin', 'ilsvrc_2012', 'ALFAProtoMAMLLearner'),
        ('alfa_fo_proto_maml.gin', 'omniglot', 'ALFAProtoMAMLLearner'),
        ('alfa_proto_maml_second_order.gin', 'ilsvrc_2012', 'ALFAProtoMAMLLearner'),
        ('alfa_random_fo_proto_maml.gin', 'ilsvrc_2012', 'ALFAProtoMAMLLearner'),
        ('proto_maml_second_order.gin', 'omniglot', 'MAMLLearner')]


def trainer_command(config):
  """The README's command and --gin_config for ``config`` in this environment."""
  if upstream_imports_unchanged():
    done = run_python('-m', 'meta_dataset_ext.config_files', config)
    assert done.returncode == 0, done.stderr
    return ['-m', 'meta_dataset.train', f'--gin_config={done.stdout.strip()}']
  return ['-m', 'meta_dataset_ext.upstream.train', f'--gin_config={config}']


@pytest.mark.parametrize('config, source, learner', RUNS)
def test_trains_and_checkpoints_from_an_empty_directory(config, source, learner, records_root,
                                                         tmp_path):
  work = tmp_path / 'work'
  work.mkdir()
  bindings = SHORT_RUN + [f"benchmark.train_datasets = '{source}'",
                          f"benchmark.eval_datasets = '{source}'"]
  done = run_python(*trainer_command(config), f'--records_root_dir={records_root}',
                    '--train_checkpoint_dir=ckpt', '--summary_dir=summaries',
                    *(f'--gin_bindings={b}' for b in bindings), cwd=str(work))
  assert done.returncode == 0, done.stderr[-4000:]
  assert f'Update {UPDATES}. Train loss' in done.stderr
  assert os.path.isfile(work / 'ckpt' / f'model_{UPDATES}.ckpt.index')
  operative = (work / 'ckpt' / 'operative_config.gin').read_text()
  assert 'import meta_dataset_ext.upstream' in operative
  assert f'Trainer.train_learner_class = @{learner}' in operative
