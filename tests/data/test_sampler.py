"""Tests of meta_dataset_ext.data.sampler: Meta-Dataset's episode statistics."""

import gin
import numpy as np
import pytest

from meta_dataset_ext.data import sampler as sampler_lib
from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data.sampler import EpisodeDescriptionConfig
from meta_dataset_ext.data.spec import DataError
from meta_dataset_ext.errors import ConfigError

NUM_DRAWS = 1500


def flat_spec(images, classes_per_split=None):
  n = len(images)
  classes_per_split = classes_per_split or {"TRAIN": n, "VALID": 0, "TEST": 0}
  return spec_lib.DatasetSpecification(
      name="flat", classes_per_split=classes_per_split,
      images_per_class=dict(enumerate(images)),
      class_names={i: f"c{i}" for i in range(n)}, path="unused")


def bilevel_spec(classes_per_superclass, superclasses_per_split, images=20):
  n = sum(classes_per_superclass)
  return spec_lib.BiLevelDatasetSpecification(
      name="bi", superclasses_per_split=superclasses_per_split,
      classes_per_superclass=dict(enumerate(classes_per_superclass)),
      images_per_class={i: images for i in range(n)},
      superclass_names={i: f"a{i}" for i in range(len(classes_per_superclass))},
      class_names={i: f"c{i}" for i in range(n)}, path="unused")


def hierarchical_spec():
  """TRAIN: root -> {big (60 leaves), g1 (6 leaves), g2 (3 leaves)}."""
  children = {"root": ["big", "g1", "g2"],
              "big": [f"b{i:02d}" for i in range(60)],
              "g1": [f"p{i}" for i in range(6)],
              "g2": ["q0", "q1", "q2"],
              "vroot": [f"v{i}" for i in range(5)],
              "troot": [f"t{i}" for i in range(5)]}
  parents = {k: [p] for p, kids in children.items() for k in kids}
  roots = {"TRAIN": "root", "VALID": "vroot", "TEST": "troot"}

  def below(n):
    return [n] + [x for k in children.get(n, []) for x in below(k)]

  graphs, counts, leaves = {}, {}, []
  for split, root in roots.items():
    nodes = sorted(below(root))
    graphs[split] = {n: spec_lib.Synset(n, n, tuple(children.get(n, [])),
                                        tuple(parents.get(n, [])))
                     for n in nodes}
    counts[split] = {n: 30 * len([x for x in below(n) if x not in children])
                     for n in nodes}
    leaves += sorted(n for n in nodes if n not in children)
  return spec_lib.HierarchicalDatasetSpecification(
      name="tree", split_subgraphs=graphs, images_per_class=counts,
      class_names=dict(enumerate(leaves)), path="unused")


def draws(spec, config=None, split="TRAIN", seed=0, n=NUM_DRAWS):
  sampler = sampler_lib.EpisodeSampler(
      spec, split, config or EpisodeDescriptionConfig(), seed)
  return [sampler.sample() for _ in range(n)]


def test_variable_way_and_shot_statistics():
  rng = np.random.default_rng(1)
  images = rng.integers(2, 400, size=70)
  spec = flat_spec(images)
  episodes = draws(spec)
  ways = [e.way for e in episodes]
  assert min(ways) == 5 and max(ways) == 50
  # Uniform over 5..50: every way shows up, mean near 27.5.
  assert set(ways) == set(range(5, 51))
  assert abs(np.mean(ways) - 27.5) < 1.5
  for e in episodes:
    sizes = images[list(e.class_ids)]
    assert len(set(e.class_ids)) == e.way
    assert set(e.num_query) == {min(10, sizes.min() // 2)}
    shots = np.array(e.num_support)
    assert shots.min() >= 1
    assert shots.sum() <= 500
    # Support and query of a class fit in it, so they can be disjoint.
    assert np.all(shots + np.array(e.num_query) <= sizes)


def test_support_size_can_reach_its_cap_and_shots_follow_class_size():
  spec = flat_spec([600] * 25 + [40] * 25)
  episodes = draws(spec)
  # The total is capped at 500; flooring the per-class shares loses a few.
  assert 450 <= max(sum(e.num_support) for e in episodes) <= 500
  big, small = [], []
  for e in episodes:
    for c, s in zip(e.class_ids, e.num_support):
      (big if c < 25 else small).append(s)
  assert np.mean(big) > 3 * np.mean(small)


def test_small_classes_limit_queries():
  spec = flat_spec([3, 5, 7, 9, 11, 40, 40])
  for e in draws(spec, n=300):
    smallest = min(spec.images_per_class[c] for c in e.class_ids)
    assert e.num_query[0] == min(10, smallest // 2)


def test_way_is_capped_by_split_classes_and_ids_stay_in_split():
  spec = flat_spec([20] * 21, {"TRAIN": 12, "VALID": 7, "TEST": 2})
  ways = set()
  for e in draws(spec, split="VALID", n=500):
    ways.add(e.way)
    assert all(12 <= c < 19 for c in e.class_ids)
  assert ways == {5, 6, 7}


def test_fixed_shape_episodes():
  spec = flat_spec([20] * 12)
  config = EpisodeDescriptionConfig.fixed(5, 1, 15)
  for e in draws(spec, config, n=200):
    assert e.way == 5
    assert e.num_support == (1,) * 5 and e.num_query == (15,) * 5


def test_support_range_is_drawn_per_episode():
  spec = flat_spec([30] * 12)
  config = EpisodeDescriptionConfig(num_ways=5, num_support=(1, 5),
                                    num_query=10)
  shots = set()
  for e in draws(spec, config, n=300):
    assert len(set(e.num_support)) == 1
    shots.add(e.num_support[0])
  assert shots == {1, 2, 3, 4, 5}


def test_same_seed_same_episodes():
  spec = flat_spec(list(range(2, 80)))
  assert draws(spec, seed=7, n=50) == draws(spec, seed=7, n=50)
  assert draws(spec, seed=7, n=50) != draws(spec, seed=8, n=50)


def test_bilevel_episodes_stay_inside_one_superclass():
  spec = bilevel_spec([6, 12, 9, 7, 5, 8], {"TRAIN": 3, "VALID": 1, "TEST": 2})
  seen = set()
  for e in draws(spec, n=800):
    superclasses = {sc for sc in range(3)
                    if set(e.class_ids) <= set(spec.superclass_class_ids(sc))}
    assert len(superclasses) == 1
    sc = superclasses.pop()
    assert 5 <= e.way <= spec.classes_per_superclass[sc]
    seen.add(sc)
  assert seen == {0, 1, 2}
  for e in draws(spec, split="TEST", n=100):
    assert set(e.class_ids) <= set(range(34, 47))


def test_bilevel_ontology_can_be_ignored():
  spec = bilevel_spec([6, 12, 9, 7, 5, 8], {"TRAIN": 3, "VALID": 1, "TEST": 2})
  config = EpisodeDescriptionConfig(ignore_hierarchy_probability=1.0)
  mixed = [e for e in draws(spec, config, n=200)
           if not any(set(e.class_ids) <= set(spec.superclass_class_ids(sc))
                      for sc in range(3))]
  assert mixed


def test_hierarchical_episodes_stay_inside_one_node():
  spec = hierarchical_spec()
  span = spec.spanning_leaves("TRAIN")
  node_ids = {n: {spec.class_names_to_ids[x] for x in leaves}
              for n, leaves in span.items() if len(leaves) > 1}
  config = EpisodeDescriptionConfig(max_spanning_leaves_eligible=60)
  nodes_seen = set()
  for e in draws(spec, config, n=600):
    ids = set(e.class_ids)
    smallest = min((n for n in node_ids if ids <= node_ids[n]),
                   key=lambda n: len(node_ids[n]))
    nodes_seen.add(smallest)
    assert e.way == min(len(node_ids[smallest]), 50)
  # g2 spans 3 < min_ways leaves; root spans 69 > 60 leaves: never drawn.
  assert nodes_seen == {"big", "g1"}


def test_fixed_way_with_ontology_needs_ignore_flag():
  spec = bilevel_spec([6, 6, 6], {"TRAIN": 1, "VALID": 1, "TEST": 1})
  with pytest.raises(DataError, match="ignore_bilevel_ontology"):
    sampler_lib.EpisodeSampler(
        spec, "TRAIN", EpisodeDescriptionConfig(num_ways=5, num_support=1,
                                                num_query=5))
  e = draws(spec, EpisodeDescriptionConfig.fixed(5, 1, 5), n=1)[0]
  assert e.way == 5


def test_class_with_fewer_than_two_images_is_named():
  spec = flat_spec([10, 10, 1, 10, 10, 10])
  with pytest.raises(DataError, match=r"Class 2 \('c2'\).*1 images"):
    sampler_lib.EpisodeSampler(spec, "TRAIN", EpisodeDescriptionConfig())


def test_fixed_shots_need_enough_images():
  spec = flat_spec([20, 20, 20, 20, 19])
  with pytest.raises(DataError, match=r"Class 4 .*at least 20"):
    sampler_lib.EpisodeSampler(spec, "TRAIN",
                               EpisodeDescriptionConfig.fixed(5, 5, 15))


def test_split_with_too_few_classes():
  spec = flat_spec([10] * 8, {"TRAIN": 4, "VALID": 2, "TEST": 2})
  with pytest.raises(DataError, match=r"split TRAIN .* 4 usable classes.*5"):
    sampler_lib.EpisodeSampler(spec, "TRAIN", EpisodeDescriptionConfig())


def test_small_superclass_is_named():
  spec = bilevel_spec([6, 4, 6], {"TRAIN": 2, "VALID": 1, "TEST": 0})
  with pytest.raises(DataError, match=r"Superclass 1 \('a1'\).*4 classes"):
    sampler_lib.EpisodeSampler(spec, "TRAIN", EpisodeDescriptionConfig())


def test_min_examples_in_class_leaves_small_classes_out():
  spec = flat_spec([1, 3, 30, 30, 30, 30, 30])
  config = EpisodeDescriptionConfig(min_examples_in_class=4)
  for e in draws(spec, config, n=100):
    assert set(e.class_ids) <= {2, 3, 4, 5, 6}


def test_config_is_gin_configurable_with_upstream_names():
  try:
    gin.parse_config("""
        EpisodeDescriptionConfig.num_ways = 5
        EpisodeDescriptionConfig.num_support = 1
        EpisodeDescriptionConfig.num_query = 15
        EpisodeDescriptionConfig.max_ways_upper_bound = 50
        EpisodeDescriptionConfig.min_log_weight = -0.69314718055994529
        EpisodeDescriptionConfig.simclr_episode_fraction = 0.0
    """)
    config = EpisodeDescriptionConfig()
    assert (config.num_ways, config.num_support, config.num_query) == (5, 1, 15)
    assert config.max_sizes() == (5, 75)
  finally:
    gin.clear_config()


def test_unsupported_upstream_options_are_refused():
  with pytest.raises(ConfigError, match="simclr_episode_fraction = 0.5"):
    EpisodeDescriptionConfig(simclr_episode_fraction=0.5)


@pytest.mark.parametrize("field,value,match", [
    ("num_support", 0, "num_support = 0 must be a number of shots >= 1"),
    ("num_support", -2, "num_support = -2 must be"),
    ("num_support", (3, 1), r"num_support = \(3, 1\) must be .*low <= high"),
    ("num_support", (1, 2, 3), r"num_support = \(1, 2, 3\)"),
    ("num_support", "5", "num_support = '5'"),
    ("num_query", 0, "num_query = 0 must be an integer >= 1"),
    ("num_ways", 2.5, "num_ways = 2.5 must be an integer"),
    ("num_ways", True, "num_ways = True must be an integer"),
    ("max_num_query", 0, "max_num_query = 0 must be an integer >= 1"),
    ("min_ways", 0, "min_ways = 0"),
    ("max_ways_upper_bound", 4, "min_ways = 5 is larger than "
     "EpisodeDescriptionConfig.max_ways_upper_bound = 4"),
    ("max_support_set_size", 0, "max_support_set_size = 0"),
    ("max_support_size_contrib_per_class", -1,
     "max_support_size_contrib_per_class = -1"),
    ("min_examples_in_class", -1, "min_examples_in_class = -1"),
    ("max_spanning_leaves_eligible", 0, "max_spanning_leaves_eligible = 0"),
    ("max_log_weight", -1.0, "min_log_weight = .* is larger than "
     "EpisodeDescriptionConfig.max_log_weight = -1.0"),
    ("min_log_weight", "low", "min_log_weight = 'low' must be a number"),
    ("ignore_hierarchy_probability", 1.5,
     "ignore_hierarchy_probability = 1.5 must be a number >= 0.0 and <= 1.0"),
    ("ignore_dag_ontology", 1, "ignore_dag_ontology = 1 must be True or "
     "False"),
])
def test_config_values_are_checked_where_they_enter(field, value, match):
  with pytest.raises(ConfigError, match=f"EpisodeDescriptionConfig.{match}"):
    EpisodeDescriptionConfig(**{field: value})


def test_config_values_in_gin_forms_are_accepted():
  config = EpisodeDescriptionConfig(num_support=[1, 5], num_ways=5.0,
                                    max_num_query=1e1)
  assert config.num_support == (1, 5)
  assert config.num_ways == 5 and isinstance(config.num_ways, int)
  assert config.max_num_query == 10


def test_support_set_cap_below_the_largest_way():
  spec = flat_spec([20] * 30)
  with pytest.raises(DataError, match="max_support_set_size=20 .* 30"):
    sampler_lib.EpisodeSampler(spec, "TRAIN", EpisodeDescriptionConfig(
        max_support_set_size=20))
