"""The exported SavedModel: written by the command, loaded and served in a fresh process that
cannot import alfa-tf (and by saved_model_cli, and by the README's serving lines), giving the
in-process learner's probabilities for tasks of every way; bad labels and export folders
named."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from meta_dataset_ext import export
from meta_dataset_ext import trained as trained_lib
from meta_dataset_ext.errors import ConfigError
from tests.faults import util as faults
from tests.predict import held_back

MODULE = 'meta_dataset_ext.export'
# (way, support images per class, query images): every way up to logit_dim, unequal shots.
TASKS = ((2, 1, 3), (4, 3, 5), (held_back.LOGIT_DIM, 2, 7))

# Run in a fresh interpreter, outside the checkout, without PYTHONPATH: alfa-tf, its data
# layer and gin cannot be imported, so the SavedModel alone must do everything.
SERVE = textwrap.dedent('''
    import json, sys
    BLOCKED = ('alfa_tf', 'meta_dataset_ext', 'gin')
    class Block:
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
          raise ImportError(f'{name} is not available when serving')
    sys.meta_path.insert(0, Block())
    import numpy as np
    import tensorflow as tf
    model_dir, inputs, outputs = sys.argv[1:]
    model = tf.saved_model.load(model_dir)
    tasks = json.load(open(inputs + '.json'))
    arrays = np.load(inputs + '.npz')
    served, errors = {}, {}
    for i, task in enumerate(tasks):
      labels = tf.constant(arrays[f'{i}_support_labels'])
      served[f'{i}_images'] = model.signatures['adapt_and_predict'](
          support_images=tf.constant(arrays[f'{i}_support_images']), support_labels=labels,
          query_images=tf.constant(arrays[f'{i}_query_images']))['probabilities'].numpy()
      files = lambda part: tf.constant([open(p, 'rb').read() for p in task[part]])
      served[f'{i}_files'] = model.signatures['adapt_and_predict_encoded'](
          support_images=files('support'), support_labels=labels,
          query_images=files('query'))['probabilities'].numpy()
    images = tf.constant(arrays['0_support_images'])
    for case, labels in (('missing class', [0, 2]), ('too many', [0, 6]), ('negative', [0, -1])):
      try:
        model.adapt_and_predict(images, tf.constant(labels, tf.int32), images)
      except tf.errors.InvalidArgumentError as error:
        errors[case] = error.message
    np.savez(outputs + '.npz', **served)
    json.dump(dict(errors=errors, imported=sorted(m for m in sys.modules
                                                  if m.split('.')[0] in BLOCKED)),
              open(outputs + '.json', 'w'))
''')


def task_inputs(learner, folders, tmp_path):
  """TASKS from the held-back font's images: their decoded pixels (npz) and files (json)."""
  classes = sorted(os.listdir(folders['support']))
  arrays, files = {}, []
  for i, (way, shots, queries) in enumerate(TASKS):
    support = [os.path.join(folders['support'], c, f'{k}.png') for c in classes[:way]
               for k in range(shots)]
    query = [os.path.join(folders['query'], classes[k % way], f'{k}.png')
             for k in range(queries)]
    arrays[f'{i}_support_labels'] = np.repeat(np.arange(way, dtype=np.int32), shots)
    for part, paths in (('support', support), ('query', query)):
      arrays[f'{i}_{part}_images'] = np.stack(
          [learner.decode(open(p, 'rb').read()).numpy() for p in paths])
    files.append({'support': support, 'query': query})
  np.savez(tmp_path / 'inputs.npz', **arrays)
  (tmp_path / 'inputs.json').write_text(json.dumps(files))
  return arrays


def learner_probabilities(learner, arrays, i, way):
  """The members' mean query logits from their own episode_output, softmax over the way."""
  episode = {key: arrays[f'{i}_{key}'] for key in ('support_images', 'support_labels',
                                                   'query_images')}
  logits = [m.episode_output(dict(episode, way=way), training=False).query_logits
            for m in learner.members]
  return tf.nn.softmax((tf.add_n(logits) / len(logits))[:, :way]).numpy()


def saved_model_cli():
  script = os.path.join(os.path.dirname(sys.executable), 'saved_model_cli')
  return [script] if os.path.exists(script) else [
      sys.executable, '-m', 'tensorflow.python.tools.saved_model_cli']


def test_saved_model_serves_the_learners_probabilities_without_the_project(held_back_run,
                                                                           tmp_path):
  model_dir = tmp_path / 'model'
  result = faults.run_module(MODULE, f'--checkpoint_dir={held_back_run.run_dir}',
                             f'--export_dir={model_dir}', '--ensemble_top_k=2')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'checked to 1e-05' in result.stdout
  info = json.loads((model_dir / export.METADATA).read_text())
  assert (info['image_height'], info['logit_dim'], info['num_steps']) == (28, 6, 2)
  assert len(info['checkpoints']) == 2 and info['checkpoints'][0].startswith('best')

  learner = trained_lib.load(held_back_run.run_dir, ensemble_top_k=2)
  folders = held_back.few_shot_folders(tmp_path / 'glyphs')
  arrays = task_inputs(learner, folders, tmp_path)
  serving = tmp_path / 'serving'
  serving.mkdir()
  (serving / 'serve.py').write_text(SERVE)
  environment = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  done = subprocess.run([sys.executable, 'serve.py', str(model_dir), str(tmp_path / 'inputs'),
                         str(tmp_path / 'outputs')], cwd=serving, env=environment,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((tmp_path / 'outputs.json').read_text())
  assert report['imported'] == []
  served = np.load(tmp_path / 'outputs.npz')
  largest = 0.0
  for i, (way, _, queries) in enumerate(TASKS):
    expected = learner_probabilities(learner, arrays, i, way)
    assert expected.shape == (queries, way)
    for kind in ('images', 'files'):
      np.testing.assert_allclose(served[f'{i}_{kind}'], expected, atol=1e-5)
      largest = max(largest, float(np.max(np.abs(served[f'{i}_{kind}'] - expected))))
  print(f'largest difference, SavedModel vs in-process learner: {largest:.3g}')
  assert 'every class 0 .. way - 1' in report['errors']['missing class']
  assert 'support_labels must be < 6' in report['errors']['too many']
  assert 'support_labels are negative' in report['errors']['negative']

  inputs = {}
  for key in ('support_images', 'support_labels', 'query_images'):
    inputs[key] = str(tmp_path / f'{key}.npy')
    np.save(inputs[key], arrays[f'1_{key}'])
  done = subprocess.run(saved_model_cli() + [
      'run', '--dir', str(model_dir), '--tag_set', 'serve', '--signature_def',
      export.SIGNATURE, '--inputs', ';'.join(f'{k}={v}' for k, v in inputs.items()),
      '--outdir', str(tmp_path / 'cli')], cwd=serving, env=environment, capture_output=True,
      text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  np.testing.assert_allclose(np.load(tmp_path / 'cli' / f'{export.OUTPUT}.npy'),
                             learner_probabilities(learner, arrays, 1, 4), atol=1e-5)

  (serving / 'exported').mkdir()  # The README's paths.
  os.symlink(model_dir, serving / 'exported' / 'glyphs_alfa')
  os.symlink(tmp_path / 'glyphs', serving / 'my_glyphs')
  done = subprocess.run([sys.executable, '-c', readme_serving_snippet()], cwd=serving,
                        env=environment, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip() == f'(60, {held_back.LOGIT_DIM})'


def readme_serving_snippet() -> str:
  """The Python block of the README's section 'Use a trained learner'."""
  with open(os.path.join(faults.REPO, 'README.md'), encoding='utf-8') as f:
    section = f.read().split('## Use a trained learner', 1)[1].split('\n## ', 1)[0]
  return section.split('```python\n', 1)[1].split('```', 1)[0]


def test_export_folders_are_checked_and_overwrite_replaces_a_saved_model(held_back_run,
                                                                         tmp_path):
  other = tmp_path / 'other'
  other.mkdir()
  (other / 'notes.txt').write_text('mine')
  with pytest.raises(ConfigError, match=r"'.*other' \(--export_dir\) is not empty and holds "
                                        'no SavedModel'):
    export.export(held_back_run.run_dir, str(other))
  (tmp_path / 'file').write_text('')
  with pytest.raises(ConfigError, match=r"export folder \(--export_dir\) '.*file' is a file"):
    export.export(held_back_run.run_dir, str(tmp_path / 'file'))
  old = tmp_path / 'old'
  old.mkdir()
  (old / 'saved_model.pb').write_bytes(b'an earlier export')
  with pytest.raises(ConfigError, match='already holds a SavedModel: pass --overwrite'):
    export.export(held_back_run.run_dir, str(old))
  trained = export.export(held_back_run.run_dir, str(old), num_steps=3, overwrite=True)
  assert trained.num_steps == 3 and sorted(os.listdir(tmp_path)) == ['file', 'old', 'other']
  assert json.loads((old / export.METADATA).read_text())['num_steps'] == 3
  assert export.verify(trained, str(old)) <= export.TOLERANCE
  result = faults.run_module(MODULE, f'--checkpoint_dir={tmp_path / "other"}',
                             f'--export_dir={tmp_path / "new"}')
  faults.assert_one_line_error(result, MODULE, 'other', 'operative_config.gin')
