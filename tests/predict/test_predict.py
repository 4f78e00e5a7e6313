"""Few-shot prediction on image folders: a font and classes the run never saw, the learner's own
probabilities, ensembles and inner steps, and the one-line errors of bad folders."""
import csv
import os
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from meta_dataset_ext import checkpoints
from meta_dataset_ext import glyph_folders
from meta_dataset_ext import predict
from meta_dataset_ext import trained as trained_lib
from meta_dataset_ext.data import reader
from meta_dataset_ext.errors import ConfigError, DataError
from tests.faults import util as faults
from tests.predict import held_back

MODULE = 'meta_dataset_ext.predict'


@pytest.fixture(scope='module')
def learner(held_back_run):
  return trained_lib.load(held_back_run.run_dir)


def read_csv(path):
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.reader(f))


def reference_probabilities(learner_, folders, support_names, query_names, labels, way):
  """The in-process learner's softmax over the way, on images decoded by the data layer."""
  def decoded(folder, names):
    return tf.stack([reader.decode_image(open(os.path.join(folder, n), 'rb').read(),
                                         learner_.image_height) for n in names])
  episode = dict(support_images=decoded(folders['support'], support_names),
                 support_labels=tf.constant(labels, tf.int32),
                 query_images=decoded(folders['query'], query_names), way=way)
  logits = learner_.members[0].episode_output(episode, training=False).query_logits
  return tf.nn.softmax(logits[:, :way]).numpy()


def mix_formats(folders):
  """Query images of one class as colour JPEGs of 56 px, support images of another as colour
  PNGs of 20 px (the rest stay grey PNGs of 40 px)."""
  classes = sorted(os.listdir(folders['support']))
  for part, name, size, suffix in (('query', classes[0], 56, '.jpg'),
                                   ('support', classes[1], 20, '.png')):
    folder = os.path.join(folders[part], name)
    for file in os.listdir(folder):
      path = os.path.join(folder, file)
      image = Image.open(path).convert('RGB').resize((size, size))
      os.remove(path)
      image.save(os.path.splitext(path)[0] + suffix, quality=95)


def test_cli_predicts_a_held_back_font_well_above_chance(held_back_run, learner, tmp_path):
  folders = held_back.few_shot_folders(tmp_path / 'glyphs')
  mix_formats(folders)
  codes = [f'U+{ord(c):04X} ' for c in held_back.CHARACTERS]
  assert not [n for n in held_back.training_class_names(held_back_run.records)
              if n.startswith(tuple(codes))]  # Classes the run never trained on.
  out = tmp_path / 'out'
  result = faults.run_module(MODULE, f'--checkpoint_dir={held_back_run.run_dir}',
                             f'--support_dir={folders["support"]}',
                             f'--query_dir={folders["query"]}', f'--output_dir={out}')
  assert result.returncode == 0, result.stderr[-3000:]

  rows = read_csv(out / predict.PREDICTIONS)
  classes = sorted(glyph_folders.class_name(c) for c in held_back.CHARACTERS)
  assert rows[0] == ['file', 'predicted', 'true'] + [f'p({c})' for c in classes]
  assert len(rows) == 1 + 10 * len(classes)
  probabilities = np.array([[float(p) for p in row[3:]] for row in rows[1:]])
  np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-5)
  assert [row[1] for row in rows[1:]] == [classes[k] for k in probabilities.argmax(1)]
  assert [row[2] for row in rows[1:]] == [row[0].split(os.sep)[0] for row in rows[1:]]
  accuracy = np.mean([row[1] == row[2] for row in rows[1:]])
  print(f'accuracy on the held-back font: {accuracy:.3f} (chance {1 / len(classes):.3f})')
  assert accuracy >= 0.6, accuracy  # Chance: 1/6.
  mean, ci95 = report_of(accuracy, len(rows) - 1)
  assert f'Accuracy: {100 * mean:.2f} ± {100 * ci95:.2f}% (95% CI' in result.stdout

  support_names = [os.path.join(c, f) for c in classes
                   for f in sorted(os.listdir(os.path.join(folders['support'], c)))]
  labels = [classes.index(n.split(os.sep)[0]) for n in support_names]
  expected = reference_probabilities(learner, folders, support_names,
                                     [row[0] for row in rows[1:]], labels, len(classes))
  np.testing.assert_allclose(probabilities, expected, atol=1e-5)

  with Image.open(out / predict.CONTACT_SHEET) as sheet:
    assert sheet.format == 'PNG' and sheet.width >= 8 * 100 and sheet.height >= 8 * 100


def report_of(accuracy, n):
  """The mean and 95% CI of n right-or-wrong answers with this accuracy."""
  values = np.zeros(n)
  values[:round(accuracy * n)] = 1.0
  return values.mean(), 1.96 * values.std() / np.sqrt(n)


def test_unlabelled_queries_with_an_ensemble_and_more_inner_steps(held_back_run, tmp_path):
  folders = held_back.few_shot_folders(tmp_path / 'glyphs', num_query=2, characters='TWag')
  flat = tmp_path / 'unlabelled'
  flat.mkdir()
  for name in sorted(os.listdir(folders['query'])):
    for file in sorted(os.listdir(os.path.join(folders['query'], name))):
      shutil.copy(os.path.join(folders['query'], name, file), flat / f'{name[-1]}{file}')
  ensemble = trained_lib.load(held_back_run.run_dir, ensemble_top_k=2, num_steps=3)
  best = [e['step'] for e in checkpoints.BestCheckpoints(held_back_run.run_dir, 2, 'accuracy',
                                                          True).entries()[:2]]
  assert ensemble.steps == best and ensemble.num_steps == 3 and len(ensemble.members) == 2
  predictions = predict.predict(ensemble, folders['support'], str(flat))
  paths = predict.write(predictions, str(tmp_path / 'out'))
  rows = read_csv(paths[predict.PREDICTIONS])
  assert rows[0][:2] == ['file', 'predicted'] and len(rows[0]) == 2 + 4
  assert [row[0] for row in rows[1:]] == sorted(os.listdir(flat))
  assert predictions.accuracy() is None and 'Accuracy' not in predict.summary(predictions)

  support = predict.read_images(ensemble, folders['support'], [
      os.path.join(c, f) for c in sorted(os.listdir(folders['support']))
      for f in sorted(os.listdir(os.path.join(folders['support'], c)))], '--support_dir')
  labels = np.repeat(np.arange(4, dtype=np.int32), 5)
  query = predict.read_images(ensemble, str(flat), sorted(os.listdir(flat)), '--query_dir')
  logits = [m.adapt(support, labels, 3, 4)(query) for m in ensemble.members]
  np.testing.assert_allclose(predictions.probabilities,
                             tf.nn.softmax(tf.add_n(logits)[:, :4] / 2).numpy(), atol=1e-6)
  single = trained_lib.load(held_back_run.run_dir)
  assert not np.allclose(single.probabilities(support, labels, query, 4),
                         predictions.probabilities, atol=1e-4)


# ----- bad folders and runs ---------------------------------------------------------------

def _write(path, data=b'not an image'):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)


def _truncated_jpeg(path):
  Image.new('RGB', (40, 40), 'white').save(path + '.full.jpg')
  data = open(path + '.full.jpg', 'rb').read()
  os.remove(path + '.full.jpg')
  _write(path, data[:len(data) // 2])


BAD_FOLDERS = {
    'empty class folder': (lambda s, q: os.makedirs(os.path.join(s, 'U+0051 Q')),
                           r"class folder '.*U\+0051 Q' \(--support_dir\) holds no images"),
    'unreadable support image': (
        lambda s, q: _write(os.path.join(s, 'U+0054 T', 'broken.png')),
        r"Cannot decode image '.*U\+0054 T/broken\.png'.*\(--support_dir\): replace or remove"),
    'truncated query image': (
        lambda s, q: _truncated_jpeg(os.path.join(q, 'U+0057 W', 'cut.jpg')),
        r"Cannot decode image '.*U\+0057 W/cut\.jpg'.*\(--query_dir\)"),
    'not an image file': (lambda s, q: _write(os.path.join(q, 'U+0057 W', 'notes.txt'), b'x'),
                          r"'.*U\+0057 W/notes\.txt' is not an image file"),
    'file beside the class folders': (lambda s, q: _write(os.path.join(s, 'cover.png')),
                                      r"'.*cover\.png' is a file: --support_dir"),
    'query class without support': (
        lambda s, q: shutil.copytree(os.path.join(q, 'U+0057 W'), os.path.join(q, 'U+0051 Q')),
        r"query class folder '.*U\+0051 Q' is not a class of --support_dir"),
    'images beside query folders': (lambda s, q: _write(os.path.join(q, 'stray.png')),
                                    r"--query_dir '.*' holds both images and folders"),
    'missing support folder': (lambda s, q: shutil.rmtree(s),
                               r"--support_dir '.*' does not exist"),
    'one class': (lambda s, q: [shutil.rmtree(os.path.join(s, c)) for c in os.listdir(s)
                                if c != 'U+0054 T'],
                  r"has 1 class\(es\): give at least 2"),
}


@pytest.mark.parametrize('case', sorted(BAD_FOLDERS))
def test_bad_folders_are_named(learner, tmp_path, case):
  folders = held_back.few_shot_folders(tmp_path / 'glyphs', num_support=1, num_query=1,
                                       characters='TW')
  spoil, message = BAD_FOLDERS[case]
  spoil(folders['support'], folders['query'])
  with pytest.raises(DataError, match=message):
    predict.predict(learner, folders['support'], folders['query'])


def test_more_classes_than_the_learner_takes_and_an_empty_query_folder(learner, tmp_path):
  folders = held_back.few_shot_folders(tmp_path / 'many', num_support=1, num_query=1,
                                       characters='TWagkxy')
  with pytest.raises(DataError, match=(r"--support_dir '.*' has 7 classes but this learner "
                                       r'takes at most 6 \(its logit_dim')):
    predict.predict(learner, folders['support'], folders['query'])
  folders = held_back.few_shot_folders(tmp_path / 'empty', num_support=1, num_query=1)
  shutil.rmtree(folders['query'])
  os.makedirs(folders['query'])
  with pytest.raises(DataError, match=r"--query_dir '.*' holds no images"):
    predict.predict(learner, folders['support'], folders['query'])


def test_bad_runs_are_named(held_back_run, tmp_path):
  with pytest.raises(ConfigError, match=r"holds no operative_config\.gin: give the folder of "):
    trained_lib.load(str(tmp_path))
  with pytest.raises(ConfigError, match=r"'.*nowhere' \(--checkpoint_dir\) does not exist"):
    trained_lib.load(str(tmp_path / 'nowhere'))
  with pytest.raises(ConfigError, match=r'--ensemble_top_k=9, but .*best\.json.* lists 4 best'):
    trained_lib.load(held_back_run.run_dir, ensemble_top_k=9)
  untrained = tmp_path / 'untrained'
  untrained.mkdir()
  shutil.copy(os.path.join(held_back_run.run_dir, 'operative_config.gin'), untrained)
  with pytest.raises(ConfigError, match=r'holds no checkpoint \(ckpt-\*\): train it first'):
    trained_lib.load(str(untrained))


def test_evaluation_augmentation_of_the_run_is_named(held_back_run, tmp_path, capsys):
  run = tmp_path / 'augmented'
  shutil.copytree(held_back_run.run_dir, run)
  with open(run / 'operative_config.gin', 'a', encoding='utf-8') as f:
    f.write('evaluation/process_episode.support_decoder = @evaluation/ImageDecoder()\n'
            'evaluation/ImageDecoder.data_augmentation = @evaluation/DataAugmentation()\n'
            'evaluation/DataAugmentation.enable_jitter = True\n'
            'evaluation/DataAugmentation.jitter_amount = 2\n')
  trained_lib.load(str(run))
  assert "warning: The run's evaluation augments the support images" in capsys.readouterr().err
  trained_lib.load(held_back_run.run_dir)
  assert 'augments' not in capsys.readouterr().err


def test_cli_errors_are_one_line(held_back_run, tmp_path):
  folders = held_back.few_shot_folders(tmp_path / 'glyphs', num_support=1, num_query=1,
                                       characters='TW')
  _write(os.path.join(folders['query'], 'U+0054 T', 'broken.jpg'))
  result = faults.run_module(MODULE, f'--checkpoint_dir={held_back_run.run_dir}',
                             f'--support_dir={folders["support"]}',
                             f'--query_dir={folders["query"]}',
                             f'--output_dir={tmp_path / "out"}')
  faults.assert_one_line_error(result, MODULE, 'broken.jpg', '--query_dir')
  result = faults.run_module(MODULE, f'--checkpoint_dir={tmp_path / "nowhere"}',
                             f'--support_dir={folders["support"]}',
                             f'--query_dir={folders["query"]}',
                             f'--output_dir={tmp_path / "out"}')
  faults.assert_one_line_error(result, MODULE, 'nowhere', '--checkpoint_dir', 'does not exist')
