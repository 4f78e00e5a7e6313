"""Faults of the records a command reads, and of the data flags and bindings: each ends
`python -m meta_dataset_ext.inspect` with one line that names the file, class, record, flag
or binding at fault (exit status 2, no traceback), and leaves the records as they were.

The source has 5 TRAIN classes of 2 images, so the first episode reads every record: the
contact sheet (--save_png) makes the command decode them all.
"""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext.data import reader
from meta_dataset_ext.data import writer
from tests.data import records_util
from tests.faults import util as faults

INSPECT = 'meta_dataset_ext.inspect'
SOURCE = 'tiny'


@pytest.fixture(scope='module')
def pristine(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('pristine'))
  records_util.make_flat_source(root, SOURCE, (5, 0, 0), [2] * 5, size=16)
  return root


@pytest.fixture
def root(pristine, tmp_path):
  """A copy of the pristine records root, for a test to damage."""
  path = str(tmp_path / 'records')
  shutil.copytree(pristine, path)
  return path


def source_file(root, name):
  return os.path.join(root, SOURCE, name)


def inspect(root, tmp_path, *args):
  """Runs inspect on ``root`` (which it must leave unchanged); returns its error line."""
  before = faults.tree_digest(root)
  result = faults.run_module(INSPECT, f'--records_root_dir={root}', f'--source={SOURCE}',
                             '--num_episodes=1', f'--save_png={tmp_path / "sheet.png"}', *args,
                             timeout=300)
  faults.assert_unchanged(before, root)
  assert not (tmp_path / 'sheet.png').exists()
  return result


def write_class(root, class_id, images, labels=None):
  records_util.write_records(source_file(root, f'{class_id}.tfrecords'), [
      writer.make_example(image, class_id if labels is None else labels[k])
      for k, image in enumerate(images)])


# ----- records ----------------------------------------------------------------------------

def test_flipped_byte_in_image_data(root, tmp_path):
  path = source_file(root, '3.tfrecords')
  index = reader.index_records(path)
  data = bytearray(open(path, 'rb').read())
  data[index.offsets[1] + index.lengths[1] // 2] ^= 0x01
  open(path, 'wb').write(bytes(data))
  line = faults.assert_one_line_error(inspect(root, tmp_path), INSPECT, 'Corrupt record 1 of',
                                      path, '(class 3)', 'checksum', 're-convert the source')
  assert 'Traceback' not in line


def test_truncated_class_file(root, tmp_path):
  path = source_file(root, '2.tfrecords')
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:-7])
  faults.assert_one_line_error(inspect(root, tmp_path), INSPECT, 'Corrupt record 1 in', path,
                               'truncated')


def test_damaged_png_is_named_and_the_command_exits(root, tmp_path):
  """A PNG damaged before it was written (its record's checksum is intact): TensorFlow's
  decoder said only 'Invalid PNG data', and the process sometimes hung at exit."""
  write_class(root, 4, [records_util.encode_png(4, 0, 16),
                        records_util.damaged_png(4, 1, 16)])
  faults.assert_one_line_error(inspect(root, tmp_path), INSPECT, 'Image of record 1 of',
                               source_file(root, '4.tfrecords'), '(class 4)', 'does not decode',
                               'Invalid PNG data')


def test_damaged_jpeg_is_named(root, tmp_path):
  jpeg = bytearray(tf.io.encode_jpeg(np.full((16, 16, 3), 90, np.uint8)).numpy())
  jpeg[20] ^= 0xFF  # In the quantization table: libjpeg gives up.
  write_class(root, 0, [bytes(jpeg), records_util.encode_png(0, 1, 16)])
  faults.assert_one_line_error(inspect(root, tmp_path), INSPECT, 'Image of record 0 of',
                               source_file(root, '0.tfrecords'), '(class 0)', 'does not decode',
                               'Invalid JPEG data')


def test_wrong_label(root, tmp_path):
  write_class(root, 2, [records_util.encode_png(2, k, 16) for k in range(2)], labels=[2, 7])
  faults.assert_one_line_error(inspect(root, tmp_path), INSPECT, 'Bad record 1 of',
                               source_file(root, '2.tfrecords'), 'label [7] is not the class id 2')


def test_missing_class_file(root, tmp_path):
  os.remove(source_file(root, '1.tfrecords'))
  faults.assert_one_line_error(inspect(root, tmp_path), INSPECT, 'Missing class records file',
                               'class 1: ' + source_file(root, '1.tfrecords'))


def test_missing_dataset_spec(root, tmp_path):
  os.remove(source_file(root, 'dataset_spec.json'))
  faults.assert_one_line_error(inspect(root, tmp_path), INSPECT, 'Missing dataset spec',
                               source_file(root, 'dataset_spec.json'))


def test_malformed_dataset_spec(root, tmp_path):
  with open(source_file(root, 'dataset_spec.json'), 'a') as f:
    f.write('}')
  faults.assert_one_line_error(inspect(root, tmp_path), INSPECT, 'Malformed dataset spec',
                               source_file(root, 'dataset_spec.json'), 'Extra data')


def test_dataset_spec_with_a_value_of_the_wrong_type(root, tmp_path):
  path = source_file(root, 'dataset_spec.json')
  with open(path) as f:
    spec = json.load(f)
  spec['classes_per_split'] = [5, 0, 0]
  with open(path, 'w') as f:
    json.dump(spec, f)
  faults.assert_one_line_error(inspect(root, tmp_path), INSPECT, 'Invalid dataset spec', path)


def test_records_root_that_is_a_file(tmp_path):
  path = tmp_path / 'records'
  path.write_text('not a folder')
  result = faults.run_module(INSPECT, f'--records_root_dir={path}', '--source=tiny')
  faults.assert_one_line_error(result, INSPECT, f"records_root_dir '{path}' is a file")
  assert path.read_text() == 'not a folder'


def test_class_with_too_few_images(tmp_path):
  root = str(tmp_path / 'records')
  records_util.make_flat_source(root, SOURCE, (5, 0, 0), [2, 2, 1, 2, 2], size=16)
  faults.assert_one_line_error(inspect(root, tmp_path), INSPECT, "Class 2 ('class2')",
                               f"split TRAIN of source '{SOURCE}' has 1 images")


# ----- data bindings and flags ------------------------------------------------------------

@pytest.mark.parametrize('binding, named', [
    ('EpisodeDescriptionConfig.num_support = 0', 'EpisodeDescriptionConfig.num_support = 0 '),
    ('EpisodeDescriptionConfig.num_support = -2',
     'EpisodeDescriptionConfig.num_support = -2 must be a number of shots >= 1'),
    ('EpisodeDescriptionConfig.num_query = 0', 'EpisodeDescriptionConfig.num_query = 0 must be'),
    ('EpisodeDescriptionConfig.max_num_query = 0',
     'EpisodeDescriptionConfig.max_num_query = 0 must be an integer >= 1'),
    ("DataConfig.image_height = '16'", "DataConfig.image_height = '16' must be an integer"),
])
def test_bad_data_binding_is_named(root, tmp_path, binding, named):
  faults.assert_one_line_error(inspect(root, tmp_path, f'--gin_bindings={binding}'), INSPECT,
                               named)


def test_bad_split_flag_is_named(root, tmp_path):
  faults.assert_one_line_error(inspect(root, tmp_path, '--split=HOLDOUT'), INSPECT,
                               '--split', 'HOLDOUT')


# ----- exit -------------------------------------------------------------------------------

@pytest.mark.parametrize('guarded', [True, False])
def test_failing_while_the_generator_reads_exits(root, guarded):
  """A command that fails while its episode generator is mid-call exits at once; without the
  pipeline's exit handler (--unguarded) the same command hangs at interpreter shutdown."""
  args = ('tests.data.exit_while_reading', f'--records_root_dir={root}', f'--source={SOURCE}')
  if not guarded:
    with pytest.raises(subprocess.TimeoutExpired):
      faults.run_module(*args, '--unguarded', timeout=25)
    return
  faults.assert_one_line_error(faults.run_module(*args, timeout=120),
                               'tests.data.exit_while_reading', 'stopped with OwnedIterator')
