"""Checkpoints of a run: restoring them safely, keeping the best ones, refusing bad states.

    restore(checkpoint, path, omit=('linear_classifier',))   # shape mismatch -> ConfigError
    assert_finite(learner.variables, 'after update 7')        # NaN / inf -> NonFiniteError
    best = BestCheckpoints(run_dir, keep=5, metric='accuracy', higher_is_better=True)
    best.consider(checkpoint, value=0.61, step=500)           # writes best/ckpt-500 if in top 5

``omit`` is upstream Meta-Dataset's ``--omit_from_saving_and_reloading``: variables whose name
contains one of the substrings are not reloaded (they keep the values the learner was built
with). They are still written into checkpoints (a ``tf.train.Checkpoint`` saves the whole
object graph); reading skips them.
"""
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from meta_dataset_ext import run_dir
from meta_dataset_ext.errors import ConfigError, NonFiniteError

BEST_DIR = 'best'
BEST_INDEX = 'best.json'


def variable_name(variable) -> str:
  """The variable's path in its model (Keras 3 ``path``; Keras 2 / TF ``name``)."""
  return getattr(variable, 'path', None) or variable.name.split(':')[0]


def restore(checkpoint: tf.train.Checkpoint, path: str, omit: Sequence[str] = (),
            variables: Sequence[tf.Variable] = (), partial: bool = False) -> None:
  """Restores ``path`` into ``checkpoint``; the ``variables`` whose names contain a substring
  of ``omit`` keep their current values.

  Raises:
    ConfigError: the checkpoint was written by a learner of another architecture (the
      message names the variable, both shapes and what to do).
  """
  kept = [(v, v.numpy()) for v in variables if any(s in variable_name(v) for s in omit)]
  problem = None
  try:
    status = checkpoint.restore(path)
    if partial:
      status.expect_partial()
    else:
      status.assert_existing_objects_matched()
  except (ValueError, AssertionError, tf.errors.InvalidArgumentError) as error:
    problem = ' '.join(str(error).split())[:300]
  if problem is not None:
    raise ConfigError(
        f'Checkpoint {path!r} does not fit the learner this configuration builds '
        f'({problem}): use the configuration it was trained with (evaluation reloads the '
        'run\'s operative_config.gin unless --reload_checkpoint_gin_config=False), or a new '
        '--train_checkpoint_dir.')
  for variable, value in kept:
    variable.assign(value)


def _floating(variable) -> bool:
  return tf.as_dtype(variable.dtype).is_floating  # Keras 3 gives the dtype as a string.


def assert_finite(variables: Sequence[tf.Variable], when: str) -> None:
  """Raises NonFiniteError naming the first variable holding a NaN or infinity."""
  for variable in variables:
    if _floating(variable) and not np.all(np.isfinite(variable.numpy())):
      raise NonFiniteError(f'{when}: variable {variable_name(variable)!r} is not finite.')


def all_finite(variables: Sequence[tf.Variable]) -> tf.Tensor:
  """A boolean tensor: every floating-point variable is finite (for compiled steps)."""
  checks = [tf.reduce_all(tf.math.is_finite(v)) for v in variables if _floating(v)]
  return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


class BestCheckpoints:
  """``<run_dir>/best/``: the ``keep`` best checkpoints by the validation metric, listed best
  first in ``best.json`` ([{metric: value, 'step': n, 'path': 'ckpt-n'}, ...])."""

  def __init__(self, directory: str, keep: int, metric: str, higher_is_better: bool):
    self.directory = os.path.join(directory, BEST_DIR)
    self.index_path = os.path.join(self.directory, BEST_INDEX)
    self.keep, self.metric, self.higher_is_better = keep, metric, higher_is_better

  def entries(self) -> List[Dict[str, object]]:
    if not os.path.exists(self.index_path):
      return []
    with open(self.index_path, encoding='utf-8') as f:
      return json.load(f)

  def paths(self, top: Optional[int] = None) -> List[str]:
    """Checkpoint prefixes of the best ``top`` (default: all kept), best first."""
    return [os.path.join(self.directory, e['path']) for e in self.entries()[:top]]

  def _better(self, a: float, b: float) -> bool:
    return a > b if self.higher_is_better else a < b

  def consider(self, checkpoint: tf.train.Checkpoint, value: float, step: int) -> bool:
    """Writes the current state as a best checkpoint if ``value`` is among the ``keep`` best
    so far; returns whether it did. A non-finite value never is."""
    best = self.entries()
    if not np.isfinite(value) or (len(best) >= self.keep and
                                  not self._better(value, best[-1][self.metric])):
      return False
    os.makedirs(self.directory, exist_ok=True)
    best = [b for b in best if b['step'] != step]  # A resumed run validates a step again.
    path = checkpoint.write(os.path.join(self.directory, f'ckpt-{step}'))
    best = sorted(best + [{self.metric: value, 'step': step, 'path': os.path.basename(path)}],
                  key=lambda b: b[self.metric], reverse=self.higher_is_better)
    run_dir.atomic_write(self.index_path, json.dumps(best[:self.keep], indent=1))
    for dropped in best[self.keep:]:
      for name in tf.io.gfile.glob(os.path.join(self.directory, dropped['path'] + '.*')):
        tf.io.gfile.remove(name)
    return True
