"""Gin wiring at the edge: registers the project's configurables and parses configs.

Config files are self-contained (no ``include`` of relative paths), so they run from any
working directory; a --gin_config path is resolved by ``config_files.resolve`` (the working
directory first, then the configs installed with the package). A file's
``import meta_dataset_ext.upstream`` line (for upstream Meta-Dataset's trainer) registers
nothing here.
"""
from typing import Optional, Sequence

import gin

from meta_dataset_ext import config_files as config_files_lib
# Imported for their @gin.configurable registrations (upstream Meta-Dataset's names).
from meta_dataset_ext import learners  # pylint: disable=unused-import
from meta_dataset_ext import trainer  # pylint: disable=unused-import
from meta_dataset_ext import upstream_compat
from meta_dataset_ext.data import pipeline  # pylint: disable=unused-import
from meta_dataset_ext.data import sampler  # pylint: disable=unused-import
from meta_dataset_ext.errors import ConfigError  # Re-exported: gin_setup.ConfigError.


def parse(config_files: Sequence[str], bindings: Sequence[str],
          operative_config: Optional[str] = None) -> None:
  """Parses the files, then ``operative_config`` (a run's recorded configuration, which so
  overrides the files), then the bindings (which override both); unknown names, and
  upstream-only bindings this trainer cannot honour (``upstream_compat``), raise
  ConfigError naming them."""
  files = [config_files_lib.resolve(path) for path in config_files]
  for path in files + ([operative_config] if operative_config else []):
    try:
      gin.parse_config_file(path)
    except (ValueError, KeyError, ImportError, SyntaxError, IOError) as error:
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


def bound_value(binding: str, default=None):
  """The value ``binding`` (e.g. 'Trainer.checkpoint_to_restore') is bound to, or
  ``default`` when it is not bound."""
  try:
    return gin.query_parameter(binding)
  except ValueError:
    return default
