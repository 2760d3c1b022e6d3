"""Timing of jitted calls, shared by the benchmarks: compile apart, then medians."""
from collections.abc import Callable
import dataclasses
import statistics
import time
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Timing:
  first_s: float  # The first call, compilation included.
  times: list[float]  # Seconds of each repeated call, in order.
  output: Any  # What the last call returned.

  @property
  def median_s(self) -> float:
    return statistics.median(self.times)

  def percentile_ms(self, q: float) -> float:
    return 1000 * float(np.percentile(self.times, q))


def time_calls(fn: Callable[[], Any], repeats: int) -> Timing:
  """Calls `fn` once to compile, then `repeats` times, waiting for each result."""
  start = time.perf_counter()
  output = jax.block_until_ready(fn())
  first_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    output = jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return Timing(first_s=first_s, times=times, output=output)
