"""Builds alfa_tf learners from upstream Meta-Dataset's learner arguments (no gin here).

Shared by the gin factories of ``meta_dataset_ext.learners`` (the project's trainer) and the
upstream adapter ``meta_dataset_ext.upstream`` (upstream's trainer), so both build the same
learner from the same configuration.
"""
from typing import Callable

import tensorflow as tf

import alfa_tf


def four_layer_convnet(depth_multiplier: float = 1.0, weight_decay: float = 0.0,
                       num_filters: int = 64, activation: str = 'relu',
                       flatten_order: str = 'hwc', keep_spatial_dims: bool = False,
                       use_bounded_activation: bool = False,
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


def keras_backbone(builder: Callable[[], object], adapt=None, weight_decay: float = 0.0):
  """A user's Keras 3 model as the embedding (``Learner.embedding_fn = @keras_backbone``).

  ``builder()`` returns a new keras.Model from images to features (for example a function of
  the user's module made gin-configurable, which the config imports and names:
  ``keras_backbone.builder = @my_model``); the learner meta-learns its variables, which
  checkpoints hold by the model's variable paths (its initial values are Keras' draws: seed
  them in the builder, e.g. ``keras.utils.set_random_seed``, for runs that start alike).
  ``adapt``: which of them the inner loop
  adapts (``alfa_tf.KerasBackbone``; default all but BatchNorm's, which
  ``MAMLLearner.adapt_batch_norm = True`` adds). ``weight_decay``: L2 on the model's kernels in
  the outer loss, as upstream's embedding weight decay.
  """
  backbone = alfa_tf.KerasBackbone(builder(), adapt=adapt)
  backbone.weight_decay = weight_decay
  return backbone


def alfa_options(random_init=False, beta=None, alpha_mode='adaptive', beta_mode='adaptive',
                 learning_state='both', l2f=False):
  """ALFA's arguments (upstream-style names) as ``build_learner``'s ``alfa`` dict."""
  return dict(random_init=random_init, beta_init=beta, alpha_mode=alpha_mode,
              beta_mode=beta_mode, learning_state=learning_state, l2f=l2f)


def build_learner(backbone, transductive_batch_norm=False, backprop_through_moments=True,
                  logit_dim=5, input_shape=(84, 84, 3), num_update_steps=5,
                  additional_evaluation_update_steps=0, first_order=True, alpha=0.01,
                  adapt_batch_norm=False, zero_fc_layer=True, proto_maml_fc_layer_init=False,
                  classifier_weight_decay=0.0, loss='cross_entropy', seed=0, alfa=None,
                  backbone_dtype=None):
  """An alfa_tf learner for upstream's (ALFA)MAMLLearner arguments.

  ``alfa``: None for MAML's fixed-rate SGD, or ``alfa_options(...)`` for the ALFA rule.
  ``backbone_dtype``: None (float32) or 'bfloat16' / 'float16' (mixed precision).
  ``loss``: 'cross_entropy' or 'mse' (regression). Query BatchNorm uses the support set's
  moments unless ``transductive_batch_norm``.
  """
  if not backprop_through_moments:
    raise ValueError('Learner.backprop_through_moments=False is not supported.')
  if adapt_batch_norm:
    if not isinstance(backbone, alfa_tf.KerasBackbone):
      raise ValueError('MAMLLearner.adapt_batch_norm=True is not supported by the functional '
                       'backbones (only with Learner.embedding_fn = @keras_backbone): '
                       'BatchNorm scale and offset are meta-parameters, not adapted in the '
                       'inner loop.')
    backbone.adapt_batch_norm = True
  common = dict(
      num_classes=logit_dim, input_shape=tuple(input_shape), num_steps=num_update_steps,
      eval_num_steps=num_update_steps + additional_evaluation_update_steps,
      first_order=first_order, head='proto' if proto_maml_fc_layer_init else 'linear',
      zero_head=zero_fc_layer and not proto_maml_fc_layer_init,
      query_bn='own' if transductive_batch_norm else 'support', loss=loss, seed=seed,
      backbone_dtype=backbone_dtype)
  if alfa is None:
    learner = alfa_tf.MAMLLearner(backbone, alpha=alpha, **common)
  else:
    rule_kwargs = {k: v for k, v in alfa.items() if k != 'random_init'}
    learner = alfa_tf.ALFALearner(backbone, random_init=alfa['random_init'],
                                  alfa_kwargs=dict(alpha_init=alpha, **rule_kwargs), **common)
  learner.display_name = _display_name(alfa, first_order, proto_maml_fc_layer_init)
  # Outer-loss L2 weights: the backbone's kernels (a Keras model's '.../kernel' variables),
  # and the linear head's weight.
  learner.l2_weights = {name: getattr(backbone, 'weight_decay', 0.0)
                        for name in learner.theta0.names if name.endswith(('.w', 'kernel'))}
  if 'head.w' in learner.l2_weights:
    learner.l2_weights['head.w'] = classifier_weight_decay
  return learner


def _display_name(alfa, first_order, proto):
  """'fo-Proto-MAML', 'ALFA+fo-MAML', 'ALFA+Random+MAML', ... (for tables and plots)."""
  name = ('fo-' if first_order else '') + ('Proto-MAML' if proto else 'MAML')
  if alfa is None:
    return name
  return ('ALFA+Random+' if alfa['random_init'] else 'ALFA+') + name


def outer_regularizer(learner) -> tf.Tensor:
  """sum_w weight_decay_w * ||w||^2 / 2 over theta_0 (upstream's L2 on the embedding)."""
  terms = [decay * tf.nn.l2_loss(learner.theta0[name])
           for name, decay in getattr(learner, 'l2_weights', {}).items() if decay]
  return tf.add_n(terms) if terms else tf.constant(0.0, learner.dtype)
