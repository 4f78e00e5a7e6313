"""Glyphs: an Omniglot-like bi-level source rendered from matplotlib's fonts.

Alphabets are Unicode blocks (or a few related blocks together: Latin, Greek,
Cyrillic, Armenian, Georgian, Lao, IPA, arrows, mathematical operators,
geometric shapes, ...), classes are characters, and the images of a class are
that character drawn in different fonts, each with a random affine transform
(rotation, scale, aspect, shear, translation) and a random stroke thickening;
dark ink on a white background, grayscale PNG (decoded as RGB by the reader).

The fonts are the TrueType files matplotlib ships (DejaVu, STIX, Computer
Modern). A font is used for a character only when its character map contains
that character, so no image shows a missing-glyph box. The last-resort font
(LastResort*, one placeholder picture for every code point) is never used. The
Computer Modern (BaKoMa) fonts list the ASCII code points in their character
map but hold TeX-encoded glyphs there, so only the code points whose glyphs
really are those characters are taken from them (letters and digits of the
text fonts, the capitals of cmsy10, none of cmex10).

A character becomes a class when at least `min_fonts` fonts draw it, it has
no decomposition (accented letters are left out: their classes would differ by
a few pixels) and it does not look the same as a class already taken in a
reference font (Latin "A", Greek "Alpha" and Cyrillic "A" are one shape: only
the first, in alphabet order, is kept). Box drawing and block elements (whose
characters differ by line weight only) and Braille (the same dots in every
font) are not used. Alphabets with more than `MAX_CLASSES_PER_ALPHABET`
characters are cut into consecutive parts ("Arrows (1/4)", "Arrows (2/4)",
...), like Omniglot's 14-55 characters per alphabet. Alphabets with fewer than
`MIN_CLASSES_PER_ALPHABET` are left out. The alphabets are split into TRAIN /
VALID / TEST (`SPLIT_FRACTIONS` of them), as Omniglot is.

Everything is deterministic given the seed (and the installed matplotlib and
Pillow): the split of alphabets, the fonts and transforms of every image.

Command line:

    python -m meta_dataset_ext.glyphs --records_root_dir=R [--image_size=28]
        [--seed=0] [--images_per_class=20] [--min_fonts=8] [--num_workers=0]
        [--overwrite]

writes the source `glyphs` (`R/glyphs/dataset_spec.json`, a
BiLevelDatasetSpecification, and one `<class_id>.tfrecords` per class) and
prints its statistics. Without --overwrite an existing source with the same
settings is left as it is (and one with other settings is an error).
--num_workers=0 uses one process per CPU. Errors are one line on stderr (exit
status 2; --verbose for the traceback).

Python:

    path = ensure_glyphs(records_root_dir, image_size=28, seed=0)

generates the source on first use and is a no-op afterwards; generation is
atomic (a staging directory renamed into place), so an interrupted run leaves
nothing half-written.
"""

import functools
import json
import math
import multiprocessing
import os
import time
import unicodedata
from typing import List, NamedTuple, Optional, Sequence, Tuple

from absl import flags
import matplotlib
from matplotlib import ft2font
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from meta_dataset_ext import cli
from meta_dataset_ext.data import spec as spec_lib
from meta_dataset_ext.data import writer
from meta_dataset_ext.data.spec import DataError, Split

SOURCE_NAME = "glyphs"
SETTINGS_FILENAME = "glyphs_settings.json"
MAX_CLASSES_PER_ALPHABET = 50
MIN_CLASSES_PER_ALPHABET = writer.MIN_WAYS  # The smallest way of an episode.
SPLIT_FRACTIONS = (0.6, 0.15, 0.25)  # Of the alphabets.
_FORMAT_VERSION = 1  # Bump when the rendering changes.

_LETTERS_AND_DIGITS = ("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                       "0123456789")
# Code points whose glyphs in the BaKoMa Computer Modern fonts are the
# characters their charmap claims; these fonts are not Unicode-encoded.
_TEX_FONT_CHARS = {
    "cmr10": _LETTERS_AND_DIGITS, "cmb10": _LETTERS_AND_DIGITS,
    "cmss10": _LETTERS_AND_DIGITS, "cmti10": _LETTERS_AND_DIGITS,
    "cmtt10": _LETTERS_AND_DIGITS, "cmmi10": _LETTERS_AND_DIGITS,
    "cmsy10": _LETTERS_AND_DIGITS[:26], "cmex10": "",
}
_PLACEHOLDER_FONT_PREFIX = "LastResort"

# Alphabets in priority order (a look-alike of an earlier alphabet's class is
# dropped), each a list of Unicode blocks (first, last code point).
_ALPHABETS: Tuple[Tuple[str, Tuple[Tuple[int, int], ...]], ...] = (
    ("Latin", ((0x0000, 0x007F),)),
    ("Greek", ((0x0370, 0x03FF),)),
    ("Cyrillic", ((0x0400, 0x04FF), (0x0500, 0x052F))),
    ("Armenian", ((0x0530, 0x058F),)),
    ("Georgian", ((0x10A0, 0x10FF),)),
    ("Georgian Nuskhuri", ((0x2D00, 0x2D2F),)),
    ("Lao", ((0x0E80, 0x0EFF),)),
    ("Latin Supplement", ((0x0080, 0x00FF), (0x0100, 0x017F),
                          (0x1E00, 0x1EFF))),
    ("Latin Extended-B", ((0x0180, 0x024F),)),
    ("IPA", ((0x0250, 0x02AF),)),
    ("Phonetic", ((0x1D00, 0x1D7F),)),
    ("Latin Extended-C/D", ((0x2C60, 0x2C7F), (0xA720, 0xA7FF))),
    ("Currency and Letterlike", ((0x20A0, 0x20CF), (0x2100, 0x214F))),
    ("Arrows", ((0x2190, 0x21FF), (0x27F0, 0x27FF), (0x2900, 0x297F),
                (0x2B00, 0x2BFF))),
    ("Math", ((0x2200, 0x22FF), (0x27C0, 0x27EF), (0x2980, 0x29FF),
              (0x2A00, 0x2AFF))),
    ("Technical", ((0x2300, 0x23FF), (0x2400, 0x243F))),
    ("Shapes", ((0x25A0, 0x25FF),)),
    ("Symbols", ((0x2600, 0x26FF), (0x2700, 0x27BF))),
)
_CLASS_CATEGORIES = frozenset(("Lu", "Ll", "Lt", "Lo", "Nd", "Sm", "So", "Sc"))

# Look-alike test: characters drawn in each reference font, centred, compared
# by relative squared distance.
_REFERENCE_FONTS = ("DejaVuSans.ttf", "DejaVuSerif.ttf")
_REFERENCE_SIZE = 32
_LOOKALIKE_DISTANCE = 0.02

# Rendering: the em is this fraction of the image; glyphs are shrunk to fit.
_EM_FRACTION = 0.75
_MAX_EXTENT = 0.85
_MIN_SUPERSAMPLED_SIZE = 56  # Draw at >= this size, then box-downsample.
# Random transform ranges.
_ROTATION_DEGREES = 12.0
_SCALE_RANGE = (0.8, 1.1)
_ASPECT_RANGE = (0.9, 1.1)
_SHEAR = 0.25
_TRANSLATION = 0.07  # Fraction of the image.
_MAX_STROKE = 0.03  # Fraction of the image.


def font_dir() -> str:
  """matplotlib's folder of TrueType fonts."""
  return os.path.join(matplotlib.get_data_path(), "fonts", "ttf")


def font_files() -> List[str]:
  """Paths of the fonts used (all shipped .ttf but the placeholder font)."""
  directory = font_dir()
  return [os.path.join(directory, name)
          for name in sorted(os.listdir(directory)) if name.endswith(".ttf")
          and not name.startswith(_PLACEHOLDER_FONT_PREFIX)]


def font_chars(path: str) -> frozenset:
  """Code points a font draws as themselves, from its character map."""
  stem = os.path.splitext(os.path.basename(path))[0]
  if stem in _TEX_FONT_CHARS:
    return frozenset(map(ord, _TEX_FONT_CHARS[stem]))
  return frozenset(ft2font.FT2Font(path).get_charmap())


@functools.lru_cache(maxsize=None)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
  return ImageFont.truetype(path, size)


class GlyphClass(NamedTuple):
  """One class: a character and the fonts that draw it."""
  char: str
  fonts: Tuple[str, ...]

  @property
  def name(self) -> str:
    return f"U+{ord(self.char):04X} {unicodedata.name(self.char, '')}".strip()


class Alphabet(NamedTuple):
  """One superclass: a name and its classes in code point order."""
  name: str
  classes: Tuple[GlyphClass, ...]


def _is_candidate(char: str) -> bool:
  return (unicodedata.category(char) in _CLASS_CATEGORIES
          and unicodedata.normalize("NFKD", char) == char)


def _reference_image(char: str, path: str) -> np.ndarray:
  """The character centred on a small canvas, ink in [0, 1], flattened."""
  font = _font(path, int(_REFERENCE_SIZE * _EM_FRACTION))
  left, top, right, bottom = font.getbbox(char)
  image = Image.new("L", (_REFERENCE_SIZE, _REFERENCE_SIZE), 0)
  origin = ((_REFERENCE_SIZE - left - right) / 2,
            (_REFERENCE_SIZE - top - bottom) / 2)
  ImageDraw.Draw(image).text(origin, char, font=font, fill=255)
  return np.asarray(image, np.float32).ravel() / 255.0


def _drop_lookalikes(classes: List[GlyphClass]) -> List[GlyphClass]:
  """Drops each class that looks like an earlier one in a reference font."""
  keep = np.ones(len(classes), bool)
  for reference in _REFERENCE_FONTS:
    path = os.path.join(font_dir(), reference)
    index = [i for i, c in enumerate(classes) if path in c.fonts]
    if not index:
      continue
    images = np.stack([_reference_image(classes[i].char, path) for i in index])
    norms = (images * images).sum(axis=1)
    distance = (norms[:, None] + norms[None, :] - 2 * images @ images.T) / (
        norms[:, None] + norms[None, :])
    for a in range(len(index)):
      earlier = np.flatnonzero(distance[a, :a] < _LOOKALIKE_DISTANCE)
      if keep[index[a]] and keep[[index[b] for b in earlier]].any():
        keep[index[a]] = False
  return [c for c, k in zip(classes, keep) if k]


def _split_alphabet(name: str, classes: Sequence[GlyphClass]
                    ) -> List[Alphabet]:
  """Cuts an alphabet into consecutive parts of at most the maximum size."""
  parts = math.ceil(len(classes) / MAX_CLASSES_PER_ALPHABET)
  if parts == 1:
    return [Alphabet(name, tuple(classes))]
  bounds = np.linspace(0, len(classes), parts + 1).round().astype(int)
  return [Alphabet(f"{name} ({k + 1}/{parts})",
                   tuple(classes[bounds[k]:bounds[k + 1]]))
          for k in range(parts)]


@functools.lru_cache(maxsize=8)
def build_catalog(min_fonts: int = 8) -> Tuple[Alphabet, ...]:
  """The alphabets and classes of the source, in alphabet order.

  Args:
    min_fonts: a character is a class only if at least this many fonts draw
      it (after leaving out fonts whose glyph for it has no ink).
  """
  fonts = [(path, font_chars(path)) for path in font_files()]
  classes, alphabet_of = [], []
  for alphabet_index, (_, blocks) in enumerate(_ALPHABETS):
    for first, last in blocks:
      for code in range(first, last + 1):
        char = chr(code)
        if not _is_candidate(char):
          continue
        drawn_by = tuple(path for path, chars in fonts if code in chars)
        if len(drawn_by) < min_fonts:
          continue
        drawn_by = tuple(p for p in drawn_by
                         if _font(p, 24).getmask(char).getbbox() is not None)
        if len(drawn_by) >= min_fonts:
          classes.append(GlyphClass(char, drawn_by))
          alphabet_of.append(alphabet_index)
  kept = set(_drop_lookalikes(classes))
  alphabets = []
  for alphabet_index, (name, _) in enumerate(_ALPHABETS):
    members = [c for c, a in zip(classes, alphabet_of)
               if a == alphabet_index and c in kept]
    if len(members) >= MIN_CLASSES_PER_ALPHABET:
      alphabets.extend(_split_alphabet(name, members))
  return tuple(alphabets)


def _affine_inverse(rng: np.random.Generator, size: int, extent: float,
                    canvas: int) -> Tuple[float, ...]:
  """PIL AFFINE data mapping output pixels to canvas pixels.

  The forward map takes the canvas centre to the output centre (plus a random
  translation) through a random rotation, shear, aspect and scale; `extent` is
  the glyph's larger side on the canvas, shrunk to fit when needed.
  """
  angle = np.deg2rad(rng.uniform(-_ROTATION_DEGREES, _ROTATION_DEGREES))
  scale = rng.uniform(*_SCALE_RANGE) * min(1.0, _MAX_EXTENT * size / extent)
  aspect = rng.uniform(*_ASPECT_RANGE)
  shear = rng.uniform(-_SHEAR, _SHEAR)
  shift = rng.uniform(-_TRANSLATION, _TRANSLATION, size=2) * size
  rotation = np.array([[np.cos(angle), -np.sin(angle)],
                       [np.sin(angle), np.cos(angle)]])
  forward = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag(
      [scale * aspect, scale / aspect])
  inverse = np.linalg.inv(forward)
  offset = np.full(2, canvas / 2) - inverse @ (np.full(2, size / 2) + shift)
  return (inverse[0, 0], inverse[0, 1], offset[0],
          inverse[1, 0], inverse[1, 1], offset[1])


def render_glyph(char: str, font_path: str, image_size: int,
                 rng: np.random.Generator) -> np.ndarray:
  """One randomly transformed drawing of `char` in a font.

  Returns:
    uint8 [image_size, image_size], dark ink (0) on white (255).
  """
  factor = max(1, math.ceil(_MIN_SUPERSAMPLED_SIZE / image_size))
  size = image_size * factor
  stroke = int(rng.integers(0, round(_MAX_STROKE * size) + 1))
  font = _font(font_path, int(size * _EM_FRACTION))
  left, top, right, bottom = font.getbbox(char, stroke_width=stroke)
  extent = max(right - left, bottom - top, 1)
  canvas = int(max(size, extent) + 4)
  image = Image.new("L", (canvas, canvas), 0)
  ImageDraw.Draw(image).text(
      ((canvas - left - right) / 2, (canvas - top - bottom) / 2), char,
      font=font, fill=255, stroke_width=stroke, stroke_fill=255)
  image = image.transform((size, size), Image.Transform.AFFINE,
                          _affine_inverse(rng, size, extent, canvas),
                          resample=Image.Resampling.BILINEAR)
  if factor > 1:
    image = image.reduce(factor)
  return 255 - np.asarray(image)


def _class_images(job: Tuple[GlyphClass, int, int, int]) -> List[bytes]:
  """PNG bytes of the images of one class (a worker task)."""
  glyph_class, image_size, images_per_class, seed = job
  rng = np.random.default_rng([seed, ord(glyph_class.char)])
  order = rng.permutation(len(glyph_class.fonts))
  fonts = [glyph_class.fonts[order[i % len(order)]]
           for i in range(images_per_class)]
  return [writer.encode_png(render_glyph(glyph_class.char, f, image_size, rng))
          for f in fonts]


class GlyphsSettings(NamedTuple):
  """What determines the generated source (stored next to its spec)."""
  image_size: int = 28
  seed: int = 0
  images_per_class: int = 20
  min_fonts: int = 8

  def to_json(self) -> str:
    return json.dumps(dict(self._asdict(), version=_FORMAT_VERSION),
                      indent=2, sort_keys=True) + "\n"


def _stored_settings(source_dir: str) -> Optional[str]:
  path = os.path.join(source_dir, SETTINGS_FILENAME)
  if not os.path.isfile(os.path.join(source_dir, spec_lib.SPEC_FILENAME)):
    return None
  if not os.path.isfile(path):
    return ""
  with open(path, encoding="utf-8") as f:
    return f.read()


def generate_glyphs(records_root_dir: str,
                    settings: GlyphsSettings = GlyphsSettings(),
                    num_workers: int = 0,
                    overwrite: bool = False) -> spec_lib.AnySpec:
  """Renders and writes the glyphs source; returns its spec.

  Args:
    records_root_dir: the source goes to `<records_root_dir>/glyphs`.
    settings: image size, seed, images per class, minimum fonts per class.
    num_workers: rendering processes; 0 means one per CPU, 1 renders here.
    overwrite: replace an existing source (once the new one is complete).
  """
  alphabets = build_catalog(settings.min_fonts)
  if len(alphabets) < len(Split):
    raise DataError(f"min_fonts={settings.min_fonts} leaves {len(alphabets)} "
                    "alphabet(s); at least one per split is needed.")
  splits = writer.assign_splits(alphabets, SPLIT_FRACTIONS, settings.seed)
  layout = writer.SourceLayout.bilevel(SOURCE_NAME, {
      split: [(a.name, [c.name for c in a.classes]) for a in members]
      for split, members in splits.items()})
  ordered = [c for split in Split for a in splits[split] for c in a.classes]
  jobs = [(c, settings.image_size, settings.images_per_class, settings.seed)
          for c in ordered]
  num_workers = num_workers or os.cpu_count() or 1

  def examples(rendered):
    for class_id, images in enumerate(rendered):
      for image in images:
        yield class_id, image

  if num_workers == 1:
    return writer.write_source(records_root_dir, layout,
                               examples(map(_class_images, jobs)), overwrite,
                               extra_files={SETTINGS_FILENAME:
                                            settings.to_json()})
  with multiprocessing.Pool(num_workers) as pool:
    rendered = pool.imap(_class_images, jobs, chunksize=8)
    return writer.write_source(records_root_dir, layout, examples(rendered),
                               overwrite, extra_files={SETTINGS_FILENAME:
                                                       settings.to_json()})


def ensure_glyphs(records_root_dir: str, image_size: int = 28, seed: int = 0,
                  images_per_class: int = 20, min_fonts: int = 8,
                  num_workers: int = 0) -> str:
  """Generates the glyphs source unless it is already there; returns its dir.

  A no-op when `<records_root_dir>/glyphs/dataset_spec.json` exists with the
  same settings. Generation is atomic, and a concurrent generation of the same
  settings that finishes first is accepted.

  Raises:
    DataError: the directory holds a glyphs source of other settings, or
      something that is not a complete glyphs source.
  """
  settings = GlyphsSettings(image_size, seed, images_per_class, min_fonts)
  source_dir = os.path.join(records_root_dir, SOURCE_NAME)
  stored = _stored_settings(source_dir)
  if stored is None:
    try:
      generate_glyphs(records_root_dir, settings, num_workers)
      return source_dir
    except (DataError, OSError):
      stored = _stored_settings(source_dir)  # Another process won the race?
      if stored is None:
        raise
  if stored != settings.to_json():
    raise DataError(
        f"{source_dir!r} holds a glyphs source made with other settings "
        f"({stored.strip() or 'unknown'}), not {settings._asdict()}; use "
        "another records_root_dir or regenerate it with --overwrite.")
  return source_dir


def _print_statistics(spec, seconds: float):
  print(f"Source {spec.name!r} at {spec.path} "
        f"({seconds:.1f} s).")
  for split in Split:
    superclasses = spec.get_superclasses(split)
    classes = spec.get_classes(split)
    images = sum(spec.get_total_images_per_class(c) for c in classes)
    names = ", ".join(spec.superclass_names[i] for i in superclasses)
    print(f"  {split.name:5s}: {len(superclasses):2d} alphabets, "
          f"{len(classes):4d} classes, {images:6d} images: {names}")


FLAGS = flags.FLAGS


def _define_flags():
  flags.DEFINE_string("records_root_dir", None,
                      "Records root; the source goes to <dir>/glyphs.")
  flags.DEFINE_integer("image_size", 28, "Side of the square images.",
                       lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Seed of the alphabet split and rendering.")
  flags.DEFINE_integer("images_per_class", 20, "Images of every character.",
                       lower_bound=writer.MIN_IMAGES_PER_CLASS)
  flags.DEFINE_integer("min_fonts", 8,
                       "Fonts that must draw a character for it to be a class.",
                       lower_bound=1)
  flags.DEFINE_integer("num_workers", 0,
                       "Rendering processes; 0: one per CPU.", lower_bound=0)
  flags.DEFINE_bool("overwrite", False,
                    "Regenerate even if the source exists.")
  flags.mark_flag_as_required("records_root_dir")


def main(argv):
  del argv  # Unused.
  start = time.time()
  settings = GlyphsSettings(FLAGS.image_size, FLAGS.seed,
                            FLAGS.images_per_class, FLAGS.min_fonts)
  if FLAGS.overwrite:
    generate_glyphs(FLAGS.records_root_dir, settings, FLAGS.num_workers,
                    overwrite=True)
  else:
    ensure_glyphs(FLAGS.records_root_dir, *settings,
                  num_workers=FLAGS.num_workers)
  spec = spec_lib.load_dataset_spec(FLAGS.records_root_dir, SOURCE_NAME)
  _print_statistics(spec, time.time() - start)


if __name__ == "__main__":
  _define_flags()
  cli.run(main)
