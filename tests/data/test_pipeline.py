"""Tests of meta_dataset_ext.data.pipeline: episodes from records on disk."""

import os
import re

import gin
import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext.data import pipeline
from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data import writer
from meta_dataset_ext.data.sampler import EpisodeDescriptionConfig
from meta_dataset_ext.data.spec import DataError
from meta_dataset_ext.errors import ConfigError
from tests.data import records_util

HEIGHT = 12
DATA_CONFIG = pipeline.DataConfig(image_height=HEIGHT)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("records"))
  records_util.make_flat_source(root, "flat", (10, 3, 3),
                                [6 + 3 * i for i in range(16)], size=20)
  records_util.make_bilevel_source(root, "bi", (2, 1, 1), [6, 8, 5, 5], 7)
  children = {"r": ["x", "y"], "x": [f"x{i}" for i in range(5)],
              "y": [f"y{i}" for i in range(6)],
              "v": [f"v{i}" for i in range(5)], "t": [f"t{i}" for i in range(5)]}
  records_util.make_hierarchical_source(
      root, "tree", children, {"TRAIN": "r", "VALID": "v", "TEST": "t"}, 6)
  return root


def episodes(root, source, n, config=None, seed=0, padding="bucket",
             split="TRAIN"):
  dataset = pipeline.make_episode_dataset(root, source, split, config,
                                          DATA_CONFIG, seed, padding)
  return [{k: v.numpy() for k, v in e.items()} for e in dataset.take(n)]


def check_set(images, labels, class_ids, way):
  """Checks one padded set; returns {label: [(class id, record index)]}."""
  valid = labels >= 0
  n = valid.sum()
  assert np.all(valid[:n]) and not np.any(valid[n:])  # Padding at the end.
  assert np.all(class_ids[n:] == -1)
  assert np.all(images[n:] == 0.0)
  assert images.min() >= -1.0 and images.max() <= 1.0
  found = {}
  for image, label, class_id in zip(images[:n], labels[:n], class_ids[:n]):
    assert 0 <= label < way
    origin = records_util.identify(image)
    assert origin[0] == class_id
    found.setdefault(int(label), []).append(origin)
  return found


def test_round_trip_matches_descriptions(root):
  spec = spec_lib.load_dataset_spec(root, "flat")
  stream = pipeline.EpisodeStream(spec, "TRAIN", None, DATA_CONFIG, seed=3)
  descriptions = stream.descriptions()
  for episode in episodes(root, "flat", 12, seed=3):
    description = next(descriptions)
    way = description.way
    assert episode["way"] == way
    support = check_set(episode["support_images"], episode["support_labels"],
                        episode["support_class_ids"], way)
    query = check_set(episode["query_images"], episode["query_labels"],
                      episode["query_class_ids"], way)
    for label, class_id in enumerate(description.class_ids):
      s, q = support[label], query[label]
      assert {c for c, _ in s + q} == {class_id}
      assert len(s) == description.num_support[label]
      assert len(q) == description.num_query[label]
      records = [i for _, i in s + q]
      assert len(set(records)) == len(records)  # Support, query disjoint.


def test_bucket_padding_uses_few_shapes(root):
  for episode in episodes(root, "flat", 30):
    s, q = len(episode["support_labels"]), len(episode["query_labels"])
    assert s in (8, 16, 32, 64, 128, 256, 500) and q in (8, 16, 32, 64, 100)
    assert (episode["support_labels"] >= 0).sum() <= s


def test_padded_size():
  assert pipeline.padded_size(5, 500, "bucket") == 8
  assert pipeline.padded_size(64, 500, "bucket") == 64
  assert pipeline.padded_size(300, 500, "bucket") == 500
  assert pipeline.padded_size(300, 500, "max") == 500
  assert pipeline.padded_size(300, 500, "none") == 300


def test_max_padding_is_one_static_shape_and_one_trace(root):
  config = EpisodeDescriptionConfig(max_ways_upper_bound=8, max_num_query=4,
                                    max_support_set_size=40)
  dataset = pipeline.make_episode_dataset(root, "flat", "TRAIN", config,
                                          DATA_CONFIG, padding="max")
  spec = dataset.element_spec
  assert spec["support_images"].shape == (40, HEIGHT, HEIGHT, 3)
  assert spec["query_labels"].shape == (32,)
  traces = []

  @tf.function
  def consume(episode):
    traces.append(1)
    return tf.reduce_sum(tf.cast(episode["support_labels"] >= 0, tf.int32))

  sizes = {int(consume(e)) for e in dataset.take(10)}
  assert len(traces) == 1 and len(sizes) > 1


def test_fixed_shape_episodes_are_unpadded_and_static(root):
  config = EpisodeDescriptionConfig.fixed(5, 1, 3)
  dataset = pipeline.make_episode_dataset(root, "bi", "TRAIN", config,
                                          DATA_CONFIG)
  assert dataset.element_spec["support_images"].shape == (5, HEIGHT, HEIGHT, 3)
  assert dataset.element_spec["query_class_ids"].shape == (15,)
  for episode in episodes(root, "bi", 3, config):
    assert list(episode["support_labels"]) == [0, 1, 2, 3, 4]
    assert list(episode["query_labels"]) == [0] * 3 + [1] * 3 + [2] * 3 + [
        3] * 3 + [4] * 3


def test_same_seed_same_episodes_and_reiteration_restarts(root):
  first = episodes(root, "flat", 4, seed=11)
  again = episodes(root, "flat", 4, seed=11)
  other = episodes(root, "flat", 4, seed=12)
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert any(len(a["support_labels"]) != len(b["support_labels"]) or
             np.any(a["support_class_ids"] != b["support_class_ids"])
             for a, b in zip(first, other))
  dataset = pipeline.make_episode_dataset(root, "flat", "TRAIN", None,
                                          DATA_CONFIG, seed=11)
  ids = [[e["support_class_ids"].numpy() for e in dataset.take(2)]
         for _ in range(2)]
  for a, b in zip(*ids):
    np.testing.assert_array_equal(a, b)


def test_bilevel_and_hierarchical_episodes(root):
  spec = spec_lib.load_dataset_spec(root, "bi")
  for episode in episodes(root, "bi", 5):
    ids = set(episode["support_class_ids"]) - {-1}
    assert any(ids <= set(spec.superclass_class_ids(s)) for s in range(2))
  spec = spec_lib.load_dataset_spec(root, "tree")
  span = spec.spanning_leaves("TRAIN")
  node_ids = [{spec.class_names_to_ids[x] for x in span[n]} for n in "rxy"]
  for episode in episodes(root, "tree", 8):
    ids = set(episode["query_class_ids"]) - {-1}
    assert ids in node_ids


@pytest.mark.parametrize("field,value,match", [
    ("image_height", "16", "image_height = '16' must be an integer >= 1"),
    ("image_height", 0, "image_height = 0 must be an integer >= 1"),
    ("shuffle_buffer_size", -1, "shuffle_buffer_size = -1"),
    ("read_buffer_size_bytes", 0, "read_buffer_size_bytes = 0"),
    ("num_prefetch", 1.5, "num_prefetch = 1.5 must be an integer"),
    ("verify_checksums", "yes", "verify_checksums = 'yes' must be True or"),
    ("image_decoding", "bicubic", "image_decoding = 'bicubic' must be one of"),
])
def test_data_config_values_are_checked_where_they_enter(field, value, match):
  with pytest.raises(ConfigError, match=f"DataConfig.{match}"):
    pipeline.DataConfig(**{field: value})


def test_data_config_is_gin_configurable():
  try:
    gin.parse_config("DataConfig.image_height = 28\n"
                     "DataConfig.num_prefetch = 4")
    assert pipeline.DataConfig().image_height == 28
    assert pipeline.DataConfig().num_prefetch == 4
  finally:
    gin.clear_config()


def test_unknown_source_and_missing_class_file(root, tmp_path):
  with pytest.raises(DataError, match="Unknown source 'nope'"):
    pipeline.make_episode_dataset(root, "nope", "TRAIN")
  spec = records_util.make_flat_source(str(tmp_path), "gap", (6, 0, 0),
                                       [4] * 6, size=8)
  os.remove(spec.class_file(4))
  with pytest.raises(DataError, match=r"class 4: .*gap.*4\.tfrecords"):
    pipeline.make_episode_dataset(str(tmp_path), "gap", "TRAIN")


def test_split_too_small_and_tiny_class(tmp_path):
  records_util.make_flat_source(str(tmp_path), "small", (4, 1, 1), [4] * 6,
                                size=8)
  with pytest.raises(DataError, match="split TRAIN of source 'small'"):
    pipeline.make_episode_dataset(str(tmp_path), "small", "TRAIN")
  records_util.make_flat_source(str(tmp_path), "tiny", (5, 0, 0),
                                [4, 4, 1, 4, 4], size=8)
  with pytest.raises(DataError, match=r"Class 2 \('class2'\)"):
    pipeline.make_episode_dataset(str(tmp_path), "tiny", "TRAIN")


def test_corrupt_record_error_names_file_when_iterating(tmp_path):
  spec = records_util.make_flat_source(str(tmp_path), "bad", (5, 0, 0),
                                       [3] * 5, size=8)
  for class_id in range(5):
    path = spec.class_file(class_id)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-7])
  dataset = pipeline.make_episode_dataset(str(tmp_path), "bad", "TRAIN")
  with pytest.raises(tf.errors.OpError,
                     match=r"Corrupt record 2 in .*bad") as info:
    next(iter(dataset))
  error = pipeline.user_error(info.value)  # The DataError itself: one line.
  assert isinstance(error, DataError) and "\n" not in str(error)
  assert str(error).startswith("Corrupt record 2 in ")


def test_error_with_quotes_and_non_ascii_path_is_recovered(tmp_path):
  root = str(tmp_path / "l'été")  # TensorFlow escapes both when it prints.
  spec = records_util.make_flat_source(root, "bad", (5, 0, 0), [3] * 5, size=8)
  records_util.write_records(spec.class_file(1), [
      writer.make_example(records_util.encode_png(1, 0, 8), 1)])
  with pytest.raises(tf.errors.OpError) as info:
    next(iter(pipeline.make_episode_dataset(root, "bad", "TRAIN")))
  assert str(pipeline.user_error(info.value)) == (
      f"{spec.class_file(1)} holds 1 records but the spec of source 'bad' says "
      "class 1 has 3 images; re-convert the source, or restore the file from "
      "a copy.")


def test_image_that_does_not_decode_is_named_when_iterating(tmp_path):
  spec = records_util.make_flat_source(str(tmp_path), "bad", (5, 0, 0),
                                       [3] * 5, size=8)
  records_util.write_records(spec.class_file(2), [
      writer.make_example(records_util.damaged_png(2, i, 8), 2)
      for i in range(3)])
  dataset = pipeline.make_episode_dataset(
      str(tmp_path), "bad", "TRAIN", EpisodeDescriptionConfig.fixed(5, 1, 1),
      DATA_CONFIG)
  with pytest.raises(tf.errors.OpError) as info:
    next(iter(dataset))
  assert pipeline.user_error(tf.errors.UnknownError(None, None, "x")) is None
  assert re.fullmatch(
      r"Image of record \d of .*bad.2\.tfrecords \(class 2\) does not decode "
      r"\(Invalid PNG data, size \d+\); re-convert the source.*",
      str(pipeline.user_error(info.value)))


def test_reads_what_the_writer_writes(tmp_path):
  layout = writer.SourceLayout.flat(
      "written", {"TRAIN": [f"w{i}" for i in range(5)], "TEST": ["t0"]})
  examples = [(c, records_util.encode_png(c, i, 8)) for i in range(4)
              for c in range(6)]
  writer.write_source(str(tmp_path), layout, examples)
  config = EpisodeDescriptionConfig.fixed(5, 2, 2)
  dataset = pipeline.make_episode_dataset(str(tmp_path), "written", "TRAIN",
                                          config, DATA_CONFIG)
  episode = next(iter(dataset))
  origins = [records_util.identify(i) for i in episode["support_images"]]
  origins += [records_util.identify(i) for i in episode["query_images"]]
  assert sorted({c for c, _ in origins}) == [0, 1, 2, 3, 4]
  assert len(set(origins)) == 20


def test_stream_can_start_at_any_episode(root):
  """Episode i depends on (seed, i) only: starting at k gives the tail exactly
  (how a resumed training run continues its data without re-reading)."""
  full = episodes(root, "flat", 7, seed=4, padding="none")
  dataset = pipeline.make_episode_dataset(root, "flat", "TRAIN", None,
                                          DATA_CONFIG, 4, "none", start=3)
  tail = [{k: v.numpy() for k, v in e.items()} for e in dataset.take(4)]
  for expected, got in zip(full[3:], tail):
    assert expected.keys() == got.keys()
    for key in expected:
      np.testing.assert_array_equal(expected[key], got[key])
