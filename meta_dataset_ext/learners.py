"""Gin-configurable learners and backbones under upstream Meta-Dataset's names.

The configs in ``gin/`` bind ``Learner.*``, ``MAMLLearner.*`` and ``four_layer_convnet``
exactly as upstream users know them, plus the ALFA learners' own arguments. Each learner class
here is constructed like upstream's, ``cls(is_training=..., logit_dim=..., input_shape=...)``
with everything else from gin, and returns an ``alfa_tf`` Keras learner.

Upstream -> alfa_tf:
  Learner.embedding_fn              the backbone factory (``four_layer_convnet``, ``resnet``, ...)
  Learner.transductive_batch_norm   True: the query set uses its own BatchNorm statistics
                                    (ALFA reference); False: the support set's (upstream)
  MAMLLearner.num_update_steps      S, inner steps in training
  ...additional_evaluation_update_steps  extra inner steps at evaluation
  MAMLLearner.alpha                 inner learning rate (ALFA: initial alpha0)
  MAMLLearner.first_order           hold inner gradients constant
  MAMLLearner.zero_fc_layer         linear head starts at zero
  MAMLLearner.proto_maml_fc_layer_init  Proto-MAML head
  MAMLLearner.classifier_weight_decay   L2 weight of the head in the outer loss
"""
from typing import Callable, Sequence

import gin
import tensorflow as tf

import alfa_tf

# Upstream's `weight_decay` macro (learner_config.gin) is bound here too.


@gin.configurable('four_layer_convnet')
def four_layer_convnet(depth_multiplier: float = 1.0, weight_decay: float = 0.0,
                       num_filters: int = 64, activation: str = 'relu',
                       flatten_order: str = 'hwc',
                       keep_spatial_dims: bool = False, use_bounded_activation: bool = False,
                       backprop_through_moments: bool = True):
  """Upstream's 4-CONV (64 filters x depth_multiplier, BatchNorm eps 1e-5, ReLU, max-pool 2),
  as an alfa_tf Conv4.

  ``weight_decay`` is applied to the conv kernels of theta_0 in the outer loss. Upstream
  options this backbone does not implement must keep their defaults.
  """
  if keep_spatial_dims or use_bounded_activation or not backprop_through_moments:
    raise ValueError('four_layer_convnet: keep_spatial_dims, use_bounded_activation and '
                     'backprop_through_moments=False are not supported.')
  backbone = alfa_tf.Conv4(filters=int(num_filters * depth_multiplier),
                           activation=activation, flatten_order=flatten_order)
  backbone.weight_decay = weight_decay
  return backbone


@gin.configurable('alfa_four_layer_convnet')
def alfa_four_layer_convnet(num_filters: int = 48, weight_decay: float = 0.0):
  """The ALFA reference's 4-CONV: 48 filters, leaky ReLU 0.01, BN eps 1e-5, CHW flatten."""
  backbone = alfa_tf.Conv4(filters=num_filters)
  backbone.weight_decay = weight_decay
  return backbone


@gin.configurable('resnet12')
def resnet12(channels: Sequence[int] = (64, 160, 320, 640), weight_decay: float = 0.0):
  backbone = alfa_tf.ResNet12(channels=channels)
  backbone.weight_decay = weight_decay
  return backbone


@gin.configurable('resnet')
def resnet(weight_decay: float = 0.0, channels: Sequence[int] = (64, 128, 256, 512)):
  """Upstream's ResNet-18 (``Learner.embedding_fn = @resnet``)."""
  backbone = alfa_tf.ResNet18(channels=channels)
  backbone.weight_decay = weight_decay
  return backbone


@gin.configurable('Learner')
def learner_options(embedding_fn: Callable = four_layer_convnet,
                    transductive_batch_norm: bool = False,
                    backprop_through_moments: bool = True):
  """Upstream's ``Learner`` base arguments: (backbone, query BatchNorm mode)."""
  if not backprop_through_moments:
    raise ValueError('Learner.backprop_through_moments=False is not supported.')
  return embedding_fn(), ('own' if transductive_batch_norm else 'support')


@gin.configurable('MAMLLearner')
def maml_learner(is_training=True, logit_dim=5, input_shape=(84, 84, 3),
                 num_update_steps=5, additional_evaluation_update_steps=0,
                 first_order=True, alpha=0.01, adapt_batch_norm=False, zero_fc_layer=True,
                 proto_maml_fc_layer_init=False, classifier_weight_decay=0.0, debug=False,
                 seed=0, alfa=None):
  """Upstream's MAMLLearner (fo-MAML; fo-Proto-MAML with proto_maml_fc_layer_init).

  ``alfa``: None for MAML's fixed-rate SGD, or the ALFA rule's arguments (the ALFA learners
  below pass them, so MAMLLearner.* bindings apply to them too, as to upstream subclasses).
  """
  del is_training, debug  # One learner serves training and evaluation.
  if adapt_batch_norm:
    raise ValueError('MAMLLearner.adapt_batch_norm=True is not supported: BatchNorm scale '
                     'and offset are meta-parameters, not adapted in the inner loop.')
  backbone, query_bn = learner_options()
  common = dict(
      num_classes=logit_dim, input_shape=tuple(input_shape), num_steps=num_update_steps,
      eval_num_steps=num_update_steps + additional_evaluation_update_steps,
      first_order=first_order, head='proto' if proto_maml_fc_layer_init else 'linear',
      zero_head=zero_fc_layer and not proto_maml_fc_layer_init, query_bn=query_bn,
      seed=seed)
  if alfa is None:
    learner = alfa_tf.MAMLLearner(backbone, alpha=alpha, **common)
  else:
    rule_kwargs = {k: v for k, v in alfa.items() if k != 'random_init'}
    learner = alfa_tf.ALFALearner(backbone, random_init=alfa['random_init'],
                                  alfa_kwargs=dict(alpha_init=alpha, **rule_kwargs), **common)
  learner.display_name = _display_name(alfa, first_order, proto_maml_fc_layer_init)
  # Outer-loss L2 weights: the backbone's kernels, and the linear head's weight.
  learner.l2_weights = {name: getattr(backbone, 'weight_decay', 0.0)
                        for name in learner.theta0.names if name.endswith('.w')}
  if 'head.w' in learner.l2_weights:
    learner.l2_weights['head.w'] = classifier_weight_decay
  return learner


def _display_name(alfa, first_order, proto):
  """'fo-Proto-MAML', 'ALFA+fo-MAML', 'ALFA+Random+MAML', ... (for tables and plots)."""
  name = ('fo-' if first_order else '') + ('Proto-MAML' if proto else 'MAML')
  if alfa is None:
    return name
  return ('ALFA+Random+' if alfa['random_init'] else 'ALFA+') + name


@gin.configurable('ALFAMAMLLearner')
def alfa_maml_learner(random_init=False, beta=None, alpha_mode='adaptive',
                      beta_mode='adaptive', learning_state='both', l2f=False, **kwargs):
  """ALFA + (fo-)MAML: MAMLLearner's arguments (kwargs, or MAMLLearner.* bindings) plus
  ALFA's. MAMLLearner.alpha is the initial alpha0; beta the initial beta0 (default 5e-6, or
  1.0 with random_init); alpha_mode / beta_mode / learning_state: the ablations of Tables 5-6
  (``alfa_tf.update_rules``); random_init: ALFA + Random init; l2f: ALFA + L2F."""
  return maml_learner(alfa=dict(random_init=random_init, beta_init=beta,
                                alpha_mode=alpha_mode, beta_mode=beta_mode,
                                learning_state=learning_state, l2f=l2f), **kwargs)


@gin.configurable('ALFAProtoMAMLLearner')
def alfa_proto_maml_learner(proto_maml_fc_layer_init=True, **kwargs):
  """ALFA + fo-Proto-MAML: ``ALFAMAMLLearner`` with the Proto-MAML head by default."""
  return alfa_maml_learner(proto_maml_fc_layer_init=proto_maml_fc_layer_init, **kwargs)


def outer_regularizer(learner) -> tf.Tensor:
  """sum_w weight_decay_w * ||w||^2 / 2 over theta_0 (upstream's L2 on the embedding)."""
  terms = [decay * tf.nn.l2_loss(learner.theta0[name])
           for name, decay in getattr(learner, 'l2_weights', {}).items() if decay]
  return tf.add_n(terms) if terms else tf.constant(0.0, learner.dtype)
