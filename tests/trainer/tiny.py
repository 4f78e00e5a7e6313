"""A tiny run for trainer tests: 16x16 glyphs and a flat 'tiny' source, 4 filters, 2 inner
steps, a few updates. ``records`` is a module-scoped fixture (import it into a test module)."""
import gin
import pytest

from meta_dataset_ext import gin_setup
from meta_dataset_ext import glyphs
from meta_dataset_ext import trainer as trainer_lib
from tests.data import records_util

TINY = [
    'DataConfig.image_height = 16',
    'four_layer_convnet.num_filters = 4',
    'EpisodeDescriptionConfig.max_ways_upper_bound = 6',
    'EpisodeDescriptionConfig.max_num_query = 2',
    'EpisodeDescriptionConfig.max_support_set_size = 12',
    'MAMLLearner.num_update_steps = 2',
    'Trainer.meta_batch_size = 2',
    'Trainer.checkpoint_every = 2',
    'Trainer.validate_every = 3',
    'Trainer.num_validation_episodes = 3',
    'Trainer.num_eval_episodes = 4',
    'Trainer.log_every = 1',
    'Trainer.show_progress = False',
]


def write_records(root: str) -> str:
  glyphs.ensure_glyphs(root, image_size=16, images_per_class=6)
  records_util.make_flat_source(root, 'tiny', (8, 6, 6), [6] * 20, size=16)
  return root


@pytest.fixture(scope='module')
def records(tmp_path_factory):
  return write_records(str(tmp_path_factory.mktemp('records')))


def make_trainer(records, checkpoint_dir, config='quickstart_glyphs.gin', extra=(), **kwargs):
  gin.clear_config()
  gin_setup.parse([config], TINY + list(extra))
  return trainer_lib.Trainer(records_root_dir=records, checkpoint_dir=str(checkpoint_dir),
                             **kwargs)


def weights(trainer):
  return [v.numpy().copy() for v in trainer.learner.weights]
