"""Runs a command-line entry point so that bad input ends in one clear line.

    if __name__ == '__main__':
      cli.run(main)

Errors the user can act on print one line on stderr, ``<command>: error: <message>``, and exit
with status 2: ``errors.UserError`` (bad gin configuration, records, flags, a non-finite
training state), ``OSError`` (a path that is missing, a file, or unwritable), TensorFlow's
``OpError`` (e.g. a file it cannot read; one that reports a bad record found by the input
pipeline prints that record's DataError) and absl flag errors. With ``--verbose`` (or the
environment variable ``ALFA_TF_TRACEBACK=1``) the traceback is printed too. Any other
exception is a bug: Python's traceback, exit status 1. Ctrl-C exits with status 130 after the
command's own handling (the trainer saves a checkpoint first). Arguments that are not flags
are an error too. absl's logging shows warnings and errors unless --verbosity is given.
"""
import os
import sys
import traceback
from typing import Callable, List

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from meta_dataset_ext import errors
from meta_dataset_ext.data import pipeline

TRACEBACK_ENV = 'ALFA_TF_TRACEBACK'
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
FLAGS = flags.FLAGS
flags.DEFINE_bool('verbose', False, 'On an error, print the traceback as well as the one-line '
                  f'message (also: environment variable {TRACEBACK_ENV}=1).')

# Lines that gin appends to an exception raised inside a configurable: the binding at fault
# is already named by the message itself.
_GIN_CONTEXT = ('In call to configurable',)
USER_ERRORS = (errors.UserError, OSError, tf.errors.OpError)


def one_line(error: BaseException) -> str:
  """The message of ``error`` on one line (gin's call-context lines dropped)."""
  if isinstance(error, tf.errors.OpError):
    text = error.message
  elif isinstance(error, OSError) and error.filename and error.strerror:
    text = f'{error.strerror}: {error.filename!r}'
  else:
    text = str(error) or type(error).__name__
  lines = [line.strip() for line in text.splitlines()]
  return ' '.join(line for line in lines if line and not line.startswith(_GIN_CONTEXT))


def _verbose() -> bool:
  if os.environ.get(TRACEBACK_ENV, '') not in ('', '0'):
    return True
  return FLAGS.is_parsed() and FLAGS.verbose


def _program() -> str:
  """'meta_dataset_ext.train' under ``python -m``, else the script's name."""
  spec = getattr(sys.modules.get('__main__'), '__spec__', None)
  if spec is not None and spec.name:
    return spec.name
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'alfa-tf'


def fail(message: str, error: BaseException = None) -> None:
  """Prints ``message`` as the command's one-line error (and the traceback if asked for),
  then exits with status 2."""
  if error is not None and _verbose():
    traceback.print_exception(type(error), error, error.__traceback__)
  # The process ends here: TensorFlow's warnings while it tears down (e.g. about a failed
  # checkpoint restore) would only bury the message.
  tf.get_logger().setLevel('ERROR')
  print(f'{_program()}: error: {message}', file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def _parse_flags(argv: List[str]) -> List[str]:
  try:
    remaining = FLAGS(argv)
  except flags.Error as error:
    fail(f'{one_line(error)} (see --help)')
  if not FLAGS['verbosity'].present:  # TensorFlow's INFO lines (checkpoint saves, ...) off.
    FLAGS.verbosity = logging.WARNING
  if len(remaining) > 1:
    fail(f'unexpected arguments {remaining[1:]}: every option is a --flag (see --help)')
  return remaining


def run(main: Callable[[List[str]], None]) -> None:
  """``absl.app.run(main)`` with one-line errors (module docstring)."""
  try:
    app.run(main, flags_parser=_parse_flags)
  except USER_ERRORS as error:
    # A bad record found while tf.data read it: report the DataError that named it.
    fail(one_line(pipeline.user_error(error) or error), error)
  except KeyboardInterrupt:
    print('Interrupted.', file=sys.stderr, flush=True)
    sys.exit(EXIT_INTERRUPTED)
