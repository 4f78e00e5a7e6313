"""The evaluator on its own: a checkpoint's metric, the ensemble's mean logits, each checkpoint
run once, non-finite outputs refused."""
import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext import evaluation
from meta_dataset_ext.errors import NonFiniteError

LABELS = np.array([0, 1, 1], np.int32)
# Logits per checkpoint: 'a' right on 2 of 3 queries, 'b' on 1; their mean on all 3.
LOGITS = {'run/ckpt-9': np.array([[2., 0.], [1., 0.], [0., 1.]]),
          'best/ckpt-9': np.array([[2., 0.], [1., 0.], [0., 1.]]),
          'best/ckpt-4': np.array([[0., 1.], [0., 3.], [1., 0.]])}
STEPS = {'run/ckpt-9': 9, 'best/ckpt-9': 9, 'best/ckpt-4': 4}


def accuracy(logits, labels):
  return float(np.mean(np.argmax(logits, -1) == labels))


def make_evaluator(restored, bad=None):
  state = {}

  def restore(path):
    restored.append(path)
    state['path'] = path
    return STEPS[path]

  def evaluate_batch(batch):
    logits = LOGITS[state['path']] * (np.nan if state['path'] == bad else 1.0)
    return [tf.constant(logits)], {}

  episodes = lambda source: tf.data.Dataset.from_tensors(
      {'query_labels': tf.constant(LABELS)}).repeat()
  return evaluation.Evaluator(evaluate_batch, restore, episodes, accuracy, 'accuracy',
                              show_progress=False)


def test_single_and_ensemble_each_checkpoint_run_once():
  restored = []
  single, ensemble = make_evaluator(restored).evaluate(
      'L', ['s'], 'TEST', 2, 'run/ckpt-9', ['best/ckpt-9', 'best/ckpt-4'],
      same_as_single=['best/ckpt-9'])
  assert restored == ['run/ckpt-9', 'best/ckpt-4']  # best/ckpt-9 is the latest's state.
  assert single.name == 'L' and single.steps == [9] and not single.ensemble
  assert single.by_source()['s']['mean'] == pytest.approx(2 / 3)
  assert ensemble.name == 'L top-2 ensemble' and ensemble.steps == [9, 4] and ensemble.ensemble
  mean = (LOGITS['best/ckpt-9'] + LOGITS['best/ckpt-4']) / 2
  assert ensemble.by_source()['s']['mean'] == pytest.approx(accuracy(mean, LABELS))
  assert ensemble.by_source()['s']['num_episodes'] == 2


def test_one_member_is_no_ensemble_and_non_finite_outputs_are_refused():
  results = make_evaluator([]).evaluate('L', ['s'], 'TEST', 1, 'run/ckpt-9', ['best/ckpt-4'])
  assert [r.name for r in results] == ['L']
  with pytest.raises(NonFiniteError, match=r"Checkpoint 'best/ckpt-4' on s TEST episode 0"):
    make_evaluator([], bad='best/ckpt-4').evaluate('L', ['s'], 'TEST', 1, None,
                                                   ['best/ckpt-9', 'best/ckpt-4'])
