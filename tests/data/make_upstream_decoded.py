"""Writes fixtures/upstream_decoded.npz: images decoded by upstream
Meta-Dataset's own ImageDecoder, the reference of test_upstream_decoding.py.

    python -m tests.data.make_upstream_decoded   # where upstream imports

The images (`test_images`) are JPEG and PNG files, grey and RGB, smaller and
larger than the output sizes (upsampling and downsampling, not square);
upstream decodes them as its episode pipeline does: records parsed as
tf.train.Examples, `tf.map_fn` of the decoder inside a `tf.data` map, run by
a TF1 session (graph optimisations on, as in its trainer). The values are the
same on TensorFlow 2.15 and 2.21.
"""
import io
import os
import sys

import numpy as np
from PIL import Image

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "upstream_decoded.npz")
OUTPUT_SIZES = (16, 24)


def test_images():
  """[(description, encoded bytes)]: noisy colour gradients of two sizes, as
  JPEG and PNG, grey and RGB."""
  rng = np.random.default_rng(14)
  images = []
  for width, height in ((13, 14), (40, 37)):
    for fmt in ("JPEG", "PNG"):
      for mode in ("L", "RGB"):
        coarse = Image.fromarray(
            rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC),
                            np.int16)
        noisy = np.clip(smooth + rng.integers(-30, 31, smooth.shape), 0, 255)
        buffer = io.BytesIO()
        Image.fromarray(noisy.astype(np.uint8)).convert(mode).save(
            buffer, format=fmt, quality=85)
        images.append((f"{fmt} {mode} {width}x{height}", buffer.getvalue()))
  return images


def packed(images):
  """The encoded images as one uint8 array and their lengths (npz keeps bytes
  intact)."""
  data = [np.frombuffer(b, np.uint8) for _, b in images]
  return np.concatenate(data), np.array([len(d) for d in data])


def unpacked(data, lengths):
  ends = np.cumsum(lengths)
  return [data[end - n:end].tobytes() for end, n in zip(ends, lengths)]


def upstream_decoded(encoded, size):
  """Upstream's ImageDecoder(image_size=size) on the encoded images, as its
  pipeline runs it."""
  # pylint: disable=g-import-not-at-top
  from meta_dataset_ext.upstream import patches
  patches.install_shims()
  import tensorflow as tf
  from meta_dataset.data import decoder
  examples = [tf.train.Example(features=tf.train.Features(feature={
      "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b])),
      "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[0]))}))
              .SerializeToString() for b in encoded]
  graph = tf.Graph()
  with graph.as_default():
    decode = decoder.ImageDecoder(image_size=size)
    dataset = tf.data.Dataset.from_tensors(tf.constant(examples)).map(
        lambda strings: tf.map_fn(decode, strings, dtype=tf.float32,
                                  back_prop=False))
    values = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    with tf.compat.v1.Session(graph=graph) as session:
      return session.run(values)


def main():
  images = test_images()
  data, lengths = packed(images)
  encoded = unpacked(data, lengths)
  decoded = {f"decoded_{size}": upstream_decoded(encoded, size)
             for size in OUTPUT_SIZES}
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  np.savez_compressed(FIXTURE, data=data, lengths=lengths,
                      names=np.array([name for name, _ in images]),
                      tensorflow=np.array(tf.__version__), **decoded)
  print(f"wrote {FIXTURE} ({os.path.getsize(FIXTURE)} bytes)", file=sys.stderr)


if __name__ == "__main__":
  main()
