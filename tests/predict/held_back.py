"""A small trained run that never saw one font, and few-shot folders drawn in that font.

The run (``conftest.held_back_run``, shared by the predict and export tests) is ALFA +
fo-Proto-MAML meta-trained for 200 updates (28x28 glyphs, 16 filters, 2 inner steps; about
30 s on 2 cores) on a glyphs source rendered without Computer Modern Roman (cmr10). The
few-shot classes are characters of the glyphs TEST alphabet 'Latin (2/2)', drawn in cmr10:
classes and a font the run never saw.
"""
import os

import pytest

from meta_dataset_ext import glyph_folders
from meta_dataset_ext import glyphs
from meta_dataset_ext.data import spec as spec_lib
from tests.trainer.tiny import TINY, make_trainer

HELD_BACK_FONT = 'cmr10.ttf'
CHARACTERS = 'TWagkx'  # Of the TEST alphabet 'Latin (2/2)'.
IMAGE_SIZE = 28
TRAINING = TINY + [f'DataConfig.image_height = {IMAGE_SIZE}',
                   'four_layer_convnet.num_filters = 16', 'Trainer.num_updates = 200',
                   'Trainer.checkpoint_every = 50', 'Trainer.validate_every = 50']
LOGIT_DIM = 6  # TINY's EpisodeDescriptionConfig.max_ways_upper_bound.


def held_back_font() -> str:
  return next(f for f in glyphs.font_files() if os.path.basename(f) == HELD_BACK_FONT)


def _records_without_font(root: str) -> None:
  """The glyphs source at 28 px, rendered from every font but the held-back one."""
  kept = [f for f in glyphs.font_files() if os.path.basename(f) != HELD_BACK_FONT]
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(glyphs, 'font_files', lambda: kept)
    glyphs.build_catalog.cache_clear()
    try:
      assert not [c for a in glyphs.build_catalog() for c in a.classes
                  if any(os.path.basename(f) == HELD_BACK_FONT for f in c.fonts)]
      glyphs.ensure_glyphs(root, image_size=IMAGE_SIZE, images_per_class=6)
    finally:
      glyphs.build_catalog.cache_clear()  # Other tests get the catalog of every font.


def training_class_names(records: str):
  spec = spec_lib.load_dataset_spec(records, glyphs.SOURCE_NAME)
  return [spec.class_names[c] for c in spec.get_classes(spec_lib.Split.TRAIN)]


def train(records: str, run_dir: str) -> None:
  """The run: the tiny trainer settings at 28 px, 16 filters, 200 updates."""
  _records_without_font(records)
  make_trainer(records, run_dir, extra=TRAINING, will_evaluate=False).train()


def few_shot_folders(root, num_support=5, num_query=10, characters=CHARACTERS, seed=0):
  """{'support': folder, 'query': folder} of the characters drawn in the held-back font, 40
  px (the learner takes 28)."""
  return glyph_folders.write_folders(str(root), held_back_font(), characters, num_support,
                                     num_query, image_size=40, seed=seed)
