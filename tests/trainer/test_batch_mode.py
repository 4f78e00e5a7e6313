"""Batch mode: the Baseline learner trained on batches of the TRAIN classes (upstream's
Trainer.batch_size, process_batch's augmentation), validated and evaluated on episodes by
nearest neighbour, resuming exactly; its checkpoint then initialises the backbone of the
episodic learners (Learner.pretrained_checkpoint)."""
import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext import baseline
from meta_dataset_ext.errors import ConfigError
from tests.trainer.tiny import make_trainer, records, weights  # pylint: disable=unused-import

BATCH = ['Trainer.train_learner_class = @BaselineLearner',
         'Trainer.eval_learner_class = @BaselineLearner', 'Trainer.batch_size = 12',
         "BaselineLearner.knn_distance = 'cosine'",
         'process_batch.batch_decoder = @batch/ImageDecoder()',
         'batch/ImageDecoder.data_augmentation = @batch/DataAugmentation()',
         'batch/DataAugmentation.enable_jitter = True', 'batch/DataAugmentation.jitter_amount = 2',
         'batch/DataAugmentation.enable_gaussian_noise = True',
         'batch/DataAugmentation.gaussian_noise_std = 0.05']
LEARNERS = ['@MAMLLearner', '@ALFAMAMLLearner', '@ALFAProtoMAMLLearner']


@pytest.fixture(scope='module')
def pretrained(records, tmp_path_factory):
  """A Baseline run of 3 updates on glyphs (4-filter 4-CONV, 16 px)."""
  run = tmp_path_factory.mktemp('pretrain')
  trainer = make_trainer(records, run, extra=BATCH + ['Trainer.num_updates = 3'])
  trainer.train()
  return str(run), {n: trainer.learner.theta0[n].numpy() for n in trainer.learner.theta0.names}


def test_baseline_has_a_logit_per_training_class_and_learns(records, tmp_path):
  trainer = make_trainer(records, tmp_path / 'run', extra=BATCH + [
      "benchmark.train_datasets = 'glyphs,tiny'", 'Trainer.num_updates = 12',
      'Trainer.learning_rate = 1e-2'])
  assert trainer.batch_mode and isinstance(trainer.learner, baseline.BaselineLearner)
  classes = [len(trainer._specs[s].get_classes('TRAIN')) for s in ('glyphs', 'tiny')]
  assert trainer.format.logit_dim == sum(classes) == trainer.learner.num_classes
  losses = []
  real_update = trainer._update
  trainer._update = lambda batch, update: losses.append(real_update(batch, update)) or losses[-1]
  result = trainer.train()
  tiny = [float(m['loss']) for m in losses[1::2]]  # Odd batches: the 'tiny' source's 8 classes.
  assert np.isfinite(result['loss']) and tiny[-1] < tiny[0]
  assert set(result) >= {'loss', 'accuracy', 'updates_per_second'}
  (summary,) = trainer.evaluate(['glyphs'])[0].summaries
  assert summary['num_episodes'] == 4 and 0.0 <= summary['mean'] <= 1.0


def test_interrupted_batch_training_resumes_to_identical_weights(records, tmp_path):
  straight = make_trainer(records, tmp_path / 'straight', extra=BATCH + ['Trainer.num_updates = 4'])
  straight.train()
  first = make_trainer(records, tmp_path / 'resumed', extra=BATCH + ['Trainer.num_updates = 2'])
  first.train()
  resumed = make_trainer(records, tmp_path / 'resumed', extra=BATCH + ['Trainer.num_updates = 4'])
  resumed.train()
  for a, b in zip(weights(straight), weights(resumed)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_nearest_neighbour_logits_pick_the_class_of_the_closest_support_example():
  learner = baseline.BaselineLearner(baseline.learners_lib.four_layer_convnet(num_filters=2),
                                     num_classes=7, input_shape=(16, 16, 3),
                                     knn_distance='l2')
  rng = np.random.default_rng(0)
  episode = {'support_images': rng.uniform(-1, 1, (6, 16, 16, 3)).astype(np.float32),
             'support_labels': np.array([0, 0, 1, 1, 2, 2], np.int32), 'way': 3}
  episode['query_images'] = episode['support_images'][[5, 0, 3]]
  episode['query_labels'] = np.array([2, 0, 1], np.int32)
  output = learner.episode_output(episode)
  assert output.adaptation is None and output.query_logits.shape == (3, 3)
  # Each query is a support image: its nearest neighbour is itself (distance 0).
  np.testing.assert_array_equal(np.argmax(output.query_logits, 1), [2, 0, 1])
  np.testing.assert_allclose(np.max(output.query_logits, 1), 0.0, atol=1e-3)


@pytest.mark.parametrize('learner', LEARNERS)
def test_pretrained_backbone_starts_theta0_of_every_episodic_learner(records, pretrained,
                                                                    learner, tmp_path):
  path, values = pretrained
  extra = [f'Trainer.train_learner_class = {learner}', f'Trainer.eval_learner_class = {learner}',
           f"Learner.pretrained_checkpoint = '{path}'", "Trainer.pretrained_source = 'glyphs'",
           'Trainer.num_updates = 1']
  trainer = make_trainer(records, tmp_path / 'run', extra=extra)
  backbone = list(trainer.learner.backbone.param_specs())
  for name in backbone:
    np.testing.assert_array_equal(trainer.learner.theta0[name].numpy(), values[name])
  assert 'fc.w' not in trainer.learner.theta0.names
  trainer.train()  # Meta-trains from there, and saves the run's own checkpoint.
  trained = {n: trainer.learner.theta0[n].numpy() for n in backbone}
  resumed = make_trainer(records, tmp_path / 'run', extra=extra)
  resumed.restore()  # A resumed run restores its own checkpoint, not the pretrained one.
  for name in backbone:
    np.testing.assert_array_equal(resumed.learner.theta0[name].numpy(), trained[name])


def test_pretrained_from_a_single_checkpoint_prefix(records, pretrained, tmp_path):
  path, values = pretrained
  prefix = tf.train.latest_checkpoint(path)
  trainer = make_trainer(records, tmp_path / 'run', extra=[
      f"Learner.pretrained_checkpoint = '{prefix}'", "Trainer.pretrained_source = 'glyphs'"])
  np.testing.assert_array_equal(trainer.learner.theta0['block0.w'].numpy(), values['block0.w'])


@pytest.mark.parametrize('extra, named', [
    (["Learner.pretrained_checkpoint = '/no/such/run'", "Trainer.pretrained_source = 'x'"],
     "Learner.pretrained_checkpoint = '/no/such/run' is not a checkpoint"),
    (["Trainer.pretrained_source = 'imagenet'"],
     "Trainer.pretrained_source = 'imagenet' needs the pretrained backbone"),
    (["Learner.pretrained_checkpoint = '{path}'"],
     "but Trainer.pretrained_source = 'scratch'"),
    (["Learner.pretrained_checkpoint = '{path}'", "Trainer.pretrained_source = 'x'",
      'four_layer_convnet.num_filters = 8'],
     "does not hold this learner's backbone"),
    (["Learner.pretrained_checkpoint = '{path}'", "Trainer.pretrained_source = 'x'",
      "Trainer.checkpoint_to_restore = '{path}'"], 'both initialise the learner'),
    (BATCH + ['BaselineLearner.use_weight_norm = True'], 'BaselineLearner.use_weight_norm'),
    (BATCH + ["BaselineLearner.knn_distance = 'l1'"], "BaselineLearner.knn_distance = 'l1'"),
    (BATCH + ['Trainer.batch_size = 0'], 'Trainer.batch_size = 0 must be an integer >= 1'),
])
def test_bad_pretraining_configurations_are_named_before_training(records, pretrained, extra,
                                                                  named, tmp_path):
  path, _ = pretrained
  with pytest.raises(ConfigError, match=named.replace('(', r'\(')):
    make_trainer(records, tmp_path / 'run', extra=[e.format(path=path) for e in extra])
  assert not (tmp_path / 'run').exists() or not list((tmp_path / 'run').glob('ckpt-*'))
