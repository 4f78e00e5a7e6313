"""Episodes (and batches) per second of the data pipelines, from records on disk.

    python benchmarks/episode_pipeline.py [--records_root_dir=R --source=S]
        [--groups=checksums,decoding,augmentation,size,batch]

Without --records_root_dir it first writes a synthetic source (JPEG images of
--image_size pixels, --num_classes classes of --images_per_class images) to a
temporary directory. Each group compares settings on the TRAIN split, each
timed for --seconds after --warmup episodes (batches); the settings of a
group are timed in turn --repeats times (the machine's load drifts less
between them) and each row is the median run by images/s:
  checksums     the records' data checksums verified or not
                (DataConfig.verify_checksums), fixed 5-way 1-shot 15-query and
                variable way/shot episodes (Meta-Dataset's defaults)
  decoding      DataConfig.image_decoding "upstream" (bit-identical to
                upstream's decoder, float32 episodes) and "fast" (uint8),
                variable episodes at --image_height
  augmentation  variable episodes without and with data augmentation
                (support: jitter 8 px and noise 0.1; query: noise 0.1)
  size          variable episodes at --image_height and at 126 px (the tuned
                configs' size)
  batch         the batch pipeline of batch training: batches of 256 images,
                plain and augmented as the support set above
Prints markdown tables with the load average before and after.
"""

import io
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

from meta_dataset_ext.data import augmentation as augmentation_lib
from meta_dataset_ext.data import pipeline
from meta_dataset_ext.data import reader
from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data import writer
from meta_dataset_ext.data.sampler import EpisodeDescriptionConfig
from meta_dataset_ext.data.spec import Split

FLAGS = flags.FLAGS
flags.DEFINE_string("records_root_dir", None,
                    "Records root; default: write a synthetic source.")
flags.DEFINE_string("source", "synthetic", "Source to read.")
flags.DEFINE_integer("image_height", 84, "DataConfig.image_height.")
flags.DEFINE_integer("image_size", 84, "Synthetic images' size in pixels.")
flags.DEFINE_integer("num_classes", 100, "Synthetic source: classes.")
flags.DEFINE_integer("images_per_class", 120, "Synthetic source: images.")
flags.DEFINE_integer("warmup", 20, "Episodes (batches) read before timing.")
flags.DEFINE_float("seconds", 20.0, "Time each setting for about this long.")
flags.DEFINE_integer("repeats", 3, "Timings of each setting (median shown).")
flags.DEFINE_list("groups", ["checksums", "decoding", "augmentation", "size", "batch"],
                  "Groups of settings to compare (module docstring).")

JITTER_AND_NOISE = augmentation_lib.DataAugmentation(True, 8, True, 0.1)
NOISE = augmentation_lib.DataAugmentation(enable_gaussian_noise=True,
                                          gaussian_noise_std=0.1)
VARIABLE = EpisodeDescriptionConfig()


def synthetic_jpeg(rng: np.random.Generator, size: int) -> bytes:
  """A smooth random colour image (JPEG sizes like natural images)."""
  coarse = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
  image = Image.fromarray(coarse).resize((size, size), Image.BICUBIC)
  buffer = io.BytesIO()
  image.save(buffer, format="JPEG", quality=90)
  return buffer.getvalue()


def write_synthetic_source(root: str) -> None:
  rng = np.random.default_rng(0)
  layout = writer.SourceLayout.flat(
      FLAGS.source,
      {Split.TRAIN: [f"class{i}" for i in range(FLAGS.num_classes)]})
  examples = ((c, synthetic_jpeg(rng, FLAGS.image_size))
              for c in range(FLAGS.num_classes)
              for _ in range(FLAGS.images_per_class))
  writer.write_source(root, layout, examples)


def setting(name, episodes=VARIABLE, augmentation=None, batch=False, **data):
  """One timed setting: `episodes` (or batches of 256 if `batch`), DataConfig
  options `data`, the augmentation of the support set (of batches) and, for
  episodes with jitter, noise on the query set."""
  data.setdefault("image_height", FLAGS.image_height)
  return dict(name=name, episodes=episodes, augmentation=augmentation,
              batch=batch, data=data)


def groups():
  return {
      "checksums": [
          setting(f"5-way 1-shot 15-query, checksums {v}",
                  EpisodeDescriptionConfig.fixed(5, 1, 15),
                  verify_checksums=v == "verified")
          for v in ("verified", "not verified")] + [
              setting(f"variable way/shot, checksums {v}",
                      verify_checksums=v == "verified")
              for v in ("verified", "not verified")],
      "decoding": [setting(f"variable way/shot, {d} decoding", image_decoding=d)
                   for d in reader.IMAGE_DECODINGS],
      "augmentation": [setting("variable way/shot, no augmentation"),
                       setting("variable way/shot, augmented",
                               augmentation=JITTER_AND_NOISE)],
      "size": [setting(f"variable way/shot, {h} px", image_height=h)
               for h in (FLAGS.image_height, 126)],
      "batch": [setting("batches of 256", batch=True),
                setting("batches of 256, augmented", batch=True,
                        augmentation=JITTER_AND_NOISE)],
  }


def time_setting(root: str, s: dict):
  """Items/s, images/s, mean support and query sizes (0 for batches), CPU
  cores used."""
  data_config = pipeline.DataConfig(**s["data"])
  spec = spec_lib.load_dataset_spec(root, FLAGS.source)
  if s["batch"]:
    dataset = pipeline.BatchStream([spec], "TRAIN", 256, data_config, 0,
                                   s["augmentation"]).dataset()
  else:
    augmentation = None
    if s["augmentation"] is not None:
      augmentation = {"support": s["augmentation"], "query": NOISE}
    dataset = pipeline.EpisodeStream(spec, "TRAIN", s["episodes"], data_config,
                                     0, augmentation=augmentation).dataset()
  iterator = iter(dataset)
  for _ in range(FLAGS.warmup):
    next(iterator)
  items = images = support = query = 0
  start, start_cpu = time.perf_counter(), time.process_time()
  while time.perf_counter() - start < FLAGS.seconds:
    item = next(iterator)
    if s["batch"]:
      n, q = int(item["labels"].shape[0]), 0
    else:
      n = int((item["support_labels"] >= 0).numpy().sum())
      q = int((item["query_labels"] >= 0).numpy().sum())
    items, images, support, query = items + 1, images + n + q, support + n, query + q
  elapsed = time.perf_counter() - start
  cores = (time.process_time() - start_cpu) / elapsed
  return (items / elapsed, images / elapsed, support / items, query / items,
          cores)


def _load() -> str:
  """The 1-minute load average (other processes compete for the CPUs)."""
  return f"{os.getloadavg()[0]:.2f}"


def main(_):
  with tempfile.TemporaryDirectory() as tmp:
    root = FLAGS.records_root_dir
    if root is None:
      root = tmp
      write_synthetic_source(root)
    print(f"source {FLAGS.source!r} ({FLAGS.image_size} px images if "
          f"synthetic), image_height {FLAGS.image_height}, {os.cpu_count()} "
          f"CPUs")
    for group in FLAGS.groups:
      settings = groups()[group]
      print(f"\n{group}: load average {_load()} before")
      print("| setting | episodes (batches)/s | images/s | mean support "
            "| mean query | CPU cores used |")
      print("|---|---|---|---|---|---|")
      runs = [[] for _ in settings]
      for _ in range(FLAGS.repeats):
        for timings, s in zip(runs, settings):
          timings.append(time_setting(root, s))
      for timings, s in zip(runs, settings):
        rate, ips, support, query, cores = sorted(
            timings, key=lambda t: t[1])[len(timings) // 2]
        print(f"| {s['name']} | {rate:.2f} | {ips:.0f} | {support:.1f} | "
              f"{query:.1f} | {cores:.2f} |")
      print(f"load average {_load()} after")


if __name__ == "__main__":
  app.run(main)
