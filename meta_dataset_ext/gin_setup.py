"""Gin wiring at the edge: registers the project's configurables and parses configs.

Config files are self-contained (no ``include`` of relative paths), so they run from any
working directory; a relative --gin_config path is looked up in the working directory first,
then in the project's ``gin/`` folder. A file's ``import meta_dataset_ext.upstream`` line (for
upstream Meta-Dataset's trainer) registers nothing here.
"""
import os
from typing import Sequence

import gin

# Imported for their @gin.configurable registrations (upstream Meta-Dataset's names).
from meta_dataset_ext import learners  # pylint: disable=unused-import
from meta_dataset_ext import trainer  # pylint: disable=unused-import
from meta_dataset_ext import upstream_compat
from meta_dataset_ext.data import pipeline  # pylint: disable=unused-import
from meta_dataset_ext.data import sampler  # pylint: disable=unused-import
from meta_dataset_ext.errors import ConfigError  # Re-exported: gin_setup.ConfigError.

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'gin')


def resolve(path: str) -> str:
  """The config file ``path``: as given, or relative to the project's gin/ folder."""
  if os.path.exists(path):
    return path
  candidate = os.path.join(CONFIG_DIR, os.path.relpath(path, 'gin')
                           if path.startswith('gin' + os.sep) else path)
  if os.path.exists(candidate):
    return candidate
  raise ConfigError(f'gin config {path!r} not found (looked in the working directory and '
                    f'in {CONFIG_DIR}).')


def parse(config_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Parses the files then the bindings; unknown names, and upstream-only bindings this
  trainer cannot honour (``upstream_compat``), raise ConfigError naming them."""
  for path in config_files:
    path = resolve(path)
    try:
      gin.parse_config_file(path)
    except (ValueError, KeyError, ImportError, SyntaxError) as error:
      raise ConfigError(f'in gin config {path}: {error}') from error
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except (ValueError, KeyError, ImportError, SyntaxError) as error:
      raise ConfigError(f'in --gin_bindings {binding!r}: {error}') from error
  try:
    upstream_compat.check()
  except ValueError as error:
    raise ConfigError(str(error)) from error
