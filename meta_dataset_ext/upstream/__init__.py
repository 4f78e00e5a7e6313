"""Gin entry point of the ALFA learners for upstream Meta-Dataset's trainer.

The gin files start with ``import meta_dataset_ext.upstream``. Under upstream's
``python -m meta_dataset.train`` (its trainer module is loaded before the configs are parsed),
this registers ``ALFAMAMLLearner`` and ``ALFAProtoMAMLLearner`` (``learners``) as subclasses of
upstream's ``MAMLLearner``. Under the project's own trainer it does nothing: the
same names are the project's learners (``meta_dataset_ext.learners``), and upstream is neither
imported nor needed.
"""
import sys

UPSTREAM_TRAINER = 'meta_dataset.trainer'


def upstream_trainer_loaded() -> bool:
  """Whether upstream Meta-Dataset's trainer is the one running."""
  return UPSTREAM_TRAINER in sys.modules


if upstream_trainer_loaded():
  from meta_dataset_ext.upstream import learners  # pylint: disable=unused-import
