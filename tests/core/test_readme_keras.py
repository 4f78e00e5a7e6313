"""The README's "Bring your own Keras model" example runs as printed, on a small episode."""
import re

import numpy as np
import pytest

from tests.core.test_readme import README, episode

keras = pytest.importorskip('keras')


def keras_example():
  """The first python code block of the README's "Bring your own Keras model" section."""
  section = README.read_text(encoding='utf-8').split('## Bring your own Keras model', 1)[1]
  return re.search(r'```python\n(.*?)```', section, re.DOTALL).group(1)


@pytest.mark.skipif(not hasattr(keras.layers.Layer, 'stateless_call'),
                    reason='KerasBackbone needs Keras 3 (TF >= 2.16)')
def test_keras_example_runs():
  code = keras_example()
  assert len([line for line in code.splitlines() if line and line[0] not in ' #']) <= 6
  data = episode(0, shape=(28, 28, 1))
  namespace = {key: data[key] for key in ('support_images', 'support_labels', 'query_images',
                                          'query_labels')}
  exec(compile(code, str(README), 'exec'), namespace)
  learner, task, model = namespace['learner'], namespace['task'], namespace['model']
  assert task(data['query_images']).shape == (5, 5) and np.isfinite(float(namespace['loss']))
  assert list(task.alpha) == [v.path.split('/', 1)[1] for v in model.trainable_variables] + [
      'head.w', 'head.b']
  assert all(rates.shape == (5,) for rates in task.alpha.values())
  # The outer step moved the model's own variables (theta_0) and ALFA's meta-parameters.
  assert namespace['optimizer'].iterations.numpy() == 1
  for name, before in task.adaptation.initial_params.items():
    assert np.any(learner.theta0[name].numpy() != before.numpy()), name
  assert np.all(learner.update_rule.alpha0.numpy() != 0.01)
