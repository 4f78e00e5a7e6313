r"""Image folders of characters in one font: a few-shot task to try a trained learner on.

    python -m meta_dataset_ext.glyph_folders --output_dir=my_glyphs \
        [--characters=TWagk] [--font=FILE.ttf] [--num_support=5] [--num_query=10] \
        [--image_size=64] [--seed=0]

writes <output_dir>/support/<class>/<k>.png and <output_dir>/query/<class>/<k>.png, one class
per character (folder 'U+0054 T'), each image the character drawn as the glyphs source draws
it (``glyphs.render_glyph``: a random rotation, scale, shear, shift and stroke; grey PNG), so
that ``python -m meta_dataset_ext.predict --support_dir=my_glyphs/support
--query_dir=my_glyphs/query`` can classify them. The default characters are letters of the
glyphs source's TEST alphabet 'Latin (2/2)' (classes a run on it never trains on); the default
font is Pillow's built-in one (Aileron), which the glyphs source never uses (it draws with
matplotlib's fonts). Errors are one line on stderr (exit status 2).
"""
import os
import tempfile
from typing import Dict, List

from absl import flags
import numpy as np
from PIL import ImageFont

from meta_dataset_ext import cli
from meta_dataset_ext import errors
from meta_dataset_ext import glyphs
from meta_dataset_ext import run_dir
from meta_dataset_ext.data import writer

DEFAULT_CHARACTERS = 'TWagk'
_NOT_IN_NAMES = '/\\'

FLAGS = flags.FLAGS


def class_name(char: str) -> str:
  """The class folder of a character: 'U+0054 T' (distinct on case-blind file systems)."""
  return f'U+{ord(char):04X} {char}'


def _check_characters(characters: str) -> None:
  if len(set(characters)) < 2:
    raise errors.ConfigError(f'--characters={characters!r}: give at least 2 different '
                             'characters (one class each).')
  for char in characters:
    if not char.isprintable() or char.isspace() or char in _NOT_IN_NAMES:
      raise errors.ConfigError(f'--characters: {char!r} cannot name a class folder; leave '
                               'it out.')


def write_folders(output_dir: str, font_path: str, characters: str = DEFAULT_CHARACTERS,
                  num_support: int = 5, num_query: int = 10, image_size: int = 64,
                  seed: int = 0) -> Dict[str, str]:
  """Renders ``num_support + num_query`` images of each character in the font at
  ``font_path``; returns {'support': folder, 'query': folder}.

  Raises:
    ConfigError: bad characters or counts, a font that does not open or that draws
      nothing for a character (named).
  """
  _check_characters(characters)
  for name, value in (('--num_support', num_support), ('--num_query', num_query),
                      ('--image_size', image_size)):
    if value < 1:
      raise errors.ConfigError(f'{name}={value} must be at least 1.')
  try:
    font = ImageFont.truetype(font_path, image_size)
  except OSError as error:
    raise errors.ConfigError(f'--font {font_path!r} does not open as a TrueType font '
                             f'({error}).') from None
  blank = [c for c in dict.fromkeys(characters) if font.getmask(c).getbbox() is None]
  if blank:
    raise errors.ConfigError(f'The font {font_path!r} draws nothing for {blank[0]!r}: choose '
                             'other --characters or another --font.')
  run_dir.check_output_dir(output_dir, 'output folder (--output_dir)')
  folders = {part: os.path.join(output_dir, part) for part in ('support', 'query')}
  for char in dict.fromkeys(characters):
    rng = np.random.default_rng([seed, ord(char)])
    images = [writer.encode_png(glyphs.render_glyph(char, font_path, image_size, rng))
              for _ in range(num_support + num_query)]
    for part, chosen in (('support', images[:num_support]), ('query', images[num_support:])):
      folder = os.path.join(folders[part], class_name(char))
      os.makedirs(folder, exist_ok=True)
      for k, data in enumerate(chosen):
        with open(os.path.join(folder, f'{k}.png'), 'wb') as f:
          f.write(data)
  return folders


def builtin_font_bytes() -> bytes:
  """The TrueType data of Pillow's built-in font (Pillow >= 10.1 with FreeType)."""
  font = ImageFont.load_default(size=24)
  data = getattr(font, 'font_bytes', None)
  if not data:
    raise errors.ConfigError('This Pillow has no built-in TrueType font (Pillow >= 10.1 with '
                             'FreeType has): give a font file with --font.')
  return data


def _define_flags():
  flags.DEFINE_string('output_dir', None, 'Where support/ and query/ go.')
  flags.DEFINE_string('characters', DEFAULT_CHARACTERS, 'One class per character.')
  flags.DEFINE_string('font', None, 'A TrueType font file (default: Pillow\'s built-in font).')
  flags.DEFINE_integer('num_support', 5, 'Support images per class.', lower_bound=1)
  flags.DEFINE_integer('num_query', 10, 'Query images per class.', lower_bound=1)
  flags.DEFINE_integer('image_size', 64, 'Side of the images (the learner resizes them).',
                       lower_bound=8)
  flags.DEFINE_integer('seed', 0, 'Seed of the random transforms.')
  flags.mark_flag_as_required('output_dir')


def main(argv: List[str]):
  del argv
  arguments = dict(characters=FLAGS.characters, num_support=FLAGS.num_support,
                   num_query=FLAGS.num_query, image_size=FLAGS.image_size, seed=FLAGS.seed)
  if FLAGS.font:
    folders = write_folders(FLAGS.output_dir, FLAGS.font, **arguments)
  else:
    with tempfile.TemporaryDirectory() as scratch:
      font_path = os.path.join(scratch, 'builtin.ttf')
      with open(font_path, 'wb') as f:
        f.write(builtin_font_bytes())
      folders = write_folders(FLAGS.output_dir, font_path, **arguments)
  print(f'{len(set(FLAGS.characters))} classes, {FLAGS.num_support} support and '
        f'{FLAGS.num_query} query images each: {folders["support"]}, {folders["query"]}')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
