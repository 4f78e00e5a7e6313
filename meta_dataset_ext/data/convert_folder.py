"""Converts a folder tree of images into a Meta-Dataset source.

Two layouts:

    flat:     <source_dir>/<class>/<image>
              -> DatasetSpecification
    bilevel:  <source_dir>/<superclass>/<class>/<image>
              -> BiLevelDatasetSpecification
              (e.g. Omniglot's <alphabet>/<character>/*.png)

`auto` (the default) picks flat when the top-level folders hold image files and
bilevel when they hold folders. Images are .jpg/.jpeg/.png (stored as they
are) or .bmp/.gif/.tif/.tiff/.webp (stored as PNG). Hidden files (".*") are
ignored; any other file, a file where folders are expected, or an image that
does not decode is an error naming it, unless skipping is asked for. Bi-level
class names are "<superclass>-<class>", as upstream names Omniglot's.

Classes (flat) or superclasses (bilevel) are split into TRAIN / VALID / TEST
randomly (seeded) by fractions or by exact counts, or by explicit lists, in
the format of upstream's `<name>_splits.json`: {"train": [...], "valid":
[...], "test": [...]}. With fractions or counts, class ids follow sorted names
within a split; with lists, the order of the lists. A split that gets fewer
classes than an episode needs (5, upstream's smallest way; for a bi-level
source, a superclass of fewer) draws no episodes: a warning line says so.
E.g. the default 0.7/0.15/0.15 split of 12 classes gives VALID and TEST 2
each (warned); --split_counts=7,5,0 gives TRAIN and VALID enough and no TEST.

Command line:

    python -m meta_dataset_ext.data.convert_folder --source_dir=DIR \\
        --records_root_dir=R --name=NAME [--layout=auto|flat|bilevel] \\
        [--split_fractions=0.7,0.15,0.15 | --split_counts=20,5,5] [--seed=0] \\
        [--splits_file=splits.json | --train=a,b --valid=c --test=d] \\
        [--skip_bad_files] [--overwrite]

writes `R/NAME/dataset_spec.json` and `R/NAME/<class_id>.tfrecords`, atomically
(`--records_root=R`, upstream's spelling, works too). NAME is one folder name.
Errors are one line on stderr (exit status 2; --verbose for the traceback).

Python: `convert_folder(source_dir, records_root_dir, name, ...) -> spec`.
"""

import json
import os
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from absl import flags
from absl import logging

from meta_dataset_ext import cli
from meta_dataset_ext import errors
from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data import writer
from meta_dataset_ext.data.spec import DataError, Split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff",
                    ".webp")
LAYOUTS = ("auto", "flat", "bilevel")


def _entries(directory: str) -> List[str]:
  """Sorted non-hidden entries of a directory."""
  return sorted(e for e in os.listdir(directory) if not e.startswith("."))


def _is_image_name(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _class_files(class_dir: str, skip_bad_files: bool) -> List[str]:
  """Image files of one class folder."""
  files = []
  for entry in _entries(class_dir):
    path = os.path.join(class_dir, entry)
    if os.path.isfile(path) and _is_image_name(entry):
      files.append(path)
    elif skip_bad_files:
      logging.warning("Skipping %s: not an image file.", path)
    else:
      raise DataError(f"{path!r} is not an image file (expected one of "
                      f"{', '.join(IMAGE_EXTENSIONS)}); remove it or skip bad "
                      "files.")
  if len(files) < writer.MIN_IMAGES_PER_CLASS:
    raise DataError(f"Class folder {class_dir!r} has {len(files)} image(s); "
                    f"at least {writer.MIN_IMAGES_PER_CLASS} are needed.")
  return files


def _folders(directory: str, skip_bad_files: bool) -> List[str]:
  """Sorted sub-folder names of a (super)class level; files there are errors."""
  folders = []
  for entry in _entries(directory):
    path = os.path.join(directory, entry)
    if os.path.isdir(path):
      folders.append(entry)
    elif skip_bad_files:
      logging.warning("Skipping %s: a file where folders are expected.", path)
    else:
      raise DataError(f"{path!r} is a file; {directory!r} must hold only "
                      "folders at this level.")
  if not folders:
    raise DataError(f"Folder {directory!r} has no sub-folders.")
  return folders


def _detect_layout(source_dir: str, skip_bad_files: bool) -> str:
  """"flat" if the top folders hold images, "bilevel" if they hold folders."""
  kinds = set()
  for top in _folders(source_dir, skip_bad_files):
    path = os.path.join(source_dir, top)
    kinds.update("bilevel" if os.path.isdir(os.path.join(path, e)) else "flat"
                 for e in _entries(path))
  if len(kinds) != 1:
    raise DataError(f"Cannot tell the layout of {source_dir!r}: its folders "
                    "hold " + ("both images and folders" if kinds else
                               "nothing") + "; pass the layout explicitly.")
  return kinds.pop()


def _split_groups(names: Sequence[str],
                  splits: Optional[Mapping[str, Sequence[str]]],
                  fractions: Sequence[float], seed: int,
                  what: str,
                  counts: Optional[Sequence[int]] = None
                  ) -> Dict[Split, List[str]]:
  """Assigns `names` to splits, randomly or from explicit lists."""
  if splits is None:
    try:
      return writer.assign_splits(list(names), fractions, seed, counts)
    except ValueError as e:
      raise DataError(f"Cannot split the {len(names)} {what}: {e}") from None
  assigned = {}
  for key, members in splits.items():
    split = Split.parse("valid" if key.lower() == "validation" else key)
    assigned[split] = list(members)
  listed = [n for members in assigned.values() for n in members]
  unknown = sorted(set(listed) - set(names))
  missing = sorted(set(names) - set(listed))
  repeated = sorted({n for n in listed if listed.count(n) > 1})
  for problem, items in (("unknown", unknown), ("unassigned", missing),
                         ("listed more than once", repeated)):
    if items:
      raise DataError(f"Explicit splits: {what} {problem}: {items}.")
  return {s: assigned.get(s, []) for s in Split}


def convert_folder(source_dir: str, records_root_dir: str, name: str,
                   layout: str = "auto",
                   split_fractions: Sequence[float] = (0.7, 0.15, 0.15),
                   seed: int = 0,
                   splits: Optional[Mapping[str, Sequence[str]]] = None,
                   skip_bad_files: bool = False,
                   overwrite: bool = False,
                   split_counts: Optional[Sequence[int]] = None
                   ) -> spec_lib.AnySpec:
  """Converts an image-folder tree into `<records_root_dir>/<name>`.

  Args:
    source_dir: the tree's root.
    records_root_dir: the records root.
    name: the source name (one folder name).
    layout: "flat", "bilevel" or "auto".
    split_fractions: TRAIN / VALID / TEST fractions of the classes (flat) or
      superclasses (bilevel), used when `splits` and `split_counts` are None.
    seed: seed of the random split.
    splits: explicit {"train": [...], "valid": [...], "test": [...]} lists of
      class (flat) or superclass (bilevel) folder names.
    skip_bad_files: skip (with a warning) non-image files and images that do
      not decode instead of failing.
    overwrite: replace an existing source.
    split_counts: TRAIN / VALID / TEST numbers of classes (flat) or
      superclasses (bilevel) drawn at random, instead of fractions.
  Returns:
    The spec written. A split too small for episodes is warned about.
  Raises:
    DataError: naming the folder, file or class at fault.
  """
  writer.check_source_name(name)
  if not os.path.isdir(source_dir):
    problem = "is a file" if os.path.exists(source_dir) else "does not exist"
    raise DataError(f"Source folder {source_dir!r} {problem}: give the folder "
                    "that holds one folder per class (or superclass).")
  if layout not in LAYOUTS:
    raise DataError(f"Unknown layout {layout!r}; expected one of {LAYOUTS}.")
  if layout == "auto":
    layout = _detect_layout(source_dir, skip_bad_files)
  tops = _folders(source_dir, skip_bad_files)
  if layout == "flat":
    by_split = _split_groups(tops, splits, split_fractions, seed, "classes",
                             split_counts)
    source_layout = writer.SourceLayout.flat(name, by_split)
    class_dirs = [os.path.join(source_dir, c)
                  for s in Split for c in by_split[s]]
  else:
    by_split = _split_groups(tops, splits, split_fractions, seed,
                             "superclasses", split_counts)
    members = {g: _folders(os.path.join(source_dir, g), skip_bad_files)
               for g in tops}
    source_layout = writer.SourceLayout.bilevel(name, {
        s: [(g, [f"{g}-{c}" for c in members[g]]) for g in by_split[s]]
        for s in Split})
    class_dirs = [os.path.join(source_dir, g, c) for s in Split
                  for g in by_split[s] for c in members[g]]
  writer.warn_small_splits(source_layout, "give them more with "
                           "--split_counts (or --train/--valid/--test lists)")
  class_files = [_class_files(d, skip_bad_files) for d in class_dirs]
  return writer.write_source(records_root_dir, source_layout,
                             _examples(class_files, skip_bad_files), overwrite)


def _examples(class_files: Sequence[Sequence[str]],
              skip_bad_files: bool) -> Iterator[Tuple[int, bytes]]:
  """(class_id, checked image bytes) of every file, class by class."""
  for class_id, files in enumerate(class_files):
    for path in files:
      with open(path, "rb") as f:
        data = f.read()
      try:
        yield class_id, writer.checked_image_bytes(data, repr(path))
      except DataError as e:
        if not skip_bad_files:
          raise
        logging.warning("Skipping: %s", e)


FLAGS = flags.FLAGS


def define_split_list_flag(name: str, default: Optional[List[str]], parse,
                           help_text: str):
  """A TRAIN,VALID,TEST list flag; each value must parse with `parse`
  (int or float). Also used by convert_tfds."""

  def valid(values) -> bool:
    try:
      return values is None or (len(values) == 3 and
                                min(parse(v) for v in values) >= 0)
    except ValueError:
      return False

  flags.DEFINE_list(name, default, help_text)
  flags.register_validator(
      name, valid, message="expected three non-negative "
      f"{'integers' if parse is int else 'numbers'}: TRAIN,VALID,TEST")


def _define_flags():
  flags.DEFINE_string("source_dir", None, "Root of the image-folder tree.")
  flags.DEFINE_string("records_root_dir", None, "Records root to write into.")
  flags.DEFINE_alias("records_root", "records_root_dir")
  flags.DEFINE_string("name", None, "Name of the new source (one folder name).")
  flags.DEFINE_enum("layout", "auto", LAYOUTS,
                    "flat: root/class/img; bilevel: root/superclass/class/img.")
  define_split_list_flag("split_fractions", ["0.7", "0.15", "0.15"], float,
                         "TRAIN,VALID,TEST fractions of the (super)classes.")
  define_split_list_flag("split_counts", None, int,
                         "TRAIN,VALID,TEST numbers of (super)classes, e.g. "
                         "8,2,2 (instead of --split_fractions; they must add "
                         "up to the number of (super)classes).")
  flags.DEFINE_integer("seed", 0, "Seed of the random split.")
  flags.DEFINE_string("splits_file", None,
                      'JSON {"train": [...], "valid": [...], "test": [...]} '
                      "of (super)class folder names.")
  flags.DEFINE_list("train", None, "Explicit TRAIN (super)classes.")
  flags.DEFINE_list("valid", None, "Explicit VALID (super)classes.")
  flags.DEFINE_list("test", None, "Explicit TEST (super)classes.")
  flags.DEFINE_bool("skip_bad_files", False,
                    "Skip non-image files and undecodable images.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing source.")
  for name in ("source_dir", "records_root_dir", "name"):
    flags.mark_flag_as_required(name)


def _splits_from_flags() -> Optional[Dict[str, List[str]]]:
  lists = {k: getattr(FLAGS, k) for k in ("train", "valid", "test")
           if getattr(FLAGS, k) is not None}
  given = [f"--{k}" for k in ("splits_file", "split_counts", "split_fractions")
           if FLAGS[k].present] + (["--train/--valid/--test"] if lists else [])
  if len(given) > 1:
    raise errors.ConfigError(f"{', '.join(given)}: each of them chooses the "
                             "splits; give only one.")
  if not FLAGS.splits_file:
    return lists or None
  with open(FLAGS.splits_file, encoding="utf-8") as f:
    try:
      splits = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise DataError(f"--splits_file={FLAGS.splits_file}: not JSON ({e}).") \
          from None
  if not isinstance(splits, dict) or not all(
      isinstance(v, list) for v in splits.values()):
    raise DataError(f"--splits_file={FLAGS.splits_file}: expected "
                    '{"train": [...], "valid": [...], "test": [...]}.')
  return splits


def main(argv):
  del argv  # Unused.
  splits = _splits_from_flags()
  spec = convert_folder(
      FLAGS.source_dir, FLAGS.records_root_dir, FLAGS.name,
      layout=FLAGS.layout,
      split_fractions=[float(x) for x in FLAGS.split_fractions],
      seed=FLAGS.seed, splits=splits,
      skip_bad_files=FLAGS.skip_bad_files, overwrite=FLAGS.overwrite,
      split_counts=FLAGS.split_counts and [int(x) for x in FLAGS.split_counts])
  counts = {s.name: len(spec.get_classes(s)) for s in Split}
  images = sum(spec.get_total_images_per_class(c)
               for c in range(spec.num_classes))
  print(f"Wrote {type(spec).__name__} {spec.name!r} to {spec.path}: "
        f"{counts} classes, {images} images.")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
