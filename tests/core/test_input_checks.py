"""Bad episodes fail with a message that names the culprit ('support_labels', 'query_images',
...) and says what to do; the checks run once per episode, and not at all when
``check_inputs=False`` (XLA: ``test_learners.test_xla_compiled_meta_gradients_match``)."""
import numpy as np
import pytest
import tensorflow as tf

import alfa_tf
from tests.core.test_learners import SHAPE, make_episode, small_backbone

ROLES = ('support', 'query')


@pytest.fixture(scope='module')
def learner():
  return alfa_tf.MAMLLearner(small_backbone(), 3, SHAPE, num_steps=1)


def episode_with(key, change):
  episode = make_episode()
  episode[key] = change(episode[key])
  return episode


@pytest.mark.parametrize('role', ROLES)
@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_non_finite_images_are_named(learner, role, bad):
  def corrupt(images):
    images = images.copy()
    images[1, 2, 3, 0] = bad
    return images
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f'{role}_images contain NaN or infinite values: fix the data'):
    learner.episode_output(episode_with(f'{role}_images', corrupt))


def test_nan_query_images_through_meta_update_blame_the_query_set(learner):
  """Without the check, the NaN query loss reaches the support set's checks through the
  meta-gradient and the error named the support loss; eagerly and compiled alike."""
  def corrupt(images):
    images = images.copy()
    images[0, 0, 0, 0] = np.nan
    return images
  batch = [make_episode(1), episode_with('query_images', corrupt)]
  optimizer = tf.keras.optimizers.Adam(1e-3)
  optimizer.build(learner.trainable_variables)
  for step in (learner.meta_update, tf.function(learner.meta_update)):
    with pytest.raises(tf.errors.InvalidArgumentError, match='query_images contain NaN') as info:
      step(batch, optimizer)
    assert 'support' not in str(info.value).split('\n')[0]


@pytest.mark.parametrize('role', ROLES)
def test_labels_that_are_not_whole_numbers_are_rejected(learner, role):
  episode = episode_with(f'{role}_labels', lambda labels: labels.astype(np.float32) + 0.5)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f'{role}_labels are floats that are not whole numbers'):
    learner.episode_output(episode)


def test_whole_number_float_labels_are_class_indices(learner):
  episode = make_episode()
  floats = dict(episode, support_labels=episode['support_labels'].astype(np.float64),
                query_labels=episode['query_labels'].astype(np.float32))
  np.testing.assert_array_equal(learner.episode_output(floats).query_logits.numpy(),
                                learner.episode_output(episode).query_logits.numpy())


def test_without_check_inputs_float_labels_are_cast_unchecked():
  unchecked = alfa_tf.MAMLLearner(small_backbone(), 3, SHAPE, num_steps=1, check_inputs=False)
  episode = episode_with('support_labels', lambda labels: labels + 0.5)
  assert np.isfinite(float(unchecked.episode_output(episode).query_loss))


@pytest.mark.parametrize('role', ROLES)
def test_labels_out_of_range_or_negative(learner, role):
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f'{role}_labels out of range: they must be < the number of classes'):
    learner.episode_output(episode_with(f'{role}_labels', lambda labels: labels + 1))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=f'{role}_labels are negative: class indices start at 0'):
    learner.episode_output(episode_with(f'{role}_labels', lambda labels: labels - 1))


def test_labels_beyond_the_episode_way_are_out_of_range(learner):
  episode = dict(make_episode(), way=np.int32(2))
  with pytest.raises(tf.errors.InvalidArgumentError, match="support_labels out of range"):
    learner.episode_output(episode)


def test_one_hot_and_non_numeric_labels_are_rejected_before_running(learner):
  with pytest.raises(ValueError, match=r'query_labels have shape \(6, 3\).*tf\.argmax'):
    learner.episode_output(episode_with('query_labels', lambda labels: np.eye(3)[labels]))
  with pytest.raises(ValueError, match='support_labels have dtype string'):
    learner.episode_output(episode_with('support_labels', lambda labels: labels.astype(str)))


def test_non_finite_regression_targets_are_named():
  regressor = alfa_tf.MAMLLearner(alfa_tf.MLP((8,)), 1, (1,), loss='mse', num_steps=1)
  x = np.linspace(-1, 1, 6)[:, None]
  targets = np.sin(x[:, 0])
  targets[2] = np.nan
  episode = dict(support_images=x, support_labels=np.sin(x[:, 0]), query_images=x,
                 query_labels=targets)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'query_labels \(regression targets\) contain NaN'):
    regressor.episode_output(episode)


def test_empty_support_set(learner):
  episode = make_episode()
  episode['support_images'] = episode['support_images'][:0]
  episode['support_labels'] = episode['support_labels'][:0]
  with pytest.raises(ValueError, match=r'support set is empty \(support_images has no'):
    learner.episode_output(episode)


def test_mismatched_shapes(learner):
  with pytest.raises(ValueError, match='support_images has 6 examples but support_labels 5'):
    learner.episode_output(episode_with('support_labels', lambda labels: labels[:-1]))
  with pytest.raises(ValueError, match=r'query_images have shape .*expects \[n, 16, 16, 3\]'):
    learner.episode_output(episode_with('query_images', lambda images: images[:, :8, :8]))


def test_non_finite_inner_loss_names_the_step():
  """With the input checks off, the inner loop's own check still names the step."""
  unchecked = alfa_tf.MAMLLearner(small_backbone(), 3, SHAPE, num_steps=1, check_inputs=False)
  episode = make_episode()
  episode['support_images'][0, 0, 0, 0] = np.nan
  with pytest.raises(tf.errors.InvalidArgumentError, match='inner step 0'):
    unchecked.episode_output(episode)


def test_rule_dtype_mismatch():
  with pytest.raises(ValueError, match='dtype'):
    alfa_tf.GradientLearner(small_backbone(), 3, SHAPE, alfa_tf.SGD(dtype='float32'),
                            dtype='float64')


def test_checks_run_once_per_episode_not_per_inner_step():
  """The graph of an episode holds one finiteness check per image tensor and the same label
  assertions whatever the number of inner steps."""
  counts = []
  for num_steps in (1, 3):
    learner = alfa_tf.MAMLLearner(small_backbone(), 3, SHAPE, num_steps=num_steps,
                                  check_finite=False)
    episode = {k: tf.constant(v) for k, v in make_episode().items()}
    graph = tf.function(learner.episode_output).get_concrete_function(episode).graph
    types = [op.type for op in graph.get_operations()]
    counts.append((types.count('CheckNumerics'), types.count('Assert')))
  assert counts[0] == counts[1] and counts[0][0] == 2, counts
