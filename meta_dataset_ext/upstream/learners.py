"""ALFA learners for upstream Meta-Dataset's ``Trainer`` (TF1 graph mode).

``ALFAMAMLLearner`` and ``ALFAProtoMAMLLearner`` subclass upstream's ``MAMLLearner``: they take
its arguments (``MAMLLearner.*`` and ``Learner.*`` bindings apply, as to upstream's own
subclasses) plus ALFA's (random_init, beta, alpha_mode, beta_mode, learning_state, l2f), and
build the same alfa_tf learner as the project's own trainer (``learner_builder``): theta_0,
the ALFA rule (g_phi, alpha0, beta0) and its inner loop.

Upstream builds one learner instance for training and another for evaluation, in one graph.
Every variable the alfa_tf learner creates is made with ``tf.compat.v1.get_variable`` under
the variable scope ``alfa_meta`` with reuse, so both instances share every meta-parameter,
upstream's ``Saver`` checkpoints them, and its Adam outer loop (``tf.trainable_variables()``)
meta-trains them. Names avoid the substrings upstream's trainer treats specially.

This module imports upstream; the package ``meta_dataset_ext.upstream`` (the gin import line)
imports it only when upstream's trainer is loaded.
"""
import re
import threading

import gin
import tensorflow as tf
from meta_dataset.learners import optimization_learners

from meta_dataset_ext import learner_builder

VARIABLE_SCOPE = 'alfa_meta'
BUILD_SCOPE = 'alfa_build'
# Substrings of variable names that upstream's trainer does not save (first four) or treats
# as backbone variables to restore from a pretrained checkpoint (last three).
SPECIAL_SUBSTRINGS = ('linear_classifier', 'weight_copy', 'adam_opt', 'fc_finetune',
                      'conv', 'resnet', 'fully_connected')
_creating = threading.local()


def shared_variable_name(name_scope: str, name: str) -> str:
  """'alfa_build/theta0_3', 'block0.w' -> 'theta0/block0.w': the name of a variable relative
  to the build scope, with the name-scope uniquifying suffixes of later instances dropped."""
  parts = name_scope.split('/')[1:] + [name.split(':')[0]]
  result = '/'.join(re.sub(r'_\d+$', '', part) for part in parts if part)
  for substring in SPECIAL_SUBSTRINGS:
    if substring in result.lower():
      raise ValueError(f'Variable name {result!r} contains {substring!r}, which upstream '
                       'Meta-Dataset treats specially.')
  return result


def _shared_variable_creator(next_creator, **kwargs):
  """Routes a variable's creation to ``get_variable`` under ``alfa_meta`` with reuse."""
  if getattr(_creating, 'active', False):  # get_variable's own tf.Variable call
    return next_creator(**kwargs)
  graph = tf.compat.v1.get_default_graph()
  name = shared_variable_name(graph.get_name_scope(), kwargs['name'])
  initial_value = kwargs['initial_value']
  value = initial_value() if callable(initial_value) else initial_value
  _creating.active = True
  try:
    with tf.compat.v1.variable_scope(VARIABLE_SCOPE, reuse=tf.compat.v1.AUTO_REUSE):
      return tf.compat.v1.get_variable(name, initializer=tf.convert_to_tensor(value),
                                       trainable=kwargs.get('trainable', True))
  finally:
    _creating.active = False


def backbone_for(embedding_fn):
  """The alfa_tf backbone for upstream's ``Learner.embedding_fn`` (its 4-CONV), with the
  ``four_layer_convnet.weight_decay`` bound in gin as its outer-loss L2 weight."""
  name = getattr(embedding_fn, '__name__', repr(embedding_fn))
  if name != 'four_layer_convnet':
    raise ValueError(f'Learner.embedding_fn = @{name} is not supported by the ALFA learners '
                     'for upstream\'s trainer: use @four_layer_convnet.')
  try:
    weight_decay = gin.query_parameter(
        f'{embedding_fn.__module__}.four_layer_convnet.weight_decay')
  except ValueError:  # Not bound.
    weight_decay = 0.0
  if isinstance(weight_decay, gin.config.ConfigurableReference):  # A macro, %weight_decay.
    weight_decay = weight_decay.scoped_configurable_fn()
  return learner_builder.four_layer_convnet(weight_decay=weight_decay)


@gin.configurable
class ALFAMAMLLearner(optimization_learners.MAMLLearner):
  """ALFA + (fo-)MAML in upstream's trainer: upstream MAMLLearner's arguments plus ALFA's.

  MAMLLearner.alpha is the initial alpha0; ``beta`` the initial beta0 (default 5e-6, or 1.0
  with random_init); alpha_mode / beta_mode / learning_state: the ablations
  (``alfa_tf.update_rules.ALFA``); random_init: ALFA + Random init; l2f: ALFA + L2F.
  """

  def __init__(self, random_init=False, beta=None, alpha_mode='adaptive',
               beta_mode='adaptive', learning_state='both', l2f=False, **kwargs):
    super().__init__(**kwargs)
    self.alfa = learner_builder.alfa_options(
        random_init=random_init, beta=beta, alpha_mode=alpha_mode, beta_mode=beta_mode,
        learning_state=learning_state, l2f=l2f)
    self.alfa_learner = None

  def build(self):
    """Creates (or, for the second instance, reuses) the meta-parameters."""
    if self.alfa_learner is not None:
      return
    graph = tf.compat.v1.get_default_graph()
    with graph.name_scope(BUILD_SCOPE + '/'), \
        tf.variable_creator_scope(_shared_variable_creator):
      self.alfa_learner = learner_builder.build_learner(
          backbone_for(self.embedding_fn),
          transductive_batch_norm=self.transductive_batch_norm,
          backprop_through_moments=self.backprop_through_moments,
          logit_dim=self.logit_dim, input_shape=tuple(self.input_shape),
          num_update_steps=self.num_update_steps,
          additional_evaluation_update_steps=self.additional_evaluation_update_steps,
          first_order=self.first_order, alpha=self.alpha,
          adapt_batch_norm=self.adapt_batch_norm, zero_fc_layer=self.zero_fc_layer,
          proto_maml_fc_layer_init=self.proto_maml_fc_layer_init,
          classifier_weight_decay=self.classifier_weight_decay, alfa=self.alfa)

  def forward_pass(self, data):
    """The query logits [n_query, way] after ALFA's inner loop on the support set."""
    self.build()
    output = self.alfa_learner.forward_episode(
        data.support_images, data.support_labels, data.query_images, way=data.way,
        training=self.is_training)
    return output.query_logits[:, :data.way]

  def compute_regularizer(self):
    """The outer-loss L2 of the project's trainer: weight_decay on theta_0's conv kernels,
    classifier_weight_decay on the linear head's weight."""
    self.build()
    return learner_builder.outer_regularizer(self.alfa_learner)


@gin.configurable
class ALFAProtoMAMLLearner(ALFAMAMLLearner):
  """ALFA + fo-Proto-MAML: ``ALFAMAMLLearner`` with the Proto-MAML head by default."""

  def __init__(self, proto_maml_fc_layer_init=True, **kwargs):
    super().__init__(proto_maml_fc_layer_init=proto_maml_fc_layer_init, **kwargs)
