"""Fixtures of the upstream tests: skipping where upstream is not importable (as in CI), and
the tiny sources its pipeline reads."""
import pytest

from tests.upstream import sources
from tests.upstream import upstream_env


@pytest.fixture
def requires_upstream():
  reason = upstream_env.upstream_unavailable()
  if reason:
    pytest.skip(reason)


@pytest.fixture(scope='session')
def records_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('records'))
  sources.write_sources(root)
  return root
