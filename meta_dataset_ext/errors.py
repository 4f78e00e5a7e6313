"""The errors a user can act on: bad input, or a fault of a run that names its cause.

Each message is one line that names the file, class, record, flag or gin binding at fault and
says what to do. The command-line entry points (``meta_dataset_ext.cli``) print such an error
as that one line on stderr and exit with status 2; any other exception is a bug and keeps its
traceback. ``warn`` prints a one-line warning.
"""
import sys

import tqdm


class UserError(Exception):
  """Base class: an error caused by the user's input or environment, not by a bug."""


class ConfigError(UserError, ValueError):
  """A gin file, gin binding or flag that cannot be used; the message names it."""


class DataError(UserError, ValueError):
  """Bad records or spec input; the message names the file, source, class or record."""


class NonFiniteError(UserError, RuntimeError):
  """Training or evaluation produced a non-finite loss, gradient, weight or output."""


def warn(message: str) -> None:
  """Prints ``warning: message`` on stderr as one line, above any progress bar."""
  tqdm.tqdm.write(f'warning: {" ".join(message.split())}', file=sys.stderr)
