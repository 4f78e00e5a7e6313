"""How the upstream tests run upstream Meta-Dataset: in a fresh interpreter, where it is
importable (its gin names would clash with the project's in the test process)."""
import functools
import importlib.util
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_python(*args, cwd=REPO):
  """``python ARGS`` with this checkout's packages first on the path, from ``cwd``."""
  path = os.pathsep.join(p for p in (REPO, os.environ.get('PYTHONPATH')) if p)
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                        timeout=600, env={**os.environ, 'PYTHONPATH': path})


@functools.lru_cache(maxsize=None)
def upstream_unavailable():
  """Why upstream cannot be imported here, with the patches (None if it can)."""
  if importlib.util.find_spec('meta_dataset') is None:
    return 'upstream Meta-Dataset (meta_dataset) is not installed'
  done = run_python('-c', 'from meta_dataset_ext.upstream import patches; '
                    'patches.install_shims(); import meta_dataset.trainer')
  if done.returncode:
    return 'upstream Meta-Dataset does not import: ' + done.stderr.strip().splitlines()[-1]
  return None


@functools.lru_cache(maxsize=None)
def upstream_imports_unchanged() -> bool:
  """Whether upstream's ``meta_dataset.train`` imports without the shims (TF 2.15 with its
  dependencies installed), so that ``python -m meta_dataset.train`` is the command here."""
  return run_python('-c', 'import meta_dataset.train').returncode == 0


def run_check(*args):
  """Runs ``adapter_checks.check_<args[0]>(*args[1:])``; asserts that it passed."""
  done = run_python('-m', 'tests.upstream.adapter_checks', *args)
  assert done.returncode == 0 and done.stdout.strip().endswith('ok'), done.stderr[-4000:]
