"""``python -m meta_dataset_ext.upstream_train``: the former name of
``python -m meta_dataset_ext.upstream.train`` (upstream's trainer on current TensorFlow), kept
for the commands written with it."""
from meta_dataset_ext.upstream import train

if __name__ == '__main__':
  train.main()
