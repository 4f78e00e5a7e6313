"""Tests of meta_dataset_ext.data.spec: JSON layout, split class ids, errors."""

import json
import os

import pytest

from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data.spec import DataError, Split


def _flat():
  return spec_lib.DatasetSpecification(
      name="flat", classes_per_split={"TRAIN": 3, "VALID": 2, "TEST": 1},
      images_per_class={i: 10 + i for i in range(6)},
      class_names={i: f"c{i}" for i in range(6)}, path="somewhere")


def _bilevel():
  return spec_lib.BiLevelDatasetSpecification(
      name="bi", superclasses_per_split={"TRAIN": 2, "VALID": 1, "TEST": 1},
      classes_per_superclass={0: 3, 1: 4, 2: 2, 3: 5},
      images_per_class={i: 20 for i in range(14)},
      superclass_names={i: f"alphabet{i}" for i in range(4)},
      class_names={i: f"char{i}" for i in range(14)}, path="somewhere")


def _node(wn_id, children=(), parents=()):
  return spec_lib.Synset(wn_id, wn_id.upper(), tuple(children), tuple(parents))


def _hierarchical():
  # TRAIN: root r -> a -> {l1, l2}, r -> l3, a and b share leaf l4 (a DAG).
  train = [_node("r", ["a", "b", "l3"]), _node("a", ["l1", "l2", "l4"], ["r"]),
           _node("b", ["l4"], ["r"]), _node("l1", parents=["a"]),
           _node("l2", parents=["a"]), _node("l3", parents=["r"]),
           _node("l4", parents=["a", "b"])]
  valid = [_node("v", ["v1", "v2"]), _node("v1", parents=["v"]),
           _node("v2", parents=["v"])]
  test = [_node("t", ["t1"]), _node("t1", parents=["t"])]
  graphs = {"TRAIN": train, "VALID": valid, "TEST": test}
  leaves = ["l1", "l2", "l3", "l4", "v1", "v2", "t1"]
  counts = {"TRAIN": {"l1": 5, "l2": 6, "l3": 7, "l4": 8, "a": 19, "b": 8,
                      "r": 26},
            "VALID": {"v1": 3, "v2": 4, "v": 7}, "TEST": {"t1": 9, "t": 9}}
  return spec_lib.HierarchicalDatasetSpecification(
      name="tree",
      split_subgraphs={s: {n.wn_id: n for n in g} for s, g in graphs.items()},
      images_per_class=counts, class_names=dict(enumerate(leaves)),
      path="somewhere")


def test_flat_split_ids_are_contiguous_train_valid_test():
  spec = _flat()
  assert spec.get_classes(Split.TRAIN) == range(0, 3)
  assert spec.get_classes("valid") == range(3, 5)
  assert spec.get_classes("TEST") == range(5, 6)
  assert spec.get_total_images_per_class(4) == 14
  assert spec.num_classes == 6


def test_bilevel_split_ids_follow_superclasses():
  spec = _bilevel()
  assert spec.get_superclasses("TRAIN") == range(0, 2)
  assert spec.get_superclasses("TEST") == range(3, 4)
  assert spec.classes_per_split == {Split.TRAIN: 7, Split.VALID: 2,
                                    Split.TEST: 5}
  assert spec.get_classes("VALID") == range(7, 9)
  assert spec.superclass_class_ids(1) == range(3, 7)
  assert spec.superclass_class_ids(3) == range(9, 14)


def test_hierarchical_leaves_and_spanning_leaves():
  spec = _hierarchical()
  assert spec.get_classes("TRAIN") == range(0, 4)
  assert spec.get_classes("TEST") == range(6, 7)
  assert spec.leaves("VALID") == ["v1", "v2"]
  span = spec.spanning_leaves("TRAIN")
  assert span["r"] == ["l1", "l2", "l3", "l4"]
  assert span["a"] == ["l1", "l2", "l4"]
  assert span["b"] == ["l4"]
  assert spec.get_total_images_per_class(3) == 8


@pytest.mark.parametrize("make", [_flat, _bilevel, _hierarchical])
def test_json_round_trip_and_upstream_layout(tmp_path, make):
  spec = make()
  source_dir = tmp_path / spec.name
  source_dir.mkdir()
  written = spec_lib.write_dataset_spec(spec, str(source_dir))
  assert written == str(source_dir / "dataset_spec.json")
  dct = json.loads((source_dir / "dataset_spec.json").read_text())
  # Upstream's layout: namedtuple fields in order, then __class__ last.
  assert list(dct)[0] == "name" and list(dct)[-1] == "__class__"
  assert list(dct)[-4:-1] == ["class_names", "path", "file_pattern"]
  assert dct["__class__"] == type(spec).__name__
  loaded = spec_lib.load_dataset_spec(str(tmp_path), spec.name)
  assert loaded.path == str(source_dir)
  assert spec_lib.to_json(loaded) == spec_lib.to_json(
      spec_lib.spec_from_dict(dct, path=str(source_dir)))
  for split in Split:
    assert loaded.get_classes(split) == spec.get_classes(split)


def test_hierarchical_json_graph_is_node_list_sorted_by_wn_id():
  dct = _hierarchical().to_dict()
  train = dct["split_subgraphs"]["TRAIN"]
  assert [n["wn_id"] for n in train] == sorted(n["wn_id"] for n in train)
  assert train[0] == {"wn_id": "a", "words": "A",
                      "children_ids": ["l1", "l2", "l4"], "parents_ids": ["r"]}
  assert dct["images_per_class"]["VALID"] == {"v1": 3, "v2": 4, "v": 7}


def test_unknown_source_lists_available(tmp_path):
  spec_lib.write_dataset_spec(_flat(), str(tmp_path / "flat.json"))
  (tmp_path / "dtd").mkdir()
  spec_lib.write_dataset_spec(_flat(), str(tmp_path / "dtd"))
  with pytest.raises(DataError, match=r"Unknown source 'nope'.*\['dtd'\]"):
    spec_lib.load_dataset_spec(str(tmp_path), "nope")


def test_missing_root(tmp_path):
  with pytest.raises(DataError, match="records_root_dir .* does not exist"):
    spec_lib.load_dataset_spec(str(tmp_path / "absent"), "dtd")


def test_root_or_source_that_is_a_file(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(DataError, match=r"records_root_dir .*file' is a file"):
    spec_lib.load_dataset_spec(str(tmp_path / "file"), "dtd")
  (tmp_path / "dtd").write_text("x")
  with pytest.raises(DataError, match=r"Source 'dtd': .*dtd' is a file"):
    spec_lib.load_dataset_spec(str(tmp_path), "dtd")


def test_work_folders_are_not_listed_as_sources(tmp_path):
  (tmp_path / ".dtd.tmp-host-1-ab").mkdir()
  spec_lib.write_dataset_spec(_flat(), str(tmp_path / ".dtd.tmp-host-1-ab"))
  with pytest.raises(DataError, match=r"Sources found under .*: \[\]"):
    spec_lib.load_dataset_spec(str(tmp_path), "dtd")


def test_missing_spec_file(tmp_path):
  (tmp_path / "dtd").mkdir()
  with pytest.raises(DataError, match=r"Missing dataset spec .*dataset_spec"):
    spec_lib.load_dataset_spec(str(tmp_path), "dtd")


@pytest.mark.parametrize("text,match", [
    ("{not json", "Malformed"),
    ("[1, 2]", "Malformed"),
    ('{"__class__": "Other", "name": "x", "class_names": {}, "path": "",'
     ' "file_pattern": "{}.tfrecords"}', "Unknown spec __class__"),
    ('{"__class__": "DatasetSpecification", "name": "x"}', "missing key"),
    ('{"__class__": "DatasetSpecification", "name": "x", "class_names": {},'
     ' "path": "", "file_pattern": "{}.tfrecords", "images_per_class": {},'
     ' "classes_per_split": [5, 0, 0]}', "Invalid dataset spec"),
])
def test_malformed_spec_names_the_file(tmp_path, text, match):
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "dataset_spec.json").write_text(text)
  with pytest.raises(DataError, match=match) as info:
    spec_lib.load_dataset_spec(str(tmp_path), "x")
  assert os.path.join("x", "dataset_spec.json") in str(info.value)


def test_inconsistent_specs_are_rejected():
  dct = _flat().to_dict()
  dct["file_pattern"] = "{}_{}.tfrecords"
  with pytest.raises(DataError, match="sharded"):
    spec_lib.spec_from_dict(dct)
  dct = _flat().to_dict()
  del dct["images_per_class"]["5"]
  with pytest.raises(DataError, match="class id 5"):
    spec_lib.spec_from_dict(dct)
  dct = _hierarchical().to_dict()
  dct["class_names"] = {"0": "v1", "1": "l2", "2": "l3", "3": "l4", "4": "l1",
                        "5": "v2", "6": "t1"}
  with pytest.raises(DataError, match="contiguous"):
    spec_lib.spec_from_dict(dct)


def test_unknown_split_name():
  with pytest.raises(DataError, match="Unknown split"):
    _flat().get_classes("holdout")
