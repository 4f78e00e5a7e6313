"""Episode descriptions: which classes, how many support and query images each.

This is Meta-Dataset's episode sampling, in numpy, seeded with a
`numpy.random.Generator` so that the same seed gives the same episodes.

Variable way and shot (the benchmark's default, every count left as None):
  1. way: uniform in [min_ways, min(max_ways_upper_bound, classes available)];
     for a bi-level source (omniglot) all classes come from one superclass
     drawn uniformly; for a hierarchical source (ilsvrc_2012) they are the
     leaves below one internal DAG node drawn uniformly among the nodes that
     span between min_ways and max_spanning_leaves_eligible leaves, subsampled
     to max_ways_upper_bound leaves when there are more.
  2. query per class: min(max_num_query, floor(smallest chosen class / 2)).
  3. support total: min(max_support_set_size,
         sum_c floor(beta * min(max_support_size_contrib_per_class,
                                remaining_c)) + 1), beta ~ U(0, 1),
     remaining_c = images of class c minus its queries.
  4. shots per class: w_c = images_c * exp(U(min_log_weight, max_log_weight)),
     shots_c = min(remaining_c, floor(w_c / sum(w) * (total - way)) + 1).
Fixed shapes: set num_ways, num_support (an int, or a (low, high) range drawn
per episode) and num_query.

Public API
----------
EpisodeDescriptionConfig   gin-configurable, upstream's parameter names.
EpisodeDescription         class_ids, num_support, num_query (per class).
EpisodeSampler(spec, split, config, seed).sample() -> EpisodeDescription
"""

import dataclasses
import logging
import math
from typing import List, Optional, Tuple, Union

import gin
import numpy as np

from meta_dataset_ext import checks
from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data.spec import DataError
from meta_dataset_ext.errors import ConfigError


@gin.configurable
@dataclasses.dataclass
class EpisodeDescriptionConfig:
  """How episodes are composed; names and defaults follow upstream's gin.

  Attributes:
    num_ways: fixed number of classes per episode; None = variable way.
    num_support: fixed shots per class (int), a (low, high) range drawn once
      per episode, or None = variable, class-imbalanced shots.
    num_query: fixed queries per class; None = variable (see max_num_query).
    min_ways: smallest way when the way is variable.
    max_ways_upper_bound: largest way when the way is variable.
    max_num_query: cap on queries per class when num_query is None.
    max_support_set_size: cap on the support set size (variable shots).
    max_support_size_contrib_per_class: cap on one class's contribution to
      the support set size draw (not on its shots).
    min_log_weight, max_log_weight: range of the per-class log-weights.
    ignore_dag_ontology: sample ilsvrc_2012-like sources' classes uniformly.
    ignore_bilevel_ontology: sample omniglot-like sources' classes uniformly.
    ignore_hierarchy_probability: fraction of episodes of a hierarchical or
      bi-level source whose classes are drawn uniformly instead.
    min_examples_in_class: classes with fewer images are left out of the
      split (logged); 0 keeps all classes.
    max_spanning_leaves_eligible: a DAG node spanning more leaves than this is
      never drawn (upstream's constant 392 for ilsvrc_2012).
    simclr_episode_fraction, num_unique_descriptions,
    episode_description_switch_frequency: accepted so that upstream's gin
      files parse; only their defaults (0.0, 0, 1) are supported.

  Raises:
    ConfigError: a value of the wrong type or out of range, min_ways above
      max_ways_upper_bound, min_log_weight above max_log_weight, or an
      unsupported option, naming the binding (e.g.
      'EpisodeDescriptionConfig.num_support').
  """
  num_ways: Optional[int] = None
  num_support: Union[None, int, Tuple[int, int]] = None
  num_query: Optional[int] = None
  min_ways: int = 5
  max_ways_upper_bound: int = 50
  max_num_query: int = 10
  max_support_set_size: int = 500
  max_support_size_contrib_per_class: int = 100
  min_log_weight: float = math.log(0.5)
  max_log_weight: float = math.log(2.0)
  ignore_dag_ontology: bool = False
  ignore_bilevel_ontology: bool = False
  ignore_hierarchy_probability: float = 0.0
  min_examples_in_class: int = 0
  max_spanning_leaves_eligible: int = 392
  simclr_episode_fraction: float = 0.0
  num_unique_descriptions: int = 0
  episode_description_switch_frequency: int = 1

  def __post_init__(self):
    binding = lambda field: f"EpisodeDescriptionConfig.{field}"
    for field in ("num_ways", "num_query"):
      if getattr(self, field) is not None:
        setattr(self, field, checks.integer(binding(field),
                                            getattr(self, field), minimum=1))
    self.num_support = _checked_num_support(self.num_support)
    for field, minimum in (("min_ways", 1), ("max_ways_upper_bound", 1),
                           ("max_num_query", 1), ("max_support_set_size", 1),
                           ("max_support_size_contrib_per_class", 1),
                           ("min_examples_in_class", 0),
                           ("max_spanning_leaves_eligible", 1)):
      setattr(self, field, checks.integer(binding(field), getattr(self, field),
                                          minimum=minimum))
    for field in ("min_log_weight", "max_log_weight"):
      setattr(self, field, checks.number(binding(field), getattr(self, field)))
    self.ignore_hierarchy_probability = checks.number(
        binding("ignore_hierarchy_probability"),
        self.ignore_hierarchy_probability, minimum=0.0, maximum=1.0)
    for field in ("ignore_dag_ontology", "ignore_bilevel_ontology"):
      setattr(self, field, checks.boolean(binding(field), getattr(self, field)))
    for low, high in (("min_ways", "max_ways_upper_bound"),
                      ("min_log_weight", "max_log_weight")):
      if getattr(self, low) > getattr(self, high):
        raise ConfigError(
            f"{binding(low)} = {getattr(self, low)!r} is larger than "
            f"{binding(high)} = {getattr(self, high)!r}: bind values with "
            f"{low} <= {high}.")
    unsupported = {"simclr_episode_fraction": 0.0,
                   "num_unique_descriptions": 0,
                   "episode_description_switch_frequency": 1}
    for name, default in unsupported.items():
      if getattr(self, name) != default:
        raise ConfigError(f"{binding(name)} = {getattr(self, name)!r} is not "
                          f"supported (only {default!r} is): remove the "
                          "binding.")

  @classmethod
  def fixed(cls, num_ways: int, num_support: int, num_query: int,
            **kwargs) -> "EpisodeDescriptionConfig":
    """A fixed-shape config (e.g. 5-way 1-shot 15 queries), classes uniform."""
    return cls(num_ways=num_ways, num_support=num_support, num_query=num_query,
               ignore_dag_ontology=True, ignore_bilevel_ontology=True,
               **kwargs)

  @property
  def max_ways(self) -> int:
    """The way, or its largest value when variable."""
    return self.num_ways or self.max_ways_upper_bound

  @property
  def max_support_per_class(self) -> Optional[int]:
    """Largest fixed shots per class; None when shots are variable."""
    if isinstance(self.num_support, tuple):
      return self.num_support[1]
    return self.num_support

  def max_sizes(self) -> Tuple[int, int]:
    """Upper bounds (support set size, query set size) of any episode."""
    support = (self.max_support_set_size if self.num_support is None else
               self.max_ways * self.max_support_per_class)
    query = self.max_ways * (self.num_query or self.max_num_query)
    return support, query


def _checked_num_support(value) -> Union[None, int, Tuple[int, int]]:
  """EpisodeDescriptionConfig.num_support as None, an int or a (low, high)."""
  binding = "EpisodeDescriptionConfig.num_support"
  expected = (f"{binding} = {value!r} must be a number of shots >= 1, a "
              "(low, high) range of them with low <= high, or None (variable "
              "shots).")
  if value is None:
    return None
  try:
    if isinstance(value, (list, tuple)):
      if len(value) != 2:
        raise ConfigError(expected)
      low, high = (checks.integer(binding, v, minimum=1) for v in value)
      if low > high:
        raise ConfigError(expected)
      return low, high
    return checks.integer(binding, value, minimum=1)
  except ConfigError:
    raise ConfigError(expected) from None


@dataclasses.dataclass(frozen=True)
class EpisodeDescription:
  """The composition of one episode; entry i describes label i.

  Attributes:
    class_ids: absolute class ids (as in the spec and the records files).
    num_support: support images of each class.
    num_query: query images of each class.
  """
  class_ids: Tuple[int, ...]
  num_support: Tuple[int, ...]
  num_query: Tuple[int, ...]

  @property
  def way(self) -> int:
    return len(self.class_ids)

  def to_dict(self) -> dict:
    return dict(way=self.way, class_ids=list(self.class_ids),
                num_support=list(self.num_support),
                num_query=list(self.num_query))


def compute_num_query(images_per_class: np.ndarray, max_num_query: int,
                      max_support: Optional[int]) -> int:
  """Balanced queries per class (step 2; with fixed shots, what they leave)."""
  if max_support is None:
    return int(min(max_num_query, (images_per_class // 2).min()))
  return int(min(max_num_query, images_per_class.min() - max_support))


def sample_support_set_size(num_remaining_per_class: np.ndarray,
                            max_support_size_contrib_per_class: int,
                            max_support_set_size: int,
                            rng: np.random.Generator) -> int:
  """Step 3: the support set size, at least one image per class."""
  beta = rng.uniform()
  contributions = np.minimum(max_support_size_contrib_per_class,
                             num_remaining_per_class)
  return int(min(np.floor(beta * contributions + 1).sum(),
                 max_support_set_size))


def sample_num_support_per_class(images_per_class: np.ndarray,
                                 num_remaining_per_class: np.ndarray,
                                 support_set_size: int, min_log_weight: float,
                                 max_log_weight: float,
                                 rng: np.random.Generator) -> np.ndarray:
  """Step 4: shots per class, roughly proportional to class sizes."""
  weights = images_per_class * np.exp(
      rng.uniform(min_log_weight, max_log_weight, size=len(images_per_class)))
  to_spread = support_set_size - len(images_per_class)
  shots = np.floor(weights / weights.sum() * to_spread).astype(np.int64) + 1
  return np.minimum(shots, num_remaining_per_class)


class EpisodeSampler:
  """Draws EpisodeDescriptions for one split of one source.

  The class choice depends on the spec class: a BiLevelDatasetSpecification
  draws one superclass per episode, a HierarchicalDatasetSpecification one DAG
  node, unless the config's ignore_* flags say otherwise; any other spec, or a
  fixed num_ways, draws classes uniformly from the split.

  Raises (at construction, naming the source, split or class):
    DataError: the split has fewer usable classes than the minimum way, a
      class has fewer than 2 images (or fewer than fixed shots + queries), a
      superclass has fewer classes than min_ways, no DAG node is eligible, a
      hierarchy is combined with a fixed num_ways, or max_support_set_size
      cannot give every class of the largest way one image.
  """

  def __init__(self, spec, split, config: EpisodeDescriptionConfig,
               seed: Union[int, np.random.Generator, None] = 0):
    self.spec = spec
    self.split = spec_lib.Split.parse(split)
    self.config = config
    self._rng = np.random.default_rng(seed)
    self._where = f"split {self.split.name} of source {spec.name!r}"
    self._class_ids = self._usable_classes()
    self._hierarchy = self._hierarchy_kind()
    self._check_ways()
    self._check_class_sizes()
    if self._hierarchy == "bilevel":
      self._superclasses = self._eligible_superclasses()
    elif self._hierarchy == "dag":
      self._node_classes = self._eligible_node_classes()

  # -- construction-time checks ---------------------------------------------

  def _usable_classes(self) -> List[int]:
    cfg = self.config
    class_ids, skipped = [], []
    for class_id in self.spec.get_classes(self.split):
      n = self.spec.get_total_images_per_class(class_id)
      (class_ids if n >= cfg.min_examples_in_class else skipped).append(
          class_id)
    if skipped:
      logging.info("%s: leaving out classes %s, which have fewer than %d "
                   "images (min_examples_in_class).", self._where, skipped,
                   cfg.min_examples_in_class)
    needed = cfg.num_ways or cfg.min_ways
    if len(class_ids) < needed:
      raise DataError(
          f"{self._where} has {len(class_ids)} usable classes, fewer than the "
          f"{'num_ways' if cfg.num_ways else 'min_ways'} of {needed}.")
    return class_ids

  def _hierarchy_kind(self) -> Optional[str]:
    cfg = self.config
    if (isinstance(self.spec, spec_lib.BiLevelDatasetSpecification) and
        not cfg.ignore_bilevel_ontology):
      kind, flag = "bilevel", "ignore_bilevel_ontology"
    elif (isinstance(self.spec, spec_lib.HierarchicalDatasetSpecification) and
          not cfg.ignore_dag_ontology):
      kind, flag = "dag", "ignore_dag_ontology"
    else:
      return None
    if cfg.num_ways is not None:
      raise DataError(
          f"{self._where}: a fixed num_ways cannot be combined with the "
          f"source's {kind} ontology; set EpisodeDescriptionConfig.{flag} = "
          "True (EpisodeDescriptionConfig.fixed does).")
    if kind == "bilevel" and cfg.min_examples_in_class > 0:
      raise DataError(f"{self._where}: min_examples_in_class cannot be "
                      "combined with the bilevel ontology.")
    return kind

  def _check_ways(self):
    cfg = self.config
    largest_way = min(cfg.max_ways, len(self._class_ids))
    if cfg.num_support is None and cfg.max_support_set_size < largest_way:
      raise DataError(
          f"{self._where}: max_support_set_size={cfg.max_support_set_size} "
          f"cannot give one support image to each of up to {largest_way} "
          "classes.")

  def _check_class_sizes(self):
    cfg = self.config
    fixed_support = cfg.max_support_per_class
    needed = 2 if fixed_support is None else fixed_support + (
        cfg.num_query or 1)
    for class_id in self._class_ids:
      n = self.spec.get_total_images_per_class(class_id)
      if n < needed:
        raise DataError(
            f"Class {class_id} ({self.spec.class_names.get(class_id)!r}) of "
            f"{self._where} has {n} images; episodes need at least {needed}.")

  def _eligible_superclasses(self) -> List[int]:
    superclasses = list(self.spec.get_superclasses(self.split))
    for superclass_id in superclasses:
      size = self.spec.classes_per_superclass[superclass_id]
      if size < self.config.min_ways:
        raise DataError(
            f"Superclass {superclass_id} "
            f"({self.spec.superclass_names.get(superclass_id)!r}) of "
            f"{self._where} has {size} classes, fewer than min_ways="
            f"{self.config.min_ways}.")
    return superclasses

  def _eligible_node_classes(self) -> List[List[int]]:
    """For each eligible internal node (sorted by wn_id): its leaves' ids."""
    usable = set(self._class_ids)
    spanning = self.spec.spanning_leaves(self.split)
    graph = self.spec.split_subgraphs[self.split]
    eligible = []
    for wn_id in sorted(spanning):
      if not graph[wn_id].children_ids:
        continue
      ids = [self.spec.class_names_to_ids[leaf] for leaf in spanning[wn_id]]
      ids = [i for i in ids if i in usable]
      if (self.config.min_ways <= len(ids) <=
          self.config.max_spanning_leaves_eligible):
        eligible.append(ids)
    if not eligible:
      raise DataError(
          f"{self._where}: no DAG node spans between min_ways="
          f"{self.config.min_ways} and max_spanning_leaves_eligible="
          f"{self.config.max_spanning_leaves_eligible} classes.")
    return eligible

  # -- sampling ---------------------------------------------------------------

  def _use_hierarchy(self) -> bool:
    p = self.config.ignore_hierarchy_probability
    return self._hierarchy is not None and (p == 0 or self._rng.uniform() >= p)

  def _sample_way(self, num_available: int) -> int:
    cfg = self.config
    high = min(cfg.max_ways_upper_bound, num_available)
    return int(self._rng.integers(cfg.min_ways, high + 1))

  def sample_class_ids(self) -> List[int]:
    """Step 1: the episode's absolute class ids (label i = entry i)."""
    cfg = self.config
    rng = self._rng
    hierarchy = self._hierarchy if self._use_hierarchy() else None
    if hierarchy == "bilevel":
      superclass = self._superclasses[rng.integers(len(self._superclasses))]
      members = self.spec.superclass_class_ids(superclass)
      chosen = rng.choice(len(members), self._sample_way(len(members)),
                          replace=False)
      return [members[i] for i in chosen]
    if hierarchy == "dag":
      ids = self._node_classes[rng.integers(len(self._node_classes))]
      if len(ids) > cfg.max_ways_upper_bound:
        ids = rng.choice(ids, cfg.max_ways_upper_bound, replace=False)
      return [int(i) for i in ids]
    way = cfg.num_ways or self._sample_way(len(self._class_ids))
    return [int(i) for i in rng.choice(self._class_ids, way, replace=False)]

  def sample(self) -> EpisodeDescription:
    """Draws one episode description."""
    cfg = self.config
    class_ids = self.sample_class_ids()
    images = np.array(
        [self.spec.get_total_images_per_class(c) for c in class_ids])
    num_query = cfg.num_query or compute_num_query(
        images, cfg.max_num_query, cfg.max_support_per_class)
    if isinstance(cfg.num_support, int):
      shots = np.full(len(class_ids), cfg.num_support)
    elif isinstance(cfg.num_support, tuple):
      low, high = cfg.num_support
      shots = np.full(len(class_ids), self._rng.integers(low, high + 1))
    else:
      remaining = images - num_query
      total = sample_support_set_size(
          remaining, cfg.max_support_size_contrib_per_class,
          cfg.max_support_set_size, self._rng)
      shots = sample_num_support_per_class(
          images, remaining, total, cfg.min_log_weight, cfg.max_log_weight,
          self._rng)
    return EpisodeDescription(
        class_ids=tuple(int(c) for c in class_ids),
        num_support=tuple(int(s) for s in shots),
        num_query=(int(num_query),) * len(class_ids))

  def reseed(self, seed: Union[int, np.random.Generator]) -> None:
    """Makes the next draws come from `seed` (streams seed every episode)."""
    self._rng = np.random.default_rng(seed)

  def __iter__(self):
    while True:
      yield self.sample()
