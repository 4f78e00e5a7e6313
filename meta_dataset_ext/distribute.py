"""Meta-training under ``tf.distribute``: the meta-batch of episodes is split across replicas.

Each replica adapts to its share of the episodes (the inner loop needs nothing from other
replicas), computes the gradient of its part of the meta-objective, and the optimizer
all-reduces (sums) the replicas' gradients before one shared update. The local loss is the sum
of the local query losses divided by the *global* meta-batch size, so the summed gradient is
exactly the gradient of the mean over the whole meta-batch, as on one device.

Strategies (``make_strategy``, gin: ``make_strategy.kind``):
  'default'       one device (no distribution)
  'mirrored'      MirroredStrategy: every GPU (or logical device) of one machine
  'multi_worker'  MultiWorkerMirroredStrategy: several machines, described by TF_CONFIG
"""
from typing import Callable, List, Optional

import gin
import tensorflow as tf

from alfa_tf import learners as alfa_learners

STRATEGIES = ('default', 'mirrored', 'multi_worker')


@gin.configurable
def make_strategy(kind: str = 'default', devices: Optional[List[str]] = None):
  """The tf.distribute strategy named ``kind`` (``devices``: for 'mirrored', which ones)."""
  if kind == 'default':
    return tf.distribute.get_strategy()
  if kind == 'mirrored':
    return tf.distribute.MirroredStrategy(devices)
  if kind == 'multi_worker':
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f'make_strategy.kind must be one of {STRATEGIES}, got {kind!r}.')


def is_chief(strategy) -> bool:
  """Whether this process writes checkpoints, summaries and results (worker 0, or alone)."""
  resolver = getattr(strategy, 'cluster_resolver', None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == 'chief' or (resolver.task_type == 'worker' and
                                           resolver.task_id == 0)


def split_meta_batch(episodes: List[dict], num_replicas: int) -> List[List[dict]]:
  """Episodes i, i + R, i + 2R, ... go to replica i; every replica gets as many."""
  if len(episodes) % num_replicas:
    raise ValueError(f'The meta-batch ({len(episodes)} episodes) must divide evenly among '
                     f'{num_replicas} replicas: set Trainer.meta_batch_size accordingly.')
  return [episodes[i::num_replicas] for i in range(num_replicas)]


class DistributedMetaStep:
  """One outer update over a meta-batch split across the strategy's replicas.

  ``objective(learner, episodes, global_batch_size) -> (loss, metrics)`` gives a replica's
  share of the meta-objective (its query losses summed, divided by the global meta-batch
  size, plus the regulariser divided by the number of replicas); metrics are summed over
  replicas, so per-episode means come out right when divided the same way.
  """

  def __init__(self, strategy, learner, optimizer, objective: Callable,
               meta_batch_size: int, jit_compile: bool = False):
    self.strategy, self.learner, self.optimizer = strategy, learner, optimizer
    self.objective, self.meta_batch_size = objective, meta_batch_size
    with strategy.scope():  # Optimizer slots: mirrored, and created before tracing.
      optimizer.build(learner.trainable_variables)
    # XLA compiles each replica's gradient computation (the all-reduce stays outside).
    self._replica_gradients = (tf.function(self._gradients, jit_compile=True) if jit_compile
                               else self._gradients)
    self._step = tf.function(self._distributed_step, reduce_retracing=True)

  def _gradients(self, episodes):
    variables = self.learner.trainable_variables
    with tf.GradientTape() as tape:
      loss, metrics = self.objective(self.learner, episodes, self.meta_batch_size)
      scaled = alfa_learners.scale_loss(self.optimizer, loss)
    return loss, metrics, tape.gradient(scaled, variables)

  def _replica_step(self, episodes):
    loss, metrics, grads = self._replica_gradients(episodes)
    alfa_learners.apply_scaled_gradients(self.optimizer, grads,
                                         self.learner.trainable_variables)
    return loss, metrics

  def _distributed_step(self, per_replica):
    loss, metrics = self.strategy.run(self._replica_step, args=(per_replica,))
    reduce = lambda value: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
    return reduce(loss), tf.nest.map_structure(reduce, metrics)

  def __call__(self, episodes: List[dict]):
    """Applies one update; returns (meta-loss, summed metrics) over the whole meta-batch."""
    shares = split_meta_batch(episodes, self.strategy.num_replicas_in_sync)
    per_replica = self.strategy.experimental_distribute_values_from_function(
        lambda context: shares[context.replica_id_in_sync_group])
    return self._step(per_replica)
