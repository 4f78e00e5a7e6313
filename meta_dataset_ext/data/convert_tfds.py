"""Converts a TensorFlow Datasets image-classification builder into a source.

Any TFDS builder with an `image` (Image) feature and a `label` (ClassLabel)
feature can be converted; the images are stored as TFDS keeps them (JPEG or
PNG bytes, checked to decode). The classes that occur in the chosen TFDS
splits (merged) are split into TRAIN / VALID / TEST at random (seeded), or,
with a superclass feature, their superclasses are (a bi-level source, as
Omniglot's alphabets). Defaults for the builders behind Meta-Dataset sources,
with the split proportions upstream uses for them (the classes themselves are
drawn at random, so they are not upstream's lists):

    omniglot            bilevel by `alphabet`, 25/5/20 alphabets (of 50)
    caltech_birds2011   140/30/30 classes           (upstream: cu_birds)
    dtd                 33/7/7 classes
    oxford_flowers102   71/15/16 classes            (upstream: vgg_flower)
    quickdraw_bitmap    241/52/52 classes; use --max_images_per_class, the
                        full set has about 50 million images

Command line:

    python -m meta_dataset_ext.data.convert_tfds --builder=omniglot \\
        --records_root_dir=R [--name=omniglot] [--data_dir=TFDS_DIR] \\
        [--download] [--tfds_splits=train,test] [--superclass_key=alphabet] \\
        [--split_fractions=0.5,0.1,0.4] [--seed=0] \\
        [--max_images_per_class=N] [--overwrite]

writes `R/<name>/dataset_spec.json` and `R/<name>/<class_id>.tfrecords`
(atomically; `--records_root=R`, upstream's spelling, works too; <name> is one
folder name). Without --download the builder must already be prepared in
--data_dir (e.g. with `tfds build`). A split too small for episodes is warned
about. Errors are one line on stderr (exit status 2; --verbose for the
traceback).

Python: `convert_tfds(builder_name, records_root_dir, ...) -> spec`.
"""

import dataclasses
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from absl import flags
import tensorflow as tf
import tensorflow_datasets as tfds

from meta_dataset_ext import cli
from meta_dataset_ext.data import convert_folder
from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data import writer
from meta_dataset_ext.data.spec import DataError, Split

IMAGE_KEY = "image"
LABEL_KEY = "label"


@dataclasses.dataclass(frozen=True)
class BuilderDefaults:
  """How a TFDS builder becomes a source unless told otherwise."""
  tfds_splits: Tuple[str, ...]
  split_fractions: Tuple[float, float, float]
  superclass_key: Optional[str] = None


KNOWN_BUILDERS: Dict[str, BuilderDefaults] = {
    "omniglot": BuilderDefaults(("train", "test"), (0.5, 0.1, 0.4),
                                "alphabet"),
    "caltech_birds2011": BuilderDefaults(("train", "test"),
                                         (140 / 200, 30 / 200, 30 / 200)),
    "dtd": BuilderDefaults(("train", "validation", "test"),
                           (33 / 47, 7 / 47, 7 / 47)),
    "oxford_flowers102": BuilderDefaults(("train", "validation", "test"),
                                         (71 / 102, 15 / 102, 16 / 102)),
    "quickdraw_bitmap": BuilderDefaults(("train",),
                                        (241 / 345, 52 / 345, 52 / 345)),
}
_GENERIC = BuilderDefaults((), (0.7, 0.15, 0.15))


def _builder(builder_name: str, data_dir: Optional[str]):
  try:
    return tfds.builder(builder_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DataError(
        f"Unknown TFDS builder {builder_name!r}; converters have defaults for "
        f"{sorted(KNOWN_BUILDERS)} and accept any TFDS builder with "
        f"'{IMAGE_KEY}' and '{LABEL_KEY}' features.") from None


def _class_label(features, key: str, builder_name: str):
  feature = features[key] if key in features else None
  if not isinstance(feature, tfds.features.ClassLabel):
    raise DataError(f"TFDS builder {builder_name!r} has no ClassLabel feature "
                    f"{key!r} (features: {sorted(features)}).")
  return feature


def _read_by_label(dataset: tf.data.Dataset, scratch_dir: str,
                   builder_name: str, superclass_key: Optional[str],
                   max_images_per_class: Optional[int], num_labels: int
                   ) -> Tuple[Dict[int, int], Dict[int, int]]:
  """Writes each example's image to `<scratch>/<label>.tfrecords`.

  Returns:
    ({label: number of images}, {label: superclass}), the latter empty
    without a superclass key.
  """
  out = writer.ClassRecordsWriter(scratch_dir)
  superclass_of = {}
  full = 0
  try:
    for index, example in enumerate(dataset.as_numpy_iterator()):
      label = int(example[LABEL_KEY])
      if superclass_key is not None:
        superclass = int(example[superclass_key])
        if superclass_of.setdefault(label, superclass) != superclass:
          raise DataError(f"TFDS builder {builder_name!r}: label {label} "
                          f"appears under two {superclass_key!r} values.")
      if max_images_per_class and out.counts.get(label, 0) >= (
          max_images_per_class):
        continue
      origin = f"of {builder_name!r} example {index} (label {label})"
      out.write(label, writer.checked_image_bytes(example[IMAGE_KEY], origin))
      if out.counts[label] == max_images_per_class:
        full += 1
        if full == num_labels:
          break
  finally:
    counts = out.close()
  return counts, superclass_of


def _scratch_images(scratch_dir: str, labels: Sequence[int]
                    ) -> Iterator[Tuple[int, bytes]]:
  """(class_id, image bytes), class_id being the label's position in `labels`.

  One pipeline reads the label files in class order.
  """
  class_of = {label: class_id for class_id, label in enumerate(labels)}
  paths = [os.path.join(scratch_dir, spec_lib.DEFAULT_FILE_PATTERN.format(l))
           for l in labels]
  for record in tf.data.TFRecordDataset(paths).as_numpy_iterator():
    feature = tf.train.Example.FromString(record).features.feature
    yield (class_of[feature["label"].int64_list.value[0]],
           feature["image"].bytes_list.value[0])


def convert_tfds(builder_name: str, records_root_dir: str,
                 name: Optional[str] = None,
                 data_dir: Optional[str] = None,
                 download: bool = False,
                 tfds_splits: Optional[Sequence[str]] = None,
                 superclass_key: Optional[str] = "",
                 split_fractions: Optional[Sequence[float]] = None,
                 seed: int = 0,
                 max_images_per_class: Optional[int] = None,
                 overwrite: bool = False) -> spec_lib.AnySpec:
  """Converts TFDS builder `builder_name` into `<records_root_dir>/<name>`.

  Args:
    builder_name: a registered TFDS builder, e.g. "omniglot".
    records_root_dir: the records root.
    name: source name; defaults to `builder_name`.
    data_dir: TFDS data directory (TFDS's default when None).
    download: download and prepare the builder first.
    tfds_splits: TFDS splits read and merged; default: the builder's entry in
      KNOWN_BUILDERS, else every split the prepared builder has.
    superclass_key: a ClassLabel feature grouping the labels (bi-level
      source); "" means the builder's default, None a flat source.
    split_fractions: TRAIN / VALID / TEST fractions of the classes (or
      superclasses); default from KNOWN_BUILDERS, else 0.7/0.15/0.15.
    seed: seed of the random split.
    max_images_per_class: keep at most this many images of each class (the
      first ones in TFDS order); reading stops once every class has them.
    overwrite: replace an existing source.
  Raises:
    DataError: unknown builder, missing features, builder not prepared, an
      image that does not decode, a class with fewer than 2 images.
  """
  defaults = KNOWN_BUILDERS.get(builder_name, _GENERIC)
  name = writer.check_source_name(name or builder_name)
  if superclass_key == "":
    superclass_key = defaults.superclass_key
  builder = _builder(builder_name, data_dir)
  if download:
    builder.download_and_prepare()
  features = builder.info.features
  if not isinstance(features[IMAGE_KEY] if IMAGE_KEY in features else None,
                    tfds.features.Image):
    raise DataError(f"TFDS builder {builder_name!r} has no Image feature "
                    f"{IMAGE_KEY!r} (features: {sorted(features)}).")
  label_feature = _class_label(features, LABEL_KEY, builder_name)
  superclass_feature = (None if superclass_key is None else
                        _class_label(features, superclass_key, builder_name))
  splits = tuple(tfds_splits or defaults.tfds_splits or builder.info.splits)
  if not splits:
    raise DataError(f"TFDS builder {builder_name!r} lists no splits; is it "
                    "prepared? Pass the splits or download it.")
  try:
    dataset = builder.as_dataset(
        split="+".join(splits), shuffle_files=False,
        decoders={IMAGE_KEY: tfds.decode.SkipDecoding()})
  except (AssertionError, ValueError, tf.errors.NotFoundError) as e:
    raise DataError(f"Cannot read TFDS builder {builder_name!r} splits "
                    f"{splits} from {builder.data_dir!r} (download it with "
                    f"--download or `tfds build {builder_name}`): {e}"
                    ) from None

  writer.make_records_root(records_root_dir)
  writer.remove_stale_work_dirs(records_root_dir, name)
  with writer.work_dir(records_root_dir, name, "scratch") as scratch:
    counts, superclass_of = _read_by_label(
        dataset, scratch, builder_name, superclass_key, max_images_per_class,
        label_feature.num_classes)
    labels = sorted(counts)
    class_names = {l: label_feature.int2str(l) for l in labels}
    fractions = split_fractions or defaults.split_fractions
    if superclass_feature is None:
      by_split = _assign(labels, fractions, seed, "classes")
      layout = writer.SourceLayout.flat(
          name, {s: [class_names[l] for l in by_split[s]] for s in Split})
      ordered = [l for s in Split for l in by_split[s]]
    else:
      members: Dict[int, List[int]] = {}
      for label in labels:
        members.setdefault(superclass_of[label], []).append(label)
      by_split = _assign(sorted(members), fractions, seed, "superclasses")
      group_name = superclass_feature.int2str
      layout = writer.SourceLayout.bilevel(name, {
          s: [(group_name(g),
               [f"{group_name(g)}-{class_names[l]}" for l in members[g]])
              for g in by_split[s]] for s in Split})
      ordered = [l for s in Split for g in by_split[s] for l in members[g]]
    writer.warn_small_splits(layout, "choose other --split_fractions")
    return writer.write_source(records_root_dir, layout,
                               _scratch_images(scratch, ordered), overwrite)


def _assign(items: List[int], fractions: Sequence[float], seed: int,
            what: str) -> Dict[Split, List[int]]:
  try:
    return writer.assign_splits(items, fractions, seed)
  except ValueError as e:
    raise DataError(f"Cannot split the {what}: {e}") from None


FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string("builder", None, "TFDS builder name, e.g. omniglot.")
  flags.DEFINE_string("records_root_dir", None, "Records root to write into.")
  flags.DEFINE_alias("records_root", "records_root_dir")
  flags.DEFINE_string("name", None, "Source name (default: the builder's).")
  flags.DEFINE_string("data_dir", None, "TFDS data directory.")
  flags.DEFINE_bool("download", False, "Download and prepare the builder.")
  flags.DEFINE_list("tfds_splits", None, "TFDS splits to read and merge.")
  flags.DEFINE_string("superclass_key", "",
                      "ClassLabel feature of superclasses (bi-level source); "
                      "'' for the builder's default, 'none' for flat.")
  convert_folder.define_split_list_flag(
      "split_fractions", None, float,
      "TRAIN,VALID,TEST fractions of the (super)classes.")
  flags.DEFINE_integer("seed", 0, "Seed of the random split.")
  flags.DEFINE_integer("max_images_per_class", None,
                       "Keep at most this many images per class.",
                       lower_bound=writer.MIN_IMAGES_PER_CLASS)
  flags.DEFINE_bool("overwrite", False, "Replace an existing source.")
  flags.mark_flag_as_required("builder")
  flags.mark_flag_as_required("records_root_dir")


def main(argv):
  del argv  # Unused.
  spec = convert_tfds(
      FLAGS.builder, FLAGS.records_root_dir, name=FLAGS.name,
      data_dir=FLAGS.data_dir, download=FLAGS.download,
      tfds_splits=FLAGS.tfds_splits,
      superclass_key=None if FLAGS.superclass_key.lower() == "none"
      else FLAGS.superclass_key,
      split_fractions=(FLAGS.split_fractions and
                       [float(x) for x in FLAGS.split_fractions]),
      seed=FLAGS.seed, max_images_per_class=FLAGS.max_images_per_class,
      overwrite=FLAGS.overwrite)
  counts = {s.name: len(spec.get_classes(s)) for s in Split}
  print(f"Wrote {type(spec).__name__} {spec.name!r} to {spec.path}: "
        f"{counts} classes.")


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
