"""The trained run of the predict and export tests (``held_back``), made once per session."""
import types

import pytest

from tests.predict import held_back


@pytest.fixture(scope='session')
def held_back_run(tmp_path_factory):
  """namespace(run_dir, records) of ``held_back.train``."""
  records = str(tmp_path_factory.mktemp('records'))
  run = str(tmp_path_factory.mktemp('run'))
  held_back.train(records, run)
  return types.SimpleNamespace(run_dir=run, records=records)
