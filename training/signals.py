"""SIGTERM during training: checkpoint the current step, then stop.

Schedulers preempt a job with SIGTERM and a grace period (often 30 s), so the loop
must save soon after it: between steps, or by abandoning an evaluation.
"""
import contextlib
import signal
import threading

from absl import logging
import jax


class EvaluationInterrupted(Exception):
  """A SIGTERM arrived during an evaluation; the pass was abandoned to save sooner."""


class Sigterm:
  """Remembers a SIGTERM so the loop can checkpoint the current step and stop.

  Installed while a `trainer.Trainer` is entered (a context manager; at exit the
  previous handler comes back). An evaluation (a validation BLEU pass can take
  minutes) is abandoned instead of awaited: inside `interruptible()` the handler
  raises `EvaluationInterrupted`, which Python delivers once the running device call
  returns, i.e. between batches.

  Single-process runs only: hosts of a multi-host run would see the signal at
  different steps, so there JAX's preemption service decides when all of them stop
  (`Checkpointer.reached_preemption`).
  """

  def __init__(self):
    self.received = False
    self._evaluating = False
    self._previous = None  # The handler to restore; None if none was installed.

  def __enter__(self):
    if (jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      previous = signal.getsignal(signal.SIGTERM)
      # None: a handler set outside Python; the default is the closest to put back.
      self._previous = signal.SIG_DFL if previous is None else previous
      signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  @contextlib.contextmanager
  def interruptible(self):
    """Runs the body unless a SIGTERM came; a SIGTERM during it aborts it."""
    if self.received:
      raise EvaluationInterrupted("SIGTERM received before the evaluation.")
    self._evaluating = True
    try:
      yield
    finally:
      self._evaluating = False

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint at the current step, then stopping.")
    self.received = True
    if self._evaluating:
      self._evaluating = False  # Raised once, even if a second SIGTERM follows.
      raise EvaluationInterrupted("SIGTERM received during the evaluation.")
