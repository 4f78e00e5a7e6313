"""Tests of meta_dataset_ext.glyphs: catalog, rendering, generation."""

import functools
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont
import pytest

from meta_dataset_ext import glyphs
from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data.spec import DataError, Split
from test_writer import read_source, run_module

# Small images and two per class keep generation around a second.
_SMALL = glyphs.GlyphsSettings(image_size=12, seed=0, images_per_class=2,
                               min_fonts=8)
_ABSENT = chr(0x10FFFD)  # A private-use code point no shipped font maps.


@functools.lru_cache(maxsize=None)
def _font(path):
  return ImageFont.truetype(path, 20)


def _drawn(char, path):
  """Pixels of `char` drawn plainly in a font."""
  image = Image.new("L", (48, 48), 0)
  ImageDraw.Draw(image).text((8, 8), char, font=_font(path), fill=255)
  return image.tobytes()


@pytest.fixture(scope="module")
def catalog():
  return glyphs.build_catalog(8)


@pytest.fixture(scope="module")
def small_source(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("glyphs"))
  return root, glyphs.generate_glyphs(root, _SMALL, num_workers=1)


def test_catalog_counts_and_fonts(catalog):
  classes = [c for a in catalog for c in a.classes]
  assert len(catalog) >= 30
  assert len(classes) >= 1000
  assert len({c.char for c in classes}) == len(classes)
  for alphabet in catalog:
    assert (glyphs.MIN_CLASSES_PER_ALPHABET <= len(alphabet.classes)
            <= glyphs.MAX_CLASSES_PER_ALPHABET), alphabet.name
  charmaps = {p: glyphs.font_chars(p) for p in glyphs.font_files()}
  assert not any("LastResort" in p for p in charmaps)
  for glyph_class in classes:
    assert len(glyph_class.fonts) >= 8, glyph_class.name
    for path in glyph_class.fonts:
      assert ord(glyph_class.char) in charmaps[path], (glyph_class.name, path)
      assert not path.endswith("cmex10.ttf")
  # No (class, font) pair draws the font's missing-glyph box.
  for glyph_class in classes:
    for path in glyph_class.fonts:
      assert _drawn(glyph_class.char, path) != _drawn(_ABSENT, path), (
          glyph_class.name, path)
  latin = "".join(c.char for a in catalog if a.name.startswith("Latin (")
                  for c in a.classes)
  assert "A" in latin and "z" in latin and "7" in latin
  # Homoglyphs of Latin letters are dropped, not kept as separate classes.
  assert "\u0410" not in {c.char for c in classes}  # Cyrillic A.


def test_render_is_deterministic_and_not_a_missing_glyph_box(catalog):
  path = catalog[0].classes[0].fonts[0]
  first = glyphs.render_glyph("A", path, 28, np.random.default_rng(1))
  again = glyphs.render_glyph("A", path, 28, np.random.default_rng(1))
  other = glyphs.render_glyph("A", path, 28, np.random.default_rng(2))
  assert first.shape == (28, 28) and first.dtype == np.uint8
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert first.min() < 100 and first.max() == 255  # Dark ink on white.
  # Every font of the first class of each alphabet draws a real glyph: the
  # drawing differs from the same transform of a code point it lacks.
  for alphabet in catalog:
    glyph_class = alphabet.classes[0]
    for k, path in enumerate(glyph_class.fonts):
      drawn = glyphs.render_glyph(glyph_class.char, path, 28,
                                  np.random.default_rng(k))
      missing = glyphs.render_glyph(_ABSENT, path, 28,
                                    np.random.default_rng(k))
      assert not np.array_equal(drawn, missing), (glyph_class.name, path)
      assert drawn.min() < 128, (glyph_class.name, path)


def test_generated_source(small_source, catalog):
  root, spec = small_source
  assert isinstance(spec, spec_lib.BiLevelDatasetSpecification)
  loaded = spec_lib.load_dataset_spec(root, "glyphs")
  assert loaded.to_dict() == spec.to_dict()
  assert sum(spec.superclasses_per_split.values()) == len(catalog)
  assert spec.num_classes == sum(len(a.classes) for a in catalog)
  assert all(spec.superclasses_per_split[s] >= 1 for s in Split)
  assert set(spec.images_per_class.values()) == {2}
  some = (0, spec.num_classes // 2, spec.num_classes - 1)
  spec_json, records = read_source(os.path.join(root, "glyphs"), some)
  assert spec_json["__class__"] == "BiLevelDatasetSpecification"
  for class_id in some:
    images = records[class_id]
    assert [label for _, label, _ in images] == [class_id, class_id]
    assert images[0][0].shape == (12, 12, 3)
    assert not np.array_equal(images[0][0], images[1][0])
  # A superclass holds the characters of one alphabet of the catalog.
  by_name = {a.name: a for a in catalog}
  superclass = spec.get_superclasses(Split.TEST)[0]
  alphabet = by_name[spec.superclass_names[superclass]]
  assert [spec.class_names[i] for i in spec.superclass_class_ids(superclass)
          ] == [c.name for c in alphabet.classes]


def test_same_seed_same_bytes_any_workers(small_source, tmp_path):
  root, spec = small_source
  again = glyphs.generate_glyphs(str(tmp_path), _SMALL, num_workers=2)
  assert again.class_names == spec.class_names
  for class_id in (0, 7, spec.num_classes - 1):
    with open(spec.class_file(class_id), "rb") as a, \
        open(again.class_file(class_id), "rb") as b:
      assert a.read() == b.read()


def test_ensure_is_noop_then_rejects_other_settings(small_source):
  root, spec = small_source
  spec_file = os.path.join(spec.path, "dataset_spec.json")
  mtime = os.path.getmtime(spec_file)
  assert glyphs.ensure_glyphs(root, *_SMALL) == spec.path
  assert os.path.getmtime(spec_file) == mtime
  with pytest.raises(DataError, match="other settings"):
    glyphs.ensure_glyphs(root, *_SMALL._replace(seed=1))


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
  calls = []

  def failing(job):
    calls.append(job)
    if len(calls) > 20:
      raise KeyboardInterrupt
    return [b"unused", b"unused"]

  monkeypatch.setattr(glyphs, "_class_images", failing)
  with pytest.raises(KeyboardInterrupt):
    glyphs.ensure_glyphs(str(tmp_path), *_SMALL, num_workers=1)
  assert os.listdir(str(tmp_path)) == []


def test_command_line(tmp_path):
  stdout = run_module("meta_dataset_ext.glyphs",
                      f"--records_root_dir={tmp_path}", "--image_size=8",
                      "--images_per_class=2", "--num_workers=1")
  assert "TRAIN:" in stdout and "alphabets" in stdout
  assert os.path.isfile(os.path.join(str(tmp_path), "glyphs",
                                     "dataset_spec.json"))
