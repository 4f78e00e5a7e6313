"""Meta-Dataset integration: data, trainer, CLI and gin wiring around the alfa_tf core."""
import os
import sys

if sys.argv[:1] == ['-m']:
  # Imported while Python locates `python -m meta_dataset_ext.<command>`, before TensorFlow
  # loads: keep its C++ runtime's INFO and WARNING lines (which would break progress bars
  # and bury one-line errors) off the console unless the user chose a level.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
