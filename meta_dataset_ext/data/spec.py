"""Dataset specifications: what `<records_root>/<source>/dataset_spec.json` says.

A converted Meta-Dataset source is a directory holding one TFRecord file per
class and a `dataset_spec.json` that describes the classes. Upstream
Meta-Dataset writes three kinds of specification, told apart by the JSON key
`__class__`; this module reads and writes all three in the same JSON layout,
so specs written here load in upstream and vice versa.

Public API
----------
Split
    Enum TRAIN / VALID / TEST (same names and values as upstream).
    `Split.parse("train")` also accepts names in any case.
DatasetSpecification(name, classes_per_split, images_per_class, class_names,
                     path, file_pattern="{}.tfrecords")
    A flat source (aircraft, dtd, ...).
BiLevelDatasetSpecification(name, superclasses_per_split,
                            classes_per_superclass, images_per_class,
                            superclass_names, class_names, path, file_pattern)
    A two-level source (omniglot: superclass = alphabet, class = character).
HierarchicalDatasetSpecification(name, split_subgraphs, images_per_class,
                                 class_names, path, file_pattern)
    A source whose classes are the leaves of a DAG (ilsvrc_2012's WordNet
    graph), one disjoint sub-graph per split. `split_subgraphs[split]` maps a
    WordNet id to its `Synset`; `images_per_class[split]` maps EVERY node of
    that split's sub-graph (internal ones too) to the number of images below it.
Synset(wn_id, words, children_ids, parents_ids)
    One DAG node, exactly the fields of the JSON node record.

Every spec has:
    get_classes(split) -> range      absolute class ids of a split
    classes_per_split -> {Split: int}
    get_total_images_per_class(class_id) -> int
    num_classes -> int
    class_file(class_id) -> str      path of the class's records file
    to_dict() -> dict                the JSON-ready dict upstream writes
BiLevel specs also have get_superclasses(split) -> range and
superclass_class_ids(superclass_id) -> range; hierarchical specs have
leaves(split), spanning_leaves(split) and class_names_to_ids.

Functions:
    load_dataset_spec(records_root_dir, source) -> spec
    spec_from_dict(dct, path=None) -> spec
    write_dataset_spec(spec, path)   path: the .json file, or a directory
                                     (then `<dir>/dataset_spec.json`)
    to_json(spec) -> str

Class ids are contiguous per split, as upstream defines them: the TRAIN classes
are ids 0..n_train-1, then the VALID classes, then the TEST classes. For a
bi-level spec the split counts superclasses, and a split's classes are those of
its superclasses (superclass ids are contiguous the same way, and the classes of
superclass k follow those of superclass k-1). For a hierarchical spec the
classes of a split are the leaves of its sub-graph, and `class_names` maps their
ids (train leaves first) to WordNet ids.

Errors: bad input raises `DataError` (a `ValueError`) whose message names the
file, source or class at fault.
"""

import dataclasses
import enum
import json
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from meta_dataset_ext.errors import DataError  # Re-exported: spec.DataError.

SPEC_FILENAME = "dataset_spec.json"
DEFAULT_FILE_PATTERN = "{}.tfrecords"
# Upstream accepts these two patterns; the second (shards) it never reads.
_SUPPORTED_FILE_PATTERNS = ("{}.tfrecords",)
_KNOWN_FILE_PATTERNS = ("{}.tfrecords", "{}_{}.tfrecords")


class Split(enum.Enum):
  """The three meta-splits of a source."""
  TRAIN = 0
  VALID = 1
  TEST = 2

  @classmethod
  def parse(cls, split: Union["Split", str]) -> "Split":
    """Returns `split` as a Split; accepts a Split or its name in any case."""
    if isinstance(split, cls):
      return split
    try:
      return cls[str(split).upper()]
    except KeyError:
      raise DataError(
          f"Unknown split {split!r}; expected one of TRAIN, VALID, TEST."
      ) from None


def _contiguous_range(split: Split, counts: Mapping[Split, int]) -> range:
  """Ids of `split` when ids are contiguous in the order TRAIN, VALID, TEST."""
  offset = sum(counts[s] for s in Split if s.value < split.value)
  return range(offset, offset + counts[split])


class _SpecBase:
  """Methods shared by the three specification classes."""

  @property
  def num_classes(self) -> int:
    """Total number of classes over the three splits."""
    return sum(self.classes_per_split.values())

  def get_total_images_per_class(self, class_id: int) -> int:
    """Number of images of class `class_id` (an absolute class id)."""
    try:
      return self._images_of_class()[int(class_id)]
    except KeyError:
      raise DataError(f"Class id {class_id} is not in the spec of source "
                      f"{self.name!r} ({self.path}).") from None

  def class_file(self, class_id: int) -> str:
    """Path of the records file of class `class_id`."""
    return os.path.join(self.path, self.file_pattern.format(class_id))

  def _check_file_pattern(self):
    if self.file_pattern not in _KNOWN_FILE_PATTERNS:
      raise DataError(
          f"Source {self.name!r}: file_pattern {self.file_pattern!r} must be "
          f"one of {_KNOWN_FILE_PATTERNS}.")
    if self.file_pattern not in _SUPPORTED_FILE_PATTERNS:
      raise DataError(
          f"Source {self.name!r}: sharded file_pattern {self.file_pattern!r} "
          "is not supported (upstream's reader does not read it either); "
          "expected '{}.tfrecords'.")

  def _check_images_per_class(self, images_per_class: Mapping[int, int]):
    for class_id in range(self.num_classes):
      if class_id not in images_per_class:
        raise DataError(f"Source {self.name!r}: images_per_class has no entry "
                        f"for class id {class_id}.")
      if isinstance(images_per_class[class_id], Mapping):
        raise DataError(f"Source {self.name!r}: example-level pools in "
                        "images_per_class are not supported.")

  def _common_dict(self, **fields) -> dict:
    """Upstream's JSON layout: the fields in order, then `__class__` last."""
    dct = dict(fields)
    dct["class_names"] = {str(k): _as_text(v)
                          for k, v in self.class_names.items()}
    dct["path"] = self.path
    dct["file_pattern"] = self.file_pattern
    dct["__class__"] = type(self).__name__
    return dct


def _as_text(name) -> str:
  return name.decode() if isinstance(name, bytes) else str(name)


@dataclasses.dataclass
class DatasetSpecification(_SpecBase):
  """A flat source: `classes_per_split` classes per split.

  Attributes:
    name: source name, e.g. "dtd".
    classes_per_split: {Split: number of classes}.
    images_per_class: {class id: number of images}.
    class_names: {class id: human-readable name}.
    path: directory holding the records.
    file_pattern: records file name, "{}" is replaced by the class id.
  """
  name: str
  classes_per_split: Dict[Split, int]
  images_per_class: Dict[int, int]
  class_names: Dict[int, str]
  path: str
  file_pattern: str = DEFAULT_FILE_PATTERN

  def __post_init__(self):
    self.classes_per_split = {Split.parse(k): int(v)
                              for k, v in self.classes_per_split.items()}
    self._check_file_pattern()
    self._check_images_per_class(self.images_per_class)

  def _images_of_class(self) -> Mapping[int, int]:
    return self.images_per_class

  def get_classes(self, split) -> range:
    """Absolute class ids of `split` (contiguous)."""
    return _contiguous_range(Split.parse(split), self.classes_per_split)

  def to_dict(self) -> dict:
    """The JSON-serialisable dict, in upstream's layout."""
    return self._common_dict(
        name=self.name,
        classes_per_split={s.name: self.classes_per_split[s] for s in Split},
        images_per_class={str(k): v for k, v in self.images_per_class.items()})


@dataclasses.dataclass
class BiLevelDatasetSpecification(_SpecBase):
  """A two-level source: splits hold superclasses, superclasses hold classes.

  Attributes:
    name: source name, e.g. "omniglot".
    superclasses_per_split: {Split: number of superclasses}.
    classes_per_superclass: {superclass id: number of classes}.
    images_per_class: {class id: number of images}.
    superclass_names: {superclass id: name}.
    class_names: {class id: name}.
    path, file_pattern: as in DatasetSpecification.
  """
  name: str
  superclasses_per_split: Dict[Split, int]
  classes_per_superclass: Dict[int, int]
  images_per_class: Dict[int, int]
  superclass_names: Dict[int, str]
  class_names: Dict[int, str]
  path: str
  file_pattern: str = DEFAULT_FILE_PATTERN

  def __post_init__(self):
    self.superclasses_per_split = {
        Split.parse(k): int(v) for k, v in self.superclasses_per_split.items()}
    self._check_file_pattern()
    num_superclasses = sum(self.superclasses_per_split.values())
    for superclass_id in range(num_superclasses):
      if superclass_id not in self.classes_per_superclass:
        raise DataError(f"Source {self.name!r}: classes_per_superclass has no "
                        f"entry for superclass id {superclass_id}.")
    self._check_images_per_class(self.images_per_class)

  def _images_of_class(self) -> Mapping[int, int]:
    return self.images_per_class

  @property
  def classes_per_split(self) -> Dict[Split, int]:
    """{Split: number of classes}, summed over the split's superclasses."""
    return {s: sum(self.classes_per_superclass[i]
                   for i in self.get_superclasses(s)) for s in Split}

  def get_superclasses(self, split) -> range:
    """Superclass ids of `split` (contiguous)."""
    return _contiguous_range(Split.parse(split), self.superclasses_per_split)

  def get_classes(self, split) -> range:
    """Absolute class ids of `split` (contiguous)."""
    return _contiguous_range(Split.parse(split), self.classes_per_split)

  def superclass_class_ids(self, superclass_id: int) -> range:
    """Absolute class ids of the classes of superclass `superclass_id`."""
    offset = sum(self.classes_per_superclass[i] for i in range(superclass_id))
    return range(offset, offset + self.classes_per_superclass[superclass_id])

  def to_dict(self) -> dict:
    """The JSON-serialisable dict, in upstream's layout."""
    return self._common_dict(
        name=self.name,
        superclasses_per_split={
            s.name: self.superclasses_per_split[s] for s in Split},
        classes_per_superclass={
            str(k): v for k, v in self.classes_per_superclass.items()},
        images_per_class={str(k): v for k, v in self.images_per_class.items()},
        superclass_names={
            str(k): _as_text(v) for k, v in self.superclass_names.items()})


@dataclasses.dataclass(frozen=True)
class Synset:
  """One node of a hierarchical spec's DAG (e.g. a WordNet synset)."""
  wn_id: str
  words: str
  children_ids: Tuple[str, ...]
  parents_ids: Tuple[str, ...]

  def to_dict(self) -> dict:
    return dict(wn_id=self.wn_id, words=self.words,
                children_ids=sorted(self.children_ids),
                parents_ids=sorted(self.parents_ids))


@dataclasses.dataclass
class HierarchicalDatasetSpecification(_SpecBase):
  """A source whose classes are the leaves of one DAG sub-graph per split.

  Attributes:
    name: source name, e.g. "ilsvrc_2012".
    split_subgraphs: {Split: {wn_id: Synset}}; the sub-graphs are disjoint and
      each is closed (children and parents of a node are in the same split).
    images_per_class: {Split: {wn_id: images spanned by the node}}.
    class_names: {class id: wn_id of the leaf}.
    path, file_pattern: as in DatasetSpecification.
  """
  name: str
  split_subgraphs: Dict[Split, Dict[str, Synset]]
  images_per_class: Dict[Split, Dict[str, int]]
  class_names: Dict[int, str]
  path: str
  file_pattern: str = DEFAULT_FILE_PATTERN

  def __post_init__(self):
    self.split_subgraphs = {Split.parse(k): v
                            for k, v in self.split_subgraphs.items()}
    self.images_per_class = {Split.parse(k): v
                             for k, v in self.images_per_class.items()}
    self._check_file_pattern()
    self._check_graphs()
    self.class_names_to_ids = {v: k for k, v in self.class_names.items()}
    self._leaves = {s: sorted(w for w, n in self.split_subgraphs[s].items()
                              if not n.children_ids) for s in Split}
    self._images_per_leaf_class = {}
    for split in Split:
      for wn_id in self._leaves[split]:
        if wn_id not in self.class_names_to_ids:
          raise DataError(f"Source {self.name!r}: leaf {wn_id} of split "
                          f"{split.name} has no class id in class_names.")
        if wn_id not in self.images_per_class.get(split, {}):
          raise DataError(f"Source {self.name!r}: images_per_class[{split.name}]"
                          f" has no entry for leaf {wn_id}.")
        class_id = self.class_names_to_ids[wn_id]
        self._images_per_leaf_class[class_id] = int(
            self.images_per_class[split][wn_id])
    for split in Split:
      ids = sorted(self.class_names_to_ids[w] for w in self._leaves[split])
      if ids != list(self.get_classes(split)):
        raise DataError(
            f"Source {self.name!r}: the class ids of the {split.name} leaves "
            f"are not the contiguous range {self.get_classes(split)} that "
            "upstream expects (train leaves first, then valid, then test).")

  def _check_graphs(self):
    seen = {}
    for split in Split:
      graph = self.split_subgraphs.get(split)
      if graph is None:
        raise DataError(
            f"Source {self.name!r}: split_subgraphs has no {split.name} graph.")
      for wn_id, node in graph.items():
        if wn_id in seen:
          raise DataError(f"Source {self.name!r}: node {wn_id} is in both the "
                          f"{seen[wn_id].name} and {split.name} sub-graphs.")
        seen[wn_id] = split
        for other in node.children_ids + node.parents_ids:
          if other not in graph:
            raise DataError(f"Source {self.name!r}: node {wn_id} of split "
                            f"{split.name} links to {other}, which is not in "
                            "that split's sub-graph.")

  def _images_of_class(self) -> Mapping[int, int]:
    return self._images_per_leaf_class

  @property
  def classes_per_split(self) -> Dict[Split, int]:
    """{Split: number of leaves of its sub-graph}."""
    return {s: len(self._leaves[s]) for s in Split}

  def get_classes(self, split) -> range:
    """Absolute class ids of `split` (contiguous)."""
    return _contiguous_range(Split.parse(split), self.classes_per_split)

  def leaves(self, split) -> List[str]:
    """WordNet ids of the leaves (classes) of `split`, sorted."""
    return list(self._leaves[Split.parse(split)])

  def spanning_leaves(self, split) -> Dict[str, List[str]]:
    """{wn_id: sorted wn_ids of the leaves reachable from it} for `split`."""
    graph = self.split_subgraphs[Split.parse(split)]
    memo: Dict[str, frozenset] = {}

    def below(wn_id: str) -> frozenset:
      if wn_id not in memo:
        node = graph[wn_id]
        memo[wn_id] = (frozenset([wn_id]) if not node.children_ids else
                       frozenset().union(*(below(c) for c in node.children_ids)))
      return memo[wn_id]

    return {wn_id: sorted(below(wn_id)) for wn_id in graph}

  def to_dict(self) -> dict:
    """The JSON-serialisable dict, in upstream's layout."""
    return self._common_dict(
        name=self.name,
        split_subgraphs={
            s.name: [self.split_subgraphs[s][w].to_dict()
                     for w in sorted(self.split_subgraphs[s])] for s in Split},
        images_per_class={
            s.name: dict(self.images_per_class[s]) for s in Split})


AnySpec = Union[DatasetSpecification, BiLevelDatasetSpecification,
                HierarchicalDatasetSpecification]


def _int_keys(dct: Mapping, field: str, source: str) -> Dict[int, object]:
  try:
    return {int(k): v for k, v in dct.items()}
  except (TypeError, ValueError, AttributeError):
    raise DataError(f"Source {source!r}: {field} must map integer ids to "
                    "values.") from None


def _int_values(dct: Mapping[int, object], field: str,
                source: str) -> Dict[int, int]:
  try:
    return {k: int(v) for k, v in dct.items()}
  except (TypeError, ValueError):
    raise DataError(f"Source {source!r}: {field} values must be integers.") \
        from None


def _graph_from_list(nodes: Sequence[Mapping], split: str,
                     source: str) -> Dict[str, Synset]:
  graph = {}
  for node in nodes:
    synset = Synset(wn_id=node["wn_id"], words=node["words"],
                    children_ids=tuple(node["children_ids"]),
                    parents_ids=tuple(node["parents_ids"]))
    if synset.wn_id in graph:
      raise DataError(f"Source {source!r}: node {synset.wn_id} appears twice "
                      f"in the {split} sub-graph.")
    graph[synset.wn_id] = synset
  return graph


def spec_from_dict(dct: Mapping, path: Optional[str] = None) -> AnySpec:
  """Builds a spec from the dict of a dataset_spec.json file.

  Args:
    dct: the parsed JSON object.
    path: if given, replaces the `path` stored in the file (upstream does the
      same: the stored path is where the converter wrote, not where it is now).
  Raises:
    DataError: unknown `__class__`, a missing key or an inconsistent field.
  """
  kind = dct.get("__class__")
  source = dct.get("name", "?")
  try:
    common = dict(name=dct["name"],
                  class_names=_int_keys(dct["class_names"], "class_names",
                                        source),
                  path=path if path is not None else dct["path"],
                  file_pattern=dct["file_pattern"])
    if kind == "DatasetSpecification":
      return DatasetSpecification(
          classes_per_split=dct["classes_per_split"],
          images_per_class=_int_values(
              _int_keys(dct["images_per_class"], "images_per_class", source),
              "images_per_class", source),
          **common)
    if kind == "BiLevelDatasetSpecification":
      return BiLevelDatasetSpecification(
          superclasses_per_split=dct["superclasses_per_split"],
          classes_per_superclass=_int_values(
              _int_keys(dct["classes_per_superclass"],
                        "classes_per_superclass", source),
              "classes_per_superclass", source),
          images_per_class=_int_values(
              _int_keys(dct["images_per_class"], "images_per_class", source),
              "images_per_class", source),
          superclass_names=_int_keys(dct["superclass_names"],
                                     "superclass_names", source),
          **common)
    if kind == "HierarchicalDatasetSpecification":
      return HierarchicalDatasetSpecification(
          split_subgraphs={
              split: _graph_from_list(nodes, split, source)
              for split, nodes in dct["split_subgraphs"].items()},
          images_per_class={
              split: {w: int(n) for w, n in counts.items()}
              for split, counts in dct["images_per_class"].items()},
          **common)
  except KeyError as e:
    raise DataError(f"Source {source!r} ({kind}): missing key {e}.") from None
  raise DataError(
      f"Unknown spec __class__ {kind!r}; expected DatasetSpecification, "
      "BiLevelDatasetSpecification or HierarchicalDatasetSpecification.")


def load_dataset_spec(records_root_dir: str, source: str) -> AnySpec:
  """Reads `<records_root_dir>/<source>/dataset_spec.json`.

  The returned spec's `path` is the source's directory on this machine.

  Raises:
    DataError: the root or source directory does not exist (the message lists
      the sources found) or is a file, the JSON file is missing, is not valid
      JSON, or does not describe a valid spec.
  """
  if not os.path.exists(records_root_dir):
    raise DataError(f"records_root_dir {records_root_dir!r} does not exist: "
                    "give the folder that holds one sub-folder per source.")
  if not os.path.isdir(records_root_dir):
    raise DataError(f"records_root_dir {records_root_dir!r} is a file, not a "
                    "folder: give the folder that holds one sub-folder per "
                    "source.")
  source_dir = os.path.join(records_root_dir, source)
  if os.path.exists(source_dir) and not os.path.isdir(source_dir):
    raise DataError(f"Source {source!r}: {source_dir!r} is a file, not the "
                    "folder of a converted source.")
  if not os.path.isdir(source_dir):
    available = sorted(
        d for d in os.listdir(records_root_dir) if not d.startswith(".") and
        os.path.isfile(os.path.join(records_root_dir, d, SPEC_FILENAME)))
    raise DataError(f"Unknown source {source!r}: no directory {source_dir!r}. "
                    f"Sources found under {records_root_dir!r}: {available}.")
  json_path = os.path.join(source_dir, SPEC_FILENAME)
  if not os.path.isfile(json_path):
    raise DataError(f"Missing dataset spec {json_path!r} for source "
                    f"{source!r}: convert the source again.")
  redo = "fix it or convert the source again"
  try:
    with open(json_path, encoding="utf-8") as f:
      dct = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"Malformed dataset spec {json_path!r}: {e}; {redo}.") \
        from None
  if not isinstance(dct, dict):
    raise DataError(f"Malformed dataset spec {json_path!r}: expected a JSON "
                    f"object; {redo}.")
  try:
    return spec_from_dict(dct, path=source_dir)
  except (DataError, TypeError, ValueError, AttributeError) as e:
    # A value of the wrong JSON type fails inside the spec classes.
    raise DataError(f"Invalid dataset spec {json_path!r}: "
                    f"{str(e).rstrip('.')}; {redo}.") from None


def to_json(spec: AnySpec) -> str:
  """The spec as JSON text, formatted as upstream's converter writes it."""
  return json.dumps(spec.to_dict(), indent=2)


def write_dataset_spec(spec: AnySpec, path: str) -> str:
  """Writes `spec` as JSON; returns the file written.

  Args:
    spec: any of the three specification classes.
    path: the .json file to write, or an existing directory (the file is then
      `<path>/dataset_spec.json`).
  """
  if os.path.isdir(path):
    path = os.path.join(path, SPEC_FILENAME)
  with open(path, "w", encoding="utf-8") as f:
    f.write(to_json(spec) + "\n")
  return path
