"""Data augmentation of decoded images, as upstream Meta-Dataset configures it.

    support/DataAugmentation.enable_jitter = True
    support/DataAugmentation.jitter_amount = 4
    support/ImageDecoder.data_augmentation = @support/DataAugmentation()
    process_episode.support_decoder = @support/ImageDecoder()

`DataAugmentation` takes upstream's four arguments under upstream's gin name;
the support set, the query set and the batches of batch training each have
their own, bound through upstream's decoders (`upstream_compat`: the scopes
`support/`, `query/` and `batch/`). Each image is perturbed on its own, in
upstream's order, after it is decoded and scaled to [-1, 1]:
  1. Gaussian noise: + N(0, gaussian_noise_std^2) per value (values may leave
     [-1, 1], as upstream's do);
  2. jitter: the image padded by jitter_amount pixels on every side by
     reflection (the border pixel is not repeated), then a crop of the
     original size at an offset drawn uniformly in [0, 2 * jitter_amount]
     along each axis.
A perturbation that changes nothing (off, a noise of std 0, a jitter of 0
pixels: upstream's default configuration enables both at zero) is skipped,
so those images are exactly the unaugmented ones.

Randomness is stateless: `augment(images, augmentation, seed)` is a function
of its arguments, and the pipelines derive `seed` from their own seed and the
episode's (or batch's) index, so a resumed run sees the same augmented images.
"""

import dataclasses
from typing import Optional

import gin
import tensorflow as tf

from meta_dataset_ext import checks
from meta_dataset_ext.errors import ConfigError


def _binding(name: str) -> str:
  """'support/DataAugmentation.jitter_amount' inside that gin scope."""
  scope = gin.current_scope_str()
  return f"{scope + '/' if scope else ''}DataAugmentation.{name}"


@gin.configurable
@dataclasses.dataclass
class DataAugmentation:
  """Upstream's DataAugmentation arguments (module docstring).

  Attributes:
    enable_jitter: pad by reflection and crop at a random offset.
    jitter_amount: pixels of padding on each side (>= 0; less than the image
      size, which reflection needs).
    enable_gaussian_noise: add Gaussian noise.
    gaussian_noise_std: its standard deviation (>= 0).

  Raises:
    ConfigError: a value of the wrong type or out of range, naming its
      binding with its scope (e.g. 'support/DataAugmentation.jitter_amount').
  """
  enable_jitter: bool = False
  jitter_amount: int = 0
  enable_gaussian_noise: bool = False
  gaussian_noise_std: float = 0.0

  def __post_init__(self):
    self.enable_jitter = checks.boolean(_binding("enable_jitter"),
                                        self.enable_jitter)
    self.jitter_amount = checks.integer(_binding("jitter_amount"),
                                        self.jitter_amount, minimum=0)
    self.enable_gaussian_noise = checks.boolean(
        _binding("enable_gaussian_noise"), self.enable_gaussian_noise)
    self.gaussian_noise_std = checks.number(
        _binding("gaussian_noise_std"), self.gaussian_noise_std, minimum=0.0)
    self.where = _binding("jitter_amount")

  @property
  def jitter(self) -> int:
    """Pixels of jitter applied (0: none)."""
    return self.jitter_amount if self.enable_jitter else 0

  @property
  def noise_std(self) -> float:
    """Standard deviation of the noise applied (0: none)."""
    return self.gaussian_noise_std if self.enable_gaussian_noise else 0.0

  @property
  def active(self) -> bool:
    """Whether it changes images at all."""
    return self.jitter > 0 or self.noise_std > 0

  def check_image_size(self, image_height: int) -> None:
    """ConfigError unless reflection padding fits images of this size."""
    if self.jitter >= image_height:
      raise ConfigError(
          f"{self.where} = {self.jitter_amount} must be less than "
          f"DataConfig.image_height = {image_height}: reflection padding "
          "cannot be wider than the image.")


def is_active(augmentation: Optional[DataAugmentation]) -> bool:
  return augmentation is not None and augmentation.active


def augment(images: tf.Tensor, augmentation: DataAugmentation,
            seed: tf.Tensor) -> tf.Tensor:
  """`images` [n, h, w, c] (float32) perturbed one by one (module docstring).

  Args:
    images: the decoded, scaled images.
    augmentation: what to apply.
    seed: int32 or int64 [2], a stateless seed; the same seed gives the same
      perturbations.
  """
  noise_seed, crop_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 2))
  if augmentation.noise_std > 0:
    images += augmentation.noise_std * tf.random.stateless_normal(
        tf.shape(images), noise_seed, dtype=images.dtype)
  j = augmentation.jitter
  if j > 0:  # The crop of the padded image, read from the image itself.
    shape = tf.shape(images)
    offsets = tf.random.stateless_uniform([shape[0], 2], crop_seed, 0,
                                          2 * j + 1, dtype=tf.int32) - j
    for axis in (1, 2):
      size = shape[axis]
      index = offsets[:, axis - 1:axis] + tf.range(size)[tf.newaxis]
      images = tf.gather(images, _reflected(index, size), axis=axis,
                         batch_dims=1)
  return images


def _reflected(index: tf.Tensor, size) -> tf.Tensor:
  """The pixel that position `index` (in [-size + 1, 2 * size - 2]) of an
  axis of `size` pixels padded by reflection shows: -1 -> 1, size -> size - 2
  (the border pixel is not repeated, as tf.pad's "REFLECT")."""
  return (size - 1) - tf.abs((size - 1) - tf.abs(index))
