"""The supervised Baseline learner (upstream's ``BaselineLearner``): pre-trains a backbone.

    Trainer.train_learner_class = @BaselineLearner
    Trainer.batch_size = 256
    BaselineLearner.knn_distance = 'cosine'

The trainer's batch mode trains it on batches of the training sources' TRAIN images: the
backbone, then a linear classifier over all their classes (``logit_dim`` = their number), with
the cross-entropy loss plus the L2 weight decay of the backbone's kernels (the backbone's
``weight_decay``) and of the classifier's weight (``linear_classifier.weight_decay``, upstream's
binding; default: the backbone's). Its checkpoints then initialise the backbone part of theta_0 of MAML, Proto-MAML and their
ALFA versions (``Learner.pretrained_checkpoint``, ``meta_dataset_ext.pretrained``): theta_0
holds the backbone's parameters under the same names in every learner.

As upstream's, it is evaluated (and validated) on episodes by nearest neighbour: each query is
given the class of its nearest support example in the embedding (``knn_in_fc``: in the
classifier's output) by ``knn_distance`` 'l2' or 'cosine'; the query set uses the support set's
BatchNorm moments unless ``Learner.transductive_batch_norm``. The episode's logits are, per
class, the largest similarity (minus the distance, or the cosine) of a support example of that
class: their argmax is upstream's prediction.

``cosine_classifier``: logits = ``cosine_logits_multiplier`` * cos(embedding, class weight)
(no bias); ``use_weight_norm`` (upstream's data-dependent weight normalisation) is not
supported. Initial values: the backbone as every learner draws it for the seed; the classifier
as upstream's (truncated normal of std 0.1, bias 0.1).
"""
import collections
from typing import Dict, Optional, Sequence

import gin
import numpy as np
import tensorflow as tf

import alfa_tf
from alfa_tf import backbones as backbones_lib
from alfa_tf import learners as alfa_learners
from alfa_tf import weights
from meta_dataset_ext import checks
from meta_dataset_ext import learners as learners_lib
from meta_dataset_ext.errors import ConfigError

KNN_DISTANCES = ('l2', 'cosine')
_COSINE_EPSILON = 1e-3  # Upstream's l2_normalize epsilon in its cosine classifier.


def _truncated_normal(rng: np.random.Generator, shape, std: float) -> np.ndarray:
  """Normal values within two standard deviations (out-of-range draws redrawn)."""
  values = rng.normal(0.0, std, size=shape)
  outside = np.abs(values) > 2 * std
  while outside.any():
    values[outside] = rng.normal(0.0, std, size=int(outside.sum()))
    outside = np.abs(values) > 2 * std
  return values


class BaselineLearner(tf.keras.Model):
  """Backbone + linear (or cosine) classifier over ``num_classes`` training classes.

  Args:
    backbone: a functional backbone (``alfa_tf.backbones``, ``meta_dataset_ext.backbones``).
    num_classes: the training classes (the batch labels are 0 .. num_classes - 1).
    input_shape: (h, w, 3).
    knn_distance, knn_in_fc, cosine_classifier, cosine_logits_multiplier: module docstring.
    query_bn: 'support' (the support set's BatchNorm moments for the query set) or 'own'.
    seed: seeds the initial values.
    backbone_dtype: mixed precision: the backbone computes in it (e.g. 'bfloat16').
  """

  is_batch_learner = True

  def __init__(self, backbone, num_classes: int, input_shape: Sequence[int],
               knn_distance: str = 'l2', knn_in_fc: bool = False,
               cosine_classifier: bool = False,
               cosine_logits_multiplier: Optional[float] = None, query_bn: str = 'support',
               seed: int = 0, backbone_dtype: Optional[str] = None, name=None):
    super().__init__(name=name)
    if isinstance(backbone, alfa_tf.KerasBackbone):
      raise ConfigError('BaselineLearner takes the functional backbones (Learner.embedding_fn '
                        '= @four_layer_convnet, @resnet, ...), not a Keras model.')
    self.backbone, self.num_classes = backbone, num_classes
    self.example_shape = tuple(input_shape)
    self.knn_distance, self.knn_in_fc = knn_distance, knn_in_fc
    self.cosine_classifier = cosine_classifier
    self.cosine_logits_multiplier = cosine_logits_multiplier
    self.query_bn = query_bn
    self.backbone_dtype = tf.as_dtype(backbone_dtype or self.dtype).name
    self.display_name = 'Baseline'
    rng = np.random.default_rng(seed)
    specs = backbone.param_specs()
    values = collections.OrderedDict((name, backbones_lib.initial_value(spec, rng))
                                     for name, spec in specs.items())
    dim = backbone.output_dim(self.example_shape)
    values['fc.w'] = _truncated_normal(rng, (dim, num_classes), 0.1)
    if not cosine_classifier:
      values['fc.b'] = np.full((num_classes,), 0.1)
    self.theta0 = weights.ParameterSet(values, dtype=self.dtype, name='theta0')
    self.backbone_names = list(specs)
    self.built = True

  def _params(self):
    return {name: tf.convert_to_tensor(self.theta0[name]) for name in self.theta0.names}

  def _embed(self, params, images, moments=None, collect_moments=False):
    """Backbone features in the learner's dtype, and the BatchNorm moments used."""
    images = tf.cast(images, self.backbone_dtype)
    if self.backbone_dtype != self.dtype:
      params = {k: tf.cast(v, self.backbone_dtype) for k, v in params.items()
                if not k.startswith('fc.')}
    features, used = self.backbone(params, images, moments, collect_moments)
    return tf.cast(features, self.dtype), used

  def _classify(self, params, features):
    """The classifier's logits over the training classes."""
    if self.cosine_classifier:
      features = tf.math.l2_normalize(features, axis=1, epsilon=_COSINE_EPSILON)
      kernel = tf.math.l2_normalize(params['fc.w'], axis=0, epsilon=_COSINE_EPSILON)
      return self.cosine_logits_multiplier * tf.matmul(features, kernel)
    return tf.matmul(features, params['fc.w']) + params['fc.b']

  def logits(self, images) -> tf.Tensor:
    """[n, num_classes] logits of a batch (BatchNorm with the batch's statistics)."""
    params = self._params()
    return self._classify(params, self._embed(params, images)[0])

  def batch_loss(self, batch: Dict[str, tf.Tensor]):
    """(mean cross-entropy, logits) of a batch {'images', 'labels'}."""
    logits = self.logits(batch['images'])
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=batch['labels'], logits=logits))
    return loss, logits

  def episode_output(self, episode: Dict[str, tf.Tensor],
                     training: bool = False) -> alfa_learners.EpisodeOutput:
    """Nearest-neighbour logits [n_query, way] of an episode (module docstring), their mean
    cross-entropy (with query labels), and no adaptation."""
    del training  # Nothing is adapted.
    params = self._params()
    support, moments = self._embed(params, episode['support_images'],
                                   collect_moments=self.query_bn == 'support')
    query, _ = self._embed(params, episode['query_images'], moments)
    if self.knn_in_fc:
      support, query = self._classify(params, support), self._classify(params, query)
    if self.knn_distance == 'cosine':
      similarity = tf.matmul(tf.math.l2_normalize(query, axis=1),
                             tf.math.l2_normalize(support, axis=1), transpose_b=True)
    else:
      similarity = -tf.norm(query[:, tf.newaxis] - support[tf.newaxis], axis=2)
    labels = tf.cast(episode['support_labels'], tf.int32)
    way = episode.get('way', tf.reduce_max(labels) + 1)
    logits = tf.transpose(tf.math.unsorted_segment_max(tf.transpose(similarity), labels, way))
    loss = None
    if episode.get('query_labels') is not None:
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
          labels=tf.cast(episode['query_labels'], tf.int32), logits=logits))
    return alfa_learners.EpisodeOutput(logits, loss, None)


@gin.configurable('BaselineLearner')
def baseline_learner(is_training=True, logit_dim=None, input_shape=(84, 84, 3),
                     knn_in_fc=False, knn_distance='l2', cosine_classifier=False,
                     cosine_logits_multiplier=None, use_weight_norm=False,
                     loss='cross_entropy', seed=0, backbone_dtype=None):
  """Upstream's BaselineLearner arguments (``BaselineLearner.*``) and ``Learner.*``'s
  (``embedding_fn``, ``transductive_batch_norm``, ``pretrained_checkpoint``); ``logit_dim``: the
  number of training classes (the trainer passes it)."""
  del is_training  # One learner serves training and evaluation.
  knn_distance = checks.choice('BaselineLearner.knn_distance', knn_distance, KNN_DISTANCES)
  for name, value in (('knn_in_fc', knn_in_fc), ('cosine_classifier', cosine_classifier),
                      ('use_weight_norm', use_weight_norm)):
    checks.boolean(f'BaselineLearner.{name}', value)
  if use_weight_norm:
    raise ConfigError('BaselineLearner.use_weight_norm = True is not supported: bind False.')
  if cosine_classifier:
    cosine_logits_multiplier = checks.number('BaselineLearner.cosine_logits_multiplier',
                                             cosine_logits_multiplier, 0.0, strict=True)
  if loss != 'cross_entropy':
    raise ConfigError('BaselineLearner classifies images: its sources must be records '
                      f'sources (the trainer asked for the {loss!r} loss).')
  options = learners_lib.learner_options()
  learner = BaselineLearner(
      options['backbone'], logit_dim, input_shape, knn_distance=knn_distance,
      knn_in_fc=knn_in_fc, cosine_classifier=cosine_classifier,
      cosine_logits_multiplier=cosine_logits_multiplier,
      query_bn='own' if options['transductive_batch_norm'] else 'support', seed=seed,
      backbone_dtype=backbone_dtype)
  learner.pretrained_checkpoint = options['pretrained_checkpoint']
  decay = getattr(options['backbone'], 'weight_decay', 0.0)
  learner.l2_weights = {name: decay for name in learner.backbone_names if name.endswith('.w')}
  learner.l2_weights['fc.w'] = linear_classifier(decay)
  return learner


@gin.configurable('linear_classifier')
def linear_classifier(backbone_weight_decay: float, weight_decay: Optional[float] = None):
  """Upstream's ``linear_classifier.weight_decay``: the L2 weight of the Baseline's classifier
  weight (unbound: the backbone's)."""
  if weight_decay is None:
    return backbone_weight_decay
  return checks.number('linear_classifier.weight_decay', weight_decay, 0.0)


baseline_learner.is_batch_learner = True
