"""Synthetic task sources: the few-shot sinusoid regression of MAML and ALFA.

MAML (Finn et al., ICML 2017, section 5.1) and ALFA (Baik et al., NeurIPS 2020, section 4.5,
Table 8): a task is y = A sin(w x + p) with amplitude A ~ U[0.1, 5], frequency w ~ U[0.8, 1.2]
and phase p ~ U[0, pi]; inputs x ~ U[-5, 5]; k support points (5, 10 or 20) and 100 query
points; the loss and the reported metric are the mean squared error on the query points.

Episodes have the field names of Meta-Dataset's (support_images [k, 1], support_labels [k],
query_images, query_labels, all float32; no 'way'), so the trainer and the learners take them
as they take image episodes. Task i of a stream is a function of (seed, split, i) only
(stateless random ops), so a stream can start at any task (``start``) at no cost and the
TRAIN, VALID and TEST streams never share a task.

    tasks = SinusoidTasks(num_support=5)
    for episode in tasks.dataset('TRAIN', seed=0, start=1000).take(25): ...

``source(name)`` is the registry the trainer consults before reading records: a benchmark
source named 'sinusoid' is this generator (configured by ``SinusoidTasks.*`` gin bindings).
"""
import dataclasses
import math
from typing import Dict, Optional, Tuple

import gin
import tensorflow as tf

SPLITS = ('TRAIN', 'VALID', 'TEST')


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SinusoidTasks:
  """Sinusoid regression tasks (MAML's and ALFA's settings by default).

  Attributes:
    num_support: k, support points per task.
    num_query: query points per task.
    amplitude, frequency, phase, x_range: (low, high) of the uniform distributions.
  """
  num_support: int = 10
  num_query: int = 100
  amplitude: Tuple[float, float] = (0.1, 5.0)
  frequency: Tuple[float, float] = (0.8, 1.2)
  phase: Tuple[float, float] = (0.0, math.pi)
  x_range: Tuple[float, float] = (-5.0, 5.0)

  # What the learner and the trainer follow from (see trainer.TaskFormat).
  input_shape = (1,)
  output_dim = 1
  loss = 'mse'

  def signature(self) -> Dict[str, tf.TensorSpec]:
    """The TensorSpecs of one episode."""
    inputs = tf.TensorSpec([None, 1], tf.float32)
    targets = tf.TensorSpec([None], tf.float32)
    return {'support_images': inputs, 'support_labels': targets, 'query_images': inputs,
            'query_labels': targets}

  def task(self, key: tf.Tensor) -> Dict[str, tf.Tensor]:
    """One episode from a stateless seed ``key`` (int64 [2])."""
    task_key, x_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    u = tf.random.stateless_uniform([3], task_key)
    (a_low, a_high), (w_low, w_high), (p_low, p_high) = (self.amplitude, self.frequency,
                                                         self.phase)
    amplitude = a_low + (a_high - a_low) * u[0]
    frequency = w_low + (w_high - w_low) * u[1]
    phase = p_low + (p_high - p_low) * u[2]
    x = tf.random.stateless_uniform([self.num_support + self.num_query, 1], x_key,
                                    minval=self.x_range[0], maxval=self.x_range[1])
    y = amplitude * tf.sin(frequency * x[:, 0] + phase)
    k = self.num_support
    return {'support_images': x[:k], 'support_labels': y[:k], 'query_images': x[k:],
            'query_labels': y[k:]}

  def dataset(self, split: str, seed: int = 0, start: int = 0) -> tf.data.Dataset:
    """The endless stream of tasks ``start``, ``start + 1``, ... of (split, seed)."""
    split = split.upper()
    if split not in SPLITS:
      raise ValueError(f'split must be one of {SPLITS}, got {split!r}.')
    base = tf.constant([seed, SPLITS.index(split)], tf.int64)
    return tf.data.Dataset.counter(start).map(
        lambda i: self.task(tf.random.experimental.stateless_fold_in(base, i)))


SOURCES = {'sinusoid': SinusoidTasks}


def source(name: str) -> Optional[SinusoidTasks]:
  """The synthetic task source called ``name`` (gin-configured), or None for a records
  source."""
  factory = SOURCES.get(name)
  return factory() if factory else None
