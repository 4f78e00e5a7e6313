"""Writing a converted source: one TFRecord file per class, dataset_spec.json.

This is the write side shared by every converter (image folders, TFDS builders,
the glyphs source). It produces the layout upstream Meta-Dataset's reader
accepts:

    <records_root_dir>/<name>/dataset_spec.json
    <records_root_dir>/<name>/<class_id>.tfrecords   one file per class

Each record is a `tf.train.Example` with `image` (encoded PNG or JPEG bytes)
and `label` (int64, the absolute class id). Class ids are contiguous per split:
TRAIN classes first, then VALID, then TEST; in a bi-level source the classes of
a superclass are contiguous and superclasses follow the same split order.

Public API
----------
SourceLayout.flat(name, classes)          classes: {Split: [class name, ...]}
SourceLayout.bilevel(name, superclasses)  superclasses:
                                          {Split: [(superclass, [class, ...])]}
    Assigns the class ids; `layout.class_names` lists names in id order.
assign_splits(items, fractions=(0.7, 0.15, 0.15), seed=0) -> {Split: [items]}
    A seeded random split of `items`, each split keeping the input order.
write_source(records_root_dir, layout, examples, overwrite=False,
             max_open_files=512, extra_files=None) -> spec
    Writes `examples` (an iterable of (class_id, encoded image bytes)) and the
    spec atomically: everything goes to a hidden staging directory that is
    renamed into place only when the whole source has been written.
ClassRecordsWriter(directory, max_open_files=512)
    Appends examples to per-class files in any class order with a bounded
    number of open files (what `write_source` uses).
make_example(image_bytes, label) -> bytes      a serialized tf.train.Example
encode_png(array) -> bytes                      uint8 [H, W] or [H, W, C]
checked_image_bytes(data, origin) -> bytes      validates encoded image bytes

Errors name the class or file at fault (`DataError`, a ValueError).
"""

import contextlib
import dataclasses
import io
import os
import shutil
import tempfile
from typing import (Dict, Iterable, Iterator, List, Mapping, Optional,
                    Sequence, Tuple, TypeVar)

import numpy as np
from PIL import Image
import tensorflow as tf

from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data.spec import DataError, Split

MIN_IMAGES_PER_CLASS = 2  # Upstream's samplers need a support and a query.
_KEPT_FORMATS = ("PNG", "JPEG")  # Stored as they are; others become PNG.

T = TypeVar("T")


def make_example(image_bytes: bytes, label: int) -> bytes:
  """Serializes one record: `image` (encoded bytes) and `label` (int64)."""
  feature = {
      "image": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[image_bytes])),
      "label": tf.train.Feature(int64_list=tf.train.Int64List(
          value=[int(label)])),
  }
  return tf.train.Example(features=tf.train.Features(
      feature=feature)).SerializeToString()


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 image [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]."""
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f"encode_png expects uint8 pixels, got {array.dtype}.")
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def checked_image_bytes(data: bytes, origin: str) -> bytes:
  """Returns `data` if it is a decodable PNG or JPEG, else a PNG re-encoding.

  Args:
    data: encoded image bytes in any format Pillow reads.
    origin: the file or example the bytes come from, for error messages.
  Raises:
    DataError: the bytes do not decode as an image.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.format in _KEPT_FORMATS and image.mode in ("L", "RGB", "RGBA",
                                                         "LA", "P"):
        return data
      converted = image.convert("RGBA" if "A" in image.getbands() else "RGB")
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise DataError(f"Cannot decode image {origin}: {e}") from None
  buffer = io.BytesIO()
  converted.save(buffer, format="PNG")
  return buffer.getvalue()


def assign_splits(items: Sequence[T],
                  fractions: Sequence[float] = (0.7, 0.15, 0.15),
                  seed: int = 0) -> Dict[Split, List[T]]:
  """Randomly assigns `items` to TRAIN / VALID / TEST, seeded.

  VALID and TEST get round(fraction * n) items (at least one each when their
  fraction is positive), TRAIN the rest; every split keeps the input order.

  Raises:
    ValueError: bad fractions, or too few items to give every split with a
      positive fraction at least one.
  """
  if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(
      sum(fractions), 1.0):
    raise ValueError(f"Split fractions {tuple(fractions)} must be three "
                     "non-negative numbers summing to 1.")
  n = len(items)
  needed = sum(1 for f in fractions if f > 0)
  if n < needed:
    raise ValueError(f"Cannot split {n} items into {needed} non-empty splits "
                     f"with fractions {tuple(fractions)}.")
  sizes = [int(round(f * n)) if f == 0 else max(1, int(round(f * n)))
           for f in fractions[1:]]
  sizes.insert(0, n - sum(sizes))
  if fractions[0] > 0 and sizes[0] < 1:
    raise ValueError(f"Fractions {tuple(fractions)} leave no TRAIN item out "
                     f"of {n}.")
  order = np.random.default_rng(seed).permutation(n)
  splits, start = {}, 0
  for split, size in zip(Split, sizes):
    chosen = sorted(order[start:start + size])
    splits[split] = [items[i] for i in chosen]
    start += size
  return splits


@dataclasses.dataclass(frozen=True)
class SourceLayout:
  """The classes of a source, their splits and superclasses: the class ids.

  Build one with `SourceLayout.flat` or `SourceLayout.bilevel`.

  Attributes:
    name: the source name (its directory under records_root_dir).
    class_names: class names in class-id order.
    classes_per_split: {Split: number of classes}.
    superclasses: for bi-level sources, {Split: [(superclass name, number of
      classes)]} in superclass-id order; None for flat sources.
  """
  name: str
  class_names: Tuple[str, ...]
  classes_per_split: Mapping[Split, int]
  superclasses: Optional[Mapping[Split, Tuple[Tuple[str, int], ...]]] = None

  @classmethod
  def flat(cls, name: str,
           classes: Mapping[Split, Sequence[str]]) -> "SourceLayout":
    """A flat source; `classes` maps each split to its class names."""
    classes = {Split.parse(k): list(v) for k, v in classes.items()}
    names = tuple(c for s in Split for c in classes.get(s, []))
    _check_unique(names, f"class names of source {name!r}")
    return cls(name, names, {s: len(classes.get(s, [])) for s in Split})

  @classmethod
  def bilevel(cls, name: str,
              superclasses: Mapping[Split, Sequence[Tuple[str, Sequence[str]]]]
              ) -> "SourceLayout":
    """A bi-level source; each split maps to [(superclass, [class names])]."""
    superclasses = {Split.parse(k): list(v) for k, v in superclasses.items()}
    groups = [g for s in Split for g in superclasses.get(s, [])]
    _check_unique([g for g, _ in groups], f"superclasses of source {name!r}")
    for group, members in groups:
      if not members:
        raise DataError(f"Superclass {group!r} of source {name!r} has no "
                        "classes.")
    names = tuple(c for _, members in groups for c in members)
    _check_unique(names, f"class names of source {name!r}")
    return cls(
        name, names,
        {s: sum(len(m) for _, m in superclasses.get(s, [])) for s in Split},
        {s: tuple((g, len(m)) for g, m in superclasses.get(s, []))
         for s in Split})

  def make_spec(self, path: str, images_per_class: Mapping[int, int]
                ) -> spec_lib.AnySpec:
    """The dataset specification of this layout, records under `path`."""
    class_names = dict(enumerate(self.class_names))
    images_per_class = dict(images_per_class)
    if self.superclasses is None:
      return spec_lib.DatasetSpecification(
          name=self.name, classes_per_split=dict(self.classes_per_split),
          images_per_class=images_per_class, class_names=class_names,
          path=path)
    groups = [g for s in Split for g in self.superclasses[s]]
    return spec_lib.BiLevelDatasetSpecification(
        name=self.name,
        superclasses_per_split={s: len(self.superclasses[s]) for s in Split},
        classes_per_superclass={i: n for i, (_, n) in enumerate(groups)},
        images_per_class=images_per_class,
        superclass_names={i: g for i, (g, _) in enumerate(groups)},
        class_names=class_names, path=path)


def _check_unique(names: Sequence[str], what: str):
  seen = set()
  for name in names:
    if name in seen:
      raise DataError(f"Duplicate name {name!r} among the {what}.")
    seen.add(name)


class ClassRecordsWriter:
  """Writes records to `<class_id>.tfrecords` files, classes in any order.

  At most `max_open_files` files are open at once. When a class's file had to
  be closed and the class gets more examples, they go to a part file that is
  appended to the class's file on `close()` (uncompressed TFRecord files
  concatenate into a valid TFRecord file).

  Attributes:
    counts: {class_id: examples written so far}.
  """

  def __init__(self, directory: str, max_open_files: int = 512):
    self._directory = directory
    self._max_open = max(1, max_open_files)
    self._open: Dict[int, tf.io.TFRecordWriter] = {}  # Oldest use first.
    self._parts: Dict[int, List[str]] = {}
    self.counts: Dict[int, int] = {}

  def _path(self, class_id: int) -> str:
    return os.path.join(self._directory,
                        spec_lib.DEFAULT_FILE_PATTERN.format(class_id))

  def _writer(self, class_id: int) -> tf.io.TFRecordWriter:
    writer = self._open.pop(class_id, None)
    if writer is None:
      if len(self._open) >= self._max_open:
        self._open.pop(next(iter(self._open))).close()
      path = self._path(class_id)
      if class_id in self.counts:  # Its file was closed: go on in a part.
        parts = self._parts.setdefault(class_id, [])
        path = f"{path}.part{len(parts)}"
        parts.append(path)
      writer = tf.io.TFRecordWriter(path)
    self._open[class_id] = writer  # Re-insert as the most recently used.
    return writer

  def write(self, class_id: int, image_bytes: bytes):
    """Appends one example of class `class_id`."""
    self._writer(class_id).write(make_example(image_bytes, class_id))
    self.counts[class_id] = self.counts.get(class_id, 0) + 1

  def close(self) -> Dict[int, int]:
    """Closes all files, merges part files; returns {class_id: count}."""
    for writer in self._open.values():
      writer.close()
    self._open.clear()
    for class_id, parts in self._parts.items():
      with open(self._path(class_id), "ab") as out:
        for part in parts:
          with open(part, "rb") as f:
            shutil.copyfileobj(f, out)
          os.remove(part)
    self._parts.clear()
    return dict(self.counts)


@contextlib.contextmanager
def _staging_dir(final_dir: str, overwrite: bool) -> Iterator[str]:
  """Yields a hidden sibling directory that replaces `final_dir` on success.

  On any exception the staging directory is removed and `final_dir` is left
  as it was.
  """
  if os.path.exists(final_dir) and not overwrite:
    raise DataError(f"Output directory {final_dir!r} already exists; remove "
                    "it or ask to overwrite.")
  parent, base = os.path.split(final_dir)
  os.makedirs(parent or ".", exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{base}.tmp-", dir=parent or ".")
  try:
    yield staging
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  old = None
  try:
    if os.path.exists(final_dir):
      old = tempfile.mkdtemp(prefix=f".{base}.old-", dir=parent or ".")
      os.rename(final_dir, os.path.join(old, base))
    os.rename(staging, final_dir)
  except OSError:
    if old is not None and not os.path.exists(final_dir):
      os.rename(os.path.join(old, base), final_dir)  # Put the old one back.
    shutil.rmtree(staging, ignore_errors=True)
    raise
  finally:
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)


def write_source(records_root_dir: str, layout: SourceLayout,
                 examples: Iterable[Tuple[int, bytes]],
                 overwrite: bool = False,
                 max_open_files: int = 512,
                 extra_files: Optional[Mapping[str, str]] = None
                 ) -> spec_lib.AnySpec:
  """Writes a whole source: its class records and dataset_spec.json.

  Args:
    records_root_dir: the records root; the source goes to
      `<records_root_dir>/<layout.name>`.
    layout: the classes and their ids.
    examples: (class_id, encoded PNG/JPEG bytes) pairs, classes in any order.
    overwrite: replace an existing source directory (only once the new one is
      complete).
    max_open_files: bound on simultaneously open class files.
    extra_files: {file name: text} written next to the spec (e.g. the settings
      of a generated source); upstream's reader ignores them.
  Returns:
    The spec written (its `path` is the final source directory).
  Raises:
    DataError: the source exists and `overwrite` is False, a class id is out
      of range, or a class has fewer than 2 images (named in the message).
      Nothing is left on disk in that case.
  """
  final_dir = os.path.join(records_root_dir, layout.name)
  num_classes = len(layout.class_names)
  with _staging_dir(final_dir, overwrite) as staging:
    writer = ClassRecordsWriter(staging, max_open_files)
    try:
      for class_id, image_bytes in examples:
        if not 0 <= class_id < num_classes:
          raise DataError(f"Source {layout.name!r}: class id {class_id} is "
                          f"outside 0..{num_classes - 1}.")
        writer.write(class_id, image_bytes)
    finally:
      counts = writer.close()
    for class_id, class_name in enumerate(layout.class_names):
      count = counts.get(class_id, 0)
      if count < MIN_IMAGES_PER_CLASS:
        raise DataError(
            f"Source {layout.name!r}: class {class_name!r} (id {class_id}) "
            f"has {count} image(s); at least {MIN_IMAGES_PER_CLASS} are "
            "needed.")
    spec = layout.make_spec(final_dir, counts)
    for file_name, text in (extra_files or {}).items():
      with open(os.path.join(staging, file_name), "w", encoding="utf-8") as f:
        f.write(text)
    spec_lib.write_dataset_spec(spec, staging)
  return spec
