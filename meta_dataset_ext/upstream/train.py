r"""Upstream Meta-Dataset's trainer on current TensorFlow (>= 2.16), without changing upstream.

    python -m meta_dataset_ext.upstream.train --gin_config=gin/alfa_fo_proto_maml.gin \
        --records_root_dir=RECORDS --train_checkpoint_dir=runs/alfa_fo_proto_maml

takes exactly ``python -m meta_dataset.train``'s flags and runs its ``main``, after
``patches.install_shims`` has made upstream importable on this TensorFlow and
``patches.patch_sampler`` has made its ImageNet episode sampler work on this numpy (so that
upstream's own configs run too). Nothing is changed where nothing is missing or broken.
"""
import runpy
import sys

from meta_dataset_ext.upstream import patches


def main():
  patched = patches.install_shims()
  patched += patches.patch_sampler()
  if patched:
    print(f'meta_dataset_ext.upstream.train: patched {", ".join(patched)}', file=sys.stderr)
  sys.argv[0] = 'meta_dataset.train'
  runpy.run_module('meta_dataset.train', run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
