"""Tests of meta_dataset_ext.data.reader: record index, checks, decoding."""

import os

import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext.data import reader as reader_lib
from meta_dataset_ext.data import writer
from meta_dataset_ext.data.spec import DataError
from tests.data import records_util


@pytest.fixture
def source(tmp_path):
  return records_util.make_flat_source(str(tmp_path), "flat", (3, 1, 1),
                                       [4, 5, 6, 2, 3], size=8)


def decode_all(images, height=8):
  return reader_lib.ImageDecoder(height)(images).numpy()


def test_index_matches_tensorflow_reader(source):
  path = source.class_file(2)
  index = reader_lib.index_records(path)
  records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
  assert len(index.offsets) == len(records) == 6
  with open(path, "rb") as f:
    for offset, length, record in zip(index.offsets, index.lengths, records):
      f.seek(offset)
      assert f.read(length) == record


def test_masked_crc32c_known_value():
  # CRC32-C of b"123456789" is 0xE3069283 (the standard check value).
  crc = 0xE3069283
  masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
  assert reader_lib.masked_crc32c(b"123456789") == masked


def test_read_images_returns_requested_records(source):
  records = reader_lib.ClassRecords(source)
  assert records.num_records(1) == 5
  images = decode_all(records.read_images(1, [4, 0, 2]))
  assert [records_util.identify(i) for i in images] == [(1, 4), (1, 0), (1, 2)]


def test_decode_resizes_and_scales():
  pixels = np.zeros((20, 10, 3), np.uint8)
  pixels[:, :, 0] = 255
  images = decode_all([writer.encode_png(pixels),
                       tf.io.encode_jpeg(pixels, quality=100).numpy(),
                       writer.encode_png(pixels[:, :, 0])], 16)  # grayscale
  assert images.shape == (3, 16, 16, 3) and images.dtype == np.float32
  assert images.min() >= -1.0 and images.max() <= 1.0
  np.testing.assert_allclose(images[..., 0], 1.0, atol=0.02)
  assert decode_all([], 16).shape == (0, 16, 16, 3)


def test_flipped_data_byte_fails_the_checksum(source):
  path = source.class_file(2)
  index = reader_lib.index_records(path)
  data = bytearray(open(path, "rb").read())
  data[index.offsets[4] + index.lengths[4] // 2] ^= 0x01  # Inside the image.
  open(path, "wb").write(bytes(data))
  with pytest.raises(tf.errors.DataLossError):  # TensorFlow's reader agrees.
    list(tf.data.TFRecordDataset(path))
  records = reader_lib.ClassRecords(source)
  records.read_images(2, [0, 1, 2, 3, 5])
  with pytest.raises(DataError, match=r"Corrupt record 4 of .*2\.tfrecords "
                     r"\(class 2\): its data does not match its checksum"):
    records.read_images(2, [4])
  unchecked = reader_lib.ClassRecords(source, verify_checksums=False)
  assert len(unchecked.read_images(2, [4])) == 1  # The check is what finds it.


def test_image_that_does_not_decode_is_named(source):
  good = records_util.encode_png(1, 0, 8)
  decoder = reader_lib.ImageDecoder(8)
  with pytest.raises(DataError, match=r"Image of record 7 of x \(class 1\) "
                     r"does not decode \(Invalid PNG data"):
    decoder([good, records_util.damaged_png(1, 1, 8), good],
            lambda k: f"record {6 + k} of x (class 1)")
  records_util.write_records(source.class_file(1), [
      writer.make_example(records_util.damaged_png(1, i, 8) if i == 3 else
                          records_util.encode_png(1, i, 8), 1)
      for i in range(5)])
  records = reader_lib.ClassRecords(source)
  chosen = [4, 3, 0]
  with pytest.raises(DataError,
                     match=r"record 3 of .*1\.tfrecords \(class 1\)"):
    decoder(records.read_images(1, chosen),
            lambda k: records.where(1, chosen[k]))


def test_missing_class_file_is_named(source):
  os.remove(source.class_file(3))
  records = reader_lib.ClassRecords(source)
  with pytest.raises(DataError, match=r"class 3: .*3\.tfrecords"):
    records.check_files(range(5))
  with pytest.raises(DataError, match=r"3\.tfrecords"):
    records.num_records(3)


def test_corrupt_header_is_named(source):
  path = source.class_file(0)
  data = bytearray(open(path, "rb").read())
  second = reader_lib.index_records(path).offsets[1] - 12
  data[second + 2] ^= 0xFF
  open(path, "wb").write(bytes(data))
  with pytest.raises(DataError, match=r"Corrupt record 1 in .*0\.tfrecords"):
    reader_lib.ClassRecords(source).num_records(0)


def test_truncated_file_is_named(source):
  path = source.class_file(0)
  data = open(path, "rb").read()
  open(path, "wb").write(data[:-10])
  with pytest.raises(DataError, match=r"Corrupt record 3 in .*truncated"):
    reader_lib.ClassRecords(source).num_records(0)


def test_record_count_must_match_spec(source):
  records_util.write_records(
      source.class_file(4),
      [writer.make_example(records_util.encode_png(4, 0, 8), 4)])
  with pytest.raises(DataError, match=r"4\.tfrecords holds 1 records.*3"):
    reader_lib.ClassRecords(source).num_records(4)


@pytest.mark.parametrize("record,match", [
    (b"\xff\xff\xff", "not a tf.train.Example"),
    (tf.train.Example().SerializeToString(), "expected features"),
    (writer.make_example(records_util.encode_png(3, 0, 8), 7),
     r"label \[7\] is not the class id 3"),
    (writer.make_example(b"hello, not an image", 3),
     "does not decode: not a JPEG, PNG"),
    (writer.make_example(records_util.encode_png(3, 0, 8)[:-20], 3),
     "does not decode: a truncated PNG"),
    (writer.make_example(
        tf.io.encode_jpeg(np.zeros((8, 8, 3), np.uint8)).numpy()[:-30], 3),
     "does not decode: a truncated JPEG"),
])
def test_bad_record_is_named(source, record, match):
  good = writer.make_example(records_util.encode_png(3, 0, 8), 3)
  records_util.write_records(source.class_file(3), [good, record])
  records = reader_lib.ClassRecords(source)
  records.read_images(3, [0])
  with pytest.raises(DataError, match=match) as info:
    records.read_images(3, [1])
  assert "record 1 of" in str(info.value)
  assert "3.tfrecords (class 3)" in str(info.value)
