"""tf.data pipelines of Meta-Dataset episodes (and of batches) read from
sources' records.

    dataset = make_episode_dataset(records_root_dir, "omniglot", "TRAIN",
                                   EpisodeDescriptionConfig(), DataConfig(),
                                   seed=0)
    for episode in dataset: ...
    batches = BatchStream([spec], "TRAIN", batch_size=256).dataset()

Images are decoded as DataConfig.image_decoding says (reader.py: by default
bit-identical to upstream's decoder) and, when an augmentation is given for
the support set, the query set or the batches (augmentation.py), perturbed
in the tf.data map with seeds derived from the stream's seed and the
episode's (batch's) index.

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
the sequence of episode descriptions, the records each episode uses and
their augmentation; iterating the dataset again restarts the sequence.
Records are read from the local (or mounted) file system.

Errors and exit
---------------
A Python generator (`tf.data.Dataset.from_generator`) reads and decodes each
episode (or batch), so a bad record or an image that does not decode raises
DataError there, naming the file, class and record. The generator then ends
with an episode that carries the message, which the pipeline raises as an
OpError (an exception leaving the generator would have TensorFlow print its
Python traceback); `user_error(op_error)` returns the DataError itself.

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
from typing import Dict, Iterator, List, Optional, Tuple

import gin
import numpy as np
import tensorflow as tf

from meta_dataset_ext import checks
from meta_dataset_ext import errors
from meta_dataset_ext.data import augmentation as augmentation_lib
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
    image_decoding: "upstream" (bit-identical to upstream's decoder) or
      "fast" (TF2's resize rounded to uint8; see reader.IMAGE_DECODINGS and
      benchmarks/results/episode_pipeline.md for what each costs).
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
  image_decoding: str = "upstream"

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
    self.image_decoding = checks.choice("DataConfig.image_decoding",
                                        self.image_decoding,
                                        reader_lib.IMAGE_DECODINGS)


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


def _seeds(*entropy: int) -> List[np.random.SeedSequence]:
  """The three seed sequences of an episode or batch: (what to read, which
  records, its augmentation), functions of `entropy` alone."""
  return np.random.SeedSequence(list(entropy)).spawn(3)


def _augmentation_seeds(sequence: np.random.SeedSequence,
                        count: int) -> np.ndarray:
  """int64 [count, 2]: one stateless seed per set of images."""
  return sequence.generate_state(2 * count, np.uint32).astype(
      np.int64).reshape(count, 2)


def _prepared(images: tf.Tensor, augmentation, seed: tf.Tensor) -> tf.Tensor:
  """Decoded images as the learner gets them: scaled to [-1, 1] (the uint8 of
  the "fast" decoding), then augmented."""
  if images.dtype == tf.uint8:
    images = reader_lib.scale(images)
  if augmentation_lib.is_active(augmentation):
    images = augmentation_lib.augment(images, augmentation, seed)
  return images


def _read_dataset(items, signature: Dict[str, tf.TensorSpec],
                  empty: Dict[str, np.ndarray], finish) -> tf.data.Dataset:
  """The dicts that the iterator `items()` yields, each given an empty
  `error` and mapped by `finish` (in parallel, in order). A UserError raised
  by `items` ends them with `empty`, whose `error` is its message, and which
  the dataset raises as an OpError (`user_error` gives the UserError back)."""

  def reported():
    try:
      for item in items():
        yield dict(item, error="")
    except errors.UserError as error:
      _REPORTED.append(error)
      yield dict(empty, error=str(error))

  dataset = tf.data.Dataset.from_generator(
      lambda: _GENERATORS.run(reported()),
      output_signature=dict(signature, error=tf.TensorSpec([], tf.string)))

  def checked(item):
    reported_error = tf.debugging.Assert(tf.equal(item["error"], ""),
                                         [item["error"]])
    with tf.control_dependencies([reported_error]):
      return finish({k: tf.identity(v) for k, v in item.items()
                     if k != "error"})

  return dataset.map(checked, num_parallel_calls=tf.data.AUTOTUNE,
                     deterministic=True)


def _prefetched(dataset: tf.data.Dataset, data_config) -> tf.data.Dataset:
  prefetch = data_config.num_prefetch
  return dataset.prefetch(prefetch if prefetch > 0 else tf.data.AUTOTUNE)


def _check_augmentation(augmentation, data_config) -> None:
  for aug in augmentation.values():
    if aug is not None:
      aug.check_image_size(data_config.image_height)


class EpisodeStream:
  """Episodes of one split of one source, as numpy records or a tf.data set.

  Construction checks the split eagerly (see EpisodeSampler) and that every
  class file of the split exists; records are indexed and checked when a
  class is first used. `augmentation`: {"support": DataAugmentation or
  None, "query": ...} (augmentation.py), none by default; each episode's
  perturbations are a function of (seed, episode index).
  """

  def __init__(self, spec, split,
               episode_config: Optional[
                   sampler_lib.EpisodeDescriptionConfig] = None,
               data_config: Optional[DataConfig] = None, seed: int = 0,
               padding: str = "bucket",
               augmentation: Optional[Dict[str, Optional[
                   augmentation_lib.DataAugmentation]]] = None):
    if padding not in PADDINGS:
      raise ValueError(f"padding must be one of {PADDINGS}, not {padding!r}.")
    self.spec = spec
    self.split = spec_lib.Split.parse(split)
    self.episode_config = episode_config or (
        sampler_lib.EpisodeDescriptionConfig())
    self.data_config = data_config or DataConfig()
    self.seed = seed
    self.augmentation = dict(augmentation or {})
    _check_augmentation(self.augmentation, self.data_config)
    self.fixed_shape = _is_fixed_shape(self.episode_config)
    self.padding = "none" if self.fixed_shape else padding
    self._new_sampler(0)  # Validates the split now rather than when iterated.
    self.records = reader_lib.ClassRecords(
        spec, self.data_config.read_buffer_size_bytes,
        self.data_config.verify_checksums)
    self.records.check_files(spec.get_classes(self.split))
    self.decoder = reader_lib.image_decoder(self.data_config.image_height,
                                            self.data_config.image_decoding)

  def _episode_rngs(self, index: int) -> Tuple[np.random.Generator, ...]:
    """Generators of episode `index`'s description and of its records.

    They depend on (seed, index) only, so a stream can start at any episode
    without drawing the ones before it (exact resume of a training run).
    """
    return tuple(np.random.default_rng(s)
                 for s in _seeds(self.seed, index)[:2])

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

    The episode dict has the keys of the module docstring plus
    `augment_seed` (int64 [2, 2]: the support and query sets' seeds); its
    images are tensors, decoded (float32 in [-1, 1], or the "fast" decoding's
    uint8), not augmented, and unpadded (its labels and class ids, numpy
    arrays, are padded).

    Raises:
      DataError: naming the record of a bad or undecodable image.
    """
    for index, description in enumerate(self.descriptions(start), start):
      record_rng = self._episode_rngs(index)[1]
      images = {"support": [], "query": []}
      origins = {"support": [], "query": []}
      for class_id, shots, queries in zip(description.class_ids,
                                          description.num_support,
                                          description.num_query):
        n = self.records.num_records(class_id)
        chosen = record_rng.choice(n, shots + queries, replace=False)
        for name, part in (("support", chosen[:shots]),
                           ("query", chosen[shots:])):
          images[name].extend(self.records.read_images(class_id, part))
          origins[name].extend((class_id, int(i)) for i in part)
      where = origins["support"] + origins["query"]
      decoded = self.decoder(images["support"] + images["query"],
                             lambda k: self.records.where(*where[k]))
      episode = self._episode(description, decoded[:len(images["support"])],
                              decoded[len(images["support"]):])
      episode["augment_seed"] = _augmentation_seeds(
          _seeds(self.seed, index)[2], 2)
      yield description, episode

  def _episode(self, description: sampler_lib.EpisodeDescription,
               support: np.ndarray, query: np.ndarray) -> Dict[str, np.ndarray]:
    """The episode of `description` from its decoded support and query images
    (each set class after class, label 0 first)."""
    maximum = dict(zip(("support", "query"), self.episode_config.max_sizes()))
    episode = {"way": np.int32(description.way)}
    for name, images, counts in (("support", support, description.num_support),
                                 ("query", query, description.num_query)):
      size = padded_size(len(images), maximum[name], self.padding)
      ids = np.full((size, 2), -1, np.int32)
      ids[:len(images), 0] = np.repeat(np.arange(description.way), counts)
      ids[:len(images), 1] = np.repeat(description.class_ids, counts)
      episode[f"{name}_images"] = images
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

  def dataset(self, start: int = 0) -> tf.data.Dataset:
    """The episodes from episode `start`, as a tf.data.Dataset of dicts."""
    height = self.data_config.image_height
    images = tf.TensorSpec([None, height, height, 3], self.decoder.dtype)
    ids = tf.TensorSpec([None], tf.int32)
    signature = {"way": tf.TensorSpec([], tf.int32),
                 "augment_seed": tf.TensorSpec([2, 2], tf.int64)}
    empty = {"way": np.int32(0), "augment_seed": np.zeros((2, 2), np.int64)}
    for name in ("support", "query"):
      signature.update({f"{name}_images": images, f"{name}_labels": ids,
                        f"{name}_class_ids": ids})
      empty.update({f"{name}_images": np.zeros(
          (0, height, height, 3), self.decoder.dtype.as_numpy_dtype),
                    f"{name}_labels": np.zeros(0, np.int32),
                    f"{name}_class_ids": np.zeros(0, np.int32)})
    sizes = dict(zip(("support", "query"), self._static_sizes()))

    def finish(episode):
      out = {"way": episode["way"]}
      for k, name in enumerate(("support", "query")):
        images = _prepared(episode[f"{name}_images"],
                           self.augmentation.get(name),
                           episode["augment_seed"][k])
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

    dataset = _read_dataset(
        lambda: (episode for _, episode in self.decoded_episodes(start)),
        signature, empty, finish)
    return _prefetched(dataset, self.data_config)


class BatchStream:
  """Batches of images and class labels for supervised (batch) training, read
  from the records of one split of several sources.

  Every image of the split appears once per epoch, in an order drawn afresh
  for each epoch; batches follow one another through the epochs. With
  several sources, batch i comes from source i mod (number of sources)
  (upstream draws the source of each batch at random), and labels are class
  indices over the sources' classes together: source k's classes follow
  those of sources 0..k-1 (upstream's add_dataset_offset), so there are
  `num_classes` labels. Batch i (its images, their order and augmentation)
  is a function of (seed, i): a run resumes with the batches it would have
  seen.

  Construction checks that every class file of the split exists and that
  the split holds at least one image per source.
  """

  def __init__(self, specs, split, batch_size: int = 256,
               data_config: Optional[DataConfig] = None, seed: int = 0,
               augmentation: Optional[
                   augmentation_lib.DataAugmentation] = None):
    self.specs = list(specs)
    self.split = spec_lib.Split.parse(split)
    self.batch_size = batch_size
    self.data_config = data_config or DataConfig()
    self.seed = seed
    self.augmentation = augmentation
    _check_augmentation({"batch": augmentation}, self.data_config)
    self.records, self._classes, self._ends = [], [], []
    offset = 0
    for spec in self.specs:
      classes = np.array(spec.get_classes(self.split), np.int64)
      counts = np.array([spec.get_total_images_per_class(c) for c in classes])
      if counts.sum() == 0:
        raise errors.DataError(f"Source {spec.name!r} has no {self.split.name} "
                               "image to train on.")
      records = reader_lib.ClassRecords(
          spec, self.data_config.read_buffer_size_bytes,
          self.data_config.verify_checksums)
      records.check_files(classes)
      self.records.append(records)
      self._classes.append((classes, offset))
      self._ends.append(np.cumsum(counts))
      offset += len(classes)
    self.num_classes = offset
    self.decoder = reader_lib.image_decoder(self.data_config.image_height,
                                            self.data_config.image_decoding)

  def _epoch_order(self, source: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, source, epoch]).permutation(
        int(self._ends[source][-1]))

  def items(self, index: int) -> List[Tuple[int, int, int]]:
    """(source, class id, record) of each image of batch `index`."""
    source = index % len(self.specs)
    size = int(self._ends[source][-1])
    first = (index // len(self.specs)) * self.batch_size
    positions = np.arange(first, first + self.batch_size)
    items = []
    for epoch in np.unique(positions // size):
      within = positions[positions // size == epoch] % size
      flat = self._epoch_order(source, int(epoch))[within]
      k = np.searchsorted(self._ends[source], flat, side="right")
      starts = np.concatenate([[0], self._ends[source]])[k]
      classes = self._classes[source][0][k]
      items.extend((source, int(c), int(r))
                   for c, r in zip(classes, flat - starts))
    return items

  def decoded_batches(self, start: int = 0) -> Iterator[Dict[str, np.ndarray]]:
    """Batches from batch `start`: {"images": a tensor, decoded, not
    augmented, "labels": int32 [batch_size], "augment_seed": int64 [2]}.

    Raises:
      DataError: naming the record of a bad or undecodable image.
    """
    for index in itertools.count(start):
      items = self.items(index)
      images = [b""] * len(items)
      by_class = collections.defaultdict(list)
      for k, (source, class_id, _) in enumerate(items):
        by_class[(source, class_id)].append(k)
      for (source, class_id), ks in by_class.items():
        read = self.records[source].read_images(class_id,
                                                [items[k][2] for k in ks])
        for k, image in zip(ks, read):
          images[k] = image
      where = lambda k: self.records[items[k][0]].where(*items[k][1:])
      classes, offset = self._classes[items[0][0]]
      labels = [offset + int(c - classes[0]) for _, c, _ in items]
      yield {"images": self.decoder(images, where),
             "labels": np.array(labels, np.int32),
             "augment_seed": _augmentation_seeds(
                 _seeds(self.seed, index)[2], 1)[0]}

  def dataset(self, start: int = 0) -> tf.data.Dataset:
    """The batches from batch `start`: {"images": float32 [batch_size, h, h,
    3], "labels": int32 [batch_size]}, endless."""
    height = self.data_config.image_height
    shape = [self.batch_size, height, height, 3]
    signature = {"images": tf.TensorSpec(shape, self.decoder.dtype),
                 "labels": tf.TensorSpec([self.batch_size], tf.int32),
                 "augment_seed": tf.TensorSpec([2], tf.int64)}
    empty = {"images": np.zeros(shape, self.decoder.dtype.as_numpy_dtype),
             "labels": np.zeros(self.batch_size, np.int32),
             "augment_seed": np.zeros(2, np.int64)}

    def finish(batch):
      return {"images": _prepared(batch["images"], self.augmentation,
                                  batch["augment_seed"]),
              "labels": batch["labels"]}

    dataset = _read_dataset(lambda: self.decoded_batches(start), signature,
                            empty, finish)
    return _prefetched(dataset, self.data_config)


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
