"""A command that fails while its episode generator is reading.

    python -m tests.data.exit_while_reading --records_root_dir=R --source=S \\
        [--unguarded]

Reading is slowed down (a sleep, which lets go of the interpreter as a file
read does) so that when the command fails, a call of the generator is in
flight. It fails as the command-line tools do (`cli.run`): the dataset's
iterator, referenced by the traceback of the error, lives until the
interpreter shuts down. --unguarded removes the pipeline's exit handler, to
show that the command then hangs. Used by test_pipeline.
"""

import atexit
import time

from absl import flags

from meta_dataset_ext import cli
from meta_dataset_ext import errors
from meta_dataset_ext.data import pipeline
from meta_dataset_ext.data import reader

FLAGS = flags.FLAGS
flags.DEFINE_string("records_root_dir", None, "Records root.")
flags.DEFINE_string("source", None, "Source to read.")
flags.DEFINE_bool("unguarded", False, "Remove the pipeline's exit handler.")

_READ_SECONDS = 0.3


def main(argv):
  del argv  # Unused.
  if FLAGS.unguarded:
    # pylint: disable-next=protected-access
    atexit.unregister(pipeline._GENERATORS._stop)
  read_images = reader.ClassRecords.read_images

  def slow_read_images(self, class_id, indices):
    time.sleep(_READ_SECONDS)
    return read_images(self, class_id, indices)

  reader.ClassRecords.read_images = slow_read_images
  iterator = iter(pipeline.make_episode_dataset(FLAGS.records_root_dir,
                                                FLAGS.source, "TRAIN"))
  next(iterator)
  time.sleep(_READ_SECONDS / 2)  # The generator is reading ahead now.
  raise errors.DataError(f"stopped with {type(iterator).__name__} alive")


if __name__ == "__main__":
  cli.run(main)
