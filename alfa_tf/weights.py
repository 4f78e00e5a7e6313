"""Creating Keras weights from numpy values, the same way on Keras 2 (TF 2.15) and Keras 3."""
import numpy as np
import tensorflow as tf


def add_weight_from_value(layer: tf.keras.layers.Layer, name: str, value,
                          trainable: bool = True):
  """Adds a weight to ``layer`` whose initial value is the array ``value``.

  Initial values are drawn with numpy by the caller, so a seed gives identical weights on every
  TensorFlow/Keras version and in TF1 graph mode (where the value becomes the initialiser).
  """
  value = np.asarray(value)

  def initializer(shape, dtype=None, **unused_kwargs):
    del shape
    return tf.constant(value, dtype=dtype)

  return layer.add_weight(name=name, shape=value.shape, initializer=initializer,
                          trainable=trainable)


def pytorch_linear_init(rng: np.random.Generator, fan_in: int, fan_out: int):
  """PyTorch's default ``nn.Linear`` initialisation: weight and bias ~ U(+-1/sqrt(fan_in)).

  Returns (kernel [fan_in, fan_out], bias [fan_out]).
  """
  bound = 1.0 / np.sqrt(fan_in)
  return (rng.uniform(-bound, bound, size=(fan_in, fan_out)),
          rng.uniform(-bound, bound, size=(fan_out,)))
