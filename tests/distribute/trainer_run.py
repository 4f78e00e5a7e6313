"""Meta-trains the sinusoid config through the Trainer under a strategy, in a fresh process.

    python -m tests.distribute.trainer_run {default|mirrored} CHECKPOINT_DIR

'mirrored' runs on two logical CPU devices. Prints the final loss and update as JSON.
"""
import json
import sys

import tensorflow as tf


def main(kind, checkpoint_dir):
  if kind == 'mirrored':
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  from meta_dataset_ext import gin_setup  # pylint: disable=g-import-not-at-top
  from meta_dataset_ext import trainer as trainer_lib  # pylint: disable=g-import-not-at-top
  gin_setup.parse(['sinusoid_alfa_maml.gin'], [
      'Trainer.num_updates = 4', 'Trainer.meta_batch_size = 4', 'Trainer.checkpoint_every = 2',
      'Trainer.validate_every = 2', 'Trainer.num_validation_episodes = 4',
      'Trainer.log_every = 1', 'Trainer.show_progress = False',
      f"Trainer.strategy = '{kind}'"])
  trainer = trainer_lib.Trainer(checkpoint_dir=checkpoint_dir)
  metrics = trainer.train()
  print(json.dumps({'loss': metrics['loss'], 'update': int(trainer.step.numpy()),
                    'replicas': trainer.strategy.num_replicas_in_sync}))


if __name__ == '__main__':
  main(*sys.argv[1:3])
