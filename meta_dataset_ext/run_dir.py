"""A run directory: its output folders, its operative gin config, its console log.

    check_output_dir(path, 'results folder (--results_dir)')   # before the first update
    previous = OperativeConfig(run_dir).read()                  # None for a new run
    changed = diff_bindings(previous, gin.config_str())
    OperativeConfig(run_dir).write(gin.config_str())            # earlier versions are kept
    with ConsoleLog(os.path.join(run_dir, 'train.log')): ...     # the console, also on disk

Files are written with the permissions the umask gives (0644 / 0755 under umask 022), so
colleagues on a shared cluster can read a run.
"""
import datetime
import io
import os
import re
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

from meta_dataset_ext.errors import ConfigError

OPERATIVE_CONFIG = 'operative_config.gin'
CONSOLE_LOG = 'train.log'


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def readable_mode(path: str) -> None:
  """Gives ``path`` (made by ``tempfile``, which uses 0600 / 0700) the mode that the umask
  gives an ordinary new file or folder."""
  base = 0o777 if os.path.isdir(path) else 0o666
  os.chmod(path, base & ~_umask())


def atomic_write(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and ``os.replace``: a reader never
  sees half a file, and a kill leaves the previous version."""
  directory = os.path.dirname(os.path.abspath(path))
  fd, temporary = tempfile.mkstemp(dir=directory, prefix='.tmp_', suffix=os.path.basename(path))
  try:
    with os.fdopen(fd, 'w', encoding='utf-8', newline='') as f:
      f.write(text)
    readable_mode(temporary)
    os.replace(temporary, path)
  except BaseException:
    os.unlink(temporary)
    raise


def check_output_dir(path: str, what: str) -> None:
  """Raises ConfigError (naming ``what``, e.g. 'checkpoint folder (--train_checkpoint_dir)')
  if ``path`` cannot be used as an output folder: it is a file, lies below a file, or its
  nearest existing folder is not writable. Creates nothing."""
  if not path:
    raise ConfigError(f'The {what} is empty: give a folder.')
  existing = os.path.abspath(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    blame = ('is a file' if existing == os.path.abspath(path)
             else f'lies below the file {existing!r}')
    raise ConfigError(f'The {what} {path!r} {blame}: give a folder.')
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as error:
    raise ConfigError(f'The {what} {path!r} cannot be written ({error.strerror} in '
                      f'{existing!r}): give a folder you can write to.') from None


def parse_bindings(config: str) -> Dict[str, str]:
  """{'Trainer.seed': '1', 'import meta_dataset_ext.upstream': '', ...} of a config written
  by ``gin.config_str()`` (one binding per line; continuation lines are indented)."""
  bindings, key = {}, None
  for line in config.splitlines():
    if not line.strip() or line.startswith('#'):
      continue
    if line[0].isspace() and key is not None:
      bindings[key] += ' ' + line.strip()
    elif line.startswith('import '):
      key = line.strip()
      bindings[key] = ''
    else:
      key, _, value = line.partition(' = ')
      key = key.strip()
      bindings[key] = value.strip()
  return bindings


def diff_bindings(previous: str, current: str) -> List[Tuple[str, Optional[str], Optional[str]]]:
  """(binding, previous value, current value) of every binding that differs (None: unbound)."""
  old, new = parse_bindings(previous), parse_bindings(current)
  return [(key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
          if old.get(key) != new.get(key)]


def describe_changes(changes) -> str:
  """'Trainer.seed = 1 (was 0), DataConfig.image_height unbound (was 84)'."""
  parts = []
  for key, old, new in changes:
    now = 'unbound' if new is None else f'= {new}'
    was = 'unbound' if old is None else old
    parts.append(f'{key} {now} (was {was})')
  return ', '.join(parts)


class OperativeConfig:
  """``<run_dir>/operative_config.gin``: the gin configuration a run was made with. Writing a
  different one keeps the earlier version as ``operative_config-<n>.gin`` (n = 1, 2, ...)."""

  def __init__(self, run_dir: str):
    self.run_dir = run_dir
    self.path = os.path.join(run_dir, OPERATIVE_CONFIG)

  def read(self) -> Optional[str]:
    if not os.path.isfile(self.path):
      return None
    with open(self.path, encoding='utf-8') as f:
      return f.read()

  def earlier_versions(self) -> List[str]:
    pattern = re.compile(r'operative_config-(\d+)\.gin$')
    found = [(int(m.group(1)), name) for name in os.listdir(self.run_dir)
             for m in [pattern.match(name)] if m] if os.path.isdir(self.run_dir) else []
    return [os.path.join(self.run_dir, name) for _, name in sorted(found)]

  def write(self, config: str) -> None:
    previous = self.read()
    if previous == config:
      return
    if previous is not None:
      keep = os.path.join(self.run_dir, f'operative_config-{len(self.earlier_versions()) + 1}.gin')
      os.replace(self.path, keep)
    os.makedirs(self.run_dir, exist_ok=True)
    atomic_write(self.path, config)


class _Tee(io.TextIOBase):
  """Writes to the console stream and to the log; in the log, a line that a progress bar
  redrew with carriage returns keeps only its last state."""

  def __init__(self, console, log):
    super().__init__()
    self.console, self.log, self._line = console, log, ''

  def write(self, text):
    self.console.write(text)
    *complete, self._line = (self._line + text).split('\n')
    for line in complete:
      self.log.write(line.rsplit('\r', 1)[-1] + '\n')
    self.log.flush()
    return len(text)

  def flush(self):
    self.console.flush()
    self.log.flush()

  def finish(self):
    if self._line.strip('\r'):
      self.log.write(self._line.rsplit('\r', 1)[-1] + '\n')
    self._line = ''
    self.log.flush()

  def isatty(self):
    return self.console.isatty()

  @property
  def encoding(self):
    return getattr(self.console, 'encoding', 'utf-8')

  def fileno(self):
    return self.console.fileno()


class ConsoleLog:
  """Context manager: what this process prints (stdout and stderr) is also appended to
  ``path``, after a header line with the date and the command."""

  def __init__(self, path: str):
    self.path = path
    self._log = self._streams = None

  def __enter__(self):
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    new = not os.path.exists(self.path)
    self._log = open(self.path, 'a', encoding='utf-8')
    if new:
      readable_mode(self.path)
    started = datetime.datetime.now().isoformat(timespec='seconds')
    self._log.write(f'==== {started}: {" ".join(sys.argv)}\n')
    self._streams = (sys.stdout, sys.stderr)
    sys.stdout, sys.stderr = _Tee(sys.stdout, self._log), _Tee(sys.stderr, self._log)
    return self

  def __exit__(self, exc_type, error, tb):
    for tee in (sys.stdout, sys.stderr):
      tee.finish()
    sys.stdout, sys.stderr = self._streams
    if error is not None and not isinstance(error, (KeyboardInterrupt, SystemExit)):
      self._log.write(f'error: {type(error).__name__}: {" ".join(str(error).split())}\n')
    self._log.close()
    return False
