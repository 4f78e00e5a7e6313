"""Faults of the converters (convert_folder, convert_tfds) and of the glyphs generator: each
ends the command with one line that names the flag, folder, file or class at fault (exit
status 2, no traceback); nothing outside the records root is touched, an existing source is
never lost or changed, and a conversion killed midway leaves the old source as it was."""
import os
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from meta_dataset_ext.data import convert_folder
from meta_dataset_ext.data import spec as spec_lib
from tests.faults import util as faults

CONVERT = 'meta_dataset_ext.data.convert_folder'
TFDS = 'meta_dataset_ext.data.convert_tfds'
GLYPHS = 'meta_dataset_ext.glyphs'


def image_tree(root, classes=6, per_class=2, size=16, seed=0):
  """root/<class>/<k>.png, random RGB images; returns root."""
  rng = np.random.default_rng(seed)
  for c in range(classes):
    os.makedirs(root / f'class{c:02d}')
    for k in range(per_class):
      pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
      Image.fromarray(pixels).save(root / f'class{c:02d}' / f'{k}.png')
  return root


def convert(src, records, *args, name='toy'):
  return faults.run_module(CONVERT, f'--source_dir={src}', f'--records_root_dir={records}',
                           f'--name={name}', *args)


# ----- names and paths --------------------------------------------------------------------

@pytest.mark.parametrize('name', ['../victim', '..', ''])
def test_a_name_that_is_not_one_folder_is_refused(tmp_path, name):
  src = image_tree(tmp_path / 'src')
  (tmp_path / 'records').mkdir()
  (tmp_path / 'victim').mkdir()
  (tmp_path / 'victim' / 'thesis.tex').write_text('years of work')
  before = faults.tree_digest(str(tmp_path))
  result = convert(src, tmp_path / 'records', '--overwrite', name=name)
  faults.assert_one_line_error(result, CONVERT, f'Source name {name!r} must be one folder name')
  faults.assert_unchanged(before, str(tmp_path))


def test_source_dir_that_is_a_file(tmp_path):
  (tmp_path / 'images.zip').write_text('PK')
  result = convert(tmp_path / 'images.zip', tmp_path / 'records')
  faults.assert_one_line_error(result, CONVERT, f"'{tmp_path / 'images.zip'}' is a file")
  assert sorted(os.listdir(tmp_path)) == ['images.zip']


def test_records_root_that_is_a_file(tmp_path):
  src = image_tree(tmp_path / 'src')
  (tmp_path / 'records').write_text('not a folder')
  result = convert(src, tmp_path / 'records')
  faults.assert_one_line_error(result, CONVERT, f"'{tmp_path / 'records'}' is a file")
  assert (tmp_path / 'records').read_text() == 'not a folder'


def test_an_existing_source_is_kept_without_overwrite(tmp_path):
  src = image_tree(tmp_path / 'src')
  records = tmp_path / 'records'
  convert_folder.convert_folder(str(src), str(records), 'toy', split_counts=(6, 0, 0))
  before = faults.tree_digest(str(records))
  result = convert(src, records)
  faults.assert_one_line_error(result, CONVERT, f"{records / 'toy'}' already exists",
                               'overwrite')
  faults.assert_unchanged(before, str(records))


def _wait_for_staging(records, name, child, timeout=300):
  """The staging folder of a running conversion, once it holds a class file."""
  deadline = time.time() + timeout
  while time.time() < deadline and child.poll() is None:
    for entry in os.listdir(records):
      try:
        if entry.startswith(f'.{name}.tmp-') and any(
            f.endswith('.tfrecords') for f in os.listdir(records / entry)):
          return entry
      except FileNotFoundError:  # Renamed into place meanwhile.
        pass
    time.sleep(0.002)
  raise AssertionError(f'no staging folder seen (exit status {child.poll()})')


def test_a_killed_conversion_keeps_the_old_source_and_the_rerun_cleans_up(tmp_path):
  src = image_tree(tmp_path / 'src', classes=30, per_class=40, size=48)
  records = tmp_path / 'records'
  convert_folder.convert_folder(str(src), str(records), 'big', split_counts=(20, 5, 5))
  old = faults.tree_digest(str(records / 'big'))
  child = subprocess.Popen(
      [sys.executable, '-m', CONVERT, f'--source_dir={src}', f'--records_root_dir={records}',
       '--name=big', '--split_counts=10,10,10', '--overwrite'],
      env=dict(os.environ, PYTHONPATH=faults.REPO), stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  try:
    staging = _wait_for_staging(records, 'big', child)
    child.kill()  # kill -9, midway through writing the class files.
  finally:
    child.kill()
    child.wait()
  faults.assert_unchanged(old, str(records / 'big'))
  assert sorted(os.listdir(records)) == [staging, 'big']  # No partial source in view.
  assert spec_lib.load_dataset_spec(str(records), 'big').classes_per_split[
      spec_lib.Split.VALID] == 5
  result = faults.run_module(CONVERT, f'--source_dir={src}', f'--records_root_dir={records}',
                             '--name=big', '--split_counts=10,10,10', '--overwrite')
  assert result.returncode == 0, result.stderr[-3000:]
  assert os.listdir(records) == ['big']  # The killed run's staging folder is gone.
  assert spec_lib.load_dataset_spec(str(records), 'big').classes_per_split[
      spec_lib.Split.VALID] == 10


# ----- splits and images ------------------------------------------------------------------

@pytest.mark.parametrize('flags, named', [
    (['--split_fractions=0.7,x,0.15'], '--split_fractions'),
    (['--split_counts=8,2'], '--split_counts'),
    (['--split_counts=3,2,2'], 'Cannot split the 6 classes: split counts (3, 2, 2)'),
    (['--split_counts=2,2,2', '--train=class00'], '--split_counts, --train/--valid/--test'),
])
def test_bad_split_flags_are_named(tmp_path, flags, named):
  src = image_tree(tmp_path / 'src')
  faults.assert_one_line_error(convert(src, tmp_path / 'records', *flags), CONVERT, named)
  assert not (tmp_path / 'records').exists()


def test_a_class_folder_with_one_image_is_named(tmp_path):
  src = image_tree(tmp_path / 'src')
  os.remove(src / 'class03' / '1.png')
  faults.assert_one_line_error(convert(src, tmp_path / 'records'), CONVERT,
                               f"'{src / 'class03'}' has 1 image(s)")
  assert not (tmp_path / 'records').exists()


def test_an_image_that_does_not_decode_is_named(tmp_path):
  src = image_tree(tmp_path / 'src')
  (src / 'class02' / '9.jpg').write_bytes(b'\xff\xd8\xff\xe0 cut short')
  faults.assert_one_line_error(convert(src, tmp_path / 'records'), CONVERT,
                               f"Cannot decode image '{src / 'class02' / '9.jpg'}'")
  assert os.listdir(tmp_path / 'records') == []


def test_a_split_too_small_for_episodes_is_warned_about_in_one_line(tmp_path):
  src = image_tree(tmp_path / 'src', classes=12)
  result = faults.run_module(CONVERT, f'--source_dir={src}',
                             f'--records_root={tmp_path / "records"}', '--name=twelve')
  assert result.returncode == 0, result.stderr[-3000:]
  warnings = [l for l in result.stderr.splitlines() if l.startswith('warning: ')]
  assert len(warnings) == 1, result.stderr[-3000:]
  for named in ("source 'twelve'", 'VALID has 2 classes', 'TEST has 2 classes',
                'fewer than the 5 an episode needs', '--split_counts'):
    assert named in warnings[0]
  assert "'TRAIN': 8, 'VALID': 2, 'TEST': 2" in result.stdout


# ----- convert_tfds and glyphs ------------------------------------------------------------

def test_convert_tfds_refuses_a_name_outside_the_records_root(tmp_path):
  result = faults.run_module(TFDS, '--builder=dtd', f'--records_root={tmp_path / "records"}',
                             '--name=../dtd', '--overwrite')
  faults.assert_one_line_error(result, TFDS, "Source name '../dtd' must be one folder name")
  assert os.listdir(tmp_path) == []


def test_convert_tfds_unknown_builder_is_one_line(tmp_path):
  result = faults.run_module(TFDS, '--builder=no_such_builder',
                             f'--records_root={tmp_path / "records"}')
  faults.assert_one_line_error(result, TFDS, "Unknown TFDS builder 'no_such_builder'")
  assert os.listdir(tmp_path) == []


def test_glyphs_image_size_zero_is_named(tmp_path):
  result = faults.run_module(GLYPHS, f'--records_root_dir={tmp_path}', '--image_size=0')
  faults.assert_one_line_error(result, GLYPHS, '--image_size=0')
  assert os.listdir(tmp_path) == []


def test_glyphs_records_root_that_is_a_file(tmp_path):
  (tmp_path / 'records').write_text('not a folder')
  result = faults.run_module(GLYPHS, f'--records_root_dir={tmp_path / "records"}',
                             '--image_size=8', '--images_per_class=2', '--num_workers=1')
  faults.assert_one_line_error(result, GLYPHS, f"'{tmp_path / 'records'}' is a file")
  assert (tmp_path / 'records').read_text() == 'not a folder'
