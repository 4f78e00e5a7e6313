r"""Export a meta-trained learner as a TensorFlow SavedModel that adapts and predicts.

    python -m meta_dataset_ext.export --checkpoint_dir=runs/quickstart/alfa_fo_proto_maml \
        --export_dir=exported/glyphs [--num_steps=N] [--ensemble_top_k=K] [--overwrite]

The SavedModel's serving signature (also ``serving_default``) is

    adapt_and_predict(support_images  float32 [n_support, h, h, 3] in [-1, 1],
                      support_labels  int32 [n_support], classes 0 .. way - 1,
                      query_images    float32 [n_query, h, h, 3] in [-1, 1])
        -> {'probabilities': float32 [n_query, way]}

It runs the whole inner loop in the graph (the Proto-MAML head from the support prototypes,
the inner steps with ALFA's generated learning rates and weight decays, or MAML's fixed rate),
then the query logits; with --ensemble_top_k the logits of the best checkpoints are averaged.
Any number of support and query images, and any way from 1 to the learner's logit_dim: the
way is the largest support label + 1, and labels out of range or a class without a support
image fail with a message naming support_labels. ``adapt_and_predict_encoded`` takes the
images as encoded JPEG/PNG/GIF/BMP files instead (string [n]: the files' bytes, any size,
grey or colour) and decodes them in the graph exactly as the run's training decoded its
records (``meta_dataset_ext.data.reader.decode_image``). ``model.json`` beside the model
records h, logit_dim, the inner steps, the decoding and the checkpoints.

The SavedModel is plain TensorFlow: ``tf.saved_model.load(export_dir)`` in any TensorFlow 2
program (nothing of alfa-tf or gin is imported), ``saved_model_cli run`` and TensorFlow
Serving run it. It holds the meta-parameters only. Loading logs that the graph holds "ops
with unsaved custom gradients" (the inner loop's BatchNorm and max pooling): serving asks for
no gradient. After writing, the command loads the SavedModel back and checks that both
signatures give the learner's probabilities (to 1e-5) on a random task of logit_dim classes.

TF Lite: not offered. The inner loop's gradient ops (Conv2DBackpropFilter, MaxPoolGrad,
FusedBatchNormGradV3, ReluGrad, ...) are not TF Lite builtins, so the model converts only with
``SELECT_TF_OPS`` and then needs the Flex delegate, which TensorFlow's own Python interpreter
(``tf.lite.Interpreter``) does not link. A ``.keras`` file is not offered either: it would need
alfa-tf's classes to load.
"""
import json
import os
import shutil
import tempfile
from typing import Dict

from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from meta_dataset_ext import cli
from meta_dataset_ext import errors
from meta_dataset_ext import run_dir as run_dir_lib
from meta_dataset_ext import trained as trained_lib
from meta_dataset_ext.data import writer

SIGNATURE = 'adapt_and_predict'
ENCODED_SIGNATURE = 'adapt_and_predict_encoded'
OUTPUT = 'probabilities'
METADATA = 'model.json'
TOLERANCE = 1e-5

FLAGS = flags.FLAGS


def serving_functions(trained: trained_lib.TrainedLearner) -> Dict[str, object]:
  """{signature name: ``tf.function`` of fixed input signature} (module docstring)."""
  height = trained.image_height
  images = tf.TensorSpec([None, height, height, 3], tf.float32)
  encoded = tf.TensorSpec([None], tf.string)
  labels = tf.TensorSpec([None], tf.int32)

  def adapt_and_predict(support_images, support_labels, query_images):
    return {OUTPUT: trained.probabilities(support_images, support_labels, query_images)}

  def decode(files):
    return tf.map_fn(trained.decode, files,
                     fn_output_signature=tf.TensorSpec(images.shape[1:], tf.float32))

  def adapt_and_predict_encoded(support_images, support_labels, query_images):
    return adapt_and_predict(decode(support_images), support_labels, decode(query_images))

  # The learners have no control flow on tensors: AutoGraph has nothing to convert.
  return {SIGNATURE: tf.function(adapt_and_predict, autograph=False,
                                 input_signature=[images, labels, images]),
          ENCODED_SIGNATURE: tf.function(adapt_and_predict_encoded, autograph=False,
                                         input_signature=[encoded, labels, encoded])}


def metadata(trained: trained_lib.TrainedLearner) -> dict:
  """What ``model.json`` records about the exported learner."""
  return dict(learner=trained.name, signatures=[SIGNATURE, ENCODED_SIGNATURE], output=OUTPUT,
              image_height=trained.image_height, image_range=[-1.0, 1.0],
              image_decoding=trained.image_decoding, logit_dim=trained.logit_dim,
              num_steps=trained.num_steps, run_dir=os.path.abspath(trained.run_dir),
              checkpoints=[os.path.relpath(p, trained.run_dir) for p in trained.checkpoints],
              checkpoint_steps=trained.steps)


def save(trained: trained_lib.TrainedLearner, export_dir: str) -> None:
  """Writes the SavedModel of ``trained`` and its ``model.json`` to ``export_dir``."""
  functions = serving_functions(trained)
  concrete = {name: f.get_concrete_function() for name, f in functions.items()}
  module = tf.Module()
  # Only the variables the graphs read are saved, not the learners' Keras objects: the model
  # needs none of their Python classes, and TF1 loaders such as saved_model_cli find each
  # variable under one name.
  module.meta_parameters = list(concrete[SIGNATURE].variables)
  for name, function in functions.items():
    setattr(module, name, function)
  tf.saved_model.save(module, export_dir,
                      signatures=dict(concrete, serving_default=concrete[SIGNATURE]),
                      options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
  with open(os.path.join(export_dir, METADATA), 'w', encoding='utf-8') as f:
    json.dump(metadata(trained), f, indent=1)


def load(export_dir: str):
  """``tf.saved_model.load`` without its warning about the custom gradients (module doc)."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.ERROR)
  try:
    return tf.saved_model.load(export_dir)
  finally:
    logging.set_verbosity(verbosity)


def verify(trained: trained_lib.TrainedLearner, export_dir: str, seed: int = 0) -> float:
  """The largest difference between the SavedModel's probabilities and the learner's, over
  both signatures, on a random task of logit_dim classes (RuntimeError above TOLERANCE)."""
  rng = np.random.default_rng(seed)
  height, way = trained.image_height, trained.logit_dim
  labels = np.repeat(np.arange(way, dtype=np.int32), 2)
  files = {part: [writer.encode_png(rng.integers(0, 256, (height + 3, height + 1, 3), np.uint8))
                  for _ in range(n)] for part, n in (('support', len(labels)), ('query', 3))}
  pixels = {part: tf.stack([trained.decode(f) for f in part_files])
            for part, part_files in files.items()}
  expected = trained.probabilities(pixels['support'], labels, pixels['query'], way).numpy()
  model = load(export_dir)
  difference = 0.0
  for name, inputs in ((SIGNATURE, pixels), (ENCODED_SIGNATURE, files)):
    served = model.signatures[name](
        support_images=tf.constant(inputs['support']), support_labels=tf.constant(labels),
        query_images=tf.constant(inputs['query']))[OUTPUT].numpy()
    if served.shape != expected.shape:
      raise RuntimeError(f'{name} of {export_dir!r} gives probabilities of shape '
                         f'{served.shape}, the learner {expected.shape}.')
    difference = max(difference, float(np.max(np.abs(served - expected))))
  if not difference <= TOLERANCE:
    raise RuntimeError(f'The SavedModel in {export_dir!r} gives probabilities that differ from '
                       f'the learner\'s by {difference}.')
  return difference


def export(checkpoint_dir: str, export_dir: str, num_steps=None, ensemble_top_k: int = 0,
           overwrite: bool = False) -> trained_lib.TrainedLearner:
  """Loads the run, writes its SavedModel to ``export_dir`` (through a temporary folder, so
  a failed export leaves nothing half-written), verifies it; returns the learner exported.

  Raises:
    ConfigError: a bad run (``trained.load``), or an ``export_dir`` that is a file, cannot
      be written, or is a non-empty folder (one holding a SavedModel: unless ``overwrite``).
  """
  run_dir_lib.check_output_dir(export_dir, 'export folder (--export_dir)')
  if os.path.isdir(export_dir) and os.listdir(export_dir):
    if not os.path.isfile(os.path.join(export_dir, 'saved_model.pb')):
      raise errors.ConfigError(f'The export folder {export_dir!r} (--export_dir) is not empty '
                               'and holds no SavedModel: give a new or empty folder.')
    if not overwrite:
      raise errors.ConfigError(f'The export folder {export_dir!r} (--export_dir) already holds '
                               'a SavedModel: pass --overwrite to replace it, or give another '
                               'folder.')
  trained = trained_lib.load(checkpoint_dir, ensemble_top_k, num_steps)
  parent = os.path.dirname(os.path.abspath(export_dir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(export_dir)}.tmp-')
  try:
    save(trained, staging)
    verify(trained, staging)
    run_dir_lib.readable_mode(staging)
    if os.path.isdir(export_dir):
      shutil.rmtree(export_dir)
    os.replace(staging, export_dir)
  finally:
    if os.path.isdir(staging):
      shutil.rmtree(staging)
  return trained


def _define_flags():
  trained_lib.define_flags()
  flags.DEFINE_string('export_dir', None, 'The SavedModel folder to write.')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing SavedModel in --export_dir.')
  flags.mark_flag_as_required('export_dir')


def main(argv):
  del argv
  tf.get_logger().setLevel('ERROR')  # TensorFlow's deprecation notes while tracing.
  trained = export(FLAGS.checkpoint_dir, FLAGS.export_dir, FLAGS.num_steps,
                   FLAGS.ensemble_top_k, FLAGS.overwrite)
  checkpoints = ', '.join(f'{os.path.basename(p)} (update {s})'
                          for p, s in zip(trained.checkpoints, trained.steps))
  print(f'Exported {trained.name} from {checkpoints}: {trained.num_steps} inner steps, up to '
        f'{trained.logit_dim} classes, images {trained.image_height}x{trained.image_height}.')
  print(f'SavedModel: {os.path.abspath(FLAGS.export_dir)}; signatures {SIGNATURE!r} (images '
        f'in [-1, 1]) and {ENCODED_SIGNATURE!r} (image files): support_images, '
        f'support_labels, query_images -> {OUTPUT}. Both give the learner\'s probabilities '
        f'(checked to {TOLERANCE:g}).')


if __name__ == '__main__':
  _define_flags()
  cli.run(main)
