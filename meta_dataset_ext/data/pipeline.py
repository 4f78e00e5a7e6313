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

Errors and exit
---------------
A Python generator (`tf.data.Dataset.from_generator`) reads and decodes each
episode, so a bad record or an image that does not decode raises DataError
there, naming the file, class and record. The generator then ends with an
episode that carries the message, which the pipeline raises as an OpError
(an exception leaving the generator would have TensorFlow print its Python
traceback); `user_error(op_error)` returns the DataError itself.

TensorFlow runs the generator on its own threads. An iterator still alive
when the interpreter shuts down (e.g. held by the traceback of the error that
ends the program) used to hang the process now and then: destroying it waits
for the generator call in flight, whose thread Python ends during shutdown.
At exit (while the interpreter is still whole) every generator therefore
stops at its next step, the calls in flight are waited for, and unreachable
iterators are destroyed.
"""

import atexit
import collections
import dataclasses
import gc
import itertools
import math
import threading
from typing import Dict, Iterator, Optional, Tuple

import gin
import numpy as np
import tensorflow as tf

from meta_dataset_ext import checks
from meta_dataset_ext import errors
from meta_dataset_ext.data import reader as reader_lib
from meta_dataset_ext.data import sampler as sampler_lib
from meta_dataset_ext.data import spec as spec_lib

PADDINGS = ("bucket", "max", "none")
_EXIT_TIMEOUT_SECONDS = 30.0  # Longest wait at exit for a generator call.


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
    verify_checksums: check the data checksum of every record read (as
      TensorFlow's TFRecord reader does); False saves that time
      (benchmarks/results/episode_pipeline.md).

  Raises:
    ConfigError: a value of the wrong type or out of range, naming its
      binding (e.g. 'DataConfig.image_height').
  """
  image_height: int = 84
  shuffle_buffer_size: int = 1000
  read_buffer_size_bytes: int = 2**20
  num_prefetch: int = 0
  verify_checksums: bool = True

  def __post_init__(self):
    self.image_height = checks.integer("DataConfig.image_height",
                                       self.image_height, minimum=1)
    self.shuffle_buffer_size = checks.integer(
        "DataConfig.shuffle_buffer_size", self.shuffle_buffer_size, minimum=0)
    self.read_buffer_size_bytes = checks.integer(
        "DataConfig.read_buffer_size_bytes", self.read_buffer_size_bytes,
        minimum=1)
    self.num_prefetch = checks.integer("DataConfig.num_prefetch",
                                       self.num_prefetch)
    self.verify_checksums = checks.boolean("DataConfig.verify_checksums",
                                           self.verify_checksums)


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


class _Generators:
  """Runs the episode generators of the pipelines (module docstring)."""

  _END = object()

  def __init__(self):
    self._lock = threading.Condition()
    self._running = 0
    self._stopped = False
    atexit.register(self._stop)

  def run(self, items: Iterator) -> Iterator:
    """Yields `items` until the interpreter begins to exit."""
    while True:
      with self._lock:
        if self._stopped:
          return
        self._running += 1
      try:
        item = next(items, self._END)
      finally:
        with self._lock:
          self._running -= 1
          self._lock.notify_all()
      if item is self._END:
        return
      yield item

  def _stop(self):
    with self._lock:
      self._stopped = True
      self._lock.wait_for(lambda: not self._running, _EXIT_TIMEOUT_SECONDS)
    gc.collect()  # Destroys unreachable iterators while Python can run them.


_GENERATORS = _Generators()
_REPORTED = collections.deque(maxlen=16)  # UserErrors that ended generators.


def user_error(error: BaseException) -> Optional[errors.UserError]:
  """The UserError that ended an episode generator, which `error` reports.

  The pipeline reports an error found while reading (e.g. a DataError naming
  a record) as an OpError whose message holds TensorFlow's context too; this
  returns the original exception, whose message is one line. None when
  `error` is not such an OpError.
  """
  if isinstance(error, tf.errors.OpError):
    for reported in reversed(_REPORTED):
      if _as_printed(str(reported)) in error.message:
        return reported
  return None


def _as_printed(text: str) -> str:
  """`text` as TensorFlow prints a string tensor's value: C escapes (octal
  for other control characters)."""
  escapes = {"\n": "\\n", "\r": "\\r", "\t": "\\t", '"': '\\"',
             "'": "\\'", "\\": "\\\\"}
  return "".join(escapes.get(c, f"\\{ord(c):03o}" if ord(c) < 0x20 or
                             ord(c) == 0x7F else c) for c in text)


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
        spec, self.data_config.read_buffer_size_bytes,
        self.data_config.verify_checksums)
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

  def decoded_episodes(self, start: int = 0) -> Iterator[Tuple[
      sampler_lib.EpisodeDescription, Dict[str, np.ndarray]]]:
    """(description, episode), from episode `start`.

    The episode dict has the keys of the module docstring; its images are
    uint8 [n, h, h, 3] and unpadded (its labels and class ids are padded).

    Raises:
      DataError: naming the record of a bad or undecodable image.
    """
    decoder = reader_lib.ImageDecoder(self.data_config.image_height)
    for index, description in enumerate(self.descriptions(start), start):
      record_rng = self._episode_rngs(index)[1]
      images, origins = [], []
      for class_id, shots, queries in zip(description.class_ids,
                                          description.num_support,
                                          description.num_query):
        n = self.records.num_records(class_id)
        chosen = record_rng.choice(n, shots + queries, replace=False)
        images.extend(self.records.read_images(class_id, chosen))
        origins.extend((class_id, int(i)) for i in chosen)
      decoded = decoder(images, lambda k: self.records.where(*origins[k]))
      yield description, self._episode(description, decoded)

  def _episode(self, description: sampler_lib.EpisodeDescription,
               decoded: np.ndarray) -> Dict[str, np.ndarray]:
    """The episode of `description` from its decoded images: each class's
    support images then its queries, class after class."""
    maximum = dict(zip(("support", "query"), self.episode_config.max_sizes()))
    sets = {"support": ([], []), "query": ([], [])}
    start = 0
    for label, (class_id, shots, queries) in enumerate(zip(
        description.class_ids, description.num_support,
        description.num_query)):
      for name, count in (("support", shots), ("query", queries)):
        sets[name][0].append(decoded[start:start + count])
        sets[name][1].extend([(label, class_id)] * count)
        start += count
    episode = {"way": np.int32(description.way)}
    for name, (images, labels) in sets.items():
      size = padded_size(len(labels), maximum[name], self.padding)
      ids = np.full((size, 2), -1, np.int32)
      ids[:len(labels)] = labels
      episode[f"{name}_images"] = np.concatenate(images)
      episode[f"{name}_labels"] = ids[:, 0]
      episode[f"{name}_class_ids"] = ids[:, 1]
    return episode

  def _static_sizes(self) -> Tuple[Optional[int], Optional[int]]:
    """(support, query) sizes known before reading; None when they vary."""
    if self.fixed_shape:
      cfg = self.episode_config
      return cfg.num_ways * cfg.num_support, cfg.num_ways * cfg.num_query
    if self.padding == "max":
      return self.episode_config.max_sizes()
    return None, None

  def _reported_episodes(self, start: int) -> Iterator[Dict[str, np.ndarray]]:
    """The episodes of `dataset`, each with an empty `error`; a UserError
    ends them with an empty episode whose `error` is its message."""
    try:
      for _, episode in self.decoded_episodes(start):
        yield dict(episode, error="")
    except errors.UserError as error:
      _REPORTED.append(error)
      height = self.data_config.image_height
      nothing = np.zeros(0, np.int32)
      yield {"way": np.int32(0), "error": str(error),
             "support_images": np.zeros((0, height, height, 3), np.uint8),
             "query_images": np.zeros((0, height, height, 3), np.uint8),
             "support_labels": nothing, "support_class_ids": nothing,
             "query_labels": nothing, "query_class_ids": nothing}

  def dataset(self, start: int = 0) -> tf.data.Dataset:
    """The episodes from episode `start`, as a tf.data.Dataset of dicts."""
    height = self.data_config.image_height
    signature = {"way": tf.TensorSpec([], tf.int32)}
    for name in ("support", "query"):
      signature.update({
          f"{name}_images": tf.TensorSpec([None, height, height, 3], tf.uint8),
          f"{name}_labels": tf.TensorSpec([None], tf.int32),
          f"{name}_class_ids": tf.TensorSpec([None], tf.int32)})
    signature["error"] = tf.TensorSpec([], tf.string)
    dataset = tf.data.Dataset.from_generator(
        lambda: _GENERATORS.run(self._reported_episodes(start)),
        output_signature=signature)
    sizes = dict(zip(("support", "query"), self._static_sizes()))

    def finish(episode):
      reported = tf.debugging.Assert(tf.equal(episode["error"], ""),
                                     [episode["error"]])
      with tf.control_dependencies([reported]):
        out = {"way": tf.identity(episode["way"])}
        for name in ("support", "query"):
          images = reader_lib.scale(episode[f"{name}_images"])
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

    dataset = dataset.map(finish, num_parallel_calls=tf.data.AUTOTUNE,
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
      iterator, as an OpError that `user_error` turns back into the DataError.
  """
  spec = spec_lib.load_dataset_spec(records_root_dir, source)
  return EpisodeStream(spec, split, episode_config, data_config, seed,
                       padding).dataset(start)
