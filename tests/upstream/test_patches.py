"""The in-process patches that let upstream run on current TensorFlow
(``meta_dataset_ext.upstream.patches``); these checks need no upstream (they run in CI)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext.upstream import patches

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
