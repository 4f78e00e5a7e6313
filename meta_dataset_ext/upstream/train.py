r"""Upstream Meta-Dataset's trainer on current TensorFlow (>= 2.16), without changing upstream.

    python -m meta_dataset_ext.upstream.train --gin_config=alfa_fo_proto_maml.gin \
        --records_root_dir=RECORDS --train_checkpoint_dir=runs/alfa_fo_proto_maml

takes exactly ``python -m meta_dataset.train``'s flags and runs its ``main``, after
``patches.install_shims`` has made upstream importable on this TensorFlow and
``meta_dataset_ext.upstream.install`` has made its ImageNet episode sampler work on this numpy
(so that upstream's own configs run too) and registered the ALFA learners. Nothing is changed
where nothing is missing or broken.

Each --gin_config is resolved first (``config_files.resolve``): a file relative to the working
directory, else one of the configs shipped with alfa-tf, by name (``alfa_fo_proto_maml.gin``
or ``gin/alfa_fo_proto_maml.gin``), so they run from any directory. A config that is not
found, or upstream not installed, ends in one line on stderr and exit status 2.
"""
import importlib.util
import runpy
import sys
from typing import List

from meta_dataset_ext import config_files
from meta_dataset_ext.errors import ConfigError

PROGRAM = 'meta_dataset_ext.upstream.train'
UPSTREAM_TRAIN = 'meta_dataset.train'
EXIT_USER_ERROR = 2  # As the project's own command-line entry points (meta_dataset_ext.cli).


def resolve_gin_configs(args: List[str]) -> List[str]:
  """``args`` (flags, without the program) with every --gin_config value, ``--gin_config=X``
  or ``--gin_config X`` (absl also takes one dash), replaced by the file it means.

  Raises:
    ConfigError: a config is neither a file nor one of the shipped configs.
  """
  resolved, value_next = [], False
  for arg in args:
    if value_next:
      arg, value_next = config_files.resolve(arg), False
    elif arg.startswith('-') and arg.lstrip('-').partition('=')[0] == 'gin_config':
      flag, has_value, value = arg.partition('=')
      if has_value:
        arg = f'{flag}={config_files.resolve(value)}'
      else:
        value_next = True
    resolved.append(arg)
  return resolved


def _fail(message: str) -> None:
  print(f'{PROGRAM}: error: {message}', file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def main():
  try:
    args = resolve_gin_configs(sys.argv[1:])
  except ConfigError as error:
    _fail(str(error))
  if importlib.util.find_spec('meta_dataset') is None:
    _fail('upstream Meta-Dataset (the package meta_dataset) is not installed: see the README, '
          'section "With upstream Meta-Dataset".')
  # pylint: disable=g-import-not-at-top
  from meta_dataset_ext import upstream
  from meta_dataset_ext.upstream import patches  # Imports TensorFlow.
  patched = patches.install_shims()
  patched += upstream.install()
  if patched:
    print(f'{PROGRAM}: patched {", ".join(patched)}', file=sys.stderr)
  sys.argv = [UPSTREAM_TRAIN] + args
  runpy.run_module(UPSTREAM_TRAIN, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
