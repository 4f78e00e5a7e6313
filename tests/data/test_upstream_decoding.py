"""Decoding (reader.decode_image, ImageDecoder): bit-identical to upstream
Meta-Dataset's.

The reference values are upstream's own ImageDecoder run through its pipeline
(fixtures/upstream_decoded.npz, written by make_upstream_decoded.py on TF
2.15; TF 2.21 writes the same), and upstream's decoding recipe rebuilt in a
TF1 session here at more sizes. Run on TensorFlow 2.21 and 2.15.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext.data import reader
from tests.data import make_upstream_decoded as fixture_lib


@pytest.fixture(scope="module")
def fixture():
  stored = np.load(fixture_lib.FIXTURE)
  return fixture_lib.unpacked(stored["data"], stored["lengths"]), stored


def test_fixture_holds_the_images_the_script_makes(fixture):
  encoded, stored = fixture
  assert encoded == [image for _, image in fixture_lib.test_images()]
  assert {n.split()[0] for n in stored["names"]} == {"JPEG", "PNG"}
  assert os.path.getsize(fixture_lib.FIXTURE) < 100_000


@pytest.mark.parametrize("size", fixture_lib.OUTPUT_SIZES)
def test_equals_upstreams_decoder_bit_for_bit(fixture, size):
  encoded, stored = fixture
  expected = stored[f"decoded_{size}"]
  decoded = reader.ImageDecoder(size)(encoded).numpy()
  assert decoded.dtype == np.float32 and decoded.shape == expected.shape
  for name, got, want in zip(stored["names"], decoded, expected):
    assert np.array_equal(got, want), (name, np.abs(got - want).max())
  one_by_one = np.stack([reader.decode_image(image, size).numpy()
                         for image in encoded])
  assert np.array_equal(one_by_one, expected)


def upstream_recipe(encoded, size):
  """Upstream's decoding as its code writes it, in a TF1 session (graph
  optimisations on, as its trainer runs it): decode_image,
  resize_images(BILINEAR, align_corners=True) in float32, 2 * (x / 255 - 0.5);
  inside tf.map_fn in a tf.data map, as its pipeline calls it."""
  v1 = tf.compat.v1

  def decode(image_bytes):
    image = v1.image.decode_image(image_bytes, channels=3)
    image.set_shape([None, None, 3])
    resized = v1.image.resize_images(image, [size, size],
                                     method=v1.image.ResizeMethod.BILINEAR,
                                     align_corners=True)
    return 2 * (tf.cast(resized, tf.float32) / 255.0 - 0.5)

  graph = tf.Graph()
  with graph.as_default():
    dataset = tf.data.Dataset.from_tensors(tf.constant(encoded)).map(
        lambda strings: tf.map_fn(decode, strings, dtype=tf.float32,
                                  back_prop=False))
    values = v1.data.make_one_shot_iterator(dataset).get_next()
    with v1.Session(graph=graph) as session:
      return session.run(values)


@pytest.mark.parametrize("size", [7, 13, 20, 28, 40, 84])
def test_equals_upstreams_recipe_at_more_sizes(fixture, size):
  encoded, _ = fixture
  expected = upstream_recipe(encoded, size)
  decoded = reader.ImageDecoder(size)(encoded).numpy()
  assert np.array_equal(decoded, expected), np.abs(decoded - expected).max()


def test_fast_decoding_is_uint8_and_equal_for_images_of_the_size(fixture):
  encoded, stored = fixture
  fast = reader.ImageDecoder(24, "fast")(encoded).numpy()
  assert fast.dtype == np.uint8
  grey_levels = np.abs(reader.scale(fast).numpy() - stored["decoded_24"])
  assert grey_levels.max() * 127.5 > 1.0  # Another resampling.
  pixels = np.random.default_rng(0).integers(0, 256, (13, 13, 3),
                                             dtype=np.uint8)
  square = tf.io.encode_png(pixels).numpy()  # Already 13 x 13: not resampled.
  assert np.array_equal(reader.ImageDecoder(13, "fast")([square])[0].numpy(),
                        pixels)
  assert np.array_equal(reader.scale(pixels).numpy(),
                        reader.ImageDecoder(13)([square])[0].numpy())


def test_decodings_are_named():
  with pytest.raises(ValueError, match="decoding must be one of"):
    reader.ImageDecoder(16, "bicubic")
