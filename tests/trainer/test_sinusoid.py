"""Sinusoid regression (ALFA Table 8) through the trainer: the task stream and a short run."""
import json
import os
import subprocess
import sys

import gin
import numpy as np
import tensorflow as tf

from meta_dataset_ext import gin_setup
from meta_dataset_ext import trainer as trainer_lib
from meta_dataset_ext.data import sinusoid

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def take(dataset, n):
  return [{k: v.numpy() for k, v in e.items()} for e in dataset.take(n)]


def test_stream_is_a_function_of_seed_split_and_index():
  tasks = sinusoid.SinusoidTasks(num_support=5)
  first = take(tasks.dataset('TRAIN', seed=3), 6)
  assert [e['support_images'].shape for e in first] == [(5, 1)] * 6
  assert first[0]['query_labels'].shape == (100,)
  for a, b in zip(first, take(tasks.dataset('TRAIN', seed=3), 6)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(first[4:], take(tasks.dataset('TRAIN', seed=3, start=4), 2)):
    np.testing.assert_array_equal(a['query_labels'], b['query_labels'])
  for other in (tasks.dataset('TRAIN', seed=4), tasks.dataset('TEST', seed=3)):
    assert not np.allclose(first[0]['support_labels'], take(other, 1)[0]['support_labels'])


def test_tasks_follow_the_papers_distributions():
  episodes = take(sinusoid.SinusoidTasks(num_support=20).dataset('TEST'), 200)
  x = np.concatenate([e['query_images'] for e in episodes])
  assert -5 <= x.min() < -4.9 and 4.9 < x.max() <= 5
  amplitudes = [np.abs(np.concatenate([e['support_labels'], e['query_labels']])).max()
                for e in episodes]
  assert 0 < min(amplitudes) < 0.5 and 4.5 < max(amplitudes) <= 5.0


def make_trainer(checkpoint_dir, config, updates):
  gin.clear_config()
  gin_setup.parse([config], [f'Trainer.num_updates = {updates}', 'Trainer.meta_batch_size = 8',
                             'Trainer.validate_every = 100', 'Trainer.checkpoint_every = 100',
                             'Trainer.log_every = 10', 'Trainer.num_validation_episodes = 50',
                             'Trainer.num_eval_episodes = 50', 'Trainer.show_progress = False',
                             'MAMLLearner.num_update_steps = 2',
                             'MAMLLearner.additional_evaluation_update_steps = 0'])
  return trainer_lib.Trainer(checkpoint_dir=str(checkpoint_dir))


def scalars(summary_dir, tag):
  series = []
  for name in tf.io.gfile.glob(os.path.join(summary_dir, '*')):
    for event in tf.compat.v1.train.summary_iterator(name):
      series += [(event.step, float(tf.make_ndarray(v.tensor)))
                 for v in event.summary.value if v.tag == tag]
  return [value for _, value in sorted(series)]


def query_mse(trainer, num_tasks=50):
  """The mean query MSE after adaptation on fixed VALID tasks."""
  tasks = trainer._episodes('valid', 'sinusoid').take(num_tasks)
  return np.mean([float(trainer._evaluate_batch([task])[1]['mse']) for task in tasks])


def test_alfa_training_loss_falls_and_generated_rates_stay_finite(tmp_path):
  trainer = make_trainer(tmp_path, 'sinusoid_alfa_maml.gin', 200)
  assert trainer.format.metric == 'mse' and trainer.learner.example_shape == (1,)
  before = query_mse(trainer)
  trainer.train()
  assert query_mse(trainer) < 0.8 * before
  losses = scalars(os.path.join(tmp_path, 'summaries', 'train'), 'loss')
  assert len(losses) == 20 and np.mean(losses[-10:]) < np.mean(losses[:10])
  rates = [scalars(os.path.join(tmp_path, 'summaries', 'train'), f'{symbol}/{name}/step{j}')
           for symbol in ('alpha', 'beta') for name in trainer.learner.update_rule.param_names
           for j in (1, 2)]
  assert len(rates) == 24 and np.all(np.isfinite(rates))
  summary = trainer.evaluate()[0].by_source()['sinusoid']
  assert summary['num_episodes'] == 50 and np.isfinite(summary['mean'])
  best = json.load(open(tmp_path / 'best' / 'best.json'))
  assert [b['mse'] for b in best] == sorted(b['mse'] for b in best)


def test_cli_runs_sinusoid_without_records(tmp_path):
  bindings = ['Trainer.num_updates = 4', 'Trainer.meta_batch_size = 2',
              'Trainer.num_eval_episodes = 5', 'Trainer.num_validation_episodes = 5',
              'mlp.hidden = (8, 8, 8)', 'SinusoidTasks.num_support = 5']
  done = subprocess.run(
      [sys.executable, '-m', 'meta_dataset_ext.train', '--gin_config=gin/sinusoid_maml.gin',
       f'--train_checkpoint_dir={tmp_path}'] + [f'--gin_bindings={b}' for b in bindings],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=REPO))
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(tmp_path / 'results' / 'results.json'))
  assert results['metric'] == 'mse' and results['learner'] == 'MAML'
  assert results['sources']['sinusoid']['num_episodes'] == 5
  assert 'MSE' in (tmp_path / 'results' / 'results.md').read_text()
