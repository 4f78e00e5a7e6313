"""Episodes per second of the data pipeline, from records on disk.

    python benchmarks/episode_pipeline.py [--records_root_dir=R --source=S]

Without --records_root_dir it first writes a synthetic source (JPEG images of
--image_size pixels, --num_classes classes of --images_per_class images) to a
temporary directory. It then times two settings on the TRAIN split, after
--warmup episodes: fixed 5-way 1-shot 15-query episodes, and variable way and
shot (Meta-Dataset's defaults, bucket padding), each with the records' data
checksums verified (DataConfig.verify_checksums, the default) and not. The two
are timed in turn --repeats times (the machine's load drifts less between
them) and each row is the median run by episodes/s. Prints a markdown table,
and what the checksum of one record costs alone.
"""

import io
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

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
flags.DEFINE_integer("warmup", 20, "Episodes read before timing.")
flags.DEFINE_float("seconds", 20.0, "Time each setting for about this long.")
flags.DEFINE_integer("repeats", 3, "Timings of each setting (median shown).")


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


def time_setting(root: str, config: EpisodeDescriptionConfig,
                 verify_checksums: bool):
  """Episodes/s, images/s, mean support and query sizes, CPU cores used."""
  data_config = pipeline.DataConfig(image_height=FLAGS.image_height,
                                    verify_checksums=verify_checksums)
  iterator = iter(pipeline.make_episode_dataset(
      root, FLAGS.source, "TRAIN", config, data_config, seed=0))
  for _ in range(FLAGS.warmup):
    next(iterator)
  episodes = images = support = query = 0
  start, start_cpu = time.perf_counter(), time.process_time()
  while time.perf_counter() - start < FLAGS.seconds:
    episode = next(iterator)
    s = int((episode["support_labels"] >= 0).numpy().sum())
    q = int((episode["query_labels"] >= 0).numpy().sum())
    episodes, images, support, query = (episodes + 1, images + s + q,
                                        support + s, query + q)
  elapsed = time.perf_counter() - start
  cores = (time.process_time() - start_cpu) / elapsed
  return (episodes / elapsed, images / elapsed, support / episodes,
          query / episodes, cores)


def checksum_cost(root: str) -> str:
  """Microseconds per record of the data checksum, on class 0's records."""
  spec = spec_lib.load_dataset_spec(root, FLAGS.source)
  path = spec.class_file(0)
  index = reader.index_records(path)
  with open(path, "rb") as f:
    data = f.read()
  records = [data[o:o + n] for o, n in zip(index.offsets, index.lengths)]
  start = time.perf_counter()
  for _ in range(100):
    for record in records:
      reader.masked_crc32c(record)
  seconds = (time.perf_counter() - start) / (100 * len(records))
  return (f"data checksum of one record: {seconds * 1e6:.2f} us (records of "
          f"{np.mean(index.lengths) / 1024:.1f} KB on average)")


def _load() -> str:
  """The 1-minute load average (other processes compete for the CPUs)."""
  return f"{os.getloadavg()[0]:.2f}"


def main(_):
  with tempfile.TemporaryDirectory() as tmp:
    root = FLAGS.records_root_dir
    if root is None:
      root = tmp
      write_synthetic_source(root)
    settings = [
        ("5-way 1-shot 15-query", EpisodeDescriptionConfig.fixed(5, 1, 15)),
        ("variable way/shot", EpisodeDescriptionConfig()),
    ]
    print(f"source {FLAGS.source!r}, image_height {FLAGS.image_height}, "
          f"{os.cpu_count()} CPUs, load average {_load()} before")
    print("| episodes | checksums | episodes/s | images/s | mean support "
          "| mean query | CPU cores used |")
    print("|---|---|---|---|---|---|---|")
    for name, config in settings:
      runs = {True: [], False: []}
      for _ in range(FLAGS.repeats):
        for verify in runs:
          runs[verify].append(time_setting(root, config, verify))
      for verify, timings in runs.items():
        eps, ips, support, query, cores = sorted(timings)[len(timings) // 2]
        print(f"| {name} | {'verified' if verify else 'not verified'} | "
              f"{eps:.1f} | {ips:.0f} | {support:.1f} | {query:.1f} | "
              f"{cores:.2f} |")
    print(checksum_cost(root))
    print(f"load average {_load()} after")


if __name__ == "__main__":
  app.run(main)
