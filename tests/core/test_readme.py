"""The README's "The core in five lines" example runs as printed, on two small episodes."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[2] / 'README.md'


def core_example():
  """The first python code block of the README's "The core in five lines" section."""
  section = README.read_text(encoding='utf-8').split('## The core in five lines', 1)[1]
  return re.search(r'```python\n(.*?)```', section, re.DOTALL).group(1)


def episode(seed, way=5, shape=(84, 84, 3)):
  """5-way 1-shot, one query per class: the example's learner at the least cost."""
  rng = np.random.default_rng(seed)
  return dict(support_images=rng.normal(size=(way,) + shape).astype(np.float32),
              support_labels=np.arange(way), query_images=rng.normal(size=(way,) + shape)
              .astype(np.float32), query_labels=np.arange(way))


def test_core_example_runs(capsys):
  code = core_example()
  assert len([line for line in code.splitlines() if line and line[0] not in ' #']) <= 5
  namespace = dict(episode=episode(0), another_episode=episode(1))
  exec(compile(code, str(README), 'exec'), namespace)
  learner, out = namespace['learner'], namespace['out']
  assert out.query_logits.shape == (5, 5)
  assert tuple(out.adaptation.diagnostics[0]['alpha'].shape) == (10,)
  assert 'tf.Tensor' in capsys.readouterr().out
  # The meta-update moved theta_0 away from its seeded initial value.
  fresh = type(learner)(learner.backbone, 5, (84, 84, 3), num_steps=5)
  assert np.any(learner.theta0['block0.w'].numpy() != fresh.theta0['block0.w'].numpy())
