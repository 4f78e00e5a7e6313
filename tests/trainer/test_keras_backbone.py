"""A user's Keras model through gin and the trainer (``Learner.embedding_fn = @keras_backbone``,
``keras_backbone.builder = @<the user's builder>``): meta-training, checkpoints by the model's
variable paths, resuming, evaluation, what is adapted, two tf.distribute replicas.

    python -m tests.trainer.test_keras_backbone {default|mirrored} RECORDS CHECKPOINT_DIR

runs a few updates in a fresh process (two logical CPU devices for 'mirrored') and prints
the trained model's variables as JSON (used by the replica test below).
"""
import json
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

keras = pytest.importorskip('keras')
if not hasattr(keras.layers.Layer, 'stateless_call'):
  pytest.skip('KerasBackbone needs Keras 3 (TF >= 2.16)', allow_module_level=True)

from meta_dataset_ext import learners  # pylint: disable=g-import-not-at-top
from tests.trainer.tiny import make_trainer, records  # pylint: disable=unused-import,g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@gin.configurable('tiny_keras_net')
def tiny_keras_net(filters: int = 4):
  """The user's architecture, as a user's module would register it (seeded: Keras draws the
  initial values)."""
  keras.utils.set_random_seed(0)
  layers = keras.layers
  return keras.Sequential([
      layers.Conv2D(filters, 3, padding='same', name='conv0'),
      layers.BatchNormalization(name='bn0'), layers.ReLU(), layers.MaxPooling2D(),
      layers.Conv2D(filters, 3, padding='same', name='conv1'),
      layers.BatchNormalization(name='bn1'), layers.ReLU(),
      layers.GlobalAveragePooling2D(), layers.Dense(6, name='embedding')], name='user_net')


KERAS = ['Learner.embedding_fn = @keras_backbone', 'keras_backbone.builder = @tiny_keras_net',
         'keras_backbone.weight_decay = 1e-4']
MODEL_VARIABLES = ['conv0/kernel', 'conv0/bias', 'bn0/gamma', 'bn0/beta', 'conv1/kernel',
                   'conv1/bias', 'bn1/gamma', 'bn1/beta', 'embedding/kernel', 'embedding/bias']


def model_values(trainer):
  return {name: trainer.learner.theta0[name].numpy().copy() for name in MODEL_VARIABLES}


def test_meta_trains_checkpoints_resumes_and_evaluates_a_users_keras_model(records, tmp_path):
  run = tmp_path / 'run'
  trainer = make_trainer(records, run, extra=KERAS + ['Trainer.num_updates = 2'])
  learner = trainer.learner
  assert list(learner.theta0.names) == MODEL_VARIABLES  # Proto-MAML: no meta-learned head.
  assert list(learner.update_rule.param_names) == [
      n for n in MODEL_VARIABLES if not n.startswith('bn')] + ['head.w', 'head.b']
  assert learner.l2_weights == {'conv0/kernel': 1e-4, 'conv1/kernel': 1e-4,
                                'embedding/kernel': 1e-4}
  before = model_values(trainer)
  trainer.train()
  trained = model_values(trainer)
  assert all(np.any(trained[n] != before[n]) for n in MODEL_VARIABLES if 'bias' not in n)
  keys = [name.replace('.S', '/') for name, _ in
          tf.train.list_variables(tf.train.latest_checkpoint(str(run)))]
  for name in MODEL_VARIABLES:
    assert f'learner/theta0/param_{name}/.ATTRIBUTES/VARIABLE_VALUE' in keys, name
  assert any(k.startswith('learner/keras_model/') and 'moving_mean' in k for k in keys)

  resumed = make_trainer(records, run, extra=KERAS + ['Trainer.num_updates = 3'])
  assert resumed.restore() == 2
  for name, value in trained.items():
    np.testing.assert_array_equal(resumed.learner.theta0[name].numpy(), value)
  resumed.train()
  evaluator = make_trainer(records, run, extra=KERAS + ['Trainer.num_updates = 3'],
                           is_training=False)
  summary = evaluator.evaluate()[0].by_source()['glyphs']
  assert 0.0 <= summary['mean'] <= 1.0
  np.testing.assert_array_equal(evaluator.learner.keras_model.get_layer('conv0').kernel.numpy(),
                                resumed.learner.theta0['conv0/kernel'].numpy())


@pytest.mark.parametrize('bindings,expected', [
    (["keras_backbone.adapt = ['embedding']"], ['embedding/kernel', 'embedding/bias']),
    (['MAMLLearner.adapt_batch_norm = True'], MODEL_VARIABLES),
])
def test_what_is_adapted_is_bound_in_gin(bindings, expected):
  gin.clear_config()
  for binding in KERAS + bindings:
    gin.parse_config(binding)
  learner = learners.alfa_maml_learner(logit_dim=5, input_shape=(16, 16, 3))
  assert list(learner.update_rule.param_names) == expected + ['head.w', 'head.b']
  gin.clear_config()


def test_two_replicas_train_a_keras_model_like_one_device(records, tmp_path):
  results = {}
  for kind in ('default', 'mirrored'):
    done = subprocess.run(
        [sys.executable, '-m', 'tests.trainer.test_keras_backbone', kind, records,
         str(tmp_path / kind)], cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2'))
    assert done.returncode == 0, done.stderr[-3000:]
    results[kind] = json.loads(done.stdout.strip().splitlines()[-1])
  assert results['mirrored'].pop('replicas') == 2 and results['default'].pop('replicas') == 1
  for name, value in results['default'].items():
    np.testing.assert_allclose(results['mirrored'][name], value, rtol=1e-4, atol=1e-5)


def main(kind, records_root, checkpoint_dir):
  if kind == 'mirrored':
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  trainer = make_trainer(records_root, checkpoint_dir, extra=KERAS + [
      'Trainer.num_updates = 2', f"Trainer.strategy = '{kind}'",
      'Trainer.decay_learning_rate = False'])
  trainer.train()
  print(json.dumps(dict({name: value.tolist() for name, value in model_values(trainer).items()},
                        replicas=trainer.strategy.num_replicas_in_sync)))


if __name__ == '__main__':
  main(*sys.argv[1:4])
