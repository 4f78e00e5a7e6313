"""Trains the tiny run (6 updates, a checkpoint after each) and kills itself with SIGKILL
``delay`` seconds into the checkpoint save of update ``at``: a ``kill -9`` while the checkpoint
is being written.

    python -m tests.faults.kill_during_save RECORDS RUN_DIR AT DELAY
"""
import os
import signal
import sys
import threading
import time

from tests.trainer import tiny

BINDINGS = ['Trainer.num_updates = 6', 'Trainer.checkpoint_every = 1']


def main(records: str, run: str, at: int, delay: float) -> None:
  trainer = tiny.make_trainer(records, run, extra=BINDINGS)
  save = trainer._save  # pylint: disable=protected-access

  def save_and_die(done):
    if done == at:
      threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
      save(done)
      time.sleep(60)  # The timer kills the process before this ends.
    return save(done)

  trainer._save = save_and_die  # pylint: disable=protected-access
  trainer.train()


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
