"""tf.data pipeline of Meta-Dataset episodes read from a source's records.

    dataset = make_episode_dataset(records_root_dir, "omniglot", "TRAIN",
                                   EpisodeDescriptionConfig(), DataConfig(),
                                   seed=0)
    for episode in dataset: ...

Episode format (a dict of tensors)
----------------------------------
support_images     float32 [S, h, h, 3], in [-1, 1]
support_labels     int32 [S], 0..way-1; -1 marks padding
support_class_ids  int32 [S], absolute class ids of the source; -1 padding
query_images, query_labels, query_class_ids: the same for the query set
way                int32 [], number of classes

Label i is the i-th class of the episode description; images are grouped by
class (label 0 first). Within a class the support and query images are
distinct records, drawn uniformly without replacement.

Padding (so that variable episodes do not retrace a tf.function each time):
when shapes vary, the support and query sets are padded at the end with
all-zero images, label -1 and class id -1 (`mask = labels >= 0`; a one-hot of
-1 is all zeros). `padding` chooses the padded size S (and likewise Q):
  "bucket"  the next power of two, capped at the episode maximum (default;
            about seven sizes each for support and query),
  "max"     always the maximum (one shape: max_support_set_size and
            max_ways * max_num_query), static shapes,
  "none"    no padding (exact sizes; a new shape for most episodes).
Fixed-shape episodes (num_ways, an int num_support and num_query all set) are
never padded and have static shapes.

The dataset is endless (take what you need). Reproducibility: the seed fixes
the sequence of episode descriptions and the records each episode uses;
iterating the dataset again restarts the sequence. Records are read from the
local (or mounted) file system.
"""

import dataclasses
import itertools
import math
from typing import Dict, Iterator, Optional, Tuple

import gin
import numpy as np
import tensorflow as tf

from meta_dataset_ext.data import reader as reader_lib
from meta_dataset_ext.data import sampler as sampler_lib
from meta_dataset_ext.data import spec as spec_lib

PADDINGS = ("bucket", "max", "none")


@gin.configurable
@dataclasses.dataclass
class DataConfig:
  """Image and input-pipeline options; names follow upstream's gin.

  Attributes:
    image_height: images are resized (bilinear) to image_height squared.
    shuffle_buffer_size: accepted so that upstream's gin files parse; unused,
      since records are drawn uniformly at random by index, not from a
      shuffled stream.
    read_buffer_size_bytes: buffer size of each opened class file.
    num_prefetch: decoded episodes buffered ahead of the consumer; < 1 lets
      tf.data tune it. (Upstream counted images per class here.)
  """
  image_height: int = 84
  shuffle_buffer_size: int = 1000
  read_buffer_size_bytes: int = 2**20
  num_prefetch: int = 0


def padded_size(size: int, maximum: int, padding: str) -> int:
  """The padded length of a set of `size` images (see module docstring)."""
  if padding == "none":
    return size
  if padding == "max":
    return maximum
  return min(maximum, 2**math.ceil(math.log2(max(size, 1))))


def _is_fixed_shape(config: sampler_lib.EpisodeDescriptionConfig) -> bool:
  return (config.num_ways is not None and isinstance(config.num_support, int)
          and config.num_query is not None)


class EpisodeStream:
  """Episodes of one split of one source, as numpy records or a tf.data set.

  Construction checks the split eagerly (see EpisodeSampler) and that every
  class file of the split exists; records are indexed and checked when a
  class is first used.
  """

  def __init__(self, spec, split,
               episode_config: Optional[
                   sampler_lib.EpisodeDescriptionConfig] = None,
               data_config: Optional[DataConfig] = None, seed: int = 0,
               padding: str = "bucket"):
    if padding not in PADDINGS:
      raise ValueError(f"padding must be one of {PADDINGS}, not {padding!r}.")
    self.spec = spec
    self.split = spec_lib.Split.parse(split)
    self.episode_config = episode_config or (
        sampler_lib.EpisodeDescriptionConfig())
    self.data_config = data_config or DataConfig()
    self.seed = seed
    self.fixed_shape = _is_fixed_shape(self.episode_config)
    self.padding = "none" if self.fixed_shape else padding
    self._new_sampler(0)  # Validates the split now rather than when iterated.
    self.records = reader_lib.ClassRecords(
        spec, self.data_config.read_buffer_size_bytes)
    self.records.check_files(spec.get_classes(self.split))

  def _episode_rngs(self, index: int) -> Tuple[np.random.Generator, ...]:
    """Generators of episode `index`'s description and of its records.

    They depend on (seed, index) only, so a stream can start at any episode
    without drawing the ones before it (exact resume of a training run).
    """
    return tuple(np.random.default_rng(s) for s in
                 np.random.SeedSequence([self.seed, index]).spawn(2))

  def _new_sampler(self, seed) -> sampler_lib.EpisodeSampler:
    return sampler_lib.EpisodeSampler(self.spec, self.split,
                                      self.episode_config,
                                      np.random.default_rng(seed))

  def descriptions(self, start: int = 0
                  ) -> Iterator[sampler_lib.EpisodeDescription]:
    """The episode descriptions of the seeded sequence, from episode `start`."""
    sampler = self._new_sampler(0)
    for index in itertools.count(start):
      sampler.reseed(self._episode_rngs(index)[0])
      yield sampler.sample()

  def encoded_episodes(self, start: int = 0) -> Iterator[Tuple[
      sampler_lib.EpisodeDescription, Dict[str, np.ndarray]]]:
    """(description, episode with encoded images), from episode `start`.

    The episode dict has the keys of the module docstring, with
    `support_images` / `query_images` replaced by `support_bytes` /
    `query_bytes` (the encoded images, unpadded).
    """
    max_support, max_query = self.episode_config.max_sizes()
    for index, description in enumerate(self.descriptions(start), start):
      record_rng = self._episode_rngs(index)[1]
      sets = {"support": ([], []), "query": ([], [])}
      for label, (class_id, shots, queries) in enumerate(zip(
          description.class_ids, description.num_support,
          description.num_query)):
        n = self.records.num_records(class_id)
        chosen = record_rng.choice(n, shots + queries, replace=False)
        images = self.records.read_images(class_id, chosen)
        for name, part in (("support", images[:shots]),
                           ("query", images[shots:])):
          sets[name][0].extend(part)
          sets[name][1].extend([(label, class_id)] * len(part))
      episode = {"way": np.int32(description.way)}
      for name, maximum in (("support", max_support), ("query", max_query)):
        images, labels = sets[name]
        size = padded_size(len(images), maximum, self.padding)
        ids = np.full((size, 2), -1, np.int32)
        ids[:len(labels)] = labels
        episode[f"{name}_bytes"] = np.array(images, dtype=object)
        episode[f"{name}_labels"] = ids[:, 0]
        episode[f"{name}_class_ids"] = ids[:, 1]
      yield description, episode

  def _static_sizes(self) -> Tuple[Optional[int], Optional[int]]:
    """(support, query) sizes known before reading; None when they vary."""
    if self.fixed_shape:
      cfg = self.episode_config
      return cfg.num_ways * cfg.num_support, cfg.num_ways * cfg.num_query
    if self.padding == "max":
      return self.episode_config.max_sizes()
    return None, None

  def dataset(self, start: int = 0) -> tf.data.Dataset:
    """The episodes from episode `start`, as a tf.data.Dataset of dicts."""
    vector = lambda dtype: tf.TensorSpec([None], dtype)
    signature = {"way": tf.TensorSpec([], tf.int32)}
    for name in ("support", "query"):
      signature.update({f"{name}_bytes": vector(tf.string),
                        f"{name}_labels": vector(tf.int32),
                        f"{name}_class_ids": vector(tf.int32)})
    dataset = tf.data.Dataset.from_generator(
        lambda: (episode for _, episode in self.encoded_episodes(start)),
        output_signature=signature)
    height = self.data_config.image_height
    sizes = dict(zip(("support", "query"), self._static_sizes()))

    def decode(episode):
      out = {"way": episode["way"]}
      for name in ("support", "query"):
        images = reader_lib.decode_images(episode[f"{name}_bytes"], height)
        labels = episode[f"{name}_labels"]
        if self.padding != "none":
          pad = tf.shape(labels)[0] - tf.shape(images)[0]
          images = tf.pad(images, [[0, pad], [0, 0], [0, 0], [0, 0]])
        out[f"{name}_images"] = tf.ensure_shape(
            images, [sizes[name], height, height, 3])
        out[f"{name}_labels"] = tf.ensure_shape(labels, [sizes[name]])
        out[f"{name}_class_ids"] = tf.ensure_shape(
            episode[f"{name}_class_ids"], [sizes[name]])
      return out

    dataset = dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    prefetch = self.data_config.num_prefetch
    return dataset.prefetch(prefetch if prefetch > 0 else tf.data.AUTOTUNE)


def make_episode_dataset(records_root_dir: str, source: str, split,
                         episode_config: Optional[
                             sampler_lib.EpisodeDescriptionConfig] = None,
                         data_config: Optional[DataConfig] = None,
                         seed: int = 0,
                         padding: str = "bucket",
                         start: int = 0) -> tf.data.Dataset:
  """Episodes of `source`'s `split` read from `<records_root_dir>/<source>`.

  Args:
    records_root_dir: directory holding one sub-directory per source.
    source: source name, e.g. "ilsvrc_2012".
    split: "TRAIN", "VALID", "TEST" or a spec.Split.
    episode_config: episode composition; default: variable way and shot.
    data_config: image size and reading options; default DataConfig().
    seed: seeds the episode sequence (same seed, same episodes).
    padding: "bucket", "max" or "none" (module docstring).
    start: index of the first episode (episode i is a function of the seed
      and i alone, so skipping costs nothing).
  Raises:
    DataError: bad spec, split or class files (see the spec, sampler and
      reader modules); errors found while reading records are raised by the
      iterator, with the same message.
  """
  spec = spec_lib.load_dataset_spec(records_root_dir, source)
  return EpisodeStream(spec, split, episode_config, data_config, seed,
                       padding).dataset(start)
