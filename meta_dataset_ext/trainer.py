"""Meta-training and evaluation of alfa_tf learners on Meta-Dataset records or synthetic tasks.

``Trainer`` takes upstream Meta-Dataset's gin arguments (``Trainer.*``, ``benchmark.*``) so
the same config files run here and under upstream's trainer, plus a few of its own
(``meta_batch_size``, ``seed``, ``keep_best``, ``ensemble_top_k``, ``num_validation_episodes``).

A source is read from ``records_root_dir`` unless ``meta_dataset_ext.data.sinusoid.source``
knows its name (e.g. 'sinusoid': few-shot regression, configured by ``SinusoidTasks.*``). The
sources fix the ``TaskFormat``: the learner's input shape, outputs and loss, and the metric
(classification: accuracy, higher is better; regression: MSE, lower is better) that
validation, the best checkpoints and the results use.

Batch mode: a batch learner (``Trainer.train_learner_class = @BaselineLearner``,
``meta_dataset_ext.baseline``) is trained on batches of ``Trainer.batch_size`` images of the
training sources' TRAIN classes (``pipeline.BatchStream``, augmented as
``process_batch.batch_decoder`` says) with one logit per class, and validated and evaluated on
episodes, as upstream's trainer does. Its checkpoints initialise the backbone of episodic
learners: ``Learner.pretrained_checkpoint`` with ``Trainer.pretrained_source`` (upstream's
label, e.g. 'imagenet') starts a new run's theta_0 backbone from it (``pretrained``; upstream
BaselineLearner checkpoints load too).

Everything a run will read or write is checked when the Trainer is built, before the first
update: every value (named by its binding), every split of every source it will read (class
files present, enough classes and images), every output folder, and, when it resumes, that
the configuration is the one the run was made with. During training, the weights are checked
after every update and before every save: a non-finite state is never written.

A run writes everything to disk (with the permissions the umask gives):
  <checkpoint_dir>/ckpt-*            latest checkpoints: learner, Adam state, update counter
                                     (the data position is a function of it: exact resume)
  <checkpoint_dir>/best/             the best checkpoints by the validation metric (best.json)
  <checkpoint_dir>/operative_config.gin  the gin configuration in force (earlier ones kept as
                                     operative_config-<n>.gin)
  <summary_dir>/train, /valid        TensorBoard scalars: loss, the metric (validation: with
                                     its 95% CI), learning rate, updates per second, ALFA's
                                     generated alpha / beta per layer and inner step
  <summary_dir>/eval_<split>*/<source>  the evaluated metric and its 95% CI (``evaluation``)
  <results_dir>/results.{md,csv,json}, ensemble_top<k>.{md,csv,json}, operative_config.gin,
                                     alpha_beta_<source>.png, training_curves.png
"""
import dataclasses
import os
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

import gin
import numpy as np
import tensorflow as tf
import tqdm

from alfa_tf import learners as alfa_learners
from meta_dataset_ext import baseline  # pylint: disable=unused-import  (@BaselineLearner)
from meta_dataset_ext import checkpoints as checkpoints_lib
from meta_dataset_ext import checks
from meta_dataset_ext import distribute as distribute_lib
from meta_dataset_ext import errors
from meta_dataset_ext import evaluation
from meta_dataset_ext import learners as learners_lib
from meta_dataset_ext import pretrained as pretrained_lib
from meta_dataset_ext import report
from meta_dataset_ext import run_dir
from meta_dataset_ext import upstream_compat
from meta_dataset_ext.data import pipeline
from meta_dataset_ext.data import sampler as sampler_lib
from meta_dataset_ext.data import sinusoid
from meta_dataset_ext.data import spec as spec_lib

TEN_SOURCES = ('ilsvrc_2012', 'omniglot', 'aircraft', 'cu_birds', 'dtd', 'quickdraw', 'fungi',
               'vgg_flower', 'traffic_sign', 'mscoco')
COMPUTE_DTYPES = (None, 'float32', 'bfloat16', 'float16')
EPISODE_KEYS = ('support_images', 'support_labels', 'query_images', 'query_labels', 'way')
# Upstream's --omit_from_saving_and_reloading choices and default.
OMIT_CHOICES = ('num_left_in_epoch', 'fc_finetune', 'linear_classifier', 'adam_opt',
                'weight_copy', 'fc')
OMIT_DEFAULT = OMIT_CHOICES[:-1]
# Bindings a resumed run may change without --allow_config_change: they set how long it runs
# and what it reports, not what it has learned so far.
RESUMABLE_CHANGES = frozenset({
    'Trainer.num_updates', 'Trainer.log_every', 'Trainer.checkpoint_every',
    'Trainer.show_progress', 'Trainer.num_eval_episodes', 'Trainer.eval_split',
    'Trainer.ensemble_top_k', 'Trainer.results_dir', 'Trainer.allow_config_change',
    'Trainer.will_evaluate', 'benchmark.eval_datasets', 'Trainer.eval_dataset_list'})
# What each use of the episodes reads: (split, offset of its seed, which episode config).
_PURPOSES = {'train': ('TRAIN', 0, 'train'), 'valid': ('VALID', 1000, 'eval'),
             'eval': (None, 2000, 'eval')}
# Grappler passes that upstream's Trainer.enable_tf_optimizations = False turns off.
_TF_OPTIMIZATIONS = ('constant_folding', 'arithmetic_optimization', 'remapping',
                     'shape_optimization', 'dependency_optimization', 'function_optimization',
                     'layout_optimizer', 'loop_optimization')


class NonFiniteLossError(errors.NonFiniteError):
  """A meta-training update produced a non-finite loss, gradient or weight."""


@gin.configurable('benchmark')
def benchmark(train_datasets: str = '', eval_datasets: str = '',
              use_dumped_episodes: bool = False, restrict_classes=None,
              restrict_num_per_class=None):
  """Upstream's ``benchmark`` binding: comma-separated source names."""
  if use_dumped_episodes or restrict_classes or restrict_num_per_class:
    raise errors.ConfigError('benchmark.use_dumped_episodes / restrict_classes / '
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


def _episode_signature(image_height: int):
  images = tf.TensorSpec([None, image_height, image_height, 3], tf.float32)
  labels = tf.TensorSpec([None], tf.int32)
  return {'support_images': images, 'support_labels': labels, 'query_images': images,
          'query_labels': labels, 'way': tf.TensorSpec([], tf.int32)}


def episodic_task_format(data_config, train_episode_config, eval_episode_config) -> TaskFormat:
  """The task format of an episodic learner on records sources: images of
  DataConfig.image_height, up to the largest way of training and evaluation episodes (also
  what ``trained`` rebuilds a run's learner with)."""
  height = data_config.image_height
  return TaskFormat((height, height, 3),
                    max(train_episode_config.max_ways, eval_episode_config.max_ways),
                    'cross_entropy', _episode_signature(height))


def _source_list(binding: str, value) -> List[str]:
  if isinstance(value, str):
    value = value.split(',')
  names = [str(name).strip() for name in value if str(name).strip()]
  for name in names:
    if name in ('.', '..') or os.sep in name or (os.altsep and os.altsep in name):
      raise errors.ConfigError(f'{binding}: source name {name!r} must be a folder name under '
                               'the records root (no path separators).')
  return names


class _Progress:
  """The training progress bar. The first update traces and compiles the meta-step (seconds
  to minutes), so until it is done the bar says so, with no rate or ETA; after it, tqdm's rate
  and ETA count only the updates that follow."""

  def __init__(self, total: int, start: int, desc: str, disable: bool):
    self._options = dict(total=total, desc=desc, unit='update', disable=disable)
    self.compiling = True
    self.bar = tqdm.tqdm(initial=start, bar_format=(
        '{desc}: {n_fmt}/{total_fmt} [{elapsed}, compiling the meta-step]'), **self._options)

  def advance(self, done: int) -> None:
    if self.compiling:
      self.bar.close()
      self.bar = tqdm.tqdm(initial=done, **self._options)
      self.compiling = False
    else:
      self.bar.update(1)

  def write(self, text: str) -> None:
    self.bar.write(text)

  def close(self) -> None:
    self.bar.close()


@gin.configurable
class Trainer:
  """Gin-configured meta-training (``train``) and evaluation (``evaluate``).

  Upstream's arguments keep their meaning; ones this trainer does not implement must keep
  their defaults (a clear error says so), and bound ones that have no effect here are named
  in a warning (``upstream_compat.differences``). ``batch_size``: images per batch of a batch
  learner. ``pretrained_source``: where ``Learner.pretrained_checkpoint`` was trained
  ('scratch' or '': no pretrained backbone; module docstring). ``experiment_name`` is
  recorded in the results; ``enable_tf_optimizations = False`` turns off the same graph optimisations as
  upstream's; ``omit_from_saving_and_reloading``: variables whose names contain one of these
  substrings are not reloaded from checkpoints (``checkpoints.restore``). Our own:
    meta_batch_size: episodes per outer update (the ALFA reference: 2 or 4; upstream: 1).
    num_validation_episodes: episodes per validation (default: num_eval_episodes).
    keep_best: number of best-by-validation checkpoints kept.
    ensemble_top_k: also evaluate the logits averaged over this many best checkpoints (the
      ALFA paper's protocol: 5), reported beside the latest checkpoint; 0 or 1: only the
      latest (or checkpoint_to_restore).
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
    allow_config_change: resume a run whose operative config differs from the current one in
      more than RESUMABLE_CHANGES (refused otherwise, naming the bindings that differ).
    will_evaluate: ``evaluate`` will be called; its sources, split and results folder are
      checked when the trainer is built.
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
               omit_from_saving_and_reloading: Sequence[str] = OMIT_DEFAULT,
               eval_split: str = 'TEST', train_episode_config=None, eval_episode_config=None,
               data_config=None, distribute: bool = False, enable_tf_optimizations: bool = True,
               meta_batch_size: int = 1, num_validation_episodes: Optional[int] = None,
               keep_best: int = 5, ensemble_top_k: int = 0, seed: int = 0,
               results_dir: Optional[str] = None, show_progress: bool = True,
               strategy: Optional[str] = None, compute_dtype: Optional[str] = None,
               jit_compile: bool = False, allow_config_change: bool = False,
               will_evaluate: bool = True):
    del eval_finegrainedness_split  # Named by upstream_compat.differences().
    unsupported = dict(normalized_gradient_descent=normalized_gradient_descent,
                       restrict_classes=restrict_classes,
                       restrict_num_per_class=restrict_num_per_class,
                       eval_finegrainedness=eval_finegrainedness,
                       eval_imbalance_dataset=eval_imbalance_dataset)
    for name, value in unsupported.items():
      if value:
        raise errors.ConfigError(f'Trainer.{name} is not supported by this trainer.')
    if train_learner_class is None:
      raise errors.ConfigError('Trainer.train_learner_class is not bound: bind e.g. '
                               '"Trainer.train_learner_class = @ALFAProtoMAMLLearner".')
    if eval_learner_class not in (None, train_learner_class):
      raise errors.ConfigError('Trainer.eval_learner_class must equal train_learner_class '
                               'here: one learner serves training and evaluation.')
    self.batch_mode = bool(getattr(train_learner_class, 'is_batch_learner', False))
    self._check_values(locals())
    if train_dataset_list is None or eval_dataset_list is None:
      train_sources, eval_sources = benchmark()
      train_dataset_list = train_sources if train_dataset_list is None else train_dataset_list
      eval_dataset_list = eval_sources if eval_dataset_list is None else eval_dataset_list
    self.train_sources = _source_list('benchmark.train_datasets', train_dataset_list)
    self.eval_sources = (_source_list('benchmark.eval_datasets', eval_dataset_list) or
                         list(TEN_SOURCES))
    if is_training and not self.train_sources:
      raise errors.ConfigError('No training source: bind benchmark.train_datasets.')
    self.compute_dtype, self.jit_compile = compute_dtype, jit_compile
    self.records_root_dir = records_root_dir
    self.experiment_name = experiment_name
    self.omit = tuple(omit_from_saving_and_reloading or ())
    self.is_training, self.will_evaluate = is_training, will_evaluate or not is_training
    self.checkpoint_to_restore, self.eval_split = checkpoint_to_restore, eval_split.upper()
    self.checkpoint_dir = checkpoint_dir
    self.summary_dir = summary_dir or os.path.join(checkpoint_dir, 'summaries')
    self.results_dir = results_dir or os.path.join(checkpoint_dir, 'results')
    self.data_config = data_config or pipeline.DataConfig()
    self.train_episode_config = train_episode_config or sampler_lib.EpisodeDescriptionConfig()
    self.eval_episode_config = eval_episode_config or self.train_episode_config
    synthetic = [sinusoid.source(s) for s in self._sources_read()]
    self._specs, self._streams, self._batch_stream = {}, {}, None
    self.format = self._task_format(synthetic)
    self._open_streams(synthetic)
    self.strategy = distribute_lib.make_strategy(strategy or
                                                 ('mirrored' if distribute else 'default'))
    self.is_chief = distribute_lib.is_chief(self.strategy)
    if self.batch_mode and self.strategy.num_replicas_in_sync > 1:
      raise errors.ConfigError('Batch training (Trainer.train_learner_class = '
                               '@BaselineLearner) runs on one device: bind Trainer.strategy = '
                               "'default'.")
    if self.is_chief:
      self._check_output_dirs()
    self.restore_dir = checkpoint_dir  # Every worker resumes from the chief's checkpoints.
    if not self.is_chief:  # Other workers write to a scratch folder nobody reads.
      checkpoint_dir = self.checkpoint_dir = tempfile.mkdtemp(prefix='worker_')
      self.summary_dir = os.path.join(checkpoint_dir, 'summaries')
      self.results_dir = os.path.join(checkpoint_dir, 'results')
    if not enable_tf_optimizations:
      tf.config.optimizer.set_experimental_options(
          dict({name: False for name in _TF_OPTIMIZATIONS}, disable_model_pruning=True))
    with self.strategy.scope():
      self._build_model(train_learner_class, seed, learning_rate, decay_learning_rate,
                        decay_every, decay_rate)
    self.manager = tf.train.CheckpointManager(self.checkpoint, checkpoint_dir, max_to_keep=3)
    self.best = checkpoints_lib.BestCheckpoints(checkpoint_dir, self.keep_best,
                                                self.format.metric,
                                                self.format.higher_is_better)
    self._check_checkpoints(allow_config_change)
    self._initialise_pretrained(checkpoint_to_restore)
    self._compile()
    self._evaluator = evaluation.Evaluator(
        self._evaluate_batch, self._restore_for_evaluation,
        lambda source: self._episodes('eval', source), _METRICS[self.format.metric],
        self.format.metric, self.show_progress)
    for message in upstream_compat.differences(self.batch_mode):
      errors.warn(message)

  # ----- checks made when the trainer is built ----------------------------------------------

  def _check_values(self, args):
    """Types and ranges of the numeric and boolean arguments, named by their bindings."""
    whole = dict(num_updates=1 if args['is_training'] else 0, num_eval_episodes=1,
                 checkpoint_every=1, validate_every=1, log_every=1, decay_every=1,
                 meta_batch_size=1, keep_best=1, ensemble_top_k=0, seed=0, batch_size=1)
    for name, minimum in whole.items():
      setattr(self, name, checks.integer(f'Trainer.{name}', args[name], minimum))
    self.num_validation_episodes = (
        self.num_eval_episodes if args['num_validation_episodes'] is None else
        checks.integer('Trainer.num_validation_episodes', args['num_validation_episodes'], 1))
    checks.number('Trainer.learning_rate', args['learning_rate'], 0.0, strict=True)
    checks.number('Trainer.decay_rate', args['decay_rate'], 0.0, strict=True)
    for name in ('is_training', 'decay_learning_rate', 'distribute', 'enable_tf_optimizations',
                 'show_progress', 'jit_compile', 'allow_config_change', 'will_evaluate'):
      checks.boolean(f'Trainer.{name}', args[name])
    self.show_progress = args['show_progress']
    if not isinstance(args['pretrained_source'], str):
      raise errors.ConfigError(f'Trainer.pretrained_source = {args["pretrained_source"]!r} '
                               "must be a string: 'scratch', or the pretraining's source, "
                               "e.g. 'imagenet'.")
    self.pretrained_source = args['pretrained_source']
    checks.choice('Trainer.compute_dtype', args['compute_dtype'], COMPUTE_DTYPES)
    checks.choice('Trainer.eval_split', str(args['eval_split']).upper(),
                  [s.name for s in spec_lib.Split])
    if args['strategy'] is not None:
      checks.choice('Trainer.strategy', args['strategy'], distribute_lib.STRATEGIES)
    for substring in args['omit_from_saving_and_reloading'] or ():
      checks.choice('Trainer.omit_from_saving_and_reloading', substring, OMIT_CHOICES)
    if self.ensemble_top_k > self.keep_best:
      raise errors.ConfigError(f'Trainer.ensemble_top_k = {self.ensemble_top_k} exceeds '
                               f'Trainer.keep_best = {self.keep_best}: keep at least as many '
                               'best checkpoints as the ensemble averages.')

  def _sources_read(self) -> List[str]:
    return ((self.train_sources if self.is_training else []) +
            (self.eval_sources if self.will_evaluate else []))

  def _task_format(self, synthetic) -> TaskFormat:
    """Records sources: images of DataConfig.image_height, up to max_ways classes (a batch
    learner: the training sources' TRAIN classes); synthetic sources: what the (one kind of)
    generator declares."""
    if self.batch_mode and any(sinusoid.source(s) for s in self.train_sources):
      raise errors.ConfigError('A batch learner (Trainer.train_learner_class) trains on records '
                               f'sources, not on synthetic ones: {self.train_sources}.')
    if not any(synthetic):
      task_format = episodic_task_format(self.data_config, self.train_episode_config,
                                         self.eval_episode_config)
      if self.batch_mode:
        self._check_records_root()
        task_format = dataclasses.replace(task_format, logit_dim=sum(
            len(self._spec(s).get_classes(spec_lib.Split.TRAIN)) for s in self.train_sources))
      return task_format
    if not all(synthetic) or len({type(t) for t in synthetic}) > 1:
      raise errors.ConfigError('Records sources and synthetic sources (or different '
                               f'synthetic ones) cannot be mixed: {self._sources_read()}.')
    tasks = synthetic[0]
    return TaskFormat(tasks.input_shape, tasks.output_dim, tasks.loss, tasks.signature())

  def _check_records_root(self) -> None:
    root = self.records_root_dir
    if not os.path.exists(root):
      raise errors.DataError(f'Records folder {root!r} (--records_root_dir) does not exist.')
    if not os.path.isdir(root):
      raise errors.DataError(f'Records folder {root!r} (--records_root_dir) is a file: give '
                             'the folder that holds one sub-folder per source.')

  def _spec(self, source: str):
    """The dataset specification of a records source, loaded once."""
    if source not in self._specs:
      self._specs[source] = spec_lib.load_dataset_spec(self.records_root_dir, source)
    return self._specs[source]

  def _open_streams(self, synthetic) -> None:
    """Opens every (split, source) the run will read, which checks each of them now (a batch
    learner's training batches: the TRAIN split of every training source)."""
    if not all(synthetic):
      self._check_records_root()
    purposes = (['train', 'valid'] if self.is_training else []) + (
        ['eval'] if self.will_evaluate else [])
    if self.batch_mode and self.is_training:
      purposes.remove('train')
      self._batch_stream = pipeline.BatchStream(
          [self._spec(s) for s in self.train_sources], 'TRAIN', self.batch_size,
          self.data_config, self.seed, upstream_compat.batch_augmentation())
    for purpose in purposes:
      for source in self.eval_sources if purpose == 'eval' else self.train_sources:
        self._stream(purpose, source)

  def _purpose(self, purpose: str, source: str):
    """(split, seed, episode config) of ``source``'s episodes for ``purpose``."""
    split, offset, config = _PURPOSES[purpose]
    sources = self.eval_sources if purpose == 'eval' else self.train_sources
    k = sources.index(source) if source in sources else len(sources)
    config = self.train_episode_config if config == 'train' else self.eval_episode_config
    return split or self.eval_split, self.seed + offset + k, config

  def _stream(self, purpose: str, source: str) -> Optional[pipeline.EpisodeStream]:
    """The episode stream of a records source (None for a synthetic one), opened once."""
    if sinusoid.source(source):
      return None
    if (purpose, source) not in self._streams:
      split, seed, config = self._purpose(purpose, source)
      self._streams[(purpose, source)] = pipeline.EpisodeStream(
          self._spec(source), split, config, self.data_config, seed, padding='none',
          augmentation=upstream_compat.episode_augmentation(purpose == 'train'))
    return self._streams[(purpose, source)]

  def _check_output_dirs(self) -> None:
    folders = []
    if self.is_training:
      folders += [(self.checkpoint_dir, 'checkpoint folder (--train_checkpoint_dir)'),
                  (self.summary_dir, 'summary folder (--summary_dir)')]
    if self.will_evaluate:
      folders.append((self.results_dir, 'results folder (--results_dir)'))
    for path, what in folders:
      run_dir.check_output_dir(path, what)

  def _check_checkpoints(self, allow_config_change: bool) -> None:
    """Evaluation needs a checkpoint; resuming needs the configuration the run was made with
    (beyond RESUMABLE_CHANGES), unless ``allow_config_change``."""
    latest = self.manager.latest_checkpoint
    if not self.is_training and not (self.checkpoint_to_restore or latest or
                                     self.best.entries()):
      raise errors.ConfigError(
          f'No checkpoint to evaluate in {self.checkpoint_dir!r} (--train_checkpoint_dir): '
          'train first, or bind Trainer.checkpoint_to_restore.')
    if not self.is_training or latest is None or allow_config_change:
      return
    previous = run_dir.OperativeConfig(self.checkpoint_dir).read()
    if previous is None:
      return
    changes = [c for c in run_dir.diff_bindings(previous, gin.config_str())
               if c[0] not in RESUMABLE_CHANGES]
    if changes:
      raise errors.ConfigError(
          f'{self.checkpoint_dir!r} holds a run made with another configuration: '
          f'{run_dir.describe_changes(changes)}. Resume it with the configuration it was made '
          'with, start a new run in another --train_checkpoint_dir, or pass '
          '--allow_config_change to go on with the new one (the earlier operative_config.gin '
          'is kept).')

  def _initialise_pretrained(self, checkpoint_to_restore: Optional[str]) -> None:
    """A new training run starts theta_0's backbone from ``Learner.pretrained_checkpoint``
    (read and checked now; a resumed run restores its own checkpoint instead). The binding
    must agree with ``Trainer.pretrained_source``, upstream's label of where it was trained
    ('scratch' or '': none)."""
    path = getattr(self.learner, 'pretrained_checkpoint', None)
    if not self.is_training:
      return
    source = self.pretrained_source
    if path and source in ('', 'scratch'):
      raise errors.ConfigError(
          f'{pretrained_lib.BINDING} = {path!r} but Trainer.pretrained_source = {source!r}: '
          "bind Trainer.pretrained_source to the source it was trained on (e.g. 'imagenet'), "
          'as upstream\'s configs do.')
    if source not in ('', 'scratch') and not path:
      upstream = (' (upstream\'s trainer takes it from Trainer.checkpoint_to_restore, which '
                  'here restores a whole checkpoint of this learner)'
                  if checkpoint_to_restore else '')
      raise errors.ConfigError(
          f'Trainer.pretrained_source = {source!r} needs the pretrained backbone: bind '
          f'{pretrained_lib.BINDING} to a run of batch training (Trainer.train_learner_class '
          f'= @BaselineLearner) or to an upstream BaselineLearner checkpoint{upstream}, or '
          "bind Trainer.pretrained_source = 'scratch'.")
    if path and checkpoint_to_restore:
      raise errors.ConfigError(
          f'Trainer.checkpoint_to_restore = {checkpoint_to_restore!r} and '
          f'{pretrained_lib.BINDING} = {path!r} both initialise the learner: bind one.')
    if path and self.manager.latest_checkpoint is None:
      pretrained_lib.initialise(self.learner, pretrained_lib.backbone_values(path, self.learner))

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
      metrics = {'loss': loss, self.format.metric: value}
      if outs[0].adaptation is None:  # A batch learner's episodes: nothing adapted.
        return metrics
      metrics['support_loss_first'] = tf.add_n([o.adaptation.losses[0] for o in outs]) / len(
          outs)
      metrics['support_loss_last'] = tf.add_n([o.adaptation.losses[-1] for o in outs]) / len(
          outs)
      for symbol in ('alpha', 'beta'):
        per_episode = [tf.stack([d[symbol] for d in o.adaptation.diagnostics])
                       for o in outs if symbol in o.adaptation.diagnostics[0]]
        if per_episode:
          metrics[symbol] = tf.add_n(per_episode) / len(per_episode)  # [steps, tensors]
      return metrics

    scale = lambda loss: alfa_learners.scale_loss(self.optimizer, loss)
    # One task's share, traced once for every episode shape (the signature leaves them free)
    # and called once per episode of the meta-batch: the step's trace is one task's. Not
    # inlined into the step: the runtime then prepares that one function once, not a copy
    # per episode (the first update's set-up drops with the trace).
    episode_share = tf.function(
        lambda ep: self.learner.episode_share(ep, 1.0 / self.meta_batch_size, scale),
        input_signature=[episode], autograph=False,
        experimental_attributes={'_noinline': True})

    def gradients(batch):
      variables = self.learner.trainable_variables
      _, grads, outs = self.learner.episode_gradients(  # One task at a time.
          batch, share_fn=episode_share)
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
      """Applies the update; returns whether every weight is finite after it."""
      alfa_learners.apply_scaled_gradients(self.optimizer, grads,
                                           self.learner.trainable_variables)
      self.step.assign_add(1)
      return checkpoints_lib.all_finite(self.learner.variables)

    def evaluate(batch):
      outs, metrics = outputs_and_metrics(batch, False)
      return [o.query_logits for o in outs], metrics

    def batch_gradients(batch):
      """A batch learner's update: the cross-entropy of a batch plus the L2 regulariser."""
      scale = lambda loss: alfa_learners.scale_loss(self.optimizer, loss)
      variables = self.learner.trainable_variables
      with tf.GradientTape() as tape:
        loss, logits = self.learner.batch_loss(batch)
        total = loss + learners_lib.outer_regularizer(self.learner)
        scaled = scale(total)
      grads = alfa_learners.gradients_or_zeros(tape, scaled, variables)
      finite = tf.math.is_finite(total)
      if scaled is total:  # With loss scaling, the optimizer handles overflowed gradients.
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads] + [finite])
      return grads, {'loss': loss, 'accuracy': _accuracy(logits, batch['labels'])}, finite

    # The learners' code has no control flow on tensors: tracing it without AutoGraph's
    # conversion takes about half the time (the wait before the first update).
    if self.batch_mode:
      height = self.data_config.image_height
      batch_signature = [{
          'images': tf.TensorSpec([self.batch_size, height, height, 3], tf.float32),
          'labels': tf.TensorSpec([self.batch_size], tf.int32)}]
      gradients = batch_gradients
    self._gradients = tf.function(gradients, input_signature=batch_signature,
                                  jit_compile=self.jit_compile, autograph=False)
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
    self._evaluate_batch = tf.function(evaluate, input_signature=[[episode]], autograph=False)

  # ----- data -------------------------------------------------------------------------------

  def _episodes(self, purpose: str, source: str, start: int = 0) -> tf.data.Dataset:
    """Episode ``start`` on of ``source`` for ``purpose`` ('train', 'valid' or 'eval')."""
    stream = self._stream(purpose, source)
    if stream is None:
      split, seed, _ = self._purpose(purpose, source)
      return sinusoid.source(source).dataset(split, seed, start)
    return stream.dataset(start).map(lambda e: {k: e[k] for k in EPISODE_KEYS})

  def _train_batches(self, start_update):
    """Meta-batches from update ``start_update`` on. Episode i of the run comes from source
    i mod (number of sources) at that source's position: a function of the update count. A
    batch learner's: batch ``start_update`` on of the batch stream."""
    if self.batch_mode:
      return iter(self._batch_stream.dataset(start_update).prefetch(2))
    n = len(self.train_sources)
    first_episode = start_update * self.meta_batch_size
    streams = [self._episodes('train', source, start=(first_episode - k + n - 1) // n)
               for k, source in enumerate(self.train_sources)]
    order = [(first_episode + j) % n for j in range(n)]
    episodes = iter(tf.data.Dataset.choose_from_datasets(  # Starts reading at once.
        [streams[k] for k in order], tf.data.Dataset.range(n).repeat()).prefetch(2))

    def batches():  # Episodes differ in shape: a meta-batch is a list, not a batched tensor.
      while True:
        yield [next(episodes) for _ in range(self.meta_batch_size)]
    return batches()

  # ----- training ---------------------------------------------------------------------------

  def restore(self) -> int:
    """Restores ``checkpoint_to_restore`` or the latest checkpoint; returns the update."""
    path = self.checkpoint_to_restore or tf.train.latest_checkpoint(self.restore_dir)
    if path:
      checkpoints_lib.restore(self.checkpoint, path, self.omit, self.learner.variables)
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
    run_dir.OperativeConfig(self.checkpoint_dir).write(gin.config_str())
    writers = {name: tf.summary.create_file_writer(os.path.join(self.summary_dir, name))
               for name in ('train', 'valid')}
    batches = self._train_batches(start)
    if self.strategy.num_replicas_in_sync == 1 and start < self.num_updates:
      # Trace the step now, while the input pipeline reads the first meta-batch.
      self._gradients.get_concrete_function()
    progress = _Progress(self.num_updates, start,
                         f'{"training" if self.batch_mode else "meta-training"} '
                         f'{self.learner_name}',
                         disable=not self.show_progress)
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
        progress.advance(done)
        if done % self.log_every == 0 or done == self.num_updates:
          progress.bar.set_postfix(loss=f'{float(metrics["loss"]):.3f}')
          metrics['updates_per_second'] = (done - logged) / log_seconds
          self._summaries(writers['train'], metrics, done)
          logged, log_seconds = done, 0.0
        if done % self.checkpoint_every == 0 or done == self.num_updates:
          self._save(done)
        if done % self.validate_every == 0 or done == self.num_updates:
          value, ci95 = self.validate(writers['valid'], done)
          progress.write(f'update {done}: validation {self.format.metric} {value:.4f} '
                         f'± {ci95:.4f}')
    except KeyboardInterrupt:
      done = int(self.step.numpy())
      try:
        saved = self._save(done)
        progress.write(f'Interrupted: saved {saved}; run the same command again to resume.')
      except errors.NonFiniteError as error:
        progress.write(f'Interrupted; nothing saved: {error}')
      raise
    finally:
      progress.close()
      for writer in writers.values():
        writer.close()
    result = {k: float(v) for k, v in metrics.items() if np.ndim(v) == 0}
    if self.num_updates > start:
      result['updates_per_second'] = (self.num_updates - start) / step_seconds
    return result

  def _save(self, done: int) -> str:
    """Saves the latest checkpoint at update ``done``, after checking every weight is
    finite (a non-finite state is never written)."""
    checkpoints_lib.assert_finite(self.learner.variables,
                                  f'Not saving the checkpoint of update {done}')
    return self.manager.save(checkpoint_number=done)

  def _update(self, batch, update):
    """One outer update (on one device, or split across the strategy's replicas).

    A non-finite loss or gradient stops training before the update is applied (on one
    device; distributed, right after: all replicas apply together); a non-finite weight after
    it stops training too. Either way the last good state is restored from the latest
    checkpoint, which never holds a non-finite value.
    """
    if self.strategy.num_replicas_in_sync == 1:
      grads, metrics, finite = self._gradients(batch)
      if not bool(finite):
        self._non_finite(update, metrics, 'the meta-loss or its gradient is not finite')
      if not bool(self._apply(grads)):
        self._non_finite(update, metrics, 'the update made a weight non-finite')
      return metrics
    objective, metrics = self._distributed_step(batch)
    if not np.isfinite(float(objective)):
      self._non_finite(update, metrics, 'the meta-loss or its gradient is not finite')
    self.step.assign_add(1)
    if not bool(checkpoints_lib.all_finite(self.learner.variables)):
      self._non_finite(update, metrics, 'the update made a weight non-finite')
    return metrics

  def _non_finite(self, update, metrics, what):
    """Restores the last good state and raises an error that says where it happened."""
    where = [f'update {update + 1}: {what} (query loss {float(metrics["loss"])}).']
    try:
      checkpoints_lib.assert_finite(self.learner.variables, 'after it')
    except errors.NonFiniteError as error:
      where.append(f'{error}')
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
      where.append(f'Restored the last good state from {latest}; lower the learning rates '
                   '(MAMLLearner.alpha, Trainer.learning_rate) or ALFA\'s initial beta.')
    else:
      where.append('No checkpoint was written yet; lower the learning rates '
                   '(MAMLLearner.alpha, Trainer.learning_rate) or ALFA\'s initial beta.')
    raise NonFiniteLossError(' '.join(where))

  def _summaries(self, writer, metrics, step):
    names = self._rule_param_names()
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

  def validate(self, writer, step) -> Tuple[float, float]:
    """The mean metric (and its 95% CI) over the VALID split of the training sources; keeps
    the best checkpoints. Non-finite outputs raise NonFiniteError."""
    values = []
    per_source = max(1, self.num_validation_episodes // len(self.train_sources))
    for source in self.train_sources:
      episodes = self._episodes('valid', source)
      for i, episode in enumerate(episodes.take(per_source)):
        logits, metrics = self._evaluate_batch([episode])
        evaluation.check_finite(logits[0].numpy(),
                                f'Validation at update {step} on {source} VALID episode {i}')
        values.append(float(metrics[self.format.metric]))
    value, ci95 = report.confidence_interval(values)
    with writer.as_default(step=step):
      tf.summary.scalar(self.format.metric, value)
      tf.summary.scalar(f'{self.format.metric}_ci95', ci95)
    writer.flush()
    checkpoints_lib.assert_finite(self.learner.variables,
                                  f'Not keeping update {step} as a best checkpoint')
    self.best.consider(self.checkpoint, value, step)
    return value, ci95

  def best_checkpoints(self) -> List[str]:
    return self.best.paths()

  # ----- evaluation -------------------------------------------------------------------------

  def _restore_for_evaluation(self, path: str) -> int:
    checkpoints_lib.restore(self.checkpoint, path, self.omit, self.learner.variables,
                            partial=True)
    return int(self.step.numpy())

  def evaluate(self, sources: Optional[Sequence[str]] = None,
               record: Optional[Dict[str, object]] = None) -> List[evaluation.Result]:
    """The metric and its 95% CI on ``num_eval_episodes`` episodes of ``eval_split`` per
    source: of ``checkpoint_to_restore`` or the latest checkpoint, and (``ensemble_top_k`` >
    1) of the logit ensemble of the best ones, each written to its own files (with ``record``,
    e.g. the command line's bindings, in their JSON), beside the operative config the
    evaluation ran with; plots."""
    sources = list(sources or self.eval_sources)
    single = self.checkpoint_to_restore or self.manager.latest_checkpoint
    members = self.best.paths(self.ensemble_top_k) if self.ensemble_top_k > 1 else []
    if not single and not members:
      raise errors.ConfigError(f'No checkpoint to evaluate in {self.checkpoint_dir!r}.')
    latest_step = None
    if single and not self.checkpoint_to_restore:
      latest_step = int(single.rsplit('-', 1)[-1])  # The manager names them ckpt-<update>.
    same = [path for path, entry in zip(members, self.best.entries())
            if entry['step'] == latest_step]  # Written at the same update as the latest.
    results = self._evaluator.evaluate(self.learner_name, sources, self.eval_split,
                                       self.num_eval_episodes, single, members, same)
    extra = dict(record or {}, operative_config=run_dir.OPERATIVE_CONFIG)
    if self.experiment_name:
      extra['experiment_name'] = self.experiment_name
    os.makedirs(self.results_dir, exist_ok=True)
    run_dir.atomic_write(os.path.join(self.results_dir, run_dir.OPERATIVE_CONFIG),
                         gin.config_str())
    for result in results:
      self._evaluator.write(result, self.results_dir, self.summary_dir, self.eval_split, extra)
    self._plots(sources, self._evaluator.diagnostics)
    return results

  def _rule_param_names(self) -> List[str]:
    """The tensors the inner loop adapts (none for a batch learner)."""
    rule = getattr(self.learner, 'update_rule', None)
    return list(rule.param_names) if rule is not None else []

  def _plots(self, sources, diagnostics):
    names = self._rule_param_names()
    for source in sources:
      if (source, 'alpha') in diagnostics and (source, 'beta') in diagnostics:
        alpha = np.stack(diagnostics[(source, 'alpha')])
        beta = np.stack(diagnostics[(source, 'beta')])
        report.plot_hyperparameters(
            alpha.mean(0), beta.mean(0), names,
            os.path.join(self.results_dir, f'alpha_beta_{source}.png'),
            title=f'{self.learner_name}: generated alpha and beta on {source}',
            alpha_std=alpha.std(0), beta_std=beta.std(0))
    if tf.io.gfile.exists(os.path.join(self.summary_dir, 'train')):
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
