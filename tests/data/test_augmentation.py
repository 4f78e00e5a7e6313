"""Data augmentation (augmentation.py) and where the episode pipeline applies
it."""
import gin
import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext.data import augmentation as augmentation_lib
from meta_dataset_ext.data import pipeline
from meta_dataset_ext.data.sampler import EpisodeDescriptionConfig
from meta_dataset_ext.errors import ConfigError
from tests.data import records_util

Augmentation = augmentation_lib.DataAugmentation
HEIGHT = 16
EPISODES = EpisodeDescriptionConfig(max_ways_upper_bound=6, max_num_query=2,
                                    max_support_set_size=12)


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("records"))
  return records_util.make_flat_source(root, "flat", (8, 2, 2), [6] * 12,
                                       size=20)


def episodes(spec, augmentation=None, seed=0, start=0, n=3):
  stream = pipeline.EpisodeStream(spec, "TRAIN", EPISODES,
                                  pipeline.DataConfig(image_height=HEIGHT),
                                  seed, augmentation=augmentation)
  return [{k: v.numpy() for k, v in e.items()}
          for e in stream.dataset(start).take(n)]


def seed(*values):
  return tf.constant(values, tf.int64)


def test_off_by_default_and_upstreams_zero_configuration_change_nothing(spec):
  assert not Augmentation().active and not augmentation_lib.is_active(None)
  plain = episodes(spec)
  # Upstream's data_config.gin enables jitter and noise on the support set, at
  # zero.
  zero = Augmentation(enable_jitter=True, jitter_amount=0,
                      enable_gaussian_noise=True, gaussian_noise_std=0.0)
  assert not zero.active
  for a, b in zip(plain, episodes(spec, {"support": zero, "query": zero})):
    for key in a:
      assert np.array_equal(a[key], b[key]), key


def test_noise_has_the_standard_deviation_asked_for():
  images = tf.zeros([64, HEIGHT, HEIGHT, 3])
  noise = Augmentation(enable_gaussian_noise=True, gaussian_noise_std=0.25)
  noisy = augmentation_lib.augment(images, noise, seed(1, 2)).numpy()
  assert abs(noisy.mean()) < 0.01 and abs(noisy.std() - 0.25) < 0.005
  # Independent values: neighbouring pixels uncorrelated.
  correlation = np.corrcoef(noisy[:, :, :-1].ravel(), noisy[:, :, 1:].ravel())
  assert abs(correlation[0, 1]) < 0.02
  off = Augmentation(enable_gaussian_noise=False, gaussian_noise_std=0.25)
  assert np.array_equal(augmentation_lib.augment(images, off, seed(1, 2)),
                        images)


def reflect_crops(image, j):
  """{(dy, dx): crop} of the image padded by reflection by j, at every
  offset."""
  padded = np.pad(image, [(j, j), (j, j), (0, 0)], mode="reflect")
  h, w = image.shape[:2]
  return {(dy, dx): padded[dy:dy + h, dx:dx + w]
          for dy in range(2 * j + 1) for dx in range(2 * j + 1)}


def test_jitter_is_a_reflected_crop_at_a_uniform_offset_per_image():
  j, n = 2, 500
  base = np.arange(HEIGHT * HEIGHT * 3, dtype=np.float32).reshape(
      HEIGHT, HEIGHT, 3)
  jittered = augmentation_lib.augment(
      tf.constant(np.stack([base] * n)),
      Augmentation(enable_jitter=True, jitter_amount=j), seed(3, 4)).numpy()
  crops = reflect_crops(base, j)
  offsets = []
  for image in jittered:
    found = [o for o, crop in crops.items() if np.array_equal(image, crop)]
    assert len(found) == 1
    offsets.append(found[0])
  counts = np.array([offsets.count(o) for o in crops])
  assert len(set(offsets)) == (2 * j + 1) ** 2  # Every offset in [0, 2j]^2.
  expected = n / len(crops)
  assert np.all(np.abs(counts - expected) < 4 * np.sqrt(expected))  # Uniform.


def test_same_seed_same_perturbation_other_seed_another():
  images = tf.random.stateless_uniform([4, HEIGHT, HEIGHT, 3], [0, 0])
  both = Augmentation(True, 3, True, 0.1)
  a = augmentation_lib.augment(images, both, seed(5, 6)).numpy()
  again = augmentation_lib.augment(images, both, seed(5, 6)).numpy()
  other = augmentation_lib.augment(images, both, seed(5, 7)).numpy()
  assert np.array_equal(a, again) and not np.array_equal(a, other)


def test_episodes_are_augmented_per_set_and_resume_exactly(spec):
  support = Augmentation(True, 2, True, 0.05)
  plain = episodes(spec, n=4)
  augmented = episodes(spec, {"support": support}, n=4)
  for a, b in zip(plain, augmented):
    assert not np.array_equal(a["support_images"], b["support_images"])
    assert np.array_equal(a["query_images"], b["query_images"])
    assert np.array_equal(a["support_labels"], b["support_labels"])
  # Episode i is a function of (seed, i): a stream started at episode 2 sees
  # episode 2.
  resumed = episodes(spec, {"support": support}, start=2, n=2)
  for a, b in zip(augmented[2:], resumed):
    assert np.array_equal(a["support_images"], b["support_images"])
  again = episodes(spec, {"support": support}, n=4)
  assert all(np.array_equal(a["support_images"], b["support_images"])
             for a, b in zip(augmented, again))
  other_seed = episodes(spec, {"support": support}, seed=1, n=1)
  assert not np.array_equal(other_seed[0]["support_images"],
                            augmented[0]["support_images"])


def test_query_augmentation_leaves_the_support_set(spec):
  query = Augmentation(enable_gaussian_noise=True, gaussian_noise_std=0.1)
  a, b = episodes(spec, n=1)[0], episodes(spec, {"query": query}, n=1)[0]
  assert np.array_equal(a["support_images"], b["support_images"])
  assert abs(np.std(b["query_images"] - a["query_images"]) - 0.1) < 0.01


def test_values_named_by_their_scoped_binding(spec):
  try:
    gin.parse_config("support/DataAugmentation.jitter_amount = -1")
    with pytest.raises(ConfigError, match=(
        r"support/DataAugmentation.jitter_amount = -1 must be an integer")):
      with gin.config_scope("support"):
        Augmentation()
  finally:
    gin.clear_config()
  with pytest.raises(ConfigError,
                     match="DataAugmentation.gaussian_noise_std = -0.1"):
    Augmentation(gaussian_noise_std=-0.1)
  with pytest.raises(ConfigError, match=(
      r"DataAugmentation.jitter_amount = 16 must be less than "
      r"DataConfig.image_height = 16")):
    episodes(spec, {"support": Augmentation(enable_jitter=True,
                                            jitter_amount=16)})
