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

  # The name scope makes variable names unique on Keras 2 as well ('g_phi/w1'), where
  # add_weight outside build() would not prefix the layer's name.
  with tf.name_scope(layer.name):
    return layer.add_weight(name=name, shape=value.shape, initializer=initializer,
                            trainable=trainable)


def pytorch_linear_init(rng: np.random.Generator, fan_in: int, fan_out: int):
  """PyTorch's default ``nn.Linear`` initialisation: weight and bias ~ U(+-1/sqrt(fan_in)).

  Returns (kernel [fan_in, fan_out], bias [fan_out]).
  """
  bound = 1.0 / np.sqrt(fan_in)
  return (rng.uniform(-bound, bound, size=(fan_in, fan_out)),
          rng.uniform(-bound, bound, size=(fan_out,)))


class ParameterSet(tf.keras.layers.Layer):
  """An ordered ``name -> variable`` mapping (theta_0, beta_pp) as a Keras layer.

  Each variable is also an attribute of the layer: Keras 3 checkpoints only variables held
  directly as attributes (not inside dicts or lists), so this keeps ``tf.train.Checkpoint``
  saving every tensor on Keras 2 and 3 alike, under its name.

  ``values``: {name: array} of the variables to create. ``variables``: {name: variable} of
  existing variables to hold as well (a Keras backbone's), listed first.
  """

  def __init__(self, values, trainable: bool = True, variables=None, **kwargs):
    super().__init__(**kwargs)
    variables = dict(variables or {})
    self.names = tuple(variables) + tuple(values)
    for name, value in values.items():  # Keras 3 variable names cannot hold a '/'.
      variables[name] = add_weight_from_value(self, name.replace('/', '.'), value,
                                              trainable=trainable)
    for name, variable in variables.items():
      setattr(self, self._attribute(name), variable)
    self.built = True

  @staticmethod
  def _attribute(name):
    return 'param_' + name.replace('.', '__')

  def __getitem__(self, name):
    return getattr(self, self._attribute(name))

  def __iter__(self):
    return iter(self.names)

  def __len__(self):
    return len(self.names)

  def items(self):
    return [(name, self[name]) for name in self.names]

  def values(self):
    return [self[name] for name in self.names]
