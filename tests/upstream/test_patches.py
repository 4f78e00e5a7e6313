"""The in-process patches that let upstream run on current TensorFlow and numpy
(``meta_dataset_ext.upstream.patches``); all but the sampler's need no upstream (run in CI)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext.upstream import patches
from tests.upstream.upstream_env import run_check

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_shims_import_gin_tf_on_this_tensorflow():
  code = ('from meta_dataset_ext.upstream import patches; patches.install_shims(); '
          'import gin.tf; from task_adaptation import data_loader; from simclr import data_util; '
          'import tensorflow as tf; print(tf.compat.v1.layers.max_pooling2d.__name__)')
  done = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().endswith('max_pooling2d')


def test_placeholder_module_names_the_missing_package_when_used():
  module = patches.MissingModule('tensorflow_addons')
  with pytest.raises(ImportError, match="'tensorflow_addons'"):
    module.image.rotate(None)


def test_legacy_layers_match_keras():
  images = tf.random.stateless_normal((2, 9, 9, 3), seed=(1, 2))
  pooled = patches.max_pooling2d(images, [2, 2], 2)
  np.testing.assert_allclose(pooled, tf.keras.layers.MaxPooling2D(2, 2)(images))
  flat = patches.flatten(pooled)
  np.testing.assert_allclose(flat, tf.keras.layers.Flatten()(pooled))


def test_object_array_keeps_lists_of_any_lengths_as_elements():
  nodes = patches.object_array([[0, 1], [2, 3]])  # Equal lengths too: still lists.
  assert nodes.shape == (2,) and nodes[1] == [2, 3]
  assert np.random.RandomState(0).choice(patches.object_array([[0], [1, 2]])) in ([0], [1, 2])


@pytest.mark.usefixtures('requires_upstream')
def test_sampler_patch_is_needed_on_this_numpy_and_draws_whole_nodes(records_root):
  run_check('sampler', records_root)
