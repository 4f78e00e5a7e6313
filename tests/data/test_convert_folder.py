"""Tests of meta_dataset_ext.data.convert_folder: round trips and bad input."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from meta_dataset_ext.data import convert_folder as cf
from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data.spec import DataError, Split
from test_writer import read_source, run_module


def _save(path, pixels, fmt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(pixels).save(path, format=fmt)


def _flat_tree(root, classes=("cat", "dog", "emu", "fox", "gnu"), per_class=3):
  """root/<class>/<k>.png (RGB) and .bmp files; returns {path: pixels}."""
  rng = np.random.default_rng(0)
  pixels = {}
  for c in classes:
    for k in range(per_class):
      image = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
      ext, fmt = ("bmp", "BMP") if k == 2 else ("png", "PNG")
      path = os.path.join(root, c, f"{k}.{ext}")
      _save(path, image, fmt)
      pixels[path] = image
  return pixels


def test_flat_round_trip_pixels_labels_and_spec(tmp_path):
  src = str(tmp_path / "src")
  pixels = _flat_tree(src)
  open(os.path.join(src, "cat", ".DS_Store"), "w").close()  # Ignored.
  spec = cf.convert_folder(src, str(tmp_path / "records"), "animals",
                           split_fractions=(0.6, 0.2, 0.2), seed=1)
  assert isinstance(spec, spec_lib.DatasetSpecification)
  spec_json, records = read_source(spec.path)
  assert spec_json["classes_per_split"] == {"TRAIN": 3, "VALID": 1, "TEST": 1}
  assert sorted(spec_json["class_names"].values()) == [
      "cat", "dog", "emu", "fox", "gnu"]
  for class_id, name in spec.class_names.items():
    expected = [pixels[os.path.join(src, name, f)]
                for f in ("0.png", "1.png", "2.bmp")]
    got = records[class_id]
    assert [label for _, label, _ in got] == [class_id] * 3
    for (image, _, raw), want in zip(got, expected):
      np.testing.assert_array_equal(image, want)
    with open(os.path.join(src, name, "0.png"), "rb") as f:
      assert got[0][2] == f.read()  # PNG stored as it is.
  train = [spec.class_names[i] for i in spec.get_classes(Split.TRAIN)]
  assert train == sorted(train)


def test_bilevel_round_trip_and_explicit_splits(tmp_path):
  src = str(tmp_path / "src")
  rng = np.random.default_rng(1)
  for alphabet, chars in (("Latin", "abc"), ("Greek", "xy"), ("Runic", "pq"),
                          ("Thai", "kmn")):
    for ch in chars:
      for k in range(2):
        _save(os.path.join(src, alphabet, ch, f"{k}.png"),
              rng.integers(0, 256, size=(4, 4), dtype=np.uint8), "PNG")
  splits = {"train": ["Thai", "Latin"], "valid": ["Greek"], "test": ["Runic"]}
  spec = cf.convert_folder(src, str(tmp_path / "records"), "scripts",
                           splits=splits)
  assert isinstance(spec, spec_lib.BiLevelDatasetSpecification)
  assert [spec.superclass_names[i] for i in range(4)] == [
      "Thai", "Latin", "Greek", "Runic"]
  assert [spec.class_names[i] for i in spec.superclass_class_ids(1)] == [
      "Latin-a", "Latin-b", "Latin-c"]
  _, records = read_source(spec.path)
  image, label, _ = records[0][1]
  with Image.open(os.path.join(src, "Thai", "k", "1.png")) as original:
    np.testing.assert_array_equal(image[..., 0], np.asarray(original))
  assert label == 0
  loaded = spec_lib.load_dataset_spec(str(tmp_path / "records"), "scripts")
  assert list(loaded.get_classes(Split.TEST)) == [8, 9]


def test_missing_source_dir(tmp_path):
  with pytest.raises(DataError, match="nowhere.*does not exist"):
    cf.convert_folder(str(tmp_path / "nowhere"), str(tmp_path), "x")


def test_class_with_one_image_is_named(tmp_path):
  src = str(tmp_path / "src")
  _flat_tree(src)
  os.remove(os.path.join(src, "dog", "0.png"))
  os.remove(os.path.join(src, "dog", "1.png"))
  with pytest.raises(DataError, match="dog.*1 image"):
    cf.convert_folder(src, str(tmp_path / "records"), "x")
  assert not os.path.exists(str(tmp_path / "records" / "x"))


def test_unreadable_image_is_named_or_skipped(tmp_path):
  src = str(tmp_path / "src")
  _flat_tree(src, per_class=3)
  bad = os.path.join(src, "emu", "9.jpg")
  with open(bad, "wb") as f:
    f.write(b"\xff\xd8 truncated")
  records = str(tmp_path / "records")
  with pytest.raises(DataError, match="9.jpg"):
    cf.convert_folder(src, records, "x")
  assert os.listdir(records) == []  # Nothing half-written.
  spec = cf.convert_folder(src, records, "x", skip_bad_files=True)
  assert set(spec.images_per_class.values()) == {3}


def test_other_bad_trees(tmp_path):
  src = str(tmp_path / "src")
  _flat_tree(src)
  with open(os.path.join(src, "cat", "notes.txt"), "w") as f:
    f.write("hi")
  with pytest.raises(DataError, match="notes.txt.*not an image"):
    cf.convert_folder(src, str(tmp_path / "r"), "x")
  os.remove(os.path.join(src, "cat", "notes.txt"))
  _save(os.path.join(src, "cat", "sub", "0.png"),
        np.zeros((2, 2), np.uint8), "PNG")
  with pytest.raises(DataError, match="both images and folders"):
    cf.convert_folder(src, str(tmp_path / "r"), "x")
  with pytest.raises(DataError, match="unassigned.*gnu"):
    cf.convert_folder(src, str(tmp_path / "r"), "x", layout="flat",
                      splits={"train": ["cat", "dog"], "valid": ["emu"],
                              "test": ["fox"]})
  with pytest.raises(DataError, match="unknown.*yak"):
    cf.convert_folder(src, str(tmp_path / "r"), "x", layout="flat",
                      splits={"train": ["yak"]})


def test_command_line(tmp_path):
  src = str(tmp_path / "src")
  _flat_tree(src)
  splits_file = str(tmp_path / "splits.json")
  with open(splits_file, "w") as f:
    json.dump({"train": ["cat", "dog", "emu"], "valid": ["fox"],
               "test": ["gnu"]}, f)
  stdout = run_module(  # --records_root: upstream's spelling.
      "meta_dataset_ext.data.convert_folder", f"--source_dir={src}",
      f"--records_root={tmp_path / 'r'}", "--name=animals",
      f"--splits_file={splits_file}")
  assert "'TRAIN': 3" in stdout
  spec = spec_lib.load_dataset_spec(str(tmp_path / "r"), "animals")
  assert spec.class_names[3] == "fox"


def test_small_splits_are_warned_about_and_split_counts(tmp_path, capsys):
  src = str(tmp_path / "src")
  classes = [f"c{i:02d}" for i in range(12)]
  _flat_tree(src, classes=classes, per_class=2)
  records = str(tmp_path / "records")
  spec = cf.convert_folder(src, records, "twelve")
  assert [len(spec.get_classes(s)) for s in Split] == [8, 2, 2]
  warning = capsys.readouterr().err.strip()
  assert warning.count("\n") == 0 and warning.startswith("warning: ")
  assert ("source 'twelve': VALID has 2 classes; TEST has 2 classes, fewer "
          "than the 5 an episode needs") in warning
  assert "--split_counts" in warning
  spec = cf.convert_folder(src, records, "twelve", split_counts=(7, 5, 0),
                           overwrite=True)
  assert [len(spec.get_classes(s)) for s in Split] == [7, 5, 0]
  assert capsys.readouterr().err == ""
  with pytest.raises(DataError, match=r"Cannot split the 12 classes: split "
                     r"counts \(8, 2, 1\)"):
    cf.convert_folder(src, records, "other", split_counts=(8, 2, 1))


def test_source_name_is_checked_before_anything_is_read(tmp_path):
  with pytest.raises(DataError, match="'../up' must be one folder name"):
    cf.convert_folder(str(tmp_path / "nowhere"), str(tmp_path), "../up")


def test_source_dir_that_is_a_file(tmp_path):
  (tmp_path / "src").write_text("x")
  with pytest.raises(DataError, match="src' is a file"):
    cf.convert_folder(str(tmp_path / "src"), str(tmp_path / "r"), "x")
