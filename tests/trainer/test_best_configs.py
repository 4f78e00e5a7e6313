"""The tuned configs of gin/best/ (upstream's best fo-MAML and fo-Proto-MAML, their ALFA
versions, the Baseline pre-training): each names the result it targets, parses from any
directory to its learner with upstream's tuned values, and trains one update on glyphs (image
size overridden) from a pretrained backbone; a wheel installs them with the package."""
import os
import shutil
import subprocess
import sys
import zipfile

import gin
import pytest

from meta_dataset_ext import backbones
from meta_dataset_ext import baseline
from meta_dataset_ext import config_files
from meta_dataset_ext import gin_setup
from meta_dataset_ext import learners
from meta_dataset_ext import trainer as trainer_lib
from tests.trainer.tiny import records  # pylint: disable=unused-import

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# config: (learner factory, inner steps, extra evaluation steps, alpha, Proto-MAML head).
META = {'fo_maml.gin': (learners.maml_learner, 10, 5, 0.09915203576061224, False),
        'fo_proto_maml.gin': (learners.maml_learner, 6, 0, 0.005435022808033229, True),
        'alfa_fo_maml.gin': (learners.alfa_maml_learner, 10, 5, 0.09915203576061224, False),
        'alfa_fo_proto_maml.gin': (learners.alfa_proto_maml_learner, 6, 0,
                                   0.005435022808033229, True)}
CONFIGS = sorted(META) + ['pretrain_resnet.gin']
TINY = ["benchmark.train_datasets = 'glyphs'", "benchmark.eval_datasets = 'glyphs'",
        'DataConfig.image_height = 16', 'EpisodeDescriptionConfig.max_ways_upper_bound = 5',
        'EpisodeDescriptionConfig.max_num_query = 2',
        'EpisodeDescriptionConfig.max_support_set_size = 10', 'Trainer.num_updates = 1',
        'Trainer.validate_every = 1', 'Trainer.num_validation_episodes = 1',
        'Trainer.num_eval_episodes = 1', 'Trainer.show_progress = False',
        'Trainer.batch_size = 4', 'MAMLLearner.num_update_steps = 1',
        'MAMLLearner.additional_evaluation_update_steps = 0']


def parse(config, bindings=()):
  gin.clear_config()
  gin_setup.parse([f'best/{config}'], list(bindings))


@pytest.mark.parametrize('config', CONFIGS)
def test_names_its_target_parses_from_anywhere_and_binds_upstreams_tuned_values(
    config, tmp_path, monkeypatch):
  text = open(os.path.join(REPO, 'gin', 'best', config)).read()
  assert 'Targets:' in text and 'import meta_dataset_ext.upstream' in text.splitlines()
  assert not any(line.startswith('include') for line in text.splitlines())
  monkeypatch.chdir(tmp_path)
  parse(config)
  assert gin.query_parameter('DataConfig.image_height') == 126
  assert gin.query_parameter('benchmark.train_datasets') == 'ilsvrc_2012'
  learner = gin.query_parameter('Trainer.train_learner_class').configurable.wrapper
  if config == 'pretrain_resnet.gin':
    assert learner is baseline.baseline_learner
    assert gin.query_parameter('Trainer.pretrained_source') == 'scratch'
    built = learner(logit_dim=712, input_shape=(16, 16, 3))
  else:
    factory, steps, extra, alpha, proto = META[config]
    assert learner is factory and gin.query_parameter('Trainer.pretrained_source') == 'imagenet'
    assert gin.query_parameter('MAMLLearner.alpha') == alpha
    assert gin.query_parameter('MAMLLearner.proto_maml_fc_layer_init') is proto
    built = learner(logit_dim=50, input_shape=(16, 16, 3))
    assert (built.num_steps, built.eval_num_steps) == (steps, steps + extra)
  assert isinstance(built.backbone, backbones.UpstreamResNet)
  assert built.backbone.blocks == (2, 2, 2, 2) and built.backbone.weight_decay > 0


@pytest.fixture(scope='module')
def pretrained_resnet(records, tmp_path_factory):
  """One update of the Baseline pre-training config on glyphs at 16 px."""
  run = str(tmp_path_factory.mktemp('pretrain'))
  parse('pretrain_resnet.gin', TINY)
  trainer_lib.Trainer(records_root_dir=records, checkpoint_dir=run).train()
  return run


@pytest.mark.parametrize('config', sorted(META))
def test_one_update_from_the_pretrained_backbone(config, records, pretrained_resnet, tmp_path):
  parse(config, TINY + [f"Learner.pretrained_checkpoint = '{pretrained_resnet}'"])
  trainer = trainer_lib.Trainer(records_root_dir=records, checkpoint_dir=str(tmp_path / 'run'))
  result = trainer.train()
  assert trainer.step.numpy() == 1 and result['loss'] == result['loss']  # Finite, not NaN.


def test_a_wheel_installs_the_tuned_configs(tmp_path, monkeypatch):
  source = tmp_path / 'source'
  ignore = shutil.ignore_patterns('__pycache__', '*.egg-info')
  for folder in ('alfa_tf', 'meta_dataset_ext', 'gin'):
    shutil.copytree(os.path.join(REPO, folder), source / folder, ignore=ignore)
  for name in ('setup.py', 'README.md'):
    shutil.copy(os.path.join(REPO, name), source / name)
  done = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
                         '--no-build-isolation', '.', '-w', str(tmp_path / 'wheel')],
                        cwd=source, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  (wheel,) = (tmp_path / 'wheel').glob('*.whl')
  names = set(zipfile.ZipFile(wheel).namelist())
  for config in CONFIGS:
    assert f'meta_dataset_ext/configs/best/{config}' in names
  assert 'meta_dataset_ext/configs/fo_maml.gin' in names
  assert all(f'best/{c}' in config_files.available() for c in CONFIGS)
  monkeypatch.chdir(tmp_path)  # No gin/ here: both names mean the shipped file.
  assert config_files.resolve(f'gin/best/{CONFIGS[0]}') == config_files.resolve(
      f'best/{CONFIGS[0]}')
