"""Tiny converted sources for upstream's pipeline (no upstream needed to write them).

Upstream's trainer picks its episode sampler by the source's name: ``ilsvrc_2012`` samples
with the DAG ontology of a HierarchicalDatasetSpecification, ``omniglot`` with the superclasses
of a BiLevelDatasetSpecification.
"""
from tests.data import records_util

IMAGE_SIZE = 16
IMAGES_PER_CLASS = 4
# TRAIN: a root above two nodes of 5 and 6 leaves, so the nodes eligible for episodes (those
# spanning at least min_ways = 5 leaves: root, a, b) span different numbers of classes, as in
# ImageNet; VALID and TEST: a root above 5 leaves.
DAG = {'train': ['a', 'b'], 'a': [f'a{i}' for i in range(5)], 'b': [f'b{i}' for i in range(6)],
       'valid': [f'v{i}' for i in range(5)], 'test': [f't{i}' for i in range(5)]}
SPLIT_ROOTS = {'TRAIN': 'train', 'VALID': 'valid', 'TEST': 'test'}
# Alphabets (superclasses) per split and characters per alphabet, at least min_ways each.
SUPERCLASSES_PER_SPLIT = (2, 1, 1)
CLASSES_PER_SUPERCLASS = (5, 6, 5, 5)


def write_sources(root: str) -> None:
  """Writes ``<root>/ilsvrc_2012`` (hierarchical) and ``<root>/omniglot`` (bi-level)."""
  records_util.make_hierarchical_source(root, 'ilsvrc_2012', DAG, SPLIT_ROOTS,
                                        IMAGES_PER_CLASS, size=IMAGE_SIZE)
  records_util.make_bilevel_source(root, 'omniglot', SUPERCLASSES_PER_SPLIT,
                                   CLASSES_PER_SUPERCLASS, IMAGES_PER_CLASS, size=IMAGE_SIZE)
