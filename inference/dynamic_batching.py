"""Dynamic batching for a server: sentences from many requests, one device batch.

Each sentence is a job with a key: jobs of one key can share a batch (for translation
the source bucket, beam size, alpha and n-best; for scoring the bucket). A batch of a
key is sent when it is full (`per_batch(key)` jobs) or when its oldest job has waited
`max_wait_s`, whichever comes first; full batches go before late ones, the oldest
first. The model runs in a worker thread, one batch at a time, so the event loop never
blocks and keeps queueing while the device is busy: under load, batches fill up while
the previous one decodes. A batch with rows to spare takes jobs of the keys
`fillers(key)` names, in that order (the server names the same options' smaller
buckets, padded up: more sentences per device call for a little padding).

A request's sentences may ride in different batches; each has its own future, so the
request gathers them back in order. A cancelled future (a timed-out or disconnected
request) is dropped before its batch forms.
"""
import asyncio
import collections
from collections.abc import Callable, Hashable, Sequence
import concurrent.futures
import dataclasses
import time
from typing import Any

from absl import logging

# run(key, items) -> one result per item, in order; called in the worker thread.
RunFn = Callable[[Hashable, list[Any]], list[Any]]


class QueueFull(Exception):
  """More sentences would wait than the queue holds; the caller should retry later."""


@dataclasses.dataclass(eq=False)
class _Job:
  item: Any
  future: asyncio.Future
  enqueued: float  # time.monotonic()


class Batcher:
  """Queues (key, item) jobs and runs them in batches of one key on `executor`."""

  def __init__(self, run: RunFn, per_batch: Callable[[Hashable], int], *,
               max_wait_s: float, max_queue: int,
               executor: concurrent.futures.Executor,
               fillers: Callable[[Hashable], Sequence[Hashable]] = lambda key: ()):
    self._run = run
    self._per_batch = per_batch
    self._fillers = fillers
    self._max_wait_s = max_wait_s
    self._max_queue = max_queue
    self._executor = executor
    self._pending: dict[Hashable, collections.deque[_Job]] = {}
    self._wakeup = asyncio.Event()
    self._closing = False
    self._task: asyncio.Task | None = None

  @property
  def depth(self) -> int:
    """Sentences waiting for a batch (not those being decoded)."""
    return sum(len(q) for q in self._pending.values())

  def start(self) -> None:
    self._task = asyncio.get_running_loop().create_task(self._loop())

  async def close(self) -> None:
    """Sends what is queued without waiting for batches to fill, then stops."""
    self._closing = True
    self._wakeup.set()
    if self._task is not None:
      await self._task

  def drain(self) -> None:
    """From now on, send batches at once instead of waiting for them to fill."""
    self._closing = True
    self._wakeup.set()

  def submit(self, jobs: Sequence[tuple[Hashable, Any]]) -> list[asyncio.Future]:
    """Queues all of `jobs` or none; one future per job, in order.

    Raises QueueFull if they do not fit in the queue.
    """
    if self.depth + len(jobs) > self._max_queue:
      self._drop_cancelled()
      if self.depth + len(jobs) > self._max_queue:
        raise QueueFull(f"{self.depth} sentences queued; {len(jobs)} more would pass"
                        f" the limit of {self._max_queue}.")
    loop = asyncio.get_running_loop()
    now = time.monotonic()
    futures = []
    for key, item in jobs:
      future = loop.create_future()
      self._pending.setdefault(key, collections.deque()).append(
          _Job(item, future, now))
      futures.append(future)
    self._wakeup.set()
    return futures

  def _drop_cancelled(self) -> None:
    for key in list(self._pending):
      queue = collections.deque(j for j in self._pending[key] if not j.future.done())
      if queue:
        self._pending[key] = queue
      else:
        del self._pending[key]

  def _next(self) -> tuple[Hashable | None, float | None]:
    """(key to send now, None) or (None, seconds until the next batch is due)."""
    self._drop_cancelled()
    now = time.monotonic()
    full, due, wait = [], [], None
    for key, queue in self._pending.items():
      head = queue[0].enqueued
      if len(queue) >= self._per_batch(key):
        full.append((head, key))
      elif self._closing or now >= head + self._max_wait_s:
        due.append((head, key))
      else:
        left = head + self._max_wait_s - now
        wait = left if wait is None else min(wait, left)
    ready = full or due
    if ready:
      return min(ready, key=lambda x: x[0])[1], None
    return None, wait

  def _take(self, key: Hashable) -> list[_Job]:
    """Up to a full batch: the jobs of `key`, then of its fillers, oldest first."""
    jobs, room = [], self._per_batch(key)
    for k in (key, *self._fillers(key)):
      queue = self._pending.get(k)
      while queue and len(jobs) < room:
        jobs.append(queue.popleft())
      if queue is not None and not queue:
        del self._pending[k]
    return jobs

  async def _loop(self) -> None:
    loop = asyncio.get_running_loop()
    while True:
      self._wakeup.clear()
      key, wait = self._next()
      if key is None:
        if self._closing and not self._pending:
          return
        try:
          await asyncio.wait_for(self._wakeup.wait(), wait)
        except TimeoutError:
          pass
        continue
      jobs = self._take(key)
      try:
        results = await loop.run_in_executor(self._executor, self._run, key,
                                             [j.item for j in jobs])
      except Exception as e:  # pylint: disable=broad-except
        logging.exception("Batch of %d for %s failed.", len(jobs), key)
        for job in jobs:
          if not job.future.done():
            job.future.set_exception(e)
        continue
      for job, result in zip(jobs, results, strict=True):
        if not job.future.done():
          job.future.set_result(result)
