"""The batch pipeline (pipeline.BatchStream) of supervised training: epochs
over a split's images, labels over the sources' classes, exact resume,
augmentation."""
import collections

import numpy as np
import pytest

from meta_dataset_ext.data import augmentation as augmentation_lib
from meta_dataset_ext.data import pipeline
from meta_dataset_ext.data.spec import DataError
from tests.data import records_util

HEIGHT = 12


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("records"))
  # TRAIN classes 0-3 (21 images) of "a", 0-1 (8 images) of "b".
  a = records_util.make_flat_source(root, "a", (4, 1, 1), [4, 5, 6, 6, 3, 3],
                                    size=10)
  b = records_util.make_flat_source(root, "b", (2, 1, 1), [4, 4, 2, 2],
                                    size=10)
  return a, b


def stream(specs, batch_size=5, seed=0, augmentation=None):
  return pipeline.BatchStream(specs, "TRAIN", batch_size,
                              pipeline.DataConfig(image_height=HEIGHT), seed,
                              augmentation)


def batches(s, n, start=0):
  return [{k: v.numpy() for k, v in b.items()}
          for b in s.dataset(start).take(n)]


def test_each_epoch_holds_every_image_once_with_its_label(specs):
  s = stream(specs[:1], batch_size=7)  # 21 images: three batches an epoch.
  assert s.num_classes == 4
  for epoch in range(2):
    seen = []
    for batch in batches(s, 3, start=3 * epoch):
      assert batch["images"].shape == (7, HEIGHT, HEIGHT, 3)
      for image, label in zip(batch["images"], batch["labels"]):
        class_id, record = records_util.identify(image)
        assert label == class_id  # Source "a"'s TRAIN classes start at 0.
        seen.append((class_id, record))
    assert sorted(seen) == [(c, r) for c, n in enumerate([4, 5, 6, 6])
                            for r in range(n)]
  orders = [[tuple(i) for i in s.items(k)] for k in (0, 3)]
  assert orders[0] != orders[1]  # Each epoch in its own order.


def test_batches_cross_epoch_boundaries(specs):
  s = stream(specs[:1], batch_size=8)  # 21 images: batch 2 ends in epoch 2.
  items = [i for k in range(3) for i in s.items(k)]
  assert len(set(items[:21])) == 21 and len(set(items[21:])) == 3


def test_sources_take_turns_and_their_labels_follow_each_other(specs):
  s = stream(specs, batch_size=4)
  assert s.num_classes == 6
  for k, batch in enumerate(batches(s, 4)):
    source = k % 2
    assert {i[0] for i in s.items(k)} == {source}
    for image, label in zip(batch["images"], batch["labels"]):
      class_id, _ = records_util.identify(image)
      assert label == class_id + (4 if source == 1 else 0)


def test_batch_i_is_a_function_of_seed_and_i(specs):
  augmentation = augmentation_lib.DataAugmentation(True, 2, True, 0.05)
  straight = batches(stream(specs, augmentation=augmentation), 5)
  resumed = batches(stream(specs, augmentation=augmentation), 2, start=3)
  for a, b in zip(straight[3:], resumed):
    assert np.array_equal(a["images"], b["images"])
    assert np.array_equal(a["labels"], b["labels"])
  other = batches(stream(specs, seed=1, augmentation=augmentation), 1)[0]
  assert not np.array_equal(other["images"], straight[0]["images"])


def test_augmentation_perturbs_batches(specs):
  plain = batches(stream(specs[:1]), 2)
  noise = augmentation_lib.DataAugmentation(enable_gaussian_noise=True,
                                            gaussian_noise_std=0.1)
  for a, b in zip(plain, batches(stream(specs[:1], augmentation=noise), 2)):
    assert np.array_equal(a["labels"], b["labels"])
    assert abs(np.std(b["images"] - a["images"]) - 0.1) < 0.02


def test_classes_are_drawn_in_proportion_to_their_images(specs):
  s = stream(specs[:1], batch_size=21)
  counts = collections.Counter(c for _, c, _ in s.items(0))
  assert counts == {0: 4, 1: 5, 2: 6, 3: 6}


def test_a_split_without_images_is_named(tmp_path):
  empty = records_util.make_flat_source(str(tmp_path), "e", (1, 1, 1),
                                        [0, 2, 2], size=8)
  with pytest.raises(DataError, match="Source 'e' has no TRAIN image"):
    stream([empty])
