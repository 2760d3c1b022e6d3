"""Load test of `serve.py`, beside offline translation of the same text.

  python -m bench.serve_load --workdir=workdir/default --concurrency=1,8,32,128

Sentences: test_2016_flickr's English side ($MULTI30K_DIR/test_2016_flickr.en.gz).
1. Offline: a Translator in this process translates them all in one call (infer.py
   --mode=translate's batching), timed after an untimed call that compiles; then
   `--single` of them one at a time, for one sentence's decode time.
2. Server: starts `serve.py` on a free 127.0.0.1 port (or uses `--url`),
   waits for /readyz, then for each concurrency level runs that many clients, each
   sending one sentence per request and the next when answered, until `--requests`
   are answered or `--seconds` have passed. One untimed round first sends every
   sentence once.
One JSON line per measurement: latency percentiles (ms) and sentences/s; server lines
carry `of_offline`, their throughput over the offline one, and `p99_of_single_p99`,
their p99 latency over that of offline one-sentence calls. Both sides decode with the
run's config.decode.
"""
import asyncio
import contextlib
import gzip
import itertools
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

from absl import app
from absl import flags
import aiohttp
import numpy as np

from inference import compile_cache
from inference.translator import Translator

_WORKDIR = flags.DEFINE_string("workdir", "workdir/default", "Training workdir.")
_DATA = flags.DEFINE_string(
    "data", None, "Source sentences, one a line (.gz read as gzip). Default:"
    " $MULTI30K_DIR (else ../shared/data/multi30k)/test_2016_flickr.en.gz.")
_CONCURRENCY = flags.DEFINE_list("concurrency", ["1", "8", "32", "128"],
                                 "Clients sending at once, one level after another.")
_REQUESTS = flags.DEFINE_integer("requests", 1000, "Requests per level, at most.")
_SECONDS = flags.DEFINE_float("seconds", 60, "Seconds per level, at most.")
_SINGLE = flags.DEFINE_integer("single", 100, "Sentences translated one at a time"
                               " offline, for one sentence's decode time; 0: skip.")
_OFFLINE = flags.DEFINE_bool("offline", True, "Measure offline translation first.")
_MAX_SOURCE_LEN = flags.DEFINE_integer(
    "max_source_len", None, "Tokens a sentence is cut to, offline and in the server;"
    " default the model's limit.")
_URL = flags.DEFINE_string("url", None, "A running server; default: start one.")
_SERVER_FLAGS = flags.DEFINE_list(
    "server_flags", [], "Extra serve.py flags for the server it starts, e.g."
    " --server_flags=--batch_tokens=2048,--max_batch_wait_ms=10.")

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _sentences() -> list[str]:
  path = _DATA.value or os.path.join(
      os.environ.get("MULTI30K_DIR") or _REPO.parent / "shared/data/multi30k",
      "test_2016_flickr.en.gz")
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    return [line.rstrip("\n") for line in f if line.strip()]


def _percentiles(seconds: list[float]) -> dict:
  p50, p90, p99 = np.percentile(seconds, [50, 90, 99]) * 1000
  return {"p50_ms": round(p50, 2), "p90_ms": round(p90, 2), "p99_ms": round(p99, 2)}


def _offline(sentences: list[str]) -> list[dict]:
  """Throughput of one batched call, and one sentence's latency, in this process."""
  translator = Translator.from_workdir(_WORKDIR.value, max_len=_MAX_SOURCE_LEN.value)
  translator.translate(sentences)  # Compiles.
  start = time.perf_counter()
  translator.translate(sentences)
  seconds = time.perf_counter() - start
  lines = [{"mode": "offline", "sentences": len(sentences),
            "seconds": round(seconds, 3),
            "sentences_per_s": round(len(sentences) / seconds, 2)}]
  if _SINGLE.value:
    single = sentences[:_SINGLE.value]
    for text in single:  # Compiles the batch-1 shapes.
      translator.translate([text])
    times = []
    for text in single:
      start = time.perf_counter()
      translator.translate([text])
      times.append(time.perf_counter() - start)
    lines.append({"mode": "offline_single", "sentences": len(single),
                  **_percentiles(times)})
  return lines


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def _server():
  """The base URL of a server: `--url`, or a serve.py started here."""
  if _URL.value:
    yield _URL.value.rstrip("/")
    return
  port = _free_port()
  process = subprocess.Popen(
      [sys.executable, str(_REPO / "serve.py"),
       f"--workdir={os.path.abspath(_WORKDIR.value)}", f"--port={port}",
       *([f"--max_source_len={_MAX_SOURCE_LEN.value}"] if _MAX_SOURCE_LEN.value
         else []), *_SERVER_FLAGS.value],
      cwd=_REPO, env={**os.environ, "PYTHONPATH": str(_REPO)})
  try:
    yield f"http://127.0.0.1:{port}"
  finally:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)


async def _wait_ready(session: aiohttp.ClientSession, url: str) -> None:
  start = time.monotonic()
  while True:
    with contextlib.suppress(aiohttp.ClientError):
      async with session.get(url + "/readyz") as response:
        if response.status == 200:
          print(f"Server ready after {time.monotonic() - start:.0f} s.", file=sys.stderr)
          return
    await asyncio.sleep(1)


async def _level(session, url: str, sentences: list[str], concurrency: int,
                 requests: int, seconds: float) -> dict:
  """`concurrency` clients until `requests` are answered or `seconds` pass."""
  texts = itertools.cycle(sentences)
  latencies, errors, started = [], 0, 0
  start = time.perf_counter()
  deadline = start + seconds

  async def client():
    nonlocal errors, started
    while started < requests and time.perf_counter() < deadline:
      started += 1
      sent = time.perf_counter()
      async with session.post(url + "/v1/translate",
                              json={"text": [next(texts)]}) as response:
        await response.read()
        if response.status == 200:
          latencies.append(time.perf_counter() - sent)
        else:
          errors += 1

  await asyncio.gather(*(client() for _ in range(concurrency)))
  elapsed = time.perf_counter() - start
  return {"mode": "server", "concurrency": concurrency, "requests": len(latencies),
          "errors": errors, "seconds": round(elapsed, 2),
          "sentences_per_s": round(len(latencies) / elapsed, 2),
          **_percentiles(latencies or [float("nan")])}


async def _load(url: str, sentences: list[str], offline: dict) -> None:
  levels = [int(c) for c in _CONCURRENCY.value]
  connector = aiohttp.TCPConnector(limit=max(levels))
  timeout = aiohttp.ClientTimeout(total=600)
  async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
    await _wait_ready(session, url)
    await _level(session, url, sentences, max(levels), len(sentences), 600)  # Untimed.
    for concurrency in levels:
      line = await _level(session, url, sentences, concurrency, _REQUESTS.value,
                          _SECONDS.value)
      if "offline" in offline:
        line["of_offline"] = round(line["sentences_per_s"]
                                   / offline["offline"]["sentences_per_s"], 3)
      if "offline_single" in offline:
        line["p99_of_single_p99"] = round(line["p99_ms"]
                                          / offline["offline_single"]["p99_ms"], 3)
      print(json.dumps(line), flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  compile_cache.enable(None)  # The server uses the same cache by default.
  sentences = _sentences()
  offline = {}
  if _OFFLINE.value:
    for line in _offline(sentences):
      print(json.dumps(line), flush=True)
      offline[line["mode"]] = line
  with _server() as url:
    asyncio.run(_load(url, sentences, offline))


if __name__ == "__main__":
  app.run(main)
