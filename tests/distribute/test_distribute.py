"""tf.distribute meta-training on CPU: 2 replicas equal one device; two workers train.

Each run is a fresh process: logical devices and TF_CONFIG must be set before TensorFlow
starts, which the pytest process has already done.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from meta_dataset_ext import distribute

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def launch(kind, out, optimizer='sgd', tf_config=None):
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')
  if tf_config:
    env['TF_CONFIG'] = json.dumps(tf_config)
  return subprocess.Popen([sys.executable, '-m', 'tests.distribute.replicas', kind, str(out),
                           optimizer],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def finish(process, timeout=300):
  _, err = process.communicate(timeout=timeout)
  assert process.returncode == 0, err[-3000:]


@pytest.mark.parametrize('mirrored', ['mirrored', 'mirrored_xla'])
def test_two_replicas_update_like_one_device(tmp_path, mirrored):
  runs = {kind: launch(kind, tmp_path / f'{kind}.npz') for kind in ('default', mirrored)}
  for process in runs.values():
    finish(process)
  one, two = (np.load(tmp_path / f'{kind}.npz') for kind in ('default', mirrored))
  assert int(one['replicas']) == 1 and int(two['replicas']) == 2
  np.testing.assert_allclose(one['losses'], two['losses'], rtol=1e-5)
  weights = [k for k in one.files if k.startswith('w')]
  assert len(weights) > 5
  for key in weights:
    np.testing.assert_allclose(one[key], two[key], rtol=1e-4, atol=1e-6)


def _free_port():
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_workers_on_localhost_train_in_sync(tmp_path):
  workers = [f'localhost:{_free_port()}' for _ in range(2)]
  runs = [launch('multi_worker', tmp_path / f'worker{i}.npz', 'adam',
                 {'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': i}})
          for i in range(2)]
  for process in runs:
    finish(process)
  first, second = (np.load(tmp_path / f'worker{i}.npz') for i in range(2))
  assert int(first['replicas']) == 2
  assert np.all(np.isfinite(first['losses']))
  for key in (k for k in first.files if k.startswith('w')):
    np.testing.assert_array_equal(first[key], second[key])


def test_meta_batch_must_divide_among_replicas():
  with pytest.raises(ValueError, match='meta_batch_size'):
    distribute.split_meta_batch([{}] * 3, 2)
  assert distribute.split_meta_batch(list(range(4)), 2) == [[0, 2], [1, 3]]


def test_unknown_strategy_is_named():
  with pytest.raises(ValueError, match='make_strategy.kind'):
    distribute.make_strategy('tpu')


def test_trainer_with_mirrored_strategy_trains_and_checkpoints_like_one_device(tmp_path):
  results = {}
  for kind in ('default', 'mirrored'):
    done = subprocess.run(
        [sys.executable, '-m', 'tests.distribute.trainer_run', kind, str(tmp_path / kind)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2'))
    assert done.returncode == 0, done.stderr[-3000:]
    results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    assert os.path.exists(tmp_path / kind / 'ckpt-4.index')
  assert results['mirrored']['replicas'] == 2 and results['mirrored']['update'] == 4
  np.testing.assert_allclose(results['mirrored']['loss'], results['default']['loss'], rtol=1e-3)
