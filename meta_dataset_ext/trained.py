"""A meta-trained learner loaded from its run directory, ready to adapt to new tasks.

    learner = trained.load('runs/quickstart/alfa_fo_proto_maml')     # the latest checkpoint
    learner = trained.load(run_dir, ensemble_top_k=5, num_steps=10)  # 5 best, 10 inner steps
    images = tf.stack([learner.decode(open(path, 'rb').read()) for path in paths])
    probabilities = learner.probabilities(support_images, support_labels, query_images)

The learner is the one the run trained: built from the run's ``operative_config.gin`` as
evaluation builds it (``Trainer.train_learner_class``, with the input shape, logit_dim and
compute dtype that the run's ``Trainer.*`` bindings give), without the trainer, so no records
are needed (``load`` replaces the process's gin configuration with the run's). Its weights
come from the latest checkpoint (``tf.train.CheckpointManager``'s ``ckpt-*``), or, with
``ensemble_top_k`` > 1, from the best checkpoints by validation accuracy (``best/best.json``):
one learner per checkpoint, whose query logits are averaged (the ALFA paper's protocol, as
``meta_dataset_ext.evaluation`` does).

A task is any number of classes up to logit_dim, labelled 0 .. way - 1 (every label present
in the support set), and any number of support and query images [n, h, h, 3] in [-1, 1],
decoded as the run's training decoded its records (``decode``: the data layer's
``reader.decode_image`` with the run's DataConfig). ``probabilities`` runs the inner loop
(ALFA's generated rates included) on the support set and returns the softmax over the way of
the query logits; it is plain TensorFlow, so ``meta_dataset_ext.export`` traces it into a
SavedModel.
"""
import dataclasses
import os
from typing import List, Optional

from absl import flags
import gin
import tensorflow as tf

from meta_dataset_ext import checkpoints as checkpoints_lib
from meta_dataset_ext import checks
from meta_dataset_ext import errors
from meta_dataset_ext import gin_setup
from meta_dataset_ext import run_dir as run_dir_lib
from meta_dataset_ext import trainer as trainer_lib
from meta_dataset_ext import upstream_compat
from meta_dataset_ext.data import augmentation as augmentation_lib
from meta_dataset_ext.data import pipeline
from meta_dataset_ext.data import reader
from meta_dataset_ext.data import sampler as sampler_lib
from meta_dataset_ext.data import sinusoid

MIN_WAYS = 2  # A task of one class has nothing to predict.
FLAGS = flags.FLAGS


@dataclasses.dataclass
class TrainedLearner:
  """One run's learner(s), restored.

  Attributes:
    run_dir: the run directory.
    members: one alfa_tf learner per restored checkpoint (one, or the ensemble's).
    checkpoints: the checkpoint prefix each member was restored from.
    steps: the update at which each checkpoint was written.
    image_height: images are [h, h, 3] with h = the run's DataConfig.image_height.
    image_decoding: how the run decoded its images (DataConfig.image_decoding).
    logit_dim: the most classes a task may have (the run's largest way).
    num_steps: inner steps run on a support set.
  """
  run_dir: str
  members: List[tf.keras.Model]
  checkpoints: List[str]
  steps: List[int]
  image_height: int
  image_decoding: str
  logit_dim: int
  num_steps: int

  @property
  def name(self) -> str:
    """'ALFA+fo-Proto-MAML', or 'ALFA+fo-Proto-MAML top-5 ensemble'."""
    learner = getattr(self.members[0], 'display_name', type(self.members[0]).__name__)
    if len(self.members) == 1:
      return learner
    return f'{learner} top-{len(self.members)} ensemble'

  def check_way(self, way: int, what: str) -> int:
    """``way`` if the learner can take that many classes, else DataError naming ``what``
    (e.g. "--support_dir 'my_photos'")."""
    if way < MIN_WAYS:
      raise errors.DataError(f'{what} has {way} class(es): give at least {MIN_WAYS} (one '
                             'sub-folder of images per class).')
    if way > self.logit_dim:
      raise errors.DataError(
          f'{what} has {way} classes but this learner takes at most {self.logit_dim} (its '
          'logit_dim, the largest way it was trained for): use at most '
          f'{self.logit_dim} classes, or a run trained with a larger '
          'EpisodeDescriptionConfig.max_ways_upper_bound.')
    return way

  def decode(self, image_bytes) -> tf.Tensor:
    """One encoded JPEG/PNG/GIF/BMP image (bytes or a string tensor) as the run's training
    decoded its records: float32 [h, h, 3] in [-1, 1] (``reader.decode_image``)."""
    return reader.decode_image(image_bytes, self.image_height, self.image_decoding)

  def way_of(self, support_labels: tf.Tensor) -> tf.Tensor:
    """The way of a support set labelled 0 .. way - 1, with in-graph checks (failing with
    ``tf.errors.InvalidArgumentError`` naming support_labels) that the labels are those of
    1 to logit_dim classes, each with a support image."""
    way = tf.reduce_max(tf.concat([support_labels, [-1]], 0)) + 1  # 0 for an empty set.
    checks = [
        tf.debugging.assert_non_negative(support_labels, message=(
            'support_labels are negative: label the classes 0 .. way - 1')),
        tf.debugging.assert_less_equal(way, self.logit_dim, message=(
            f'support_labels must be < {self.logit_dim}: this learner takes at most '
            f'{self.logit_dim} classes (its logit_dim)')),
        tf.debugging.assert_equal(tf.size(tf.unique(support_labels).y), way, message=(
            'support_labels must hold every class 0 .. way - 1 (way = the largest label + 1): '
            'each class needs at least one support image'))]
    with tf.control_dependencies(checks):
      return tf.identity(way)

  def probabilities(self, support_images, support_labels, query_images,
                    way=None) -> tf.Tensor:
    """[n_query, way] class probabilities of the query images after adapting every member to
    the support set (``num_steps`` inner steps); the members' logits are averaged.
    ``way``: the number of classes (default: ``way_of(support_labels)``)."""
    support_labels = tf.convert_to_tensor(support_labels, tf.int32)
    if way is None:
      way = self.way_of(support_labels)
    logits = tf.add_n([
        learner.adapt(support_images, support_labels, self.num_steps, way)(query_images)
        for learner in self.members]) / len(self.members)
    return tf.nn.softmax(logits[:, :way])


def _trainer_value(name: str, default=None):
  """What the Trainer's argument ``name`` receives from the parsed configuration: the bound
  value, a configurable it references (``@ALFAProtoMAMLLearner``), or what that reference
  evaluates to (``@DataConfig()``); ``default`` when unbound."""
  value = gin_setup.bound_value(f'Trainer.{name}', default)
  if isinstance(value, gin.config.ConfigurableReference):
    return value.scoped_configurable_fn() if value.evaluate else value.scoped_configurable_fn
  return value


def _build_learner(run_dir: str):
  """(learner factory, its keyword arguments, the run's DataConfig) as the run's Trainer
  builds its learner for records sources (``Trainer._task_format`` and
  ``Trainer._build_model``)."""
  config = os.path.join(run_dir, run_dir_lib.OPERATIVE_CONFIG)
  if not os.path.isfile(config):
    raise errors.ConfigError(f'{run_dir!r} (--checkpoint_dir) holds no '
                             f'{run_dir_lib.OPERATIVE_CONFIG}: give the folder of a training '
                             'run (meta_dataset_ext.train --train_checkpoint_dir, or a run of '
                             'the quickstart such as runs/quickstart/alfa_fo_proto_maml).')
  gin.clear_config()
  gin_setup.parse([], [], operative_config=config)
  factory = _trainer_value('train_learner_class')
  if factory is None:
    raise errors.ConfigError(f'{config} binds no Trainer.train_learner_class: it is not the '
                             'configuration of a training run.')
  if getattr(factory, 'is_batch_learner', False):
    raise errors.ConfigError(f'{run_dir!r} (--checkpoint_dir) trained a batch learner '
                             '(Trainer.train_learner_class): only the episodic learners (MAML, '
                             'Proto-MAML and their ALFA versions) adapt to a support set.')
  sources = _trainer_value('train_dataset_list') or trainer_lib.benchmark()[0]
  synthetic = [s for s in sources if sinusoid.source(s)]
  if synthetic:
    raise errors.ConfigError(f'{run_dir!r} (--checkpoint_dir) trained on the synthetic '
                             f'source {synthetic[0]!r} (regression): only image classifiers '
                             'can predict classes of images.')
  augmented = [part for part, augmentation in upstream_compat.episode_augmentation(False).items()
               if augmentation_lib.is_active(augmentation)]
  if augmented:
    errors.warn(f'The run\'s evaluation augments the {" and ".join(augmented)} images '
                '(evaluation/process_episode bindings); the learner here takes them as decoded, '
                'without augmentation.')
  data_config = _trainer_value('data_config') or pipeline.DataConfig()
  train_episodes = (_trainer_value('train_episode_config') or
                    sampler_lib.EpisodeDescriptionConfig())
  eval_episodes = _trainer_value('eval_episode_config') or train_episodes
  task_format = trainer_lib.episodic_task_format(data_config, train_episodes, eval_episodes)
  arguments = dict(is_training=False, logit_dim=task_format.logit_dim,
                   input_shape=task_format.input_shape, loss=task_format.loss,
                   seed=_trainer_value('seed', 0),
                   backbone_dtype=_trainer_value('compute_dtype'))
  return factory, arguments, data_config


def _checkpoints(run_dir: str, ensemble_top_k: int) -> List[str]:
  """The latest checkpoint, or the ``ensemble_top_k`` best ones (best first)."""
  if ensemble_top_k <= 1:
    latest = tf.train.latest_checkpoint(run_dir)
    if latest is None:
      raise errors.ConfigError(f'{run_dir!r} (--checkpoint_dir) holds no checkpoint (ckpt-*): '
                               'train it first.')
    return [latest]
  best = checkpoints_lib.BestCheckpoints(run_dir, ensemble_top_k, 'accuracy', True)
  paths = best.paths(ensemble_top_k)
  if len(paths) < ensemble_top_k:
    raise errors.ConfigError(
        f'--ensemble_top_k={ensemble_top_k}, but {best.index_path!r} lists '
        f'{len(paths)} best checkpoint(s): give --ensemble_top_k={len(paths)} or less (0: the '
        'latest checkpoint).')
  return paths


def load(run_dir: str, ensemble_top_k: int = 0, num_steps: Optional[int] = None
         ) -> TrainedLearner:
  """The learner of the training run in ``run_dir``, restored (module docstring).

  Args:
    run_dir: a run directory (operative_config.gin, ckpt-*, best/).
    ensemble_top_k: 0 or 1: the latest checkpoint; k > 1: the logit ensemble of the k best.
    num_steps: inner steps on the support set (default: the run's evaluation steps,
      MAMLLearner.num_update_steps + additional_evaluation_update_steps).

  Raises:
    ConfigError: not a run directory, no checkpoint, too few best checkpoints, a regression
      run, a checkpoint that does not fit the configuration, or a bad count.
  """
  if not os.path.isdir(run_dir):
    problem = 'is a file' if os.path.exists(run_dir) else 'does not exist'
    raise errors.ConfigError(f'The run directory {run_dir!r} (--checkpoint_dir) {problem}: '
                             'give the folder of a training run.')
  ensemble_top_k = checks.integer('--ensemble_top_k', ensemble_top_k, 0)
  if num_steps is not None:
    num_steps = checks.integer('--num_steps', num_steps, 1)
  factory, arguments, data_config = _build_learner(run_dir)
  omit = _trainer_value('omit_from_saving_and_reloading', trainer_lib.OMIT_DEFAULT) or ()
  members, steps = [], []
  paths = _checkpoints(run_dir, ensemble_top_k)
  for path in paths:
    learner = factory(**arguments)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name='update')
    checkpoints_lib.restore(tf.train.Checkpoint(learner=learner, step=step), path, omit,
                            learner.variables, partial=True)
    checkpoints_lib.assert_finite(learner.variables, f'Checkpoint {path!r}')
    members.append(learner)
    steps.append(int(step.numpy()))
  return TrainedLearner(run_dir, members, paths, steps, data_config.image_height,
                        data_config.image_decoding, arguments['logit_dim'],
                        num_steps or members[0].eval_num_steps)


def define_flags() -> None:
  """--checkpoint_dir, --ensemble_top_k and --num_steps (``load``'s arguments), for the
  commands that use a trained learner (predict, export)."""
  flags.DEFINE_string('checkpoint_dir', None, 'The training run (its operative_config.gin and '
                      'checkpoints), e.g. runs/quickstart/alfa_fo_proto_maml.')
  flags.DEFINE_integer('ensemble_top_k', 0, 'Average the logits of the k best checkpoints by '
                       'validation accuracy (best/best.json); 0 or 1: the latest checkpoint.',
                       lower_bound=0)
  flags.DEFINE_integer('num_steps', None, 'Inner steps on the support set (default: the '
                       'run\'s evaluation steps).', lower_bound=1)
  flags.mark_flag_as_required('checkpoint_dir')


def load_from_flags() -> TrainedLearner:
  """``load`` with the values of ``define_flags``' flags."""
  return load(FLAGS.checkpoint_dir, FLAGS.ensemble_top_k, FLAGS.num_steps)
