"""Tests of meta_dataset_ext.data.convert_tfds, offline with tfds mock_data."""

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from meta_dataset_ext.data import convert_tfds as ct
from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data import writer
from meta_dataset_ext.data.spec import DataError, Split
from test_writer import read_source


def _pixel(label, k):
  """The grey value that identifies image k of `label` in these tests."""
  return (7 * label + 31 * k) % 256


def _mock(examples):
  """A mock_data as_dataset_fn yielding `examples` (dicts of numpy values)."""

  def as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    del self, split, decoders, read_config, kwargs
    keys = list(examples[0])
    return tf.data.Dataset.from_tensor_slices(
        {k: [e[k] for e in examples] for k in keys})

  return as_dataset


def _png(label, k):
  return writer.encode_png(np.full((3, 3), _pixel(label, k), np.uint8))


def test_omniglot_is_bilevel_by_alphabet(tmp_path):
  # 5 alphabets with 2 characters each, 3 images per character, interleaved
  # as TFDS order would interleave them.
  examples = [{"image": _png(10 * a + c, k), "label": np.int64(10 * a + c),
               "alphabet": np.int64(a), "alphabet_char_id": np.int64(c)}
              for k in range(3) for a in range(5) for c in range(2)]
  with tfds.testing.mock_data(as_dataset_fn=_mock(examples)):
    spec = ct.convert_tfds("omniglot", str(tmp_path),
                           split_fractions=(0.6, 0.2, 0.2), seed=2)
  assert isinstance(spec, spec_lib.BiLevelDatasetSpecification)
  assert spec.name == "omniglot"
  assert spec.superclasses_per_split == {Split.TRAIN: 3, Split.VALID: 1,
                                         Split.TEST: 1}
  assert set(spec.classes_per_superclass.values()) == {2}
  _, records = read_source(spec.path)
  for superclass, alphabet in spec.superclass_names.items():
    for class_id in spec.superclass_class_ids(superclass):
      tfds_label = int(spec.class_names[class_id].split("-")[1])
      assert tfds_label // 10 == int(alphabet)
      got = records[class_id]
      assert [label for _, label, _ in got] == [class_id] * 3
      assert [int(im[0, 0, 0]) for im, _, _ in got] == [
          _pixel(tfds_label, k) for k in range(3)]


def test_flat_builder_with_max_images_per_class(tmp_path):
  examples = [{"image": _png(label, k), "label": np.int64(label),
               "file_name": f"{label}_{k}.jpg"}
              for k in range(4) for label in (3, 5, 8, 13, 21)]
  with tfds.testing.mock_data(as_dataset_fn=_mock(examples)):
    spec = ct.convert_tfds("dtd", str(tmp_path), name="textures",
                           split_fractions=(0.6, 0.2, 0.2),
                           max_images_per_class=2)
  assert isinstance(spec, spec_lib.DatasetSpecification)
  assert spec.path == os.path.join(str(tmp_path), "textures")
  assert set(spec.images_per_class.values()) == {2}
  names = tfds.builder("dtd").info.features["label"].names
  assert sorted(spec.class_names.values()) == sorted(
      names[l] for l in (3, 5, 8, 13, 21))
  _, records = read_source(spec.path)
  for class_id, class_name in spec.class_names.items():
    label = names.index(class_name)
    assert [int(im[0, 0, 0]) for im, _, _ in records[class_id]] == [
        _pixel(label, 0), _pixel(label, 1)]
  assert sorted(os.listdir(str(tmp_path))) == ["textures"]  # No scratch left.


def test_random_mock_data_class_with_one_image_is_named(tmp_path):
  with tfds.testing.mock_data(num_examples=8):
    with pytest.raises(DataError, match=r"class '.*' \(id \d+\) has 1 image"):
      ct.convert_tfds("oxford_flowers102", str(tmp_path))
  assert os.listdir(str(tmp_path)) == []


def test_undecodable_image_is_named(tmp_path):
  examples = [{"image": b"garbage" if k == 1 else _png(0, k),
               "label": np.int64(0), "file_name": "x"} for k in range(3)]
  with tfds.testing.mock_data(as_dataset_fn=_mock(examples)):
    with pytest.raises(DataError, match="'dtd' example 1 \\(label 0\\)"):
      ct.convert_tfds("dtd", str(tmp_path))
  assert os.listdir(str(tmp_path)) == []


def test_unknown_builder_and_missing_feature(tmp_path):
  with pytest.raises(DataError, match="Unknown TFDS builder 'no_such_set'"):
    ct.convert_tfds("no_such_set", str(tmp_path))
  with pytest.raises(DataError, match="no ClassLabel feature 'script'"):
    ct.convert_tfds("omniglot", str(tmp_path), superclass_key="script",
                    data_dir=str(tmp_path))


def test_reading_stops_once_every_class_is_full(tmp_path):
  # quickdraw_bitmap: 345 classes. Once each has 2 images reading stops, so
  # the extra example (a 346th class with one image, an error if read) is not
  # read.
  examples = [{"image": _png(label, k), "label": np.int64(label)}
              for k in range(2) for label in range(345)]
  examples.append({"image": _png(345, 0), "label": np.int64(345)})
  with tfds.testing.mock_data(as_dataset_fn=_mock(examples)):
    spec = ct.convert_tfds("quickdraw_bitmap", str(tmp_path),
                           max_images_per_class=2)
  assert [len(spec.get_classes(s)) for s in Split] == [241, 52, 52]
  assert set(spec.images_per_class.values()) == {2}


def test_source_name_must_be_one_folder_name(tmp_path):
  with pytest.raises(DataError, match="'../x' must be one folder name"):
    ct.convert_tfds("dtd", str(tmp_path / "records"), name="../x")
  assert os.listdir(str(tmp_path)) == []
