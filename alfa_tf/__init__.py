"""alfa_tf: the ALFA inner loop (Baik et al., NeurIPS 2020) on TensorFlow 2, TF-only.

Backbones are functional (or any Keras 3 model, ``KerasBackbone``), update rules are small
Keras layers holding their own meta-parameters, the inner loop maps an ordered name -> tensor
mapping to a new one, and learners (Keras models) compose the three.
"""
from alfa_tf.backbones import MLP, Conv4, ResNet12, ResNet18
from alfa_tf.inner_loop import Adaptation, adapt
from alfa_tf.keras_backbone import KerasBackbone
from alfa_tf.learners import (ALFALearner, AdaptedTask, EpisodeOutput, GradientLearner,
                              MAMLLearner)
from alfa_tf.update_rules import ALFA, SGD, L2FAttenuation, PerStepLearningRates

__all__ = ['MLP', 'Conv4', 'ResNet12', 'ResNet18', 'KerasBackbone', 'Adaptation', 'adapt',
           'ALFALearner', 'AdaptedTask', 'EpisodeOutput', 'GradientLearner', 'MAMLLearner',
           'ALFA', 'SGD', 'L2FAttenuation', 'PerStepLearningRates']
