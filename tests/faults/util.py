"""Helpers of the fault suite: run a command-line entry point, check its one-line error, and
prove that nothing on disk was lost or changed."""
import dataclasses
import hashlib
import os
import subprocess
import sys
from typing import Dict, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class Result:
  returncode: int
  stdout: str
  stderr: str

  @property
  def last_line(self) -> str:
    lines = [line for line in self.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ''


def run_module(module: str, *args: str, cwd: Optional[str] = None,
               env: Optional[Dict[str, str]] = None, timeout: float = 600) -> Result:
  """Runs ``python -m module args`` (the checkout's code) and returns what it printed."""
  environment = dict(os.environ, PYTHONPATH=REPO)
  environment.pop('ALFA_TF_TRACEBACK', None)
  environment.update(env or {})
  done = subprocess.run([sys.executable, '-m', module, *args], cwd=cwd or REPO,
                        capture_output=True, text=True, timeout=timeout, env=environment)
  return Result(done.returncode, done.stdout, done.stderr)


def assert_one_line_error(result: Result, module: str, *names: str) -> str:
  """The command failed with exit status 2 and one line ``<module>: error: ...`` (no
  traceback) that contains every one of ``names``; returns that line."""
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  assert 'Traceback (most recent call last)' not in result.stderr, result.stderr[-3000:]
  line = result.last_line
  assert line.startswith(f'{module}: error: '), result.stderr[-3000:]
  for name in names:
    assert name in line, (name, line)
  return line


def tree_digest(path: str) -> Dict[str, str]:
  """{relative path: sha256 of the content, or 'dir'} of everything under ``path``."""
  digest = {}
  for root, dirs, files in os.walk(path):
    for name in dirs:
      digest[os.path.relpath(os.path.join(root, name), path)] = 'dir'
    for name in files:
      full = os.path.join(root, name)
      with open(full, 'rb') as f:
        digest[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
  return digest


def assert_unchanged(before: Dict[str, str], path: str,
                     ignore: Sequence[str] = ()) -> None:
  """Nothing under ``path`` was added, removed or changed since ``before`` (paths starting
  with one of ``ignore`` excepted)."""
  after = tree_digest(path)
  keep = lambda d: {k: v for k, v in d.items() if not k.startswith(tuple(ignore))}
  assert keep(after) == keep(before), sorted(set(keep(after).items()) ^
                                             set(keep(before).items()))[:10]
