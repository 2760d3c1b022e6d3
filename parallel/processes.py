"""Work one process does for all: process 0 runs it, every process learns the outcome.

File writes to a shared workdir (a lock, a tokenizer copy, appended translations)
must happen once. If process 0 failed silently, the others would wait at their next
collective forever; here every process raises at once instead.
"""
from collections.abc import Callable

import jax
from jax.experimental import multihost_utils
import numpy as np


def on_process_0(fn: Callable[[], int | None], what: str,
                 error: type[Exception] = RuntimeError) -> int:
  """fn() on process 0; its int result (None: 0) is returned on every process.

  If fn raises, process 0 re-raises that exception and every other process raises
  `error`, saying that process 0 could not `what` (e.g. "lock WORKDIR").
  """
  value, failure = 0, None
  if jax.process_index() == 0:
    try:
      value = int(fn() or 0)
    except Exception as e:  # pylint: disable=broad-except  # Raised below, after all know.
      failure = e
  ok, value = (int(x) for x in multihost_utils.broadcast_one_to_all(
      np.array([failure is None, value], np.int32)))
  if failure is not None:
    raise failure
  if not ok:
    raise error(f"Process 0 could not {what}: its log says why.")
  return value
