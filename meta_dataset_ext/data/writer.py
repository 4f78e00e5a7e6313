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
    `layout.small_splits()` says which splits no episode can be drawn from.
assign_splits(items, fractions=(0.7, 0.15, 0.15), seed=0, counts=None)
    -> {Split: [items]}
    A seeded random split of `items` (by fractions, or exact counts), each
    split keeping the input order.
write_source(records_root_dir, layout, examples, overwrite=False,
             max_open_files=512, extra_files=None) -> spec
    Writes `examples` (an iterable of (class_id, encoded image bytes)) and the
    spec atomically: everything goes to a hidden staging directory that is
    renamed into place only when the whole source has been written.
check_source_name(name) -> name     a single folder name, else DataError
make_records_root(records_root_dir)  creates it; DataError if it is a file
warn_small_splits(layout, advice)    one warning line for small_splits()
work_dir(records_root_dir, name, kind)
    A context manager: a hidden scratch folder of the source in the records
    root, removed on exit.
remove_stale_work_dirs(records_root_dir, name)
    Removes the hidden folders that a killed conversion of the source left.

Safety: a source name is one folder name, and nothing outside
`<records_root_dir>/` is ever written or removed. The hidden folders of a
conversion are named `.<name>.<kind>-<host>-<pid>-<random>`; the next
conversion of the source on that host removes those whose process is gone,
never those of a conversion still running (an `.old` folder holding the
previous source is put back first if the source itself is missing). Folders
and files are created with the process's umask (0755 and 0644 under umask
022), as any other file.
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
import re
import secrets
import shutil
import socket
from typing import (Dict, Iterable, Iterator, List, Mapping, Optional,
                    Sequence, Tuple, TypeVar)

import numpy as np
from PIL import Image
import tensorflow as tf

from meta_dataset_ext import errors
from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data.spec import DataError, Split

MIN_IMAGES_PER_CLASS = 2  # Upstream's samplers need a support and a query.
MIN_WAYS = 5  # The smallest way of upstream's episodes (min_ways).
WORK_DIR_KINDS = ("tmp", "old", "scratch")
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


def _split_sizes(n: int, fractions: Sequence[float]) -> List[int]:
  """TRAIN, VALID, TEST sizes of `n` items split by `fractions`."""
  if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(
      sum(fractions), 1.0):
    raise ValueError(f"Split fractions {tuple(fractions)} must be three "
                     "non-negative numbers summing to 1.")
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
  return sizes


def assign_splits(items: Sequence[T],
                  fractions: Sequence[float] = (0.7, 0.15, 0.15),
                  seed: int = 0,
                  counts: Optional[Sequence[int]] = None
                  ) -> Dict[Split, List[T]]:
  """Randomly assigns `items` to TRAIN / VALID / TEST, seeded.

  With `counts` (TRAIN, VALID, TEST), exactly that many items go to each
  split. Otherwise VALID and TEST get round(fraction * n) items (at least one
  each when their fraction is positive), TRAIN the rest. Every split keeps
  the input order.

  Raises:
    ValueError: bad fractions or counts, or too few items to give every split
      with a positive fraction at least one.
  """
  n = len(items)
  if counts is not None:
    if len(counts) != 3 or min(counts) < 0 or sum(counts) != n:
      raise ValueError(f"split counts {tuple(counts)} must be three "
                       f"non-negative numbers summing to the {n} items.")
    sizes = list(counts)
  else:
    sizes = _split_sizes(n, fractions)
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

  def small_splits(self, min_ways: int = MIN_WAYS) -> List[str]:
    """The non-empty splits no episode of `min_ways` classes can come from.

    A flat split needs `min_ways` classes, a bi-level one (whose episodes take
    their classes from one superclass) superclasses of `min_ways` classes.
    Returns descriptions such as "VALID has 2 classes".
    """
    problems = []
    for split in Split:
      if self.superclasses is None:
        small = [("", self.classes_per_split[split])]
      else:
        small = [(f" superclass {g!r}", n) for g, n in self.superclasses[split]]
      problems += [f"{split.name}{group} has {n} classes" for group, n in small
                   if 0 < n < min_ways]
    return problems

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


def check_source_name(name: str) -> str:
  """Returns `name` if it is one folder name (a source's, in the records root).

  Raises:
    DataError: `name` is empty, starts with '.' (hidden: '.', '..' and the
      conversions' own work folders) or holds a path separator.
  """
  separators = [os.sep] + ([os.altsep] if os.altsep else [])
  if (not isinstance(name, str) or not name or name.startswith(".") or
      any(sep in name for sep in separators) or "\0" in name):
    raise DataError(f"Source name {name!r} must be one folder name: not "
                    "empty, not starting with '.', without '/'. The source is "
                    "written to <records_root_dir>/<name>.")
  return name


def make_records_root(records_root_dir: str) -> None:
  """Creates the records root if needed; DataError if it is a file."""
  if os.path.exists(records_root_dir) and not os.path.isdir(records_root_dir):
    raise DataError(f"records_root_dir {records_root_dir!r} is a file, not a "
                    "folder: give the folder that holds (or will hold) one "
                    "sub-folder per source.")
  os.makedirs(records_root_dir, exist_ok=True)


def warn_small_splits(layout: SourceLayout, advice: str) -> None:
  """One warning line if some split of `layout` can draw no episodes."""
  small = layout.small_splits()
  if small:
    errors.warn(f"source {layout.name!r}: {'; '.join(small)}, fewer than the "
                f"{MIN_WAYS} an episode needs, so no episodes can be drawn "
                f"from there: {advice}.")


def _work_dir_pattern(name: str) -> "re.Pattern":
  kinds = "|".join(WORK_DIR_KINDS)
  return re.compile(rf"^\.{re.escape(name)}\.({kinds})-(.+)-(\d+)-[0-9a-f]+$")


def _process_gone(host: str, pid: int) -> bool:
  """Whether process `pid` of `host` has ended (False when it cannot tell)."""
  if host != socket.gethostname() or pid == os.getpid():
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except PermissionError:  # Alive, another user's.
    return False
  return False


def remove_stale_work_dirs(records_root_dir: str, name: str) -> None:
  """Removes the work folders of source `name` whose conversion has ended.

  A conversion killed midway (kill -9, a crash, a power cut) leaves its
  hidden folders behind; only those of processes of this host that are gone
  are removed. If the source folder is missing and such an `.old` folder
  holds it (a kill between the two renames of a replacement), it is put
  back first.
  """
  pattern = _work_dir_pattern(check_source_name(name))
  final_dir = os.path.join(records_root_dir, name)
  for entry in sorted(os.listdir(records_root_dir)):
    match = pattern.match(entry)
    if not match or not _process_gone(match.group(2), int(match.group(3))):
      continue
    path = os.path.join(records_root_dir, entry)
    kept = os.path.join(path, name)
    if (match.group(1) == "old" and os.path.isdir(kept) and
        not os.path.lexists(final_dir)):
      os.rename(kept, final_dir)
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def work_dir(records_root_dir: str, name: str, kind: str) -> Iterator[str]:
  """Yields a new hidden folder of source `name` in the records root.

  The folder, `.<name>.<kind>-<host>-<pid>-<random>` (kind: one of
  WORK_DIR_KINDS), is removed on exit if it is still there.
  """
  assert kind in WORK_DIR_KINDS, kind
  path = os.path.join(
      records_root_dir, f".{check_source_name(name)}.{kind}-"
      f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")
  os.mkdir(path)  # Mode 0777 less the umask, as the files written in it.
  try:
    yield path
  finally:
    if os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _staging_dir(records_root_dir: str, name: str,
                 overwrite: bool) -> Iterator[str]:
  """Yields a staging folder that replaces `<records_root_dir>/<name>` on
  success.

  On any exception the staging folder is removed and the source is left as
  it was.
  """
  final_dir = os.path.join(records_root_dir, check_source_name(name))
  make_records_root(records_root_dir)
  remove_stale_work_dirs(records_root_dir, name)

  def check_absent():
    if os.path.lexists(final_dir) and not overwrite:
      raise DataError(f"Output directory {final_dir!r} already exists; remove "
                      "it, or overwrite it (--overwrite).")

  check_absent()
  with work_dir(records_root_dir, name, "tmp") as staging:
    yield staging
    check_absent()  # Another conversion may have finished meanwhile.
    if not os.path.lexists(final_dir):
      os.rename(staging, final_dir)
      return
    with work_dir(records_root_dir, name, "old") as old:
      os.rename(final_dir, os.path.join(old, name))
      try:
        os.rename(staging, final_dir)
      except OSError:
        os.rename(os.path.join(old, name), final_dir)  # Put the old one back.
        raise


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
    DataError: the source name is not one folder name, the records root is a
      file, the source exists and `overwrite` is False, a class id is out of
      range, or a class has fewer than 2 images (named in the message).
      Nothing is left on disk in that case.
  """
  final_dir = os.path.join(records_root_dir, layout.name)
  num_classes = len(layout.class_names)
  with _staging_dir(records_root_dir, layout.name, overwrite) as staging:
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
