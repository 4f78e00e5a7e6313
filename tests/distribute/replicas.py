"""Runs a few distributed outer updates in a fresh process (run by test_distribute.py).

    python -m tests.distribute.replicas {default|mirrored|multi_worker}[_xla] OUT.npz {sgd|adam}

'mirrored' uses two logical CPU devices; 'multi_worker' reads TF_CONFIG; '_xla' compiles each
replica's gradient computation with XLA. Writes the
meta-parameters and losses after the updates to OUT.npz. SGD makes the update a plain
function of the all-reduced gradient (what a comparison with one device checks); Adam's
normalisation would magnify float round-off in gradients that are analytically zero.
"""
import sys

import numpy as np
import tensorflow as tf


def main(kind, out_path, optimizer_name, num_updates=2, meta_batch_size=4):
  jit_compile = kind.endswith('_xla')
  kind = kind.removesuffix('_xla')
  if kind == 'mirrored':
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  import alfa_tf  # pylint: disable=g-import-not-at-top
  from meta_dataset_ext import distribute  # pylint: disable=g-import-not-at-top

  strategy = distribute.make_strategy(
      kind, devices=['/cpu:0', '/cpu:1'] if kind == 'mirrored' else None)
  with strategy.scope():
    learner = alfa_tf.ALFALearner(alfa_tf.Conv4(filters=4, num_blocks=2), 3, (8, 8, 3),
                                  num_steps=2, seed=0, check_finite=not jit_compile,
                                  check_inputs=not jit_compile)
    optimizer = (tf.keras.optimizers.Adam(1e-2) if optimizer_name == 'adam'
                 else tf.keras.optimizers.SGD(0.1))

  def objective(learner_, episodes, global_batch_size):
    losses = [learner_.episode_output(ep).query_loss for ep in episodes]
    return tf.add_n(losses) / global_batch_size, {'episodes': tf.constant(float(len(episodes)))}

  step = distribute.DistributedMetaStep(strategy, learner, optimizer, objective,
                                        meta_batch_size, jit_compile)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(num_updates):
    batch = [{'support_images': tf.constant(rng.normal(size=(6, 8, 8, 3)), tf.float32),
              'support_labels': tf.constant(np.repeat(np.arange(3), 2), tf.int32),
              'query_images': tf.constant(rng.normal(size=(6, 8, 8, 3)), tf.float32),
              'query_labels': tf.constant(np.repeat(np.arange(3), 2), tf.int32)}
             for _ in range(meta_batch_size)]
    loss, metrics = step(batch)
    assert float(metrics['episodes']) == meta_batch_size
    losses.append(float(loss))
  np.savez(out_path, losses=np.array(losses), replicas=strategy.num_replicas_in_sync,
           **{f'w{i}': v.numpy() for i, v in enumerate(learner.trainable_variables)})


if __name__ == '__main__':
  main(*sys.argv[1:4])
