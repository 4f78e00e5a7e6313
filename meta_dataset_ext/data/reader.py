"""Reading a source's per-class TFRecord files, and decoding their images.

Each class of a converted source is one TFRecord file (`spec.class_file(id)`,
"<class_id>.tfrecords" by default) of `tf.train.Example` records with an
`image` bytes feature (encoded JPEG/PNG/GIF/BMP) and a `label` int64 feature
equal to the class id.

Records are read by random access: the first time a class is used its file is
indexed (each record's offset and length, found by walking the TFRecord
headers, whose length checksums are verified), then any record can be read
directly. This lets the sampler pick exactly which images an episode uses
(uniformly, without replacement, so the support and query sets of a class are
disjoint) and makes episodes reproducible from a seed. Each record read has
its data checksum (the masked CRC32-C footer TensorFlow's own reader checks)
verified too, unless asked not to.

Public API
----------
ClassRecords(spec, read_buffer_size_bytes=2**20, verify_checksums=True)
    .check_files(class_ids)           every class file exists, else DataError
    .num_records(class_id) -> int     (indexes the file on first use)
    .read_images(class_id, indices) -> list of encoded image bytes
    .where(class_id, index) -> str    "record 3 of <file> (class 7)"
decode_image(image_bytes, image_height, decoding="upstream") -> float32
    One encoded image as training sees it: [h, h, 3] in [-1, 1] (a tensor;
    works eagerly and inside tf.function, e.g. in a SavedModel signature).
ImageDecoder(image_height, decoding="upstream")(images, origin=None)
image_decoder(image_height, decoding="upstream")   one shared per arguments
    Decodes a list of encoded images in one TensorFlow call (images of the
    list on up to one thread per CPU core) to a tensor: float32 [n, h, h, 3]
    in [-1, 1] ("upstream"), or uint8 [n, h, h, 3] ("fast"; `scale` maps
    them). The pipelines hand that tensor to tf.data without a copy.
scale(images) -> float32 in [-1, 1]    uint8 or float32 pixels in [0, 255]
IMAGE_DECODINGS = ("upstream", "fast")   DataConfig.image_decoding
    "upstream" (default) is bit-identical to upstream's ImageDecoder (on
    TensorFlow 2.15 and 2.21): any JPEG (TensorFlow's fast integer DCT, the
    default of its decoders), PNG, GIF or BMP to RGB, then bilinear resize
    to h x h in float32 with the corners aligned (TF1's
    resize_bilinear(align_corners=True)), then x * 2/255 - 1, the float32
    arithmetic upstream's graph computes. Images already h x h are not
    resampled (the same values).
    "fast" resizes with TF2's bilinear resize (pixel centres aligned, not
    corners) and rounds the result to uint8, so that episodes are handed
    over as uint8 (a quarter of the bytes) and scaled in the tf.data map.
    Every resized pixel differs from upstream's (by up to about a dozen grey
    levels at 28 px); images already h x h decode identically in both.
masked_crc32c(data) -> int            TFRecord's checksum (google_crc32c)

Bad input raises `DataError` naming the file (and record index, class) and
what to do: a missing class file, a truncated or corrupt record (length or
data checksum), a record count different from the spec's images_per_class, a
record that is not a tf.train.Example with `image` and `label`, a label other
than the class id, image bytes that are not a complete JPEG, PNG, GIF or BMP
file, and an image that TensorFlow's decoder rejects (e.g. PNG data damaged
before it was written, so that the record's checksum is intact).
"""

import dataclasses
import functools
import os
import re
import struct
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import google_crc32c
import numpy as np
import tensorflow as tf

from meta_dataset_ext.data.spec import DataError

_HEADER_BYTES = 12  # uint64 little-endian length, then its masked CRC32-C.
_FOOTER_BYTES = 4  # masked CRC32-C of the data.
# A complete JPEG ends with the EOI marker, a PNG with its IEND chunk; some
# writers append padding, so the marker is looked for near the end.
_TRAILER_SEARCH_BYTES = 4096
_REWRITE = "re-convert the source, or restore the file from a copy"
# TensorFlow's wrapping of an op's message: "{{function_node ...}} ... [Op:X]".
_TF_MESSAGE_NOISE = re.compile(r"\{\{[^}]*\}\}|\[Op:[^\]]*\].*$")


def masked_crc32c(data: bytes) -> int:
  """TFRecord's checksum: CRC32-C (Castagnoli), rotated and offset."""
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclasses.dataclass(frozen=True)
class RecordIndex:
  """Where each record's data lies in a TFRecord file."""
  offsets: np.ndarray  # int64, byte offset of each record's data
  lengths: np.ndarray  # int64, byte length of each record's data


def index_records(path: str, buffer_size: int = 2**20) -> RecordIndex:
  """Walks the record headers of the TFRecord file `path`.

  Args:
    path: the TFRecord file.
    buffer_size: read buffer of the walk; headers that fall in the buffer
      cost no system call.
  Raises:
    DataError: a header's checksum is wrong or the file ends inside a record.
  """
  size = os.path.getsize(path)
  offsets, lengths = [], []
  pos = 0
  with open(path, "rb", buffering=buffer_size) as f:
    while pos < size:
      f.seek(pos)
      header = f.read(_HEADER_BYTES)
      if len(header) < _HEADER_BYTES:
        raise DataError(f"Corrupt record {len(offsets)} in {path}: the file "
                        f"ends inside a record header at byte {pos}; "
                        f"{_REWRITE}.")
      length_bytes, crc = header[:8], struct.unpack("<I", header[8:])[0]
      if masked_crc32c(length_bytes) != crc:
        raise DataError(f"Corrupt record {len(offsets)} in {path}: bad length "
                        f"checksum at byte {pos}; {_REWRITE}.")
      length = struct.unpack("<Q", length_bytes)[0]
      end = pos + _HEADER_BYTES + length + _FOOTER_BYTES
      if end > size:
        raise DataError(f"Corrupt record {len(offsets)} in {path}: the file "
                        f"is truncated ({size} bytes, record ends at {end}); "
                        f"{_REWRITE}.")
      offsets.append(pos + _HEADER_BYTES)
      lengths.append(length)
      pos = end
  return RecordIndex(np.array(offsets, np.int64), np.array(lengths, np.int64))


def _image_format_problem(data: bytes):
  """None if `data` looks like a complete image file, else what is wrong."""
  tail = max(0, len(data) - _TRAILER_SEARCH_BYTES)
  if data.startswith(b"\xff\xd8\xff"):
    complete = data.endswith(b"\xff\xd9") or data.find(b"\xff\xd9", tail) >= 0
    return None if complete else "a truncated JPEG"
  if data.startswith(b"\x89PNG\r\n\x1a\n"):
    return None if data.find(b"IEND", tail) >= 0 else "a truncated PNG"
  if data.startswith((b"GIF87a", b"GIF89a", b"BM")):
    return None
  return f"not a JPEG, PNG, GIF or BMP file (starts with {data[:8]!r})"


class ClassRecords:
  """Random access to the images of a source's classes.

  Args:
    spec: the source's dataset specification.
    read_buffer_size_bytes: read buffer used to index a class file (images
      themselves are read with one exact-size read each).
    verify_checksums: check each record's data checksum when it is read (as
      TensorFlow's TFRecord reader does); False skips that check.
  """

  def __init__(self, spec, read_buffer_size_bytes: int = 2**20,
               verify_checksums: bool = True):
    self.spec = spec
    self.read_buffer_size_bytes = read_buffer_size_bytes
    self.verify_checksums = verify_checksums
    self._indexes: Dict[int, RecordIndex] = {}

  def check_files(self, class_ids: Iterable[int]):
    """Raises DataError naming the class files that do not exist."""
    missing = [(c, self.spec.class_file(c)) for c in class_ids
               if not os.path.isfile(self.spec.class_file(c))]
    if missing:
      shown = ", ".join(f"class {c}: {p}" for c, p in missing[:5])
      more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
      raise DataError(f"Missing class records file(s) of source "
                      f"{self.spec.name!r}: {shown}{more}; {_REWRITE}.")

  def where(self, class_id: int, index: int) -> str:
    """Names record `index` of class `class_id` in error messages."""
    return (f"record {index} of {self.spec.class_file(class_id)} "
            f"(class {class_id})")

  def _index(self, class_id: int) -> RecordIndex:
    if class_id not in self._indexes:
      path = self.spec.class_file(class_id)
      self.check_files([class_id])
      index = index_records(path, self.read_buffer_size_bytes)
      expected = self.spec.get_total_images_per_class(class_id)
      if len(index.offsets) != expected:
        raise DataError(f"{path} holds {len(index.offsets)} records but the "
                        f"spec of source {self.spec.name!r} says class "
                        f"{class_id} has {expected} images; {_REWRITE}.")
      self._indexes[class_id] = index
    return self._indexes[class_id]

  def num_records(self, class_id: int) -> int:
    """Number of records of class `class_id` (indexes its file)."""
    return len(self._index(class_id).offsets)

  def read_images(self, class_id: int, indices: Sequence[int]) -> List[bytes]:
    """Encoded image bytes of records `indices` of class `class_id`."""
    index = self._index(class_id)
    images = []
    with open(self.spec.class_file(class_id), "rb", buffering=0) as f:
      for i in indices:
        f.seek(index.offsets[i])
        data = f.read(index.lengths[i] + _FOOTER_BYTES)
        record = data[:-_FOOTER_BYTES]
        if self.verify_checksums and masked_crc32c(record) != struct.unpack(
            "<I", data[-_FOOTER_BYTES:])[0]:
          raise DataError(f"Corrupt {self.where(class_id, i)}: its data does "
                          f"not match its checksum; {_REWRITE}.")
        image, problem = _image_of_record(record, class_id)
        if problem:
          raise DataError(problem.format(where=self.where(class_id, i)))
        images.append(image)
    return images


def _image_of_record(record: bytes, class_id: int):
  """(image bytes, None), or (None, problem with a `{where}` placeholder)."""
  try:
    feature = tf.train.Example.FromString(record).features.feature
  except Exception as e:  # protobuf's DecodeError has no stable import path
    return None, f"Corrupt {{where}}: not a tf.train.Example ({e}); {_REWRITE}."
  if "image" not in feature or "label" not in feature:
    return None, ("Bad {where}: expected features 'image' and 'label', found "
                  f"{sorted(feature)}; {_REWRITE}.")
  labels = feature["label"].int64_list.value
  if len(labels) != 1 or labels[0] != class_id:
    return None, (f"Bad {{where}}: label {list(labels)} is not the class id "
                  f"{class_id}; {_REWRITE}.")
  images = feature["image"].bytes_list.value
  if len(images) != 1:
    return None, (f"Bad {{where}}: expected one image, found {len(images)}; "
                  f"{_REWRITE}.")
  problem = _image_format_problem(images[0])
  if problem:
    return None, f"Image of {{where}} does not decode: {problem}; {_REWRITE}."
  return images[0], None


IMAGE_DECODINGS = ("upstream", "fast")


def _pixels(image_bytes: tf.Tensor, image_height: int,
            decoding: str) -> tf.Tensor:
  """One image's pixels [h, h, 3] in [0, 255], resized if needed (module doc):
  float32 for "upstream", uint8 (rounded) for "fast"."""
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  size = [image_height, image_height]
  if decoding == "upstream":
    resize = lambda: tf.raw_ops.ResizeBilinear(  # TF1's resize_bilinear.
        images=image[tf.newaxis], size=size, align_corners=True)[0]
    same = lambda: tf.cast(image, tf.float32)
  else:
    resize = lambda: tf.saturate_cast(tf.round(tf.image.resize(
        image, size, method=tf.image.ResizeMethod.BILINEAR)), tf.uint8)
    same = lambda: image
  shape = tf.shape(image)
  image = tf.cond(tf.logical_and(shape[0] == image_height,
                                 shape[1] == image_height), same, resize)
  return tf.ensure_shape(image, size + [3])


def decode_image(image_bytes, image_height: int,
                 decoding: str = "upstream") -> tf.Tensor:
  """One encoded JPEG/PNG/GIF/BMP image as training sees it (module doc).

  Args:
    image_bytes: the encoded image (bytes, or a scalar string tensor).
    image_height: the side h of the square output (DataConfig.image_height).
    decoding: "upstream" or "fast" (DataConfig.image_decoding).
  Returns:
    float32 [h, h, 3] in [-1, 1].
  Raises:
    tf.errors.InvalidArgumentError: TensorFlow cannot decode the bytes.
  """
  return scale(_pixels(image_bytes, image_height, decoding))


def _decode_problem(image_bytes: bytes) -> Optional[str]:
  """None if TensorFlow decodes `image_bytes`, else its complaint."""
  try:
    tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  except tf.errors.InvalidArgumentError as e:
    return _TF_MESSAGE_NOISE.sub("", e.message).strip() or "rejected"
  return None


class ImageDecoder:
  """Decodes lists of encoded images (see module doc): float32 [n, h, h, 3] in
  [-1, 1] for "upstream", uint8 [n, h, h, 3] for "fast".

  TensorFlow's decoders name no file when an image does not decode; the
  decoder then decodes the images one by one to find it, and raises DataError
  naming it by `origin`.
  """

  def __init__(self, image_height: int, decoding: str = "upstream"):
    if decoding not in IMAGE_DECODINGS:
      raise ValueError(f"decoding must be one of {IMAGE_DECODINGS}, not "
                       f"{decoding!r}.")
    self.image_height, self.decoding = image_height, decoding
    self.dtype = tf.float32 if decoding == "upstream" else tf.uint8

    def one(image):
      pixels = _pixels(image, image_height, decoding)
      return scale(pixels) if decoding == "upstream" else pixels

    signature = tf.TensorSpec([image_height, image_height, 3], self.dtype)
    self._decode = tf.function(
        lambda images: tf.map_fn(one, images, fn_output_signature=signature,
                                 parallel_iterations=os.cpu_count() or 1),
        input_signature=[tf.TensorSpec([None], tf.string)])

  def __call__(self, images: Sequence[bytes],
               origin: Optional[Callable[[int], str]] = None) -> tf.Tensor:
    """The decoded `images`; `origin(k)` names image k in error messages."""
    try:
      return self._decode(tf.constant(images, tf.string))
    except tf.errors.InvalidArgumentError:
      for k, image in enumerate(images):
        problem = _decode_problem(image)
        if problem:
          where = origin(k) if origin else f"image {k}"
          raise DataError(f"Image of {where} does not decode ({problem}); "
                          f"{_REWRITE}.") from None
      raise


@functools.lru_cache(maxsize=None)
def image_decoder(image_height: int, decoding: str = "upstream"
                  ) -> "ImageDecoder":
  """The ImageDecoder of these arguments, made once per process (the
  pipelines share it rather than trace a function each)."""
  return ImageDecoder(image_height, decoding)


def scale(images: tf.Tensor) -> tf.Tensor:
  """Pixels in [0, 255] (uint8 or float32) -> float32 in [-1, 1].

  Upstream's decoder writes 2 * (x / 255 - 0.5), which TensorFlow's graph
  optimiser turns into this product and difference: its values, bit for bit
  (evaluated as written, without the optimiser, some differ in the last bit).
  """
  return tf.cast(images, tf.float32) * (2.0 / 255.0) - 1.0
