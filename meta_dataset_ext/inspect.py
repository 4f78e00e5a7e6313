"""Look at the episodes a learner would see from a source's records.

    python -m meta_dataset_ext.inspect --records_root_dir=R --source=S \\
        --split=TRAIN --num_episodes=5 --seed=0 [--save_png=episode.png] \\
        [--gin_config=F] [--gin_bindings='EpisodeDescriptionConfig.num_ways=5']

Prints one JSON line with the source's split sizes, then one JSON line per
episode: its way, class ids and names, shots and queries per class. These are
the episodes `make_episode_dataset` yields with the same seed and gin
configuration (a --gin_config is a file, or one of the shipped configs by
name). With --save_png, draws the first episode as a contact sheet: one row
per class, support images above and query images below, each row labelled.
Bad records, flags or bindings end it with one line on stderr (exit status 2;
--verbose for the traceback).
"""

import json
from typing import Dict, Optional

from absl import flags
import numpy as np

from meta_dataset_ext import cli
from meta_dataset_ext import gin_setup
from meta_dataset_ext.data import pipeline
from meta_dataset_ext.data import sampler as sampler_lib
from meta_dataset_ext.data import spec as spec_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("records_root_dir", None, "Directory of converted sources.")
flags.DEFINE_string("source", None, "Source name, e.g. omniglot.")
flags.DEFINE_enum("split", "TRAIN", [s.name for s in spec_lib.Split],
                  "TRAIN, VALID or TEST.", case_sensitive=False)
flags.DEFINE_integer("num_episodes", 5, "Episodes to describe.", lower_bound=0)
flags.DEFINE_integer("seed", 0, "Episode seed.")
flags.DEFINE_string("save_png", None, "Write a contact sheet of episode 0.")
flags.DEFINE_integer("max_images_per_row", 10,
                     "Contact sheet: images shown per class and set.",
                     lower_bound=1)
flags.DEFINE_multi_string("gin_config", [], "Gin files.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings.")

_GAP = 2  # Pixels between contact sheet tiles.


def split_sizes(spec) -> Dict[str, object]:
  """Classes (and superclasses, images) of each split of `spec`."""
  sizes = {}
  for split in spec_lib.Split:
    classes = spec.get_classes(split)
    entry = {"classes": len(classes),
             "images": sum(spec.get_total_images_per_class(c)
                           for c in classes)}
    if isinstance(spec, spec_lib.BiLevelDatasetSpecification):
      entry["superclasses"] = len(spec.get_superclasses(split))
    sizes[split.name] = entry
  return {"source": spec.name, "spec": type(spec).__name__, "path": spec.path,
          "splits": sizes}


def describe(spec, index: int,
             description: sampler_lib.EpisodeDescription) -> Dict[str, object]:
  """The JSON record of one episode description."""
  record = {"episode": index}
  record.update(description.to_dict())
  record["class_names"] = [spec.class_names[c] for c in description.class_ids]
  return record


def _tile_rows(images: np.ndarray, labels: np.ndarray, way: int,
               columns: int) -> np.ndarray:
  """One row per label of up to `columns` images, as a uint8 mosaic."""
  height = images.shape[1] + _GAP
  mosaic = np.full((way * height, columns * height, 3), 255, np.uint8)
  pixels = np.round((images + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
  for label in range(way):
    for column, image in enumerate(pixels[labels == label][:columns]):
      top, left = label * height, column * height
      mosaic[top:top + height - _GAP, left:left + height - _GAP] = image
  return mosaic


def save_contact_sheet(episode: Dict[str, np.ndarray], spec, description,
                       path: str, columns: int):
  """Writes the episode as a PNG: support rows, then query rows."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  way = int(episode["way"])
  columns = min(columns, max(description.num_support + description.num_query))
  support = _tile_rows(episode["support_images"], episode["support_labels"],
                       way, columns)
  query = _tile_rows(episode["query_images"], episode["query_labels"], way,
                     columns)
  band = np.full((3 * _GAP, support.shape[1], 3), 0, np.uint8)
  sheet = np.concatenate([support, band, query])
  row = episode["support_images"].shape[1] + _GAP
  dpi = 100  # One sheet pixel per image pixel; the labels go left of it.
  fig = plt.figure(figsize=(sheet.shape[1] / dpi, sheet.shape[0] / dpi),
                   dpi=dpi)
  ax = fig.add_axes([0.0, 0.0, 1.0, 1.0])
  ax.imshow(sheet, interpolation="nearest")
  ax.set_axis_off()
  font = max(4.0, min(9.0, row * 0.45))
  for part, offset, counts in (
      ("support", 0, description.num_support),
      ("query", support.shape[0] + band.shape[0], description.num_query)):
    for label, (class_id, count) in enumerate(zip(description.class_ids,
                                                  counts)):
      ax.text(-_GAP * 3, offset + label * row + row / 2,
              f"{part} {label}: class {class_id} "
              f"{spec.class_names[class_id]!s:.24} ({count})",
              ha="right", va="center", fontsize=font)
  fig.savefig(path, dpi=dpi, bbox_inches="tight")  # Grown to hold the labels.
  plt.close(fig)


def run(records_root_dir: str, source: str, split: str, num_episodes: int,
        seed: int, save_png: Optional[str], columns: int = 10):
  """Prints the split sizes and episode descriptions; maybe saves a sheet."""
  spec = spec_lib.load_dataset_spec(records_root_dir, source)
  print(json.dumps(split_sizes(spec)))
  stream = pipeline.EpisodeStream(
      spec, split, sampler_lib.EpisodeDescriptionConfig(),
      pipeline.DataConfig(), seed=seed, padding="none")
  descriptions = stream.descriptions()
  first = None
  for index in range(num_episodes):
    description = next(descriptions)
    first = first or description
    print(json.dumps(describe(spec, index, description)))
  if save_png:
    episode = next(iter(stream.dataset()))  # A bad record: cli.run names it.
    save_contact_sheet({k: v.numpy() for k, v in episode.items()}, spec,
                       first or next(stream.descriptions()), save_png,
                       columns)


def main(argv):
  del argv
  gin_setup.parse(FLAGS.gin_config, FLAGS.gin_bindings)
  run(FLAGS.records_root_dir, FLAGS.source, FLAGS.split, FLAGS.num_episodes,
      FLAGS.seed, FLAGS.save_png, FLAGS.max_images_per_row)


if __name__ == "__main__":
  flags.mark_flags_as_required(["records_root_dir", "source"])
  cli.run(main)
