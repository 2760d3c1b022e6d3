"""parallel/processes.py: process 0 does the work, every process learns how it went."""
import jax
from jax.experimental import multihost_utils
import numpy as np
import pytest

from parallel import processes


@pytest.fixture
def broadcasts(monkeypatch):
  """Records what process 0 broadcasts; returns `reply` (None: what was sent)."""
  sent, reply = [], {"value": None}

  def broadcast(x):
    sent.append(np.asarray(x).tolist())
    return x if reply["value"] is None else np.asarray(reply["value"], np.int32)
  monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", broadcast)
  return sent, reply


def test_process_0_returns_the_value_to_all(broadcasts):
  sent, _ = broadcasts
  assert processes.on_process_0(lambda: 7, "count lines") == 7
  assert processes.on_process_0(lambda: None, "write a file") == 0
  assert sent == [[1, 7], [1, 0]]


def test_process_0_reraises_any_error_after_telling_the_others(broadcasts):
  sent, _ = broadcasts

  def fail():
    raise PermissionError("read-only workdir")
  with pytest.raises(PermissionError, match="read-only"):
    processes.on_process_0(fail, "lock /w")
  assert sent == [[0, 0]]  # Told before raising: no process is left waiting.


def test_other_processes_raise_when_process_0_failed(broadcasts, monkeypatch):
  _, reply = broadcasts
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  ran = []
  reply["value"] = [0, 0]
  with pytest.raises(TimeoutError, match="Process 0 could not lock /w"):
    processes.on_process_0(lambda: ran.append(1), "lock /w", error=TimeoutError)
  assert not ran  # Only process 0 runs fn.
  reply["value"] = [1, 5]
  assert processes.on_process_0(lambda: ran.append(1), "count lines") == 5
