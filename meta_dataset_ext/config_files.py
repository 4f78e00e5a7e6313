r"""Where the project's gin configs are, and which file a --gin_config path means.

The configs live in the checkout's ``gin/`` folder and are installed with the package (as
``meta_dataset_ext/configs/``), so they work from any directory. A --gin_config path is looked
up, in order:
  1. as given (relative to the working directory), so a user's own file always wins;
  2. among the project's configs: ``gin/alfa_fo_proto_maml.gin`` and ``alfa_fo_proto_maml.gin``
     both mean the shipped ``alfa_fo_proto_maml.gin``; ``gin/best/fo_proto_maml.gin`` and
     ``best/fo_proto_maml.gin`` the one of the sub-folder ``best/`` (``SUBFOLDERS``).
Nothing else is searched (never another package's folder).

    python -m meta_dataset_ext.config_files                          # lists the configs
    python -m meta_dataset_ext.config_files alfa_fo_proto_maml.gin   # prints its path

The second form serves trainers that do not know these folders, e.g. upstream's
``python -m meta_dataset.train --gin_config=$(python -m meta_dataset_ext.config_files
alfa_fo_proto_maml.gin)``. No TensorFlow is imported here.
"""
import importlib.util
import os
import sys
from typing import List

from meta_dataset_ext.errors import ConfigError

PACKAGE_CONFIGS = 'meta_dataset_ext.configs'  # setup.py installs gin/ under this name.
CHECKOUT_FOLDER = 'gin'
SUBFOLDERS = ('best',)  # Installed too (setup.py): the tuned configs.


def config_dirs() -> List[str]:
  """The folders holding the project's configs: the installed ones, else a checkout's gin/."""
  dirs = []
  spec = importlib.util.find_spec(PACKAGE_CONFIGS)
  if spec is not None and spec.submodule_search_locations:
    dirs.extend(os.path.abspath(d) for d in spec.submodule_search_locations)
  # Running from a source checkout (PYTHONPATH, or an editable install that maps the
  # package folder): <checkout>/gin beside <checkout>/meta_dataset_ext and setup.py.
  checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  folder = os.path.join(checkout, CHECKOUT_FOLDER)
  if os.path.isfile(os.path.join(checkout, 'setup.py')) and os.path.isdir(folder):
    dirs.append(folder)
  unique = []
  for d in dirs:
    if os.path.isdir(d) and d not in unique:
      unique.append(d)
  return unique


def available() -> List[str]:
  """The project's configs as --gin_config takes them ('fo_maml.gin', 'best/fo_maml.gin'),
  sorted."""
  names = set()
  for d in config_dirs():
    for sub in ('',) + SUBFOLDERS:
      folder = os.path.join(d, sub)
      if os.path.isdir(folder):
        names.update(os.path.join(sub, name) for name in os.listdir(folder)
                     if name.endswith('.gin'))
  return sorted(names)


def resolve(path: str) -> str:
  """The config file that the --gin_config value ``path`` means (module docstring).

  Raises:
    ConfigError: ``path`` is a folder, or neither a file nor one of the project's configs.
  """
  if os.path.isdir(path):
    raise ConfigError(f'--gin_config {path!r} is a folder; give a .gin file.')
  if os.path.isfile(path):
    return path
  parts = os.path.normpath(path).split(os.sep)
  if len(parts) > 1 and parts[0] == CHECKOUT_FOLDER:
    parts = parts[1:]
  if len(parts) == 1 or (len(parts) == 2 and parts[0] in SUBFOLDERS):
    for folder in config_dirs():
      candidate = os.path.join(folder, *parts)
      if os.path.isfile(candidate):
        return candidate
  raise ConfigError(
      f'gin config {path!r} not found: it is not a file (relative to {os.getcwd()!r}) nor one '
      f'of the configs shipped with alfa-tf ({", ".join(available()) or "none found"}).')


def main(argv: List[str]) -> int:
  if len(argv) > 2 or (len(argv) == 2 and argv[1].startswith('-')):
    print('usage: python -m meta_dataset_ext.config_files [CONFIG.gin]', file=sys.stderr)
    return 2
  if len(argv) == 1:
    for name in available():
      print(name)
    return 0
  try:
    print(os.path.abspath(resolve(argv[1])))
  except ConfigError as error:
    print(f'meta_dataset_ext.config_files: error: {error}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
