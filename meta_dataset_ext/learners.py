"""Gin-configurable learners and backbones under upstream Meta-Dataset's names.

The configs in ``gin/`` bind ``Learner.*``, ``MAMLLearner.*`` and ``four_layer_convnet``
exactly as upstream users know them, plus the ALFA learners' own arguments. Each learner class
here is constructed like upstream's, ``cls(is_training=..., logit_dim=..., input_shape=...)``
with everything else from gin, and returns an ``alfa_tf`` Keras learner.

Upstream -> alfa_tf:
  Learner.embedding_fn              the backbone factory (``four_layer_convnet``, ``resnet``, ...,
                                    or ``keras_backbone`` for a user's Keras model:
                                    ``keras_backbone.builder = @my_model``)
  Learner.transductive_batch_norm   True: the query set uses its own BatchNorm statistics
                                    (ALFA reference); False: the support set's (upstream)
  Learner.pretrained_checkpoint     a batch-trained (Baseline) or upstream checkpoint whose
                                    backbone starts theta_0 (``meta_dataset_ext.pretrained``)
  MAMLLearner.num_update_steps      S, inner steps in training
  ...additional_evaluation_update_steps  extra inner steps at evaluation
  MAMLLearner.alpha                 inner learning rate (ALFA: initial alpha0)
  MAMLLearner.first_order           hold inner gradients constant
  MAMLLearner.adapt_batch_norm      adapt BatchNorm's gamma/beta too (Keras backbones only)
  MAMLLearner.zero_fc_layer         linear head starts at zero
  MAMLLearner.proto_maml_fc_layer_init  Proto-MAML head
  MAMLLearner.classifier_weight_decay   L2 weight of the head in the outer loss
  MAMLLearner.loss                  'cross_entropy' or 'mse' (the trainer passes the one its
                                    task source needs: 'mse' for sinusoid regression)
"""
from typing import Callable, Optional, Sequence

import gin

import alfa_tf
from meta_dataset_ext import backbones
from meta_dataset_ext import learner_builder


four_layer_convnet = gin.external_configurable(
    learner_builder.four_layer_convnet, 'four_layer_convnet', module=__name__)
keras_backbone = gin.external_configurable(
    learner_builder.keras_backbone, 'keras_backbone', module=__name__)


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


# Upstream's ResNet-18, layer for layer (``Learner.embedding_fn = @resnet``); ``resnet34`` and
# ``wide_resnet`` are registered there too.
resnet = gin.external_configurable(backbones.resnet, 'resnet', module=__name__)


@gin.configurable('mlp')
def mlp(hidden: Sequence[int] = (40, 40), activation: str = 'relu', in_features: int = 1,
        weight_decay: float = 0.0):
  """Fully connected ReLU layers of ``hidden`` units (the linear output layer is the
  learner's head): 2x40 and 3x80 are the sinusoid regression networks of MAML and ALFA
  (section 4.5, Table 8)."""
  backbone = alfa_tf.MLP(hidden=hidden, in_features=in_features, activation=activation)
  backbone.weight_decay = weight_decay
  return backbone


@gin.configurable('Learner')
def learner_options(embedding_fn: Callable = four_layer_convnet,
                    transductive_batch_norm: bool = False,
                    backprop_through_moments: bool = True,
                    pretrained_checkpoint: Optional[str] = None):
  """Upstream's ``Learner`` base arguments, with the backbone built; ``pretrained_checkpoint``:
  the checkpoint whose backbone starts a new training run's theta_0 (``meta_dataset_ext.
  pretrained``; the trainer loads it)."""
  return dict(backbone=embedding_fn(), transductive_batch_norm=transductive_batch_norm,
              backprop_through_moments=backprop_through_moments,
              pretrained_checkpoint=pretrained_checkpoint)


@gin.configurable('MAMLLearner')
def maml_learner(is_training=True, logit_dim=5, input_shape=(84, 84, 3),
                 num_update_steps=5, additional_evaluation_update_steps=0,
                 first_order=True, alpha=0.01, adapt_batch_norm=False, zero_fc_layer=True,
                 proto_maml_fc_layer_init=False, classifier_weight_decay=0.0, debug=False,
                 loss='cross_entropy', seed=0, alfa=None, backbone_dtype=None):
  """Upstream's MAMLLearner (fo-MAML; fo-Proto-MAML with proto_maml_fc_layer_init), built
  by ``learner_builder.build_learner``.

  ``alfa``: None for MAML's fixed-rate SGD, or the ALFA rule's arguments (the ALFA learners
  below pass them, so MAMLLearner.* bindings apply to them too, as to upstream subclasses).
  ``backbone_dtype``: mixed precision (the trainer passes its ``compute_dtype``).
  """
  del is_training, debug  # One learner serves training and evaluation.
  options = learner_options()
  pretrained_checkpoint = options.pop('pretrained_checkpoint')
  learner = learner_builder.build_learner(
      **options, logit_dim=logit_dim, input_shape=input_shape,
      num_update_steps=num_update_steps,
      additional_evaluation_update_steps=additional_evaluation_update_steps,
      first_order=first_order, alpha=alpha, adapt_batch_norm=adapt_batch_norm,
      zero_fc_layer=zero_fc_layer, proto_maml_fc_layer_init=proto_maml_fc_layer_init,
      classifier_weight_decay=classifier_weight_decay, loss=loss, seed=seed, alfa=alfa,
      backbone_dtype=backbone_dtype)
  learner.pretrained_checkpoint = pretrained_checkpoint
  return learner


@gin.configurable('ALFAMAMLLearner')
def alfa_maml_learner(random_init=False, beta=None, alpha_mode='adaptive',
                      beta_mode='adaptive', learning_state='both', l2f=False, **kwargs):
  """ALFA + (fo-)MAML: MAMLLearner's arguments (kwargs, or MAMLLearner.* bindings) plus
  ALFA's. MAMLLearner.alpha is the initial alpha0; beta the initial beta0 (default 5e-6, or
  1.0 with random_init); alpha_mode / beta_mode / learning_state: the ablations of Tables 5-6
  (``alfa_tf.update_rules``); random_init: ALFA + Random init; l2f: ALFA + L2F."""
  return maml_learner(alfa=learner_builder.alfa_options(
      random_init=random_init, beta=beta, alpha_mode=alpha_mode, beta_mode=beta_mode,
      learning_state=learning_state, l2f=l2f), **kwargs)


@gin.configurable('ALFAProtoMAMLLearner')
def alfa_proto_maml_learner(proto_maml_fc_layer_init=True, **kwargs):
  """ALFA + fo-Proto-MAML: ``ALFAMAMLLearner`` with the Proto-MAML head by default."""
  return alfa_maml_learner(proto_maml_fc_layer_init=proto_maml_fc_layer_init, **kwargs)


outer_regularizer = learner_builder.outer_regularizer
