"""Pretrained backbones and upstream Meta-Dataset's own code (skipped where upstream is not
importable, as in CI): the project's backbones compute upstream's embeddings with its weights;
upstream's trainer restores an upstream BaselineLearner checkpoint into the ALFA learners
(and its own learner) of the tuned configs through ``Trainer.checkpoint_to_restore``; upstream's
trainer runs the Baseline pre-training config, and the project's trainer meta-trains from the
checkpoint it wrote (``Learner.pretrained_checkpoint``)."""
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.upstream import sources
from tests.upstream.test_upstream_trainer import trainer_command
from tests.upstream.upstream_env import run_python

pytestmark = pytest.mark.usefixtures('requires_upstream')
SHORT_RUN = ['Trainer.num_updates = 1', 'Trainer.validate_every = 1',
             'Trainer.checkpoint_every = 1', 'Trainer.log_every = 1',
             'Trainer.num_eval_episodes = 2', f'DataConfig.image_height = {sources.IMAGE_SIZE}',
             'MAMLLearner.num_update_steps = 1', 'MAMLLearner.additional_evaluation_update_steps = 0',
             "benchmark.train_datasets = 'ilsvrc_2012'", "benchmark.eval_datasets = 'ilsvrc_2012'"]


def run_check(*args):
  done = run_python('-m', 'tests.upstream.pretrained_checks', *args)
  assert done.returncode == 0 and done.stdout.strip().endswith('ok'), done.stderr[-4000:]


def test_backbones_compute_upstreams_embeddings_with_its_weights():
  run_check('backbones_compute_upstreams_embeddings')


@pytest.mark.parametrize('config, kind', [('alfa_fo_proto_maml.gin', 'four_layer_convnet'),
                                          ('best/alfa_fo_maml.gin', 'resnet'),
                                          ('best/fo_proto_maml.gin', 'resnet')])
def test_upstreams_trainer_restores_a_pretrained_backbone(config, kind, records_root, tmp_path):
  checkpoint = str(tmp_path / 'pretrained' / 'model_27500.ckpt')
  run_check('write_upstream_checkpoint', kind, str(sources.IMAGE_SIZE), checkpoint)
  bindings = SHORT_RUN + ["Trainer.pretrained_source = 'imagenet'",
                          f"Trainer.checkpoint_to_restore = '{checkpoint}'"]
  done = run_python(*trainer_command(config), f'--records_root_dir={records_root}',
                    f'--train_checkpoint_dir={tmp_path / "ckpt"}',
                    f'--summary_dir={tmp_path / "summaries"}',
                    *(f'--gin_bindings={b}' for b in bindings), cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr[-4000:]
  assert 'Update 1. Train loss' in done.stderr
  pretrained = tf.train.load_checkpoint(checkpoint)
  initial = tf.train.load_checkpoint(str(tmp_path / 'ckpt' / 'model_0.ckpt'))
  names = [n for n in pretrained.get_variable_to_shape_map() if not n.startswith('global')]
  assert names and set(names) <= set(initial.get_variable_to_shape_map())
  for name in names:  # model_0.ckpt holds the initialisation: the pretrained backbone.
    np.testing.assert_array_equal(initial.get_tensor(name), pretrained.get_tensor(name))


def test_projects_trainer_meta_trains_from_upstreams_baseline_checkpoint(records_root, tmp_path):
  pretrain = tmp_path / 'pretrain'
  done = run_python(*trainer_command('best/pretrain_resnet.gin'),
                    f'--records_root_dir={records_root}', f'--train_checkpoint_dir={pretrain}',
                    f'--summary_dir={tmp_path / "summaries"}', '--gin_bindings=Trainer.batch_size = 8',
                    *(f'--gin_bindings={b}' for b in SHORT_RUN[:6]), cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr[-4000:]
  checkpoint = str(pretrain / 'model_1.ckpt')
  assert os.path.isfile(checkpoint + '.index')
  run = tmp_path / 'alfa'
  done = run_python('-m', 'meta_dataset_ext.train', '--gin_config=best/alfa_fo_proto_maml.gin',
                    f'--records_root_dir={records_root}', f'--train_checkpoint_dir={run}',
                    '--evaluate_after_training=False',
                    f"--gin_bindings=Learner.pretrained_checkpoint = '{checkpoint}'",
                    '--gin_bindings=Trainer.show_progress = False',
                    *(f'--gin_bindings={b}' for b in SHORT_RUN), cwd=str(tmp_path))
  assert done.returncode == 0, done.stderr[-4000:]
  assert tf.train.latest_checkpoint(str(run)).endswith('ckpt-1')
