"""ALFA learners for upstream Meta-Dataset's ``Trainer`` (TF1 graph mode).

``ALFAMAMLLearner`` and ``ALFAProtoMAMLLearner`` subclass upstream's ``MAMLLearner``: they take
its arguments (``MAMLLearner.*`` and ``Learner.*`` bindings apply, as to upstream's own
subclasses) plus ALFA's (random_init, beta, alpha_mode, beta_mode, learning_state, l2f), and
build the same alfa_tf learner as the project's own trainer (``learner_builder``): theta_0,
the ALFA rule (g_phi, alpha0, beta0) and its inner loop.

``Learner.embedding_fn`` may be upstream's ``four_layer_convnet``, ``resnet``, ``resnet34`` or
``wide_resnet`` (with its ``weight_decay`` and, for the ResNets, ``deeplab_alignment``
bindings): the learner computes with the project's version of that backbone
(``meta_dataset_ext.backbones``, the same network).

Upstream builds one learner instance for training and another for evaluation, in one graph.
Every variable the alfa_tf learner creates is made with ``tf.compat.v1.get_variable`` with
reuse, so both instances share every meta-parameter, upstream's ``Saver`` checkpoints them,
and its Adam outer loop (``tf.trainable_variables()``) meta-trains them. They live under the
variable scope ``alfa_meta``, with names that avoid the substrings upstream's trainer treats
specially; except, in a run with a pretrained backbone (``Trainer.pretrained_source`` other
than 'scratch' or ''), the backbone part of theta_0: it then carries upstream's own variable
names and shapes (``UpstreamLayout``; ``four_layer_convnet/layer_0/weight``, BatchNorm's
[1, 1, 1, C]), so that upstream's trainer restores it from ``Trainer.checkpoint_to_restore``
(an upstream BaselineLearner checkpoint) exactly as it restores its own learners' backbones.

This module imports upstream; the package ``meta_dataset_ext.upstream`` (the gin import line)
imports it only when upstream's trainer is loaded.
"""
import collections
import functools
import re
import threading

import gin
import tensorflow as tf
from meta_dataset.learners import optimization_learners

from alfa_tf import backbones as alfa_backbones
from meta_dataset_ext import backbones
from meta_dataset_ext import learner_builder
from meta_dataset_ext import pretrained

VARIABLE_SCOPE = 'alfa_meta'
BUILD_SCOPE = 'alfa_build'
# Substrings of variable names that upstream's trainer does not save (first four) or treats
# as backbone variables to restore from a pretrained checkpoint (last three).
SPECIAL_SUBSTRINGS = ('linear_classifier', 'weight_copy', 'adam_opt', 'fc_finetune',
                      'conv', 'resnet', 'fully_connected')
_creating = threading.local()


def relative_variable_name(name_scope: str, name: str) -> str:
  """'alfa_build/theta0_3', 'block0.w' -> 'theta0/block0.w': the name of a variable relative
  to the build scope, with the name-scope uniquifying suffixes of later instances dropped."""
  parts = name_scope.split('/')[1:] + [name.split(':')[0]]
  return '/'.join(re.sub(r'_\d+$', '', part) for part in parts if part)


def shared_variable_name(name_scope: str, name: str) -> str:
  """``relative_variable_name``, checked to hold no substring upstream treats specially."""
  result = relative_variable_name(name_scope, name)
  for substring in SPECIAL_SUBSTRINGS:
    if substring in result.lower():
      raise ValueError(f'Variable name {result!r} contains {substring!r}, which upstream '
                       'Meta-Dataset treats specially.')
  return result


def _shared_variable_creator(next_creator, upstream_names=None, **kwargs):
  """Routes a variable's creation to ``get_variable`` with reuse: under ``alfa_meta``, or, for
  a parameter of theta_0 in ``upstream_names`` ({its Keras weight name: upstream's name}),
  under upstream's name."""
  if getattr(_creating, 'active', False):  # get_variable's own tf.Variable call
    return next_creator(**kwargs)
  graph = tf.compat.v1.get_default_graph()
  parts = relative_variable_name(graph.get_name_scope(), kwargs['name']).split('/')
  upstream = (upstream_names or {}).get(parts[-1]) if parts[-2:-1] == ['theta0'] else None
  if upstream:  # Where upstream's backbone makes it: in the current variable scope.
    scope, name = tf.compat.v1.get_variable_scope(), upstream
  else:
    scope, name = VARIABLE_SCOPE, shared_variable_name(graph.get_name_scope(), kwargs['name'])
  initial_value = kwargs['initial_value']
  value = initial_value() if callable(initial_value) else initial_value
  _creating.active = True
  try:
    with tf.compat.v1.variable_scope(scope, reuse=tf.compat.v1.AUTO_REUSE):
      return tf.compat.v1.get_variable(name, initializer=tf.convert_to_tensor(value),
                                       trainable=kwargs.get('trainable', True))
  finally:
    _creating.active = False


# Upstream's embedding functions the ALFA learners take: the project's backbone of each, and
# the options of its gin binding that it takes.
BACKBONES = {'four_layer_convnet': (learner_builder.four_layer_convnet, ()),
             'resnet': (backbones.resnet, ('deeplab_alignment', 'max_stride')),
             'resnet34': (backbones.resnet34, ('deeplab_alignment', 'max_stride')),
             'wide_resnet': (backbones.wide_resnet, ())}


def _bound(embedding_fn, name: str, parameter: str):
  """The value bound to upstream's ``<name>.<parameter>`` (a macro evaluated), or None."""
  try:
    value = gin.query_parameter(f'{embedding_fn.__module__}.{name}.{parameter}')
  except ValueError:  # Not bound.
    return None
  if isinstance(value, gin.config.ConfigurableReference):  # A macro, %weight_decay.
    value = value.scoped_configurable_fn()
  return value


def backbone_for(embedding_fn):
  """The alfa_tf backbone for upstream's ``Learner.embedding_fn`` (``BACKBONES``), with its
  ``weight_decay`` bound in gin as its outer-loss L2 weight (and its other options)."""
  name = getattr(embedding_fn, '__name__', repr(embedding_fn))
  if name not in BACKBONES:
    raise ValueError(f'Learner.embedding_fn = @{name} is not supported by the ALFA learners '
                     f'for upstream\'s trainer: use one of @{", @".join(BACKBONES)}.')
  build, options = BACKBONES[name]
  values = {p: _bound(embedding_fn, name, p) for p in ('weight_decay',) + options}
  return build(**{p: v for p, v in values.items() if v is not None})


def pretrained_run() -> bool:
  """Whether upstream's ``Trainer.pretrained_source`` says the backbone is pretrained."""
  try:
    return gin.query_parameter('Trainer.pretrained_source') not in ('', 'scratch')
  except ValueError:  # Not bound.
    return False


class UpstreamLayout(alfa_backbones.Backbone):
  """``backbone`` with the parameters upstream's backbone has under upstream's variable names
  and shapes (``meta_dataset_ext.pretrained``), the others under their own; it computes what
  ``backbone`` computes."""

  def __init__(self, backbone):
    self.backbone = backbone
    self.weight_decay = getattr(backbone, 'weight_decay', 0.0)
    self._own = collections.OrderedDict()  # layout name -> (backbone's name, its spec)
    for name, spec in backbone.param_specs().items():
      self._own[pretrained.upstream_variable_name(backbone, name) or name] = (name, spec)
    self.upstream_names = [layout for layout, (name, _) in self._own.items() if layout != name]

  def param_specs(self):
    return collections.OrderedDict(
        (layout, alfa_backbones.ParamSpec(pretrained.upstream_shape(spec), spec.init,
                                          spec.adapted) if layout != name else spec)
        for layout, (name, spec) in self._own.items())

  def output_dim(self, input_shape):
    return self.backbone.output_dim(input_shape)

  def __call__(self, params, images, moments=None, collect_moments=False):
    inner = {k: v for k, v in params.items() if k not in self._own}
    for layout, (name, spec) in self._own.items():
      inner[name] = tf.reshape(params[layout], spec.shape)
    return self.backbone(inner, images, moments, collect_moments)


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
    backbone, upstream_names = backbone_for(self.embedding_fn), {}
    if pretrained_run():
      backbone = UpstreamLayout(backbone)
      upstream_names = {n.replace('/', '.'): n for n in backbone.upstream_names}
    with graph.name_scope(BUILD_SCOPE + '/'), tf.variable_creator_scope(
        functools.partial(_shared_variable_creator, upstream_names=upstream_names)):
      self.alfa_learner = learner_builder.build_learner(
          backbone,
          transductive_batch_norm=self.transductive_batch_norm,
          backprop_through_moments=self.backprop_through_moments,
          logit_dim=self.logit_dim, input_shape=tuple(self.input_shape),
          num_update_steps=self.num_update_steps,
          additional_evaluation_update_steps=self.additional_evaluation_update_steps,
          first_order=self.first_order, alpha=self.alpha,
          adapt_batch_norm=self.adapt_batch_norm, zero_fc_layer=self.zero_fc_layer,
          proto_maml_fc_layer_init=self.proto_maml_fc_layer_init,
          classifier_weight_decay=self.classifier_weight_decay, alfa=self.alfa)
    for name in upstream_names.values():  # Kernels under upstream's name ('.../weight').
      if name.endswith('/weight'):
        self.alfa_learner.l2_weights[name] = backbone.weight_decay

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
