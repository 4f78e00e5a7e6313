r"""Few-shot prediction on your own images with a meta-trained learner.

    python -m meta_dataset_ext.predict --checkpoint_dir=runs/quickstart/alfa_fo_proto_maml \
        --support_dir=my_glyphs/support --query_dir=my_glyphs/query \
        [--output_dir=predictions] [--num_steps=N] [--ensemble_top_k=K] \
        [--max_sheet_images=100]

--support_dir holds one sub-folder per class (its name is the class name), with any number
of images each; any number of classes from 2 to the learner's logit_dim (the run's largest
way). --query_dir holds the images to classify, or class sub-folders named as support
classes when the true labels are known. Images are .jpg/.jpeg/.png (or .bmp/.gif/.tif/
.tiff/.webp), of any size, grey or colour; hidden files (".*") are ignored. They are read
as a folder converted by ``meta_dataset_ext.data.convert_folder`` is, and decoded as training
decodes records (``meta_dataset_ext.data.reader``: RGB, resized to the run's image size,
scaled to [-1, 1]).

The learner (``meta_dataset_ext.trained``: the run's operative config and latest checkpoint,
or with --ensemble_top_k the logit ensemble of its best checkpoints) adapts to the support set
in its inner loop (--num_steps steps, default the run's evaluation steps), then classifies
every query image (all at once: a learner trained with transductive BatchNorm normalises the
query set with its own statistics). Written to --output_dir:

  predictions.csv     file (relative to --query_dir), predicted class, true class (when
                      known), then p(<class>) for every class
  contact_sheet.png   the first --max_sheet_images query images (as the learner saw them)
                      with their predicted classes; wrong ones framed in red with their true
                      class

With true labels, the accuracy and its 95% confidence interval (1.96 * std / sqrt(n) over
the query images, as ``meta_dataset_ext.report``) are printed. A folder that does not exist,
a class folder without images, more classes than the learner takes, a query class that is
not a support class, or an image that does not decode ends the command with one line that
names it (exit status 2).
"""
import csv
import dataclasses
import io
import os
from typing import Dict, List, Optional, Sequence, Tuple

from absl import flags
import numpy as np
import tensorflow as tf

from meta_dataset_ext import cli
from meta_dataset_ext import errors
from meta_dataset_ext import report
from meta_dataset_ext import run_dir as run_dir_lib
from meta_dataset_ext import trained as trained_lib
from meta_dataset_ext.data import convert_folder
from meta_dataset_ext.data import writer

PREDICTIONS = 'predictions.csv'
CONTACT_SHEET = 'contact_sheet.png'
_SHOWN = 20  # Query images whose predictions are printed.

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Images:
  """Image files and their decoded pixels.

  Attributes:
    names: each file's path relative to the folder given.
    pixels: float32 [n, h, h, 3] in [-1, 1].
    labels: each image's class index, or None when unknown.
  """
  names: List[str]
  pixels: np.ndarray
  labels: Optional[np.ndarray]


@dataclasses.dataclass
class Predictions:
  """What ``predict`` found: the query images' class probabilities [n, way]."""
  classes: List[str]
  query: Images
  probabilities: np.ndarray
  learner: str
  checkpoints: List[str]
  num_steps: int

  @property
  def predicted(self) -> np.ndarray:
    return np.argmax(self.probabilities, axis=1)

  def accuracy(self) -> Optional[Tuple[float, float]]:
    """(mean, 95% CI half-width) over the query images; None without true labels."""
    if self.query.labels is None:
      return None
    return report.confidence_interval(self.predicted == self.query.labels)


def _entries(folder: str) -> List[str]:
  """The folder's entries, hidden ones ('.*') left out, sorted."""
  return sorted(e for e in os.listdir(folder) if not e.startswith('.'))


def _check_folder(folder: str, flag: str) -> None:
  if not os.path.isdir(folder):
    problem = 'is a file' if os.path.exists(folder) else 'does not exist'
    raise errors.DataError(f'{flag} {folder!r} {problem}: give a folder.')


def _image_files(folder: str, what: str) -> List[str]:
  """The image file names of a folder that must hold images only (DataError naming a
  sub-folder or another file; ``what`` names the folder in messages)."""
  names = []
  for entry in _entries(folder):
    path = os.path.join(folder, entry)
    if os.path.isdir(path):
      raise errors.DataError(f'{path!r} is a folder inside {what}: it must hold image files '
                             'only.')
    if os.path.splitext(entry)[1].lower() not in convert_folder.IMAGE_EXTENSIONS:
      raise errors.DataError(f'{path!r} is not an image file (expected one of '
                             f'{", ".join(convert_folder.IMAGE_EXTENSIONS)}): remove it.')
    names.append(entry)
  return names


def class_folders(folder: str, flag: str) -> Dict[str, List[str]]:
  """{class name: its image files (relative to ``folder``)} of a folder of class folders.

  Raises:
    DataError: naming the folder or file at fault: a file beside the class folders, a class
      folder without images (or holding anything else), a folder without class folders.
  """
  classes = {}
  for entry in _entries(folder):
    path = os.path.join(folder, entry)
    if not os.path.isdir(path):
      raise errors.DataError(f'{path!r} is a file: {flag} {folder!r} must hold one sub-folder '
                             'of images per class (named after the class).')
    files = _image_files(path, f'the class folder {path!r}')
    if not files:
      raise errors.DataError(f'The class folder {path!r} ({flag}) holds no images: add some, '
                             'or remove the folder.')
    classes[entry] = [os.path.join(entry, name) for name in files]
  if not classes:
    raise errors.DataError(f'{flag} {folder!r} holds no class folders: give one sub-folder '
                           'of images per class.')
  return classes


def read_images(trained: trained_lib.TrainedLearner, folder: str, names: Sequence[str],
                flag: str) -> np.ndarray:
  """The images ``folder/name`` decoded as the run's training decoded its records: float32
  [n, h, h, 3] in [-1, 1] (DataError naming a file that does not decode)."""
  pixels = []
  for name in names:
    path = os.path.join(folder, name)
    with open(path, 'rb') as f:
      data = f.read()
    try:  # As convert_folder stores a file: JPEG and PNG as they are, other formats as PNG.
      data = writer.checked_image_bytes(data, repr(path))
      pixels.append(trained.decode(data).numpy())
    except errors.DataError as error:
      raise errors.DataError(f'{error} ({flag}): replace or remove it.') from None
    except tf.errors.InvalidArgumentError:
      raise errors.DataError(f'Cannot decode image {path!r} ({flag}): TensorFlow\'s decoder '
                             'rejects it; replace or remove it.') from None
  return np.stack(pixels)


def _support(trained: trained_lib.TrainedLearner, support_dir: str
             ) -> Tuple[List[str], Images]:
  _check_folder(support_dir, '--support_dir')
  classes = class_folders(support_dir, '--support_dir')
  trained.check_way(len(classes), f'--support_dir {support_dir!r}')
  names = [name for files in classes.values() for name in files]
  labels = np.concatenate([np.full(len(files), k, np.int32)
                           for k, files in enumerate(classes.values())])
  pixels = read_images(trained, support_dir, names, '--support_dir')
  return list(classes), Images(names, pixels, labels)


def _query(trained: trained_lib.TrainedLearner, query_dir: str, classes: List[str]) -> Images:
  """The query images: files of ``query_dir`` (no labels), or its class folders (labels)."""
  _check_folder(query_dir, '--query_dir')
  entries = _entries(query_dir)
  folders = [e for e in entries if os.path.isdir(os.path.join(query_dir, e))]
  if folders and len(folders) < len(entries):
    raise errors.DataError(f'--query_dir {query_dir!r} holds both images and folders: give '
                           'images only, or one sub-folder per class (the true labels).')
  labels = None
  if folders:
    by_class = class_folders(query_dir, '--query_dir')
    unknown = [c for c in by_class if c not in classes]
    if unknown:
      raise errors.DataError(
          f'The query class folder {os.path.join(query_dir, unknown[0])!r} is not a class of '
          f'--support_dir (its classes: {", ".join(classes)}): name query folders as the '
          'support classes, or put the query images directly in --query_dir.')
    names = [name for files in by_class.values() for name in files]
    labels = np.array([classes.index(c) for c, files in by_class.items() for _ in files],
                      np.int32)
  else:
    names = _image_files(query_dir, f'--query_dir {query_dir!r}')
    if not names:
      raise errors.DataError(f'--query_dir {query_dir!r} holds no images.')
  return Images(names, read_images(trained, query_dir, names, '--query_dir'), labels)


def predict(trained: trained_lib.TrainedLearner, support_dir: str, query_dir: str
            ) -> Predictions:
  """Adapts ``trained`` to the support folders and classifies the query images."""
  classes, support = _support(trained, support_dir)
  query = _query(trained, query_dir, classes)
  probabilities = trained.probabilities(support.pixels, support.labels, query.pixels,
                                        len(classes)).numpy()
  return Predictions(classes, query, probabilities, trained.name, trained.checkpoints,
                     trained.num_steps)


def predictions_csv(predictions: Predictions) -> str:
  """The CSV text of ``predictions`` (module docstring)."""
  buffer = io.StringIO()
  out = csv.writer(buffer, lineterminator='\n')
  known = predictions.query.labels is not None
  out.writerow(['file', 'predicted'] + (['true'] if known else []) +
               [f'p({c})' for c in predictions.classes])
  for i, (name, row) in enumerate(zip(predictions.query.names, predictions.probabilities)):
    true = [predictions.classes[predictions.query.labels[i]]] if known else []
    out.writerow([name, predictions.classes[predictions.predicted[i]]] + true +
                 [f'{p:.6f}' for p in row])
  return buffer.getvalue()


def save_contact_sheet(predictions: Predictions, path: str, max_images: int = 100) -> None:
  """The first ``max_images`` query images, each titled with its predicted class and
  probability; wrong predictions framed in red, with the true class below."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  count = min(max_images, len(predictions.query.names))
  columns = min(count, 8)
  rows = -(-count // columns)
  figure = Figure(figsize=(1.35 * columns, 1.7 * rows + 0.4))
  known = predictions.query.labels is not None
  shown = f'{count} of {len(predictions.query.names)}' if count < len(
      predictions.query.names) else f'all {count}'
  figure.suptitle(f'{predictions.learner}: {shown} query images, predicted class and '
                  'probability' + ('; wrong in red (true class below)' if known else ''),
                  fontsize=8)
  pixels = np.round((predictions.query.pixels[:count] + 1.0) * 127.5).clip(0, 255)
  for i in range(count):
    axes = figure.add_subplot(rows, columns, i + 1)
    axes.imshow(pixels[i].astype(np.uint8), interpolation='nearest')
    axes.set_xticks([])
    axes.set_yticks([])
    predicted = predictions.predicted[i]
    wrong = known and predicted != predictions.query.labels[i]
    colour = 'red' if wrong else 'black'
    axes.set_title(f'{predictions.classes[predicted]:.16}\n'
                   f'{predictions.probabilities[i, predicted]:.2f}', fontsize=7, color=colour)
    if wrong:
      axes.set_xlabel(f'true: {predictions.classes[predictions.query.labels[i]]:.14}',
                      fontsize=7, color='red')
      for spine in axes.spines.values():
        spine.set_edgecolor('red')
        spine.set_linewidth(3)
  figure.tight_layout(rect=(0, 0, 1, 0.96))
  figure.savefig(path, format='png', dpi=100)


def write(predictions: Predictions, output_dir: str, max_sheet_images: int = 100
          ) -> Dict[str, str]:
  """Writes predictions.csv and contact_sheet.png; returns {name: path}."""
  os.makedirs(output_dir, exist_ok=True)
  paths = {name: os.path.join(output_dir, name) for name in (PREDICTIONS, CONTACT_SHEET)}
  run_dir_lib.atomic_write(paths[PREDICTIONS], predictions_csv(predictions))
  save_contact_sheet(predictions, paths[CONTACT_SHEET], max_sheet_images)
  return paths


def summary(predictions: Predictions) -> str:
  """What the command prints: the learner, up to _SHOWN predictions, the accuracy."""
  checkpoints = ', '.join(os.path.basename(p) for p in predictions.checkpoints)
  lines = [f'{predictions.learner} ({checkpoints}, {predictions.num_steps} inner steps) on '
           f'{len(predictions.classes)} classes: {", ".join(predictions.classes)}']
  for i, name in enumerate(predictions.query.names[:_SHOWN]):
    predicted = predictions.predicted[i]
    lines.append(f'  {name}: {predictions.classes[predicted]} '
                 f'({predictions.probabilities[i, predicted]:.2f})')
  if len(predictions.query.names) > _SHOWN:
    lines.append(f'  ... {len(predictions.query.names) - _SHOWN} more in {PREDICTIONS}')
  accuracy = predictions.accuracy()
  if accuracy is not None:
    right = int(np.sum(predictions.predicted == predictions.query.labels))
    lines.append(f'Accuracy: {report.format_accuracy(*accuracy)}% (95% CI; {right} of '
                 f'{len(predictions.query.names)} query images right)')
  return '\n'.join(lines)


def _define_flags():
  trained_lib.define_flags()
  flags.DEFINE_string('support_dir', None, 'One sub-folder of images per class.')
  flags.DEFINE_string('query_dir', None, 'The images to classify, or sub-folders named as the '
                      'support classes (the true labels).')
  flags.DEFINE_string('output_dir', 'predictions', 'Where predictions.csv and '
                      'contact_sheet.png go.')
  flags.DEFINE_integer('max_sheet_images', 100, 'Query images drawn on the contact sheet.',
                       lower_bound=1)
  flags.mark_flags_as_required(['support_dir', 'query_dir'])


def main(argv):
  del argv
  tf.get_logger().setLevel('ERROR')  # TensorFlow's deprecation notes while tracing.
  run_dir_lib.check_output_dir(FLAGS.output_dir, 'output folder (--output_dir)')
  trained = trained_lib.load_from_flags()
  predictions = predict(trained, FLAGS.support_dir, FLAGS.query_dir)
  paths = write(predictions, FLAGS.output_dir, FLAGS.max_sheet_images)
  print(summary(predictions))
  print(f'Wrote {paths[PREDICTIONS]} and {paths[CONTACT_SHEET]}')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
