"""Meta-training and evaluation of alfa_tf learners on Meta-Dataset records or synthetic tasks.

``Trainer`` takes upstream Meta-Dataset's gin arguments (``Trainer.*``, ``benchmark.*``) so
the same config files run here and under upstream's trainer, plus a few of its own
(``meta_batch_size``, ``seed``, ``keep_best``, ``ensemble_top_k``, ``num_validation_episodes``).

A source is read from ``records_root_dir`` unless ``meta_dataset_ext.data.sinusoid.source``
knows its name (e.g. 'sinusoid': few-shot regression, configured by ``SinusoidTasks.*``). The
sources fix the ``TaskFormat``: the learner's input shape, outputs and loss, and the metric
(classification: accuracy, higher is better; regression: MSE, lower is better) that
validation, the best checkpoints and the results use.

A run writes everything to disk:
  <checkpoint_dir>/ckpt-*            latest checkpoints: learner, Adam state, update counter
                                     (the data position is a function of it: exact resume)
  <checkpoint_dir>/best/             the best checkpoints by the validation metric (best.json)
  <checkpoint_dir>/operative_config.gin  the gin configuration in force
  <summary_dir>/train, /valid        TensorBoard scalars: loss, the metric, learning rate, and
                                     ALFA's generated alpha / beta per layer and inner step
  <results_dir>/results.{md,csv,json}, alpha_beta_<source>.png, training_curves.png
"""
import dataclasses
import json
import os
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import gin
import numpy as np
import tensorflow as tf
import tqdm

from alfa_tf import learners as alfa_learners
from meta_dataset_ext import distribute as distribute_lib
from meta_dataset_ext import errors
from meta_dataset_ext import learners as learners_lib
from meta_dataset_ext import report
from meta_dataset_ext.data import pipeline
from meta_dataset_ext.data import sampler as sampler_lib
from meta_dataset_ext.data import sinusoid

TEN_SOURCES = ('ilsvrc_2012', 'omniglot', 'aircraft', 'cu_birds', 'dtd', 'quickdraw', 'fungi',
               'vgg_flower', 'traffic_sign', 'mscoco')
COMPUTE_DTYPES = (None, 'float32', 'bfloat16', 'float16')
EPISODE_KEYS = ('support_images', 'support_labels', 'query_images', 'query_labels', 'way')


class NonFiniteLossError(errors.NonFiniteError):
  """A meta-training update produced a non-finite loss or gradient."""


@gin.configurable('benchmark')
def benchmark(train_datasets: str = '', eval_datasets: str = '',
              use_dumped_episodes: bool = False, restrict_classes=None,
              restrict_num_per_class=None):
  """Upstream's ``benchmark`` binding: comma-separated source names."""
  if use_dumped_episodes or restrict_classes or restrict_num_per_class:
    raise ValueError('benchmark.use_dumped_episodes / restrict_classes / '
                     'restrict_num_per_class are not supported.')
  split = lambda names: [n.strip() for n in names.split(',') if n.strip()]
  return split(train_datasets), split(eval_datasets)


@dataclasses.dataclass(frozen=True)
class TaskFormat:
  """What the sources fix: the learner's input shape, number of outputs and loss, and the
  episodes' TensorSpecs. The metric follows from the loss."""
  input_shape: Tuple[int, ...]
  logit_dim: int
  loss: str
  signature: Dict[str, tf.TensorSpec]

  @property
  def metric(self) -> str:
    return 'accuracy' if self.loss == 'cross_entropy' else 'mse'

  @property
  def higher_is_better(self) -> bool:
    return self.metric == 'accuracy'

  def better(self, a: float, b: float) -> bool:
    """Whether metric value ``a`` is better than ``b``."""
    return a > b if self.higher_is_better else a < b


def _episode_signature(image_height: int):
  images = tf.TensorSpec([None, image_height, image_height, 3], tf.float32)
  labels = tf.TensorSpec([None], tf.int32)
  return {'support_images': images, 'support_labels': labels, 'query_images': images,
          'query_labels': labels, 'way': tf.TensorSpec([], tf.int32)}


@gin.configurable
class Trainer:
  """Gin-configured meta-training (``train``) and evaluation (``evaluate``).

  Upstream's arguments keep their meaning; ones this trainer does not implement must keep
  their defaults (a clear error says so). Our own:
    meta_batch_size: episodes per outer update (the ALFA reference: 2 or 4; upstream: 1).
    num_validation_episodes: episodes per validation (default: num_eval_episodes).
    keep_best: number of best-by-validation checkpoints kept.
    ensemble_top_k: evaluate the logits averaged over this many best checkpoints (the ALFA
      paper's protocol: 5); 0 or 1 evaluates the latest (or checkpoint_to_restore).
    seed: seeds the learner's initialisation and every episode stream.
    strategy: 'default', 'mirrored' (all GPUs of this machine) or 'multi_worker' (machines
      described by TF_CONFIG), see ``meta_dataset_ext.distribute``; upstream's
      ``distribute = True`` means 'mirrored'. The meta-batch is split across replicas; only
      the chief worker writes checkpoints, summaries and results.
    results_dir: where evaluation writes its tables and plots (default <checkpoint_dir>/results).
    compute_dtype: None (float32) or 'bfloat16' / 'float16': mixed precision, the backbone
      computes in 16 bits while meta-parameters, losses and the update rule stay float32.
      float16 also scales the losses: the inner ones statically (the learner's
      ``inner_loss_scale``), the meta-loss dynamically (Keras' ``LossScaleOptimizer``, which
      skips an update whose scaled gradient overflowed and halves the scale).
    jit_compile: compile the meta-step with XLA (the learner's in-graph input assertions are
      turned off: XLA has no kernels for them). Each new episode shape compiles anew, so it
      pays with fixed-shape episodes (EpisodeDescriptionConfig.num_ways/num_support/num_query).
  """

  def __init__(self, train_learner_class=None, eval_learner_class=None,
               num_updates: int = 75000, batch_size: int = 256, num_eval_episodes: int = 600,
               checkpoint_every: int = 500, validate_every: int = 500, log_every: int = 100,
               is_training: bool = True, checkpoint_to_restore: Optional[str] = None,
               learning_rate: float = 1e-3, decay_learning_rate: bool = True,
               decay_every: int = 5000, decay_rate: float = 0.5,
               normalized_gradient_descent: bool = False, experiment_name: str = '',
               pretrained_source: str = 'scratch', train_dataset_list=None,
               eval_dataset_list=None, restrict_classes=None, restrict_num_per_class=None,
               checkpoint_dir: str = 'runs/checkpoints', summary_dir: Optional[str] = None,
               records_root_dir: str = 'records', eval_finegrainedness: bool = False,
               eval_finegrainedness_split: str = 'test', eval_imbalance_dataset: str = '',
               omit_from_saving_and_reloading: str = '', eval_split: str = 'TEST',
               train_episode_config=None, eval_episode_config=None, data_config=None,
               distribute: bool = False, enable_tf_optimizations: bool = True,
               meta_batch_size: int = 1, num_validation_episodes: Optional[int] = None,
               keep_best: int = 5, ensemble_top_k: int = 0, seed: int = 0,
               results_dir: Optional[str] = None, show_progress: bool = True,
               strategy: Optional[str] = None, compute_dtype: Optional[str] = None,
               jit_compile: bool = False):
    del batch_size, experiment_name, omit_from_saving_and_reloading, enable_tf_optimizations
    unsupported = dict(normalized_gradient_descent=normalized_gradient_descent,
                       pretrained_source=pretrained_source != 'scratch',
                       restrict_classes=restrict_classes,
                       restrict_num_per_class=restrict_num_per_class,
                       eval_finegrainedness=eval_finegrainedness,
                       eval_imbalance_dataset=eval_imbalance_dataset)
    for name, value in unsupported.items():
      if value:
        raise ValueError(f'Trainer.{name} is not supported by this trainer.')
    del eval_finegrainedness_split
    if train_learner_class is None:
      raise ValueError('Trainer.train_learner_class is not bound: bind e.g. '
                       '"Trainer.train_learner_class = @ALFAProtoMAMLLearner".')
    if eval_learner_class not in (None, train_learner_class):
      raise ValueError('Trainer.eval_learner_class must equal train_learner_class here: one '
                       'learner serves training and evaluation.')
    if train_dataset_list is None or eval_dataset_list is None:
      train_sources, eval_sources = benchmark()
      train_dataset_list = train_sources if train_dataset_list is None else train_dataset_list
      eval_dataset_list = eval_sources if eval_dataset_list is None else eval_dataset_list
    if isinstance(train_dataset_list, str):
      train_dataset_list = [s for s in train_dataset_list.split(',') if s]
    if isinstance(eval_dataset_list, str):
      eval_dataset_list = [s for s in eval_dataset_list.split(',') if s]
    self.train_sources = list(train_dataset_list)
    self.eval_sources = list(eval_dataset_list) or list(TEN_SOURCES)
    if is_training and not self.train_sources:
      raise ValueError('No training source: bind benchmark.train_datasets.')
    if compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f'Trainer.compute_dtype must be one of {COMPUTE_DTYPES}, got '
                       f'{compute_dtype!r}.')
    self.compute_dtype, self.jit_compile = compute_dtype, jit_compile
    self.records_root_dir = records_root_dir
    synthetic = [sinusoid.source(s) for s in self.train_sources + self.eval_sources]
    if not all(synthetic) and not os.path.isdir(records_root_dir):
      raise FileNotFoundError(f'Records folder {records_root_dir!r} (--records_root_dir) does '
                              'not exist.')
    self.num_updates, self.num_eval_episodes = num_updates, num_eval_episodes
    self.num_validation_episodes = num_validation_episodes or num_eval_episodes
    self.checkpoint_every, self.validate_every = checkpoint_every, validate_every
    self.log_every, self.is_training = log_every, is_training
    self.checkpoint_to_restore, self.eval_split = checkpoint_to_restore, eval_split.upper()
    self.meta_batch_size, self.keep_best = meta_batch_size, keep_best
    self.ensemble_top_k, self.seed, self.show_progress = ensemble_top_k, seed, show_progress
    self.checkpoint_dir = checkpoint_dir
    self.summary_dir = summary_dir or os.path.join(checkpoint_dir, 'summaries')
    self.results_dir = results_dir or os.path.join(checkpoint_dir, 'results')
    self.data_config = data_config or pipeline.DataConfig()
    self.train_episode_config = train_episode_config or sampler_lib.EpisodeDescriptionConfig()
    self.eval_episode_config = eval_episode_config or self.train_episode_config
    self.format = self._task_format(synthetic)
    self.strategy = distribute_lib.make_strategy(strategy or
                                                 ('mirrored' if distribute else 'default'))
    self.is_chief = distribute_lib.is_chief(self.strategy)
    self.restore_dir = checkpoint_dir  # Every worker resumes from the chief's checkpoints.
    if not self.is_chief:  # Other workers write to a scratch folder nobody reads.
      checkpoint_dir = self.checkpoint_dir = tempfile.mkdtemp(prefix='worker_')
      self.summary_dir = os.path.join(checkpoint_dir, 'summaries')
      self.results_dir = os.path.join(checkpoint_dir, 'results')
    with self.strategy.scope():
      self._build_model(train_learner_class, seed, learning_rate, decay_learning_rate,
                        decay_every, decay_rate)
    self.manager = tf.train.CheckpointManager(self.checkpoint, checkpoint_dir, max_to_keep=3)
    self._compile()

  def _build_model(self, train_learner_class, seed, learning_rate, decay_learning_rate,
                   decay_every, decay_rate):
    """The learner, Adam with upstream's learning-rate decay, the update counter."""
    self.learner = train_learner_class(is_training=True, logit_dim=self.format.logit_dim,
                                       input_shape=self.format.input_shape,
                                       loss=self.format.loss, seed=seed,
                                       backbone_dtype=self.compute_dtype)
    self.learner.check_finite = False  # The trainer checks and reports non-finite values.
    if self.jit_compile:
      self.learner.check_inputs = False  # XLA has no kernels for in-graph assertions.
    self.learner_name = getattr(self.learner, 'display_name', type(self.learner).__name__)
    schedule = learning_rate
    if decay_learning_rate:
      schedule = tf.keras.optimizers.schedules.ExponentialDecay(
          learning_rate, decay_every, decay_rate, staircase=True)
    self.optimizer = tf.keras.optimizers.Adam(schedule)
    if self.compute_dtype == 'float16':
      self.optimizer = tf.keras.mixed_precision.LossScaleOptimizer(self.optimizer)
    self.optimizer.build(self.learner.trainable_variables)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='update',
                            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    self.checkpoint = tf.train.Checkpoint(learner=self.learner, optimizer=self.optimizer,
                                          step=self.step)

  def _task_format(self, synthetic) -> TaskFormat:
    """Records sources: images of DataConfig.image_height, up to max_ways classes; synthetic
    sources: what the (one kind of) generator declares."""
    if not any(synthetic):
      height = self.data_config.image_height
      return TaskFormat((height, height, 3), max(self.train_episode_config.max_ways,
                                                 self.eval_episode_config.max_ways),
                        'cross_entropy', _episode_signature(height))
    if not all(synthetic) or len({type(t) for t in synthetic}) > 1:
      raise ValueError('Records sources and synthetic sources (or different synthetic '
                       f'ones) cannot be mixed: {self.train_sources + self.eval_sources}.')
    tasks = synthetic[0]
    return TaskFormat(tasks.input_shape, tasks.output_dim, tasks.loss, tasks.signature())

  # ----- compiled steps ---------------------------------------------------------------------

  def _compile(self):
    episode = self.format.signature
    batch_signature = [[episode] * self.meta_batch_size]
    metric = _METRICS[self.format.metric]

    def outputs_and_metrics(batch, training):
      outs = [self.learner.episode_output(ep, training) for ep in batch]
      return outs, metrics_of(outs, batch)

    def metrics_of(outs, batch):
      loss = tf.add_n([o.query_loss for o in outs]) / len(outs)
      value = tf.add_n([metric(o.query_logits, ep['query_labels'])
                        for o, ep in zip(outs, batch)]) / len(outs)
      metrics = {'loss': loss, self.format.metric: value,
                 'support_loss_first': tf.add_n([o.adaptation.losses[0] for o in outs]) / len(
                     outs),
                 'support_loss_last': tf.add_n([o.adaptation.losses[-1] for o in outs]) / len(
                     outs)}
      for symbol in ('alpha', 'beta'):
        per_episode = [tf.stack([d[symbol] for d in o.adaptation.diagnostics])
                       for o in outs if symbol in o.adaptation.diagnostics[0]]
        if per_episode:
          metrics[symbol] = tf.add_n(per_episode) / len(per_episode)  # [steps, tensors]
      return metrics

    def gradients(batch):
      scale = lambda loss: alfa_learners.scale_loss(self.optimizer, loss)
      variables = self.learner.trainable_variables
      _, grads, outs = self.learner.episode_gradients(batch, scale)  # One task at a time.
      metrics = metrics_of(outs, batch)
      with tf.GradientTape() as tape:
        regularizer = learners_lib.outer_regularizer(self.learner)
        scaled = scale(regularizer)
      grads = [g + r for g, r in zip(
          grads, alfa_learners.gradients_or_zeros(tape, scaled, variables))]
      finite = tf.math.is_finite(metrics['loss'] + regularizer)
      if scaled is regularizer:  # With loss scaling, the optimizer handles overflowed grads.
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads] + [finite])
      return grads, metrics, finite

    def apply(grads):
      alfa_learners.apply_scaled_gradients(self.optimizer, grads,
                                           self.learner.trainable_variables)
      self.step.assign_add(1)

    def evaluate(batch):
      outs, metrics = outputs_and_metrics(batch, False)
      return [o.query_logits for o in outs], metrics

    self._gradients = tf.function(gradients, input_signature=batch_signature,
                                  jit_compile=self.jit_compile)
    self._apply = tf.function(apply)

    def replica_objective(learner, episodes, global_batch_size):
      """A replica's share: its episodes' part of the means, 1/R of the regulariser."""
      _, metrics = outputs_and_metrics(episodes, True)
      share = len(episodes) / global_batch_size
      metrics = {k: v * share for k, v in metrics.items()}
      regularizer = learners_lib.outer_regularizer(learner)
      return (metrics['loss'] + regularizer / self.strategy.num_replicas_in_sync), metrics

    if self.strategy.num_replicas_in_sync > 1:
      self._distributed_step = distribute_lib.DistributedMetaStep(
          self.strategy, self.learner, self.optimizer, replica_objective,
          self.meta_batch_size, self.jit_compile)
    self._evaluate_batch = tf.function(evaluate, input_signature=[[episode]])

  # ----- data -------------------------------------------------------------------------------

  def _episodes(self, source, split, config, seed, start=0):
    """Episode ``start`` on of a synthetic source or of a source's records."""
    synthetic = sinusoid.source(source)
    if synthetic:
      return synthetic.dataset(split, seed, start)
    dataset = pipeline.make_episode_dataset(self.records_root_dir, source, split, config,
                                            self.data_config, seed, padding='none',
                                            start=start)
    return dataset.map(lambda e: {k: e[k] for k in EPISODE_KEYS})

  def _train_batches(self, start_update):
    """Meta-batches from update ``start_update`` on. Episode i of the run comes from source
    i mod (number of sources) at that source's position: a function of the update count."""
    n = len(self.train_sources)
    first_episode = start_update * self.meta_batch_size
    streams = [self._episodes(source, 'TRAIN', self.train_episode_config, self.seed + k,
                              start=(first_episode - k + n - 1) // n)
               for k, source in enumerate(self.train_sources)]
    order = [(first_episode + j) % n for j in range(n)]
    episodes = iter(tf.data.Dataset.choose_from_datasets(
        [streams[k] for k in order], tf.data.Dataset.range(n).repeat()).prefetch(2))
    while True:  # Episodes differ in shape: a meta-batch is a list, not a batched tensor.
      yield [next(episodes) for _ in range(self.meta_batch_size)]

  # ----- training ---------------------------------------------------------------------------

  def restore(self) -> int:
    """Restores ``checkpoint_to_restore`` or the latest checkpoint; returns the update."""
    path = self.checkpoint_to_restore or tf.train.latest_checkpoint(self.restore_dir)
    if path:
      self.checkpoint.restore(path).assert_existing_objects_matched()
    return int(self.step.numpy())

  def train(self) -> Dict[str, float]:
    """Meta-trains until ``num_updates``, resuming from the latest checkpoint if any.

    Returns the last update's scalar metrics and ``updates_per_second``: updates done in this
    call over the time spent fetching their meta-batches and running their steps (validation
    and checkpoints excluded; the first call's first update includes tracing the step). The
    same rate, over the updates since the last log, is the ``updates_per_second`` summary.
    """
    os.makedirs(self.checkpoint_dir, exist_ok=True)
    start = self.restore()
    self._write_config()
    writers = {name: tf.summary.create_file_writer(os.path.join(self.summary_dir, name))
               for name in ('train', 'valid')}
    batches = self._train_batches(start)
    progress = tqdm.tqdm(total=self.num_updates, initial=start, disable=not self.show_progress,
                         desc=f'meta-training {self.learner_name}', unit='update')
    metrics = {}
    step_seconds = log_seconds = 0.0
    logged = start
    try:
      for update in range(start, self.num_updates):
        began = time.perf_counter()
        metrics = self._update(next(batches), update)
        float(metrics['loss'])  # Waits for the step: its time is the update's.
        seconds = time.perf_counter() - began
        step_seconds, log_seconds = step_seconds + seconds, log_seconds + seconds
        done = update + 1
        progress.update(1)
        if done % self.log_every == 0 or done == self.num_updates:
          progress.set_postfix(loss=f'{float(metrics["loss"]):.3f}')
          metrics['updates_per_second'] = (done - logged) / log_seconds
          self._summaries(writers['train'], metrics, done)
          logged, log_seconds = done, 0.0
        if done % self.validate_every == 0 or done == self.num_updates:
          value = self.validate(writers['valid'], done)
          progress.write(f'update {done}: validation {self.format.metric} {value:.4f}')
        if done % self.checkpoint_every == 0 or done == self.num_updates:
          self.manager.save(checkpoint_number=done)
    except KeyboardInterrupt:
      saved = self.manager.save(checkpoint_number=int(self.step.numpy()))
      progress.write(f'Interrupted: saved {saved}; run the same command again to resume.')
      raise
    finally:
      progress.close()
    result = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    if self.num_updates > start:
      result['updates_per_second'] = (self.num_updates - start) / step_seconds
    return result

  def _update(self, batch, update):
    """One outer update (on one device, or split across the strategy's replicas).

    A non-finite loss or gradient stops training: on one device before the update is applied;
    distributed, right after (all replicas apply together); either way the last good state is
    restored from the latest checkpoint.
    """
    if self.strategy.num_replicas_in_sync == 1:
      grads, metrics, finite = self._gradients(batch)
      if not bool(finite):
        self._non_finite(update, metrics)
      self._apply(grads)
      return metrics
    objective, metrics = self._distributed_step(batch)
    if not np.isfinite(float(objective)):
      self._non_finite(update, metrics)
    self.step.assign_add(1)
    return metrics

  def _non_finite(self, update, metrics):
    """Restores the last good state and raises an error that says where it happened."""
    where = [f'update {update + 1}: the meta-loss or its gradient is not finite '
             f'(query loss {float(metrics["loss"])}).']
    for symbol in ('alpha', 'beta'):
      if symbol in metrics:
        values = metrics[symbol].numpy()
        bad = ~np.isfinite(values) | (np.abs(values) > 1e3)
        step, layer = (np.argwhere(bad)[0] if bad.any()
                       else np.unravel_index(np.argmax(np.abs(values)), values.shape))
        where.append(f'largest generated {symbol}: {values[step, layer]:.4g} at layer '
                     f'{self.learner.update_rule.param_names[layer]!r}, inner step {step + 1}.')
    latest = self.manager.latest_checkpoint
    if latest:
      self.checkpoint.restore(latest)
      where.append(f'Restored the last good state from {latest}.')
    raise NonFiniteLossError(' '.join(where))

  def _summaries(self, writer, metrics, step):
    names = self.learner.update_rule.param_names
    with writer.as_default(step=step):
      for key, value in metrics.items():
        if np.ndim(value) == 0:
          tf.summary.scalar(key, value)
        else:
          for j, row in enumerate(value.numpy()):
            for name, v in zip(names, row):
              tf.summary.scalar(f'{key}/{name}/step{j + 1}', v)
      tf.summary.scalar('learning_rate', _learning_rate(self.optimizer))
    writer.flush()

  def validate(self, writer, step) -> float:
    """The mean metric over the VALID split of the training sources; keeps the best
    checkpoints."""
    values = []
    per_source = max(1, self.num_validation_episodes // len(self.train_sources))
    for k, source in enumerate(self.train_sources):
      episodes = self._episodes(source, 'VALID', self.eval_episode_config, self.seed + 1000 + k)
      for episode in episodes.take(per_source):
        _, metrics = self._evaluate_batch([episode])
        values.append(float(metrics[self.format.metric]))
    value = float(np.mean(values))
    with writer.as_default(step=step):
      tf.summary.scalar(self.format.metric, value)
    writer.flush()
    self._keep_if_best(value, step)
    return value

  def _keep_if_best(self, value, step):
    """Writes a best checkpoint if ``value`` is among the ``keep_best`` best validation
    values so far (a non-finite value never is)."""
    best_dir = os.path.join(self.checkpoint_dir, 'best')
    os.makedirs(best_dir, exist_ok=True)
    index_path = os.path.join(best_dir, 'best.json')
    best = _read_json(index_path, [])
    metric = self.format.metric
    if not np.isfinite(value) or (len(best) >= self.keep_best and
                                  not self.format.better(value, best[-1][metric])):
      return
    path = self.checkpoint.write(os.path.join(best_dir, f'ckpt-{step}'))
    best = sorted(best + [{metric: value, 'step': step, 'path': os.path.basename(path)}],
                  key=lambda b: b[metric], reverse=self.format.higher_is_better)
    for dropped in best[self.keep_best:]:
      for name in tf.io.gfile.glob(os.path.join(best_dir, dropped['path'] + '*')):
        tf.io.gfile.remove(name)
    _write_json(index_path, best[:self.keep_best])

  def best_checkpoints(self) -> List[str]:
    best_dir = os.path.join(self.checkpoint_dir, 'best')
    return [os.path.join(best_dir, b['path'])
            for b in _read_json(os.path.join(best_dir, 'best.json'), [])]

  def _write_config(self):
    with open(os.path.join(self.checkpoint_dir, 'operative_config.gin'), 'w') as f:
      f.write(gin.config_str())

  # ----- evaluation -------------------------------------------------------------------------

  def evaluate(self, sources: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    """The metric and its 95% CI on ``num_eval_episodes`` episodes of ``eval_split`` per
    source, with the latest checkpoint or the ensemble of the best ones (mean of their
    outputs); writes tables and plots."""
    sources = list(sources or self.eval_sources)
    checkpoints = [self.checkpoint_to_restore or self.manager.latest_checkpoint]
    if self.ensemble_top_k > 1:
      checkpoints = self.best_checkpoints()[:self.ensemble_top_k] or checkpoints
    if checkpoints == [None]:
      raise FileNotFoundError(f'No checkpoint in {self.checkpoint_dir!r} to evaluate.')
    logits, diagnostics, labels = {}, {}, {}
    for path in checkpoints:
      self.checkpoint.restore(path).expect_partial()
      for k, source in enumerate(sources):
        stream = self._episodes(source, self.eval_split, self.eval_episode_config,
                                self.seed + 2000 + k)
        for i, episode in enumerate(tqdm.tqdm(
            stream.take(self.num_eval_episodes), total=self.num_eval_episodes,
            desc=f'evaluating {source}', disable=not self.show_progress, leave=False)):
          episode_logits, metrics = self._evaluate_batch([episode])
          key = (source, i)
          logits[key] = logits.get(key, 0.0) + episode_logits[0].numpy()
          labels[key] = episode['query_labels'].numpy()
          for symbol in ('alpha', 'beta'):
            if symbol in metrics:
              diagnostics.setdefault((source, symbol), []).append(metrics[symbol].numpy())
    metric = _METRICS[self.format.metric]
    per_source = {s: [float(metric(logits[(s, i)] / len(checkpoints), labels[(s, i)]))
                      for i in range(self.num_eval_episodes)] for s in sources}
    summaries = report.summarize(per_source)
    step = int(self.step.numpy())
    extra = {'checkpoints': [os.path.basename(c) for c in checkpoints],
             'split': self.eval_split}
    report.write_results(self.results_dir, summaries, self.learner_name, step, extra,
                         metric=self.format.metric)
    self._plots(sources, diagnostics)
    return {s['source']: s for s in summaries}

  def _plots(self, sources, diagnostics):
    names = list(self.learner.update_rule.param_names)
    for source in sources:
      if (source, 'alpha') in diagnostics and (source, 'beta') in diagnostics:
        alpha = np.stack(diagnostics[(source, 'alpha')])
        beta = np.stack(diagnostics[(source, 'beta')])
        report.plot_hyperparameters(
            alpha.mean(0), beta.mean(0), names,
            os.path.join(self.results_dir, f'alpha_beta_{source}.png'),
            title=f'{self.learner_name}: generated alpha and beta on {source}',
            alpha_std=alpha.std(0), beta_std=beta.std(0))
    if tf.io.gfile.exists(self.summary_dir):
      report.plot_training_curves(self.summary_dir,
                                  os.path.join(self.results_dir, 'training_curves.png'))


def _accuracy(logits, labels):
  return tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                                tf.float32))


def _mean_squared_error(outputs, targets):
  return tf.reduce_mean(tf.square(tf.reshape(outputs, [-1]) - targets))


# Per-episode metric of (outputs, labels), on tensors or numpy arrays.
_METRICS = {'accuracy': _accuracy, 'mse': _mean_squared_error}


def _learning_rate(optimizer):
  rate = optimizer.learning_rate
  return rate(optimizer.iterations) if callable(rate) else rate


def _read_json(path, default):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def _write_json(path, value):
  temporary = path + '.tmp'
  with open(temporary, 'w') as f:
    json.dump(value, f, indent=1)
  os.replace(temporary, path)
