"""Tests of `python -m meta_dataset_ext.inspect`."""

import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
from PIL import Image

from meta_dataset_ext import inspect as inspect_lib
from meta_dataset_ext.data import pipeline
from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data.spec import DataError
from tests.data import records_util

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("records"))
  records_util.make_bilevel_source(root, "bi", (2, 1, 1), [6, 8, 5, 5], 8,
                                   size=16)
  return root


def test_prints_split_sizes_then_the_pipelines_episodes(root, tmp_path,
                                                        capsys):
  png = str(tmp_path / "sheet.png")
  inspect_lib.run(root, "bi", "TRAIN", 4, seed=5, save_png=png)
  lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
  assert lines[0]["spec"] == "BiLevelDatasetSpecification"
  assert lines[0]["splits"]["TRAIN"] == {"classes": 14, "images": 112,
                                         "superclasses": 2}
  assert lines[0]["splits"]["TEST"]["classes"] == 5
  spec = spec_lib.load_dataset_spec(root, "bi")
  expected = pipeline.EpisodeStream(spec, "TRAIN", seed=5).descriptions()
  for index, line in enumerate(lines[1:]):
    description = next(expected)
    assert line["episode"] == index
    assert line["way"] == description.way
    assert line["class_ids"] == list(description.class_ids)
    assert line["num_support"] == list(description.num_support)
    assert line["num_query"] == list(description.num_query)
    assert line["class_names"] == [f"char{c}" for c in description.class_ids]
  assert len(lines) == 5
  with Image.open(png) as image:
    assert image.size[0] > 320 and image.size[1] > 84


def test_contact_sheet_labels_are_not_clipped(tmp_path, capsys):
  root = str(tmp_path / "records")
  spec = records_util.make_flat_source(root, "long", (5, 0, 0), [4] * 5,
                                       size=28)
  spec.class_names = {i: f"U+221{i} PROPORTIONAL TO SOMETHING" for i in
                      range(5)}
  spec_lib.write_dataset_spec(spec, spec.path)
  png = str(tmp_path / "sheet.png")
  try:
    gin.parse_config("DataConfig.image_height = 28")
    inspect_lib.run(root, "long", "TRAIN", 1, seed=0, save_png=png)
  finally:
    gin.clear_config()
  capsys.readouterr()
  with Image.open(png) as image:
    pixels = np.asarray(image.convert("L"))
  # Ink only inside a white margin: no label runs off an edge.
  for edge in (pixels[:, :3], pixels[:, -3:], pixels[:3], pixels[-3:]):
    assert edge.min() == 255
  assert (pixels[:, :pixels.shape[1] // 2] < 128).any()  # The labels.


def test_unknown_source(root):
  with pytest.raises(DataError, match="Unknown source 'nope'"):
    inspect_lib.run(root, "nope", "TRAIN", 1, seed=0, save_png=None)


def test_command_line(root):
  env = dict(os.environ, PYTHONPATH=REPO)
  result = subprocess.run(
      [sys.executable, "-m", "meta_dataset_ext.inspect",
       f"--records_root_dir={root}", "--source=bi", "--split=TEST",
       "--num_episodes=2", "--seed=1",
       "--gin_bindings=EpisodeDescriptionConfig.max_num_query = 2"],
      capture_output=True, text=True, env=env, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  lines = [json.loads(l) for l in result.stdout.splitlines()]
  assert len(lines) == 3
  assert all(set(l["class_ids"]) <= set(range(19, 24)) for l in lines[1:])
  assert all(l["num_query"][0] == 2 for l in lines[1:])
