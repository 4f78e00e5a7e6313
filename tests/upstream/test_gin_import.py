"""The gin files shared with upstream's trainer, under the project's trainer (runs in CI).

They start with ``import meta_dataset_ext.upstream``, which must register nothing here, and
bind upstream-only names (``meta_dataset_ext.upstream_compat``) that must be accepted with
upstream's values and rejected otherwise, by name.
"""
import os
import subprocess
import sys

import gin
import pytest

from meta_dataset_ext import gin_setup
from meta_dataset_ext import learners

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The files that run under both trainers, and the project learner each selects here.
SHARED = {'alfa_fo_maml.gin': learners.alfa_maml_learner,
          'alfa_fo_proto_maml.gin': learners.alfa_proto_maml_learner,
          'alfa_proto_maml_second_order.gin': learners.alfa_proto_maml_learner,
          'alfa_random_fo_proto_maml.gin': learners.alfa_proto_maml_learner,
          'fo_maml.gin': learners.maml_learner, 'fo_proto_maml.gin': learners.maml_learner,
          'proto_maml_second_order.gin': learners.maml_learner}


@pytest.mark.parametrize('config', sorted(SHARED))
def test_shared_file_parses_from_any_directory_to_the_projects_learner(config, tmp_path,
                                                                      monkeypatch):
  text = open(os.path.join(REPO, 'gin', config)).read()
  lines = text.splitlines()
  assert 'import meta_dataset_ext.upstream' in lines
  assert not any(line.startswith('include') for line in lines)
  monkeypatch.chdir(tmp_path)
  gin.clear_config()
  gin_setup.parse([os.path.join('gin', config)], [])
  learner = gin.query_parameter('Trainer.train_learner_class').configurable
  assert learner.wrapper is SHARED[config]


def test_import_line_loads_no_upstream_and_registers_nothing():
  code = ('import sys; from meta_dataset_ext import gin_setup; '
          'gin_setup.parse(["gin/alfa_fo_proto_maml.gin"], []); '
          'import meta_dataset_ext.upstream as u; '
          'print(sorted(m for m in sys.modules if m.split(".")[0] == "meta_dataset"), '
          'u.upstream_trainer_loaded(), "meta_dataset_ext.upstream.learners" in sys.modules)')
  done = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split('\n')[-2] == '[] False False'


@pytest.mark.parametrize('binding, named', [
    ('support/ImageDecoder.image_size = 32', 'ImageDecoder.image_size'),
    ('query/ImageDecoder.skip_tfexample_decoding = True',
     'ImageDecoder.skip_tfexample_decoding'),
    ("process_episode.query_decoder = 'png'", 'process_episode.query_decoder'),
    ('process_episode.support_decoder = @DataConfig()', 'process_episode.support_decoder'),
])
def test_unsupported_upstream_values_are_rejected_by_name(binding, named):
  gin.clear_config()
  with pytest.raises(gin_setup.ConfigError, match=named):
    gin_setup.parse(['gin/alfa_fo_maml.gin'], [binding])
