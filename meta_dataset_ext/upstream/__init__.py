"""Everything for upstream Meta-Dataset's own trainer; this module is the configs' gin import.

The gin files start with ``import meta_dataset_ext.upstream``. Under upstream's
``python -m meta_dataset.train`` (its trainer module is loaded before the configs are parsed),
this runs ``install``: it makes upstream's ImageNet episode sampler work on this numpy
(``patches.patch_sampler``) and registers ``ALFAMAMLLearner`` and ``ALFAProtoMAMLLearner``
(``learners``) as subclasses of upstream's ``MAMLLearner``. Under the project's own trainer it
does nothing: the same names are the project's learners (``meta_dataset_ext.learners``), and
upstream is neither imported nor needed. A program that imports this package before upstream's
trainer (as ``train`` does) calls ``install`` itself.

Modules: ``learners`` (the ALFA learners), ``patches`` (what upstream needs on current
TensorFlow and numpy), ``train`` (``python -m meta_dataset_ext.upstream.train``: upstream's
trainer on TF >= 2.16).
"""
import sys

UPSTREAM_TRAINER = 'meta_dataset.trainer'


def upstream_trainer_loaded() -> bool:
  """Whether upstream Meta-Dataset's trainer is the one running."""
  return UPSTREAM_TRAINER in sys.modules


def install() -> list:
  """Patches upstream's sampler where needed and registers the ALFA learners with gin (both
  once); returns what was patched. Imports upstream (importable: see ``patches``)."""
  # pylint: disable=g-import-not-at-top
  from meta_dataset_ext.upstream import learners  # pylint: disable=unused-import
  from meta_dataset_ext.upstream import patches
  return patches.patch_sampler()


if upstream_trainer_loaded():
  install()
