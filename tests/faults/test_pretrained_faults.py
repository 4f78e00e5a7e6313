"""Faults of batch training and pretrained initialisation from the command line: found before
the first update, one line naming the culprit, exit status 2, nothing written."""
import numpy as np
import pytest

from tests.faults import util as faults
from tests.trainer.tiny import TINY, make_trainer, records  # pylint: disable=unused-import

TRAIN = 'meta_dataset_ext.train'


def train_command(records, run, *bindings):
  return ['--gin_config=gin/quickstart_glyphs.gin', f'--records_root_dir={records}',
          f'--train_checkpoint_dir={run}'] + [f'--gin_bindings={b}'
                                               for b in TINY + list(bindings)]


@pytest.fixture(scope='module')
def baseline_run(records, tmp_path_factory):
  run = tmp_path_factory.mktemp('baseline')
  make_trainer(records, run, extra=[
      'Trainer.train_learner_class = @BaselineLearner',
      'Trainer.eval_learner_class = @BaselineLearner', 'Trainer.batch_size = 8',
      'Trainer.num_updates = 1']).train()
  return str(run)


@pytest.mark.parametrize('bindings, named', [
    (["Learner.pretrained_checkpoint = '{missing}'", "Trainer.pretrained_source = 'glyphs'"],
     ['Learner.pretrained_checkpoint', 'is not a checkpoint']),
    (["Learner.pretrained_checkpoint = '{baseline}'", "Trainer.pretrained_source = 'glyphs'",
      '@resnet'], ['Learner.pretrained_checkpoint', "does not hold this learner's backbone"]),
    (["Trainer.pretrained_source = 'imagenet'"],
     ['Trainer.pretrained_source', 'Learner.pretrained_checkpoint']),
    (['Trainer.train_learner_class = @BaselineLearner',
      'Trainer.eval_learner_class = @BaselineLearner', 'Trainer.batch_size = -8'],
     ['Trainer.batch_size = -8']),
])
def test_a_bad_pretrained_or_batch_configuration_is_one_line_before_training(
    records, baseline_run, bindings, named, tmp_path):
  bindings = ['Learner.embedding_fn = @resnet' if b == '@resnet' else
              b.format(missing=str(tmp_path / 'nothing'), baseline=baseline_run)
              for b in bindings]
  run = tmp_path / 'run'
  result = faults.run_module(TRAIN, *train_command(records, run, *bindings))
  faults.assert_one_line_error(result, TRAIN, *named)
  assert not list(run.glob('ckpt-*'))


def test_a_pretrained_run_resumes_without_the_pretrained_checkpoint(records, baseline_run,
                                                                     tmp_path):
  """Once the run has its own checkpoint, the pretrained one is no longer read."""
  run, extra = tmp_path / 'run', [f"Learner.pretrained_checkpoint = '{baseline_run}'",
                                  "Trainer.pretrained_source = 'glyphs'"]
  first = make_trainer(records, run, extra=extra + ['Trainer.num_updates = 2'])
  first.train()
  expected = first.learner.theta0['block0.w'].numpy()
  extra[0] = f"Learner.pretrained_checkpoint = '{tmp_path / 'moved'}'"  # No longer there.
  resumed = make_trainer(records, run, extra=extra + ['Trainer.num_updates = 2'],
                         allow_config_change=True)
  resumed.restore()
  np.testing.assert_array_equal(resumed.learner.theta0['block0.w'].numpy(), expected)
