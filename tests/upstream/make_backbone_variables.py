"""Writes fixtures/backbone_variables.json: the variables (name: shape) of upstream
Meta-Dataset's four backbones, as its functional_backbones create them, for the tests of the
name mapping that run without upstream (tests/trainer/test_pretrained.py).

    python -m tests.upstream.make_backbone_variables     # where upstream (meta_dataset) imports
"""
import json
import os

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures',
                       'backbone_variables.json')
BACKBONES = ('four_layer_convnet', 'resnet', 'resnet34', 'wide_resnet')


def upstream_variables(kind: str, image_size: int = 32):
  """{name: shape} of the variables upstream's ``kind`` creates."""
  # pylint: disable=g-import-not-at-top
  from meta_dataset_ext.upstream import patches
  patches.install_shims()
  import tensorflow as tf
  from meta_dataset.models import functional_backbones
  graph = tf.Graph()
  with graph.as_default():
    getattr(functional_backbones, kind)(tf.zeros([2, image_size, image_size, 3]),
                                        is_training=True, weight_decay=0.0)
    return {v.name.split(':')[0]: v.shape.as_list()
            for v in tf.compat.v1.global_variables()}


def main():
  with open(FIXTURE, 'w') as f:
    json.dump({kind: upstream_variables(kind) for kind in BACKBONES}, f, indent=0,
              sort_keys=True)


if __name__ == '__main__':
  main()
