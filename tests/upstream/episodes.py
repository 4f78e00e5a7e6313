"""The episode and learner arguments that both sides of the adapter tests use (no upstream)."""
import numpy as np

SHAPE = (28, 28, 3)
LOGIT_DIM = 5
MAML_ARGS = dict(num_update_steps=2, additional_evaluation_update_steps=1, first_order=True,
                 alpha=0.01, adapt_batch_norm=False, zero_fc_layer=True,
                 proto_maml_fc_layer_init=True, classifier_weight_decay=1e-4)


def episode_arrays(way=3, shots=2, queries=2, seed=0):
  """A way-way episode of random images, labels 0..way-1 (fewer classes than LOGIT_DIM)."""
  rng = np.random.default_rng(seed)
  return dict(
      support_images=rng.uniform(-1, 1, (way * shots,) + SHAPE).astype(np.float32),
      support_labels=np.repeat(np.arange(way), shots).astype(np.int32),
      query_images=rng.uniform(-1, 1, (way * queries,) + SHAPE).astype(np.float32),
      query_labels=np.repeat(np.arange(way), queries).astype(np.int32))
