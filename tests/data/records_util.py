"""Test helper: tiny converted sources (records + dataset_spec.json) on disk.

Every image is a flat colour that encodes where it came from: red = class id,
green = index of the record in its class file, blue = 200. After decoding
(scale to [-1, 1]) `identify(image)` recovers (class id, record index), so tests
can check labels, class ids and support/query disjointness exactly. PNG keeps
the colours lossless and a flat image survives any bilinear resize.
"""

import os
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf

from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data import writer

BLUE = 200


def encode_png(class_id: int, index: int, size: int) -> bytes:
  """A flat PNG image of colour (class_id, index, BLUE)."""
  pixels = np.empty((size, size, 3), np.uint8)
  pixels[...] = (class_id, index, BLUE)
  return writer.encode_png(pixels)


def damaged_png(class_id: int, index: int, size: int) -> bytes:
  """encode_png's image with a byte of its pixel data flipped: damaged before
  it was written (the record's checksum is intact), so only decoding fails."""
  data = bytearray(encode_png(class_id, index, size))
  data[data.find(b"IDAT") + 8] ^= 0xFF
  return bytes(data)


def identify(image: np.ndarray) -> tuple:
  """(class id, record index) of a decoded image in [-1, 1]."""
  rgb = np.round((np.asarray(image)[0, 0] + 1.0) * 255.0 / 2.0).astype(int)
  assert rgb[2] == BLUE, rgb
  return int(rgb[0]), int(rgb[1])


def write_records(path: str, records: Sequence[bytes]):
  """A TFRecord file holding `records` (serialized, in order)."""
  with tf.io.TFRecordWriter(path) as out:
    for record in records:
      out.write(record)


def write_class_files(source_dir: str, images_per_class: Dict[int, int],
                      size: int):
  """One records file per class of flat PNG images (see module docstring)."""
  for class_id, count in images_per_class.items():
    write_records(os.path.join(source_dir, f"{class_id}.tfrecords"),
                  [writer.make_example(encode_png(class_id, i, size), class_id)
                   for i in range(count)])


def make_flat_source(root: str, name: str, classes_per_split: Sequence[int],
                     images: Sequence[int], size: int = 16):
  """A DatasetSpecification source; images[i] = images of class i."""
  source_dir = os.path.join(root, name)
  os.makedirs(source_dir, exist_ok=True)
  images_per_class = dict(enumerate(images))
  spec = spec_lib.DatasetSpecification(
      name=name,
      classes_per_split=dict(zip(("TRAIN", "VALID", "TEST"),
                                 classes_per_split)),
      images_per_class=images_per_class,
      class_names={i: f"class{i}" for i in images_per_class},
      path=source_dir)
  write_class_files(source_dir, images_per_class, size)
  spec_lib.write_dataset_spec(spec, source_dir)
  return spec


def make_bilevel_source(root: str, name: str,
                        superclasses_per_split: Sequence[int],
                        classes_per_superclass: Sequence[int],
                        images_per_class: int, size: int = 16):
  """A BiLevelDatasetSpecification source, all classes of equal size."""
  source_dir = os.path.join(root, name)
  os.makedirs(source_dir, exist_ok=True)
  num_classes = sum(classes_per_superclass)
  images = {i: images_per_class for i in range(num_classes)}
  spec = spec_lib.BiLevelDatasetSpecification(
      name=name,
      superclasses_per_split=dict(zip(("TRAIN", "VALID", "TEST"),
                                      superclasses_per_split)),
      classes_per_superclass=dict(enumerate(classes_per_superclass)),
      images_per_class=images,
      superclass_names={i: f"alphabet{i}"
                        for i in range(len(classes_per_superclass))},
      class_names={i: f"char{i}" for i in range(num_classes)},
      path=source_dir)
  write_class_files(source_dir, images, size)
  spec_lib.write_dataset_spec(spec, source_dir)
  return spec


def make_hierarchical_source(root: str, name: str, children: Dict[str, List[str]],
                             split_roots: Dict[str, str], images_per_class: int,
                             size: int = 16):
  """A HierarchicalDatasetSpecification source from a DAG.

  Args:
    children: {node: child nodes}; nodes without an entry are leaves.
    split_roots: {"TRAIN"/"VALID"/"TEST": root node of that split's graph}.
    images_per_class: images of every leaf.
  """
  parents: Dict[str, List[str]] = {}
  for node, kids in children.items():
    for kid in kids:
      parents.setdefault(kid, []).append(node)

  def below(node):
    nodes = {node}
    for kid in children.get(node, []):
      nodes |= below(kid)
    return nodes

  graphs, counts, leaves = {}, {}, []
  for split in ("TRAIN", "VALID", "TEST"):
    nodes = sorted(below(split_roots[split]))
    graphs[split] = {
        n: spec_lib.Synset(n, n, tuple(children.get(n, ())),
                           tuple(parents.get(n, ()))) for n in nodes}
    split_leaves = sorted(n for n in nodes if n not in children)
    counts[split] = {n: images_per_class * len(
        [x for x in below(n) if x not in children]) for n in nodes}
    leaves += split_leaves
  source_dir = os.path.join(root, name)
  os.makedirs(source_dir, exist_ok=True)
  spec = spec_lib.HierarchicalDatasetSpecification(
      name=name, split_subgraphs=graphs, images_per_class=counts,
      class_names=dict(enumerate(leaves)), path=source_dir)
  write_class_files(source_dir, {i: images_per_class
                                 for i in range(len(leaves))}, size)
  spec_lib.write_dataset_spec(spec, source_dir)
  return spec
