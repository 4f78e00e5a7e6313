"""Tests of meta_dataset_ext.data.writer: records, spec layout, atomic writes.

`read_source` and `run_module` here are also used by the converter tests.
"""

import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
import tensorflow as tf

from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data import writer
from meta_dataset_ext.data.spec import DataError, Split


def read_records(path):
  """[(image uint8 [H, W, 3], label, raw image bytes)] of one records file."""
  features = {"image": tf.io.FixedLenFeature([], tf.string),
              "label": tf.io.FixedLenFeature([], tf.int64)}
  out = []
  for record in tf.data.TFRecordDataset(path):
    example = tf.io.parse_single_example(record, features)
    image = tf.io.decode_image(example["image"], channels=3)
    out.append((image.numpy(), int(example["label"]),
                example["image"].numpy()))
  return out


def read_source(source_dir, class_ids=None):
  """(dataset_spec.json as a dict, {class_id: read_records(class file)}).

  Reads the records of `class_ids`, by default of every class.
  """
  with open(os.path.join(source_dir, "dataset_spec.json"),
            encoding="utf-8") as f:
    spec_json = json.load(f)
  if class_ids is None:
    class_ids = range(len(spec_json["class_names"]))
  records = {i: read_records(os.path.join(source_dir, f"{i}.tfrecords"))
             for i in class_ids}
  return spec_json, records


def run_module(module, *args):
  """Runs `python -m module args` with this checkout importable; its stdout."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
             PYTHONPATH=os.pathsep.join(
                 [repo] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
  return subprocess.run([sys.executable, "-m", module, *args],
                        capture_output=True, text=True, env=env,
                        check=True).stdout


def _png(value, size=6):
  return writer.encode_png(np.full((size, size), value, np.uint8))


def test_make_example_round_trip():
  data = _png(7)
  parsed = tf.io.parse_single_example(
      writer.make_example(data, 12),
      {"image": tf.io.FixedLenFeature([], tf.string),
       "label": tf.io.FixedLenFeature([], tf.int64)})
  assert parsed["image"].numpy() == data
  assert int(parsed["label"]) == 12


def test_flat_source_layout_and_records(tmp_path):
  layout = writer.SourceLayout.flat(
      "toy", {Split.TRAIN: ["a", "b"], Split.VALID: ["c"],
              Split.TEST: ["d"]})
  examples = [(i, _png(10 * i + k)) for k in range(3) for i in range(4)]
  spec = writer.write_source(str(tmp_path), layout, examples)
  source_dir = os.path.join(str(tmp_path), "toy")
  assert spec.path == source_dir
  spec_json, records = read_source(source_dir)
  assert list(spec_json) == ["name", "classes_per_split", "images_per_class",
                             "class_names", "path", "file_pattern",
                             "__class__"]
  assert spec_json["__class__"] == "DatasetSpecification"
  assert spec_json["classes_per_split"] == {"TRAIN": 2, "VALID": 1, "TEST": 1}
  assert spec_json["images_per_class"] == {str(i): 3 for i in range(4)}
  assert spec_json["class_names"] == {"0": "a", "1": "b", "2": "c", "3": "d"}
  assert spec_json["file_pattern"] == "{}.tfrecords"
  for class_id, class_records in records.items():
    assert [label for _, label, _ in class_records] == [class_id] * 3
    assert [int(im[0, 0, 0]) for im, _, _ in class_records] == [
        10 * class_id + k for k in range(3)]
  loaded = spec_lib.load_dataset_spec(str(tmp_path), "toy")
  assert list(loaded.get_classes(Split.VALID)) == [2]
  assert sorted(os.listdir(str(tmp_path))) == ["toy"]  # No staging leftovers.


def test_bilevel_layout_ids_follow_splits_then_superclasses(tmp_path):
  layout = writer.SourceLayout.bilevel("bi", {
      Split.TEST: [("Greek", ["alpha", "beta"])],
      Split.TRAIN: [("Latin", ["a", "b", "c"]), ("Cyrillic", ["zhe"])],
      Split.VALID: [("Hebrew", ["alef", "bet"])],
  })
  assert layout.class_names == ("a", "b", "c", "zhe", "alef", "bet", "alpha",
                                "beta")
  examples = [(i, _png(i)) for i in range(8) for _ in range(2)]
  writer.write_source(str(tmp_path), layout, examples)
  spec_json, records = read_source(os.path.join(str(tmp_path), "bi"))
  assert list(spec_json) == [
      "name", "superclasses_per_split", "classes_per_superclass",
      "images_per_class", "superclass_names", "class_names", "path",
      "file_pattern", "__class__"]
  assert spec_json["__class__"] == "BiLevelDatasetSpecification"
  assert spec_json["superclasses_per_split"] == {"TRAIN": 2, "VALID": 1,
                                                 "TEST": 1}
  assert spec_json["classes_per_superclass"] == {"0": 3, "1": 1, "2": 2,
                                                 "3": 2}
  assert spec_json["superclass_names"] == {"0": "Latin", "1": "Cyrillic",
                                           "2": "Hebrew", "3": "Greek"}
  loaded = spec_lib.load_dataset_spec(str(tmp_path), "bi")
  assert list(loaded.superclass_class_ids(3)) == [6, 7]
  assert all(len(r) == 2 for r in records.values())


def test_class_records_writer_bounded_open_files(tmp_path):
  out = writer.ClassRecordsWriter(str(tmp_path), max_open_files=2)
  order = [0, 1, 2, 0, 1, 2, 2, 0]
  for k, class_id in enumerate(order):
    out.write(class_id, _png(k))
  assert out.close() == {0: 3, 1: 2, 2: 3}
  assert sorted(os.listdir(str(tmp_path))) == [
      "0.tfrecords", "1.tfrecords", "2.tfrecords"]
  values = [int(im[0, 0, 0]) for im, _, _ in read_records(
      os.path.join(str(tmp_path), "0.tfrecords"))]
  assert values == [k for k, c in enumerate(order) if c == 0]


def test_too_few_images_names_class_and_leaves_nothing(tmp_path):
  layout = writer.SourceLayout.flat("toy", {Split.TRAIN: ["ok", "lonely"]})
  with pytest.raises(DataError, match="'lonely'.*1 image"):
    writer.write_source(str(tmp_path), layout,
                        [(0, _png(1)), (0, _png(2)), (1, _png(3))])
  assert os.listdir(str(tmp_path)) == []


def test_failure_midway_keeps_previous_source(tmp_path):
  layout = writer.SourceLayout.flat("toy", {Split.TRAIN: ["a"]})
  writer.write_source(str(tmp_path), layout, [(0, _png(1)), (0, _png(2))])

  def broken():
    yield 0, _png(5)
    raise RuntimeError("interrupted")

  with pytest.raises(RuntimeError):
    writer.write_source(str(tmp_path), layout, broken(), overwrite=True)
  assert sorted(os.listdir(str(tmp_path))) == ["toy"]
  _, records = read_source(os.path.join(str(tmp_path), "toy"))
  assert [int(im[0, 0, 0]) for im, _, _ in records[0]] == [1, 2]
  with pytest.raises(DataError, match="already exists"):
    writer.write_source(str(tmp_path), layout, [])
  writer.write_source(str(tmp_path), layout, [(0, _png(8)), (0, _png(9))],
                      overwrite=True)
  _, records = read_source(os.path.join(str(tmp_path), "toy"))
  assert [int(im[0, 0, 0]) for im, _, _ in records[0]] == [8, 9]


def test_duplicate_names_and_bad_class_id(tmp_path):
  with pytest.raises(DataError, match="Duplicate name 'a'"):
    writer.SourceLayout.flat("toy", {Split.TRAIN: ["a"], Split.TEST: ["a"]})
  layout = writer.SourceLayout.flat("toy", {Split.TRAIN: ["a"]})
  with pytest.raises(DataError, match="class id 3"):
    writer.write_source(str(tmp_path), layout, [(3, _png(1))])


def test_checked_image_bytes():
  png = _png(3)
  assert writer.checked_image_bytes(png, "x.png") is png
  buffer = io.BytesIO()
  Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="BMP")
  converted = writer.checked_image_bytes(buffer.getvalue(), "x.bmp")
  assert converted.startswith(b"\x89PNG")
  assert tf.io.decode_image(converted).numpy()[0, 0].tolist() == [1, 2, 3]
  with pytest.raises(DataError, match="broken.jpg"):
    writer.checked_image_bytes(b"not an image", "broken.jpg")


def test_assign_splits():
  items = [f"c{i}" for i in range(20)]
  splits = writer.assign_splits(items, (0.5, 0.25, 0.25), seed=3)
  assert [len(splits[s]) for s in Split] == [10, 5, 5]
  assert sorted(sum(splits.values(), [])) == sorted(items)
  assert splits == writer.assign_splits(items, (0.5, 0.25, 0.25), seed=3)
  assert splits != writer.assign_splits(items, (0.5, 0.25, 0.25), seed=4)
  for members in splits.values():
    assert members == sorted(members, key=items.index)
  assert [len(v) for v in writer.assign_splits(
      items[:3], (0.9, 0.05, 0.05)).values()] == [1, 1, 1]
  with pytest.raises(ValueError, match="sum"):
    writer.assign_splits(items, (0.5, 0.5, 0.5))
  with pytest.raises(ValueError, match="Cannot split 2"):
    writer.assign_splits(items[:2], (0.5, 0.25, 0.25))


def test_assign_splits_by_counts():
  items = [f"c{i}" for i in range(12)]
  splits = writer.assign_splits(items, seed=1, counts=(8, 2, 2))
  assert [len(splits[s]) for s in Split] == [8, 2, 2]
  assert sorted(sum(splits.values(), [])) == sorted(items)
  with pytest.raises(ValueError, match=r"split counts \(8, 2, 1\) .* 12 items"):
    writer.assign_splits(items, counts=(8, 2, 1))


def test_small_splits():
  flat = writer.SourceLayout.flat("toy", {Split.TRAIN: list("abcdefgh"),
                                          Split.VALID: ["i", "j"],
                                          Split.TEST: []})
  assert flat.small_splits() == ["VALID has 2 classes"]
  bilevel = writer.SourceLayout.bilevel("bi", {
      Split.TRAIN: [("Latin", list("abcde")), ("Runic", list("pq"))],
      Split.TEST: [("Greek", list("vwxyz"))]})
  assert bilevel.small_splits() == ["TRAIN superclass 'Runic' has 2 classes"]


@pytest.mark.parametrize("name", ["../victim", "..", ".", "", "a/b",
                                  ".hidden", "/abs"])
def test_source_name_must_be_one_folder_name(tmp_path, name):
  root = tmp_path / "records"
  victim = tmp_path / "victim"
  victim.mkdir()
  (victim / "keep.txt").write_text("mine")
  layout = writer.SourceLayout(name, ("a",), {Split.TRAIN: 1, Split.VALID: 0,
                                              Split.TEST: 0})
  with pytest.raises(DataError, match="must be one folder name"):
    writer.write_source(str(root), layout, [(0, _png(1)), (0, _png(2))],
                        overwrite=True)
  assert sorted(os.listdir(str(tmp_path))) == ["victim"]
  assert (victim / "keep.txt").read_text() == "mine"


def test_records_root_that_is_a_file(tmp_path):
  root = tmp_path / "records"
  root.write_text("not a folder")
  layout = writer.SourceLayout.flat("toy", {Split.TRAIN: ["a"]})
  with pytest.raises(DataError, match=r"records_root_dir .*records' is a file"):
    writer.write_source(str(root), layout, [(0, _png(1)), (0, _png(2))])
  assert root.read_text() == "not a folder"


@pytest.mark.parametrize("umask,folder,file", [(0o022, 0o755, 0o644),
                                               (0o027, 0o750, 0o640)])
def test_written_source_follows_the_umask(tmp_path, umask, folder, file):
  layout = writer.SourceLayout.flat("toy", {Split.TRAIN: ["a"]})
  previous = os.umask(umask)
  try:
    spec = writer.write_source(str(tmp_path), layout,
                               [(0, _png(1)), (0, _png(2))],
                               extra_files={"notes.txt": "x"})
  finally:
    os.umask(previous)
  assert os.stat(spec.path).st_mode & 0o777 == folder
  for name in os.listdir(spec.path):
    assert os.stat(os.path.join(spec.path, name)).st_mode & 0o777 == file, name


def _ended_pid():
  child = subprocess.run(
      [sys.executable, "-c", "import os; print(os.getpid())"],
      capture_output=True, text=True, check=True)
  return int(child.stdout)


def test_work_folders_of_ended_conversions_are_removed(tmp_path):
  host = socket.gethostname()
  layout = writer.SourceLayout.flat("toy", {Split.TRAIN: ["a"]})
  ended, running = _ended_pid(), os.getpid()
  names = {"ended": f".toy.tmp-{host}-{ended}-0a1b",
           "ended_scratch": f".toy.scratch-{host}-{ended}-0a1c",
           "running": f".toy.tmp-{host}-{running}-0a1d",
           "elsewhere": f".toy.tmp-{host}x-{ended}-0a1e",
           "other_source": f".other.tmp-{host}-{ended}-0a1f"}
  for name in names.values():
    os.makedirs(os.path.join(str(tmp_path), name, "partial"))
  writer.write_source(str(tmp_path), layout, [(0, _png(1)), (0, _png(2))])
  assert sorted(os.listdir(str(tmp_path))) == sorted(
      ["toy", names["running"], names["elsewhere"], names["other_source"]])


def test_source_moved_aside_by_a_killed_replacement_is_put_back(tmp_path):
  layout = writer.SourceLayout.flat("toy", {Split.TRAIN: ["a"]})
  writer.write_source(str(tmp_path), layout, [(0, _png(1)), (0, _png(2))])
  # Killed between the two renames: the old source is in its .old folder.
  old = os.path.join(str(tmp_path),
                     f".toy.old-{socket.gethostname()}-{_ended_pid()}-0a1b")
  os.mkdir(old)
  os.rename(os.path.join(str(tmp_path), "toy"), os.path.join(old, "toy"))
  with pytest.raises(DataError, match="already exists"):
    writer.write_source(str(tmp_path), layout, [(0, _png(8)), (0, _png(9))])
  assert sorted(os.listdir(str(tmp_path))) == ["toy"]
  _, records = read_source(os.path.join(str(tmp_path), "toy"))
  assert [int(im[0, 0, 0]) for im, _, _ in records[0]] == [1, 2]
