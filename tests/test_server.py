"""The HTTP server (inference/server.py) on loopback, with a tiny random-weight model.

One server for the module: its warm-up compiles the few batch shapes of a 16-token
limit and a 32-token batch budget; the other servers share its Translator, so they
compile nothing. Clients are plain urllib, from threads for concurrency.
"""
import asyncio
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from aiohttp import web
import jax
from prometheus_client import parser
import pytest

from inference import dynamic_batching
from inference import server
from inference.translator import Translator
from tests.conftest import REPO
from tests.test_translator import random_workdir

MAX_LEN = 16  # Source tokens: buckets 8 and 16 only.
BATCH_TOKENS = 32  # Batches of (1|2|4, 8) and (1|2, 16): five shapes.
TEXTS = ["A man in a blue shirt is riding a bike.", "", "Two dogs play.",
         "A little girl climbs into a wooden playhouse while her brother watches from"
         " the grass, laughing.",  # Over 16 tokens: truncated.
         "People walk.", "A woman sells fruit.", "   ", "Hi"]

def _batcher(batches: list, per_batch=4, max_wait_s=0.05, max_queue=10):
  """A Batcher whose model records each batch and doubles its items.

  Batches of key "b" take jobs of key "a" into spare rows.
  """
  def run(key, items):
    batches.append((key, list(items)))
    return [2 * x for x in items]
  return dynamic_batching.Batcher(run, lambda key: per_batch, max_wait_s=max_wait_s,
                          max_queue=max_queue,
                          executor=concurrent.futures.ThreadPoolExecutor(1),
                          fillers=lambda key: ["a"] if key == "b" else [])


def test_batcher_sends_full_batches_at_once_and_others_after_the_wait():
  async def main():
    batches = []
    batcher = _batcher(batches, max_wait_s=0.3)
    batcher.start()
    start = time.monotonic()
    full = batcher.submit([("a", i) for i in range(4)])  # A full batch of key a,
    late = batcher.submit([("c", 10), ("a", 4)])  # and two that wait for mates.
    assert await asyncio.gather(*full) == [0, 2, 4, 6]
    assert time.monotonic() - start < 0.25
    assert await asyncio.gather(*late) == [20, 8]  # In the order asked.
    older = batcher.submit([("b", 6)])
    await asyncio.sleep(0.05)
    newer = batcher.submit([("a", 5)])  # Rides in b's batch, in a spare row.
    assert await asyncio.gather(*older, *newer) == [12, 10]
    assert time.monotonic() - start >= 0.3
    with pytest.raises(dynamic_batching.QueueFull):  # All or nothing.
      batcher.submit([("a", i) for i in range(11)])
    cancelled = batcher.submit([("d", 1)])
    cancelled[0].cancel()
    kept = batcher.submit([("d", 2)])
    await batcher.close()  # Sends what waits at once.
    assert await kept[0] == 4 and time.monotonic() - start < 0.9
    return batches
  batches = asyncio.run(main())
  assert batches[0] == ("a", [0, 1, 2, 3]) and batches[-1] == ("d", [2])
  assert sorted(batches[1:3]) == [("a", [4]), ("c", [10])]  # Equally old.
  assert batches[3] == ("b", [6, 5])


@pytest.fixture(scope="module")
def workdir(prepared, tmp_path_factory):
  return random_workdir(prepared, tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def translator(workdir):
  return Translator.from_workdir(str(workdir), max_len=MAX_LEN,
                                 batch_tokens=BATCH_TOKENS)


class _Served:
  """An aiohttp app on 127.0.0.1:<free port>, on an event loop in its own thread."""

  def __init__(self, app: web.Application):
    self.loop = asyncio.new_event_loop()
    self.runner = web.AppRunner(app, **server.RUNNER_OPTIONS)
    threading.Thread(target=self.loop.run_forever, daemon=True).start()
    self._call(self.runner.setup())
    site = web.TCPSite(self.runner, "127.0.0.1", 0)
    self._call(site.start())
    self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

  def _call(self, coroutine):
    return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=600)

  def close(self):
    self._call(self.runner.cleanup())
    self.loop.call_soon_threadsafe(self.loop.stop)

  def wait_ready(self, timeout=600):
    deadline = time.monotonic() + timeout
    while _get(self.url + "/healthz")[0] != 200:
      assert time.monotonic() < deadline, "server not ready in time"
      time.sleep(0.2)


def _request(url, body: bytes | None = None):
  """(status, headers, body) of a GET (no body) or POST."""
  try:
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=120) as r:
      return r.status, r.headers, r.read()
  except urllib.error.HTTPError as e:
    return e.code, e.headers, e.read()


def _get(url):
  try:
    return _request(url)
  except urllib.error.URLError:
    return None, None, b""


def _post(url, payload) -> tuple[int, dict]:
  body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
  status, _, data = _request(url, body)
  return status, json.loads(data)


@pytest.fixture(scope="module")
def served(translator):
  served = _Served(server.make_app(translator, server.ServerConfig(
      batch_tokens=BATCH_TOKENS, max_batch_wait_ms=20, max_request_sentences=20,
      max_body_bytes=1 << 18)))
  served.wait_ready()
  yield served
  served.close()


def test_translator_rejects_one_str_naming_the_fix(translator):
  # A str is a sequence of characters: without the check, one translation each.
  with pytest.raises(TypeError, match=r"list of sentences.*pass \[texts\]"):
    translator.translate("A dog runs.")
  with pytest.raises(TypeError, match=r"pass \[targets\]"):
    translator.score(["A dog runs."], "Un chien court.")


def test_concurrent_requests_get_the_offline_translations_in_order(served, translator):
  requests = [TEXTS[i:] + TEXTS[:i] for i in range(len(TEXTS))] * 2  # 16 orders.
  offline = {t: r for t, r in zip(TEXTS, translator.translate(TEXTS))}
  with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
    responses = list(pool.map(lambda texts: _post(served.url + "/v1/translate",
                                                  {"text": texts}), requests))
  for texts, (status, body) in zip(requests, responses):
    assert status == 200, body
    assert [t["text"] for t in body["translations"]] == [offline[t].text for t in texts]
    assert [t["truncated"] for t in body["translations"]] == [offline[t].truncated
                                                             for t in texts]
  assert offline[TEXTS[3]].truncated


def test_nbest_and_score_match_the_translator(served, translator):
  status, body = _post(served.url + "/v1/translate",
                       {"text": TEXTS[:3], "beam_size": 2, "nbest": 2, "alpha": 0.3})
  assert status == 200, body
  offline = translator.translate(TEXTS[:3], beam_size=2, nbest=2, alpha=0.3)
  for got, want in zip(body["translations"], offline):
    assert [h["text"] for h in got["nbest"]] == [h.text for h in want.nbest]
    assert got["tokens"] == list(want.ids)
  sources, targets = TEXTS[:3], ["Un homme.", "", "Deux chiens jouent."]
  status, body = _post(served.url + "/v1/score", {"source": sources, "target": targets})
  assert status == 200, body
  for got, want in zip(body["scores"], translator.score(sources, targets)):
    assert got["tokens"] == list(want.ids)
    assert got["score"] == pytest.approx(want.score, abs=1e-4)


@pytest.mark.parametrize("payload, code, message", [
    (b"{not json", "invalid_json", "not valid JSON"),
    (b"[1, 2]", "invalid_body", "JSON object"),
    (b'{"text": ["caf\xe9"]}', "invalid_json", "UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json", "nested"),
    (b'{"text": ["a"], "beam_size": ' + b"9" * 5000 + b"}", "invalid_json", "digits"),
    ({"text": "one string"}, "invalid_field", "list of strings"),
    ({"text": ["a", 3]}, "invalid_field", "list of strings"),
    (b'{"text": ["ok", "\\ud800 lone"]}', "invalid_field", "surrogate"),
    ({"text": ["a"], "beam_size": "4"}, "invalid_field", "integer"),
    ({"text": ["a"], "beam_size": 99}, "invalid_field", "limit"),
    ({"text": ["a"], "beam_size": 2, "nbest": 3}, "invalid_field", "nbest"),
    ({"text": ["a"], "alpha": -1}, "invalid_field", "alpha"),
    (b'{"text": ["a"], "alpha": Infinity}', "invalid_field", "alpha"),
    (b'{"text": ["a"], "alpha": 1' + b"0" * 299 + b"}", "invalid_field", "alpha"),
    (b'{"text": ["a"], "alpha": 1' + b"0" * 400 + b"}", "invalid_field", "alpha"),
    ({"text": ["a"], "nbest": 10**30}, "invalid_field", "nbest"),
    ({"text": ["a"], "beams": 2}, "unknown_field", "unknown fields"),
    ({"text": ["a"] * 21}, "too_many_sentences", "at most 20"),
    ({"source": ["a"], "target": []}, "invalid_field", "one target per source"),
    ({"source": ["\udfff"], "target": ["a"]}, "invalid_field", "surrogate"),
])
def test_malformed_requests_get_400_with_a_code_saying_what_is_wrong(
    served, payload, code, message):
  path = "/v1/score" if "source" in str(payload) else "/v1/translate"
  status, body = _post(served.url + path, payload)
  assert status == 400 and message in body["error"], body
  assert body["code"] == code, body


@pytest.mark.parametrize("headers, message", [
    ({"Content-Encoding": "gzip"}, "Content-Encoding"),
    ({"Content-Type": "application/json; charset=bogus"}, "charset"),
])
def test_a_body_that_cannot_be_decoded_gets_400(served, headers, message):
  request = urllib.request.Request(served.url + "/v1/translate", data=b"not gzip",
                                   headers=headers)
  try:
    urllib.request.urlopen(request, timeout=60)
    status, body = 200, {}
  except urllib.error.HTTPError as e:
    status, body = e.code, json.loads(e.read())
  assert status == 400 and body["code"] == "invalid_body", body
  assert message in body["error"]


def test_empty_requests_and_other_methods(served):
  assert _post(served.url + "/v1/translate", {"text": []}) == (200, {"translations": []})
  assert _post(served.url + "/v1/score", {"source": [], "target": []}) == (
      200, {"scores": []})
  status, _, body = _request(served.url + "/v1/translate")  # GET
  assert status == 405 and json.loads(body)["code"] == "method_not_allowed"
  status, _, body = _request(served.url + "/v2/nothing")
  assert status == 404 and json.loads(body)["code"] == "not_found"


def test_body_over_the_limit_gets_413(served):
  status, body = _post(served.url + "/v1/translate", {"text": ["a" * 300_000]})
  assert status == 413 and body["code"] == "body_too_large", body


def test_full_queue_gets_503_and_a_slow_request_504(translator):
  strict = _Served(server.make_app(translator, server.ServerConfig(
      batch_tokens=BATCH_TOKENS, max_batch_wait_ms=2000, max_queue_sentences=2,
      request_timeout_s=0.2, warmup=False)))  # Shares the compiled translator.
  try:
    strict.wait_ready()
    status, headers, body = _request(strict.url + "/v1/translate",
                                     json.dumps({"text": ["a", "b", "c"]}).encode())
    assert status == 503 and "queue full" in json.loads(body)["error"]
    assert json.loads(body)["code"] == "queue_full"
    assert int(headers["Retry-After"]) >= 1
    # One sentence waits 2 s for batch mates: past the 0.2 s timeout.
    status, body = _post(strict.url + "/v1/translate", {"text": ["a"]})
    assert status == 504 and "0.2 s" in body["error"], body
    assert body["code"] == "timeout"
  finally:
    strict.close()


def test_livez_is_200_and_readyz_healthz_503_until_warmup_is_done(translator):
  release = threading.Event()

  class Blocked:  # The translator, with a warm-up that waits for `release`.
    def __getattr__(self, name):
      return getattr(translator, name)

    def warmup(self, *args, **kwargs):
      release.wait(60)

  pending = _Served(server.make_app(Blocked(), server.ServerConfig()))
  try:
    assert _get(pending.url + "/livez")[0] == 200  # Alive while it compiles.
    assert _get(pending.url + "/readyz")[0] == 503
    assert _get(pending.url + "/healthz")[0] == 503
    status, body = _post(pending.url + "/v1/translate", {"text": ["a"]})
    assert status == 503 and "warming up" in body["error"]
    assert body["code"] == "warming_up"
    release.set()
    pending.wait_ready(timeout=30)
    assert _get(pending.url + "/readyz")[0] == 200
    assert _get(pending.url + "/livez")[0] == 200
  finally:
    pending.close()


def test_no_compilation_after_warmup(served):
  compiles = []  # Every new jit trace or XLA compilation, anywhere in the process.

  def listen(event, duration, **kwargs):
    del duration, kwargs
    if event in ("/jax/core/compile/jaxpr_trace_duration",
                 "/jax/core/compile/backend_compile_duration"):
      compiles.append(event)
  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    _send_every_shape(served)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  assert not compiles


def _send_every_shape(served):
  for alpha in (0.0, 0.6, 1.1):  # alpha is traced: no new program.
    for count in (1, 2, 3, 4, 5, 7):  # Every row padding of both buckets.
      for texts in (TEXTS[:count], [TEXTS[3]] * count):
        status, body = _post(served.url + "/v1/translate",
                             {"text": texts, "alpha": alpha})
        assert status == 200, body
        status, body = _post(served.url + "/v1/score", {"source": texts,
                                                        "target": texts})
        assert status == 200, body


def _metric_samples(url) -> tuple[dict, dict]:
  """(families by name, {(sample name, sorted labels): value}) of GET /metrics."""
  status, headers, body = _request(url + "/metrics")
  assert status == 200 and headers["Content-Type"].startswith("text/plain")
  families = {f.name: f for f in parser.text_string_to_metric_families(body.decode())}
  samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for f in families.values() for s in f.samples}
  return families, samples


def test_metrics_follow_the_prometheus_naming_guide(served):
  _post(served.url + "/v1/translate", {"text": TEXTS})
  families, samples = _metric_samples(served.url)
  assert samples[("nmt_requests_total", (("code", "200"),
                                         ("endpoint", "/v1/translate")))] >= 1
  assert samples[("nmt_batch_sentences_count", (("kind", "translate"),))] >= 1
  assert samples[("nmt_tokens_total", (("kind", "translate"), ("side", "source")))] > 0
  assert {"nmt_request_duration_seconds", "nmt_batch_duration_seconds",
          "nmt_queue_sentences", "nmt_ready", "nmt_build_info",
          "process_cpu_seconds", "process_resident_memory_bytes"} <= set(families)
  assert families["nmt_request_duration_seconds"].type == "histogram"
  [build] = families["nmt_build_info"].samples
  assert build.value == 1
  assert {"version", "jax_version", "python_version"} <= set(build.labels)
  # Rates come from counters; every duration is in seconds and says so.
  assert not [n for n in families if n.endswith("per_second")]
  assert not [n for n, f in families.items() if f.type == "histogram" and n.startswith(
      "nmt_") and "seconds" in n and not n.endswith("_duration_seconds")]


def test_probes_and_scrapes_are_not_counted_as_requests(served):
  for path in ("/livez", "/readyz", "/healthz", "/metrics", "/v1/models"):
    assert _get(served.url + path)[0] == 200, path
  _, samples = _metric_samples(served.url)
  endpoints = {dict(labels).get("endpoint") for (name, labels) in samples
               if name.startswith("nmt_request")}
  assert not endpoints & {"/livez", "/readyz", "/healthz", "/metrics"}, endpoints
  assert "/v1/models" in endpoints


def test_models_route_names_the_model_step_parameters_and_decode_defaults(
    served, translator):
  status, _, body = _request(served.url + "/v1/models")
  assert status == 200
  body = json.loads(body)
  [model] = body["data"]
  assert body["object"] == "list" and model["object"] == "model"
  assert model["id"] and model["step"] == translator.step == 1
  assert model["parameters"] == sum(x.size for x in jax.tree.leaves(translator.params))
  assert model["decode"] == {"beam_size": translator.settings.beam_size,
                             "alpha": translator.settings.alpha,
                             "max_len_a": translator.settings.max_len_a,
                             "max_len_b": translator.settings.max_len_b, "nbest": 1}
  assert model["max_source_len"] == MAX_LEN
  assert model["limits"]["max_beam_size"] == 16


def test_work_of_a_client_that_hung_up_is_dropped_and_not_counted_as_200(translator):
  batches = []

  class Recorded:  # The translator, recording each device batch it decodes.
    def __getattr__(self, name):
      return getattr(translator, name)

    def translate_batch(self, sources, *args):
      batches.append(len(sources))
      return translator.translate_batch(sources, *args)

  slow = _Served(server.make_app(Recorded(), server.ServerConfig(
      batch_tokens=BATCH_TOKENS, max_batch_wait_ms=1500, warmup=False)))
  try:
    slow.wait_ready()
    body = json.dumps({"text": ["A dog runs."]}).encode()
    with socket.create_connection(("127.0.0.1", int(slow.url.rsplit(":", 1)[1]))) as s:
      s.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: x\r\nContent-Type:"
                b" application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
      deadline = time.monotonic() + 5
      while _metric_samples(slow.url)[1][("nmt_queue_sentences", ())] < 1:
        assert time.monotonic() < deadline, "the sentence never reached the queue"
        time.sleep(0.02)
    # The client hung up while its sentence waited for batch mates (1.5 s).
    time.sleep(2.5)
    assert batches == []
    _, samples = _metric_samples(slow.url)
    codes = {dict(labels)["code"]: value for (name, labels), value in samples.items()
             if name == "nmt_requests_total"
             and dict(labels)["endpoint"] == "/v1/translate"}
    assert codes == {"499": 1}, codes
  finally:
    slow.close()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_answers_requests_in_flight_and_exits_0_with_an_access_log(workdir):
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  process = subprocess.Popen(
      [sys.executable, str(REPO / "serve.py"), f"--workdir={workdir}",
       f"--port={port}", f"--max_source_len={MAX_LEN}",
       f"--batch_tokens={BATCH_TOKENS}", "--max_batch_wait_ms=30000",
       "--access_log"],
      cwd=REPO, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
  try:
    deadline = time.monotonic() + 600
    while _get(url + "/healthz")[0] != 200:
      assert process.poll() is None, process.stderr.read().decode()[-3000:]
      assert time.monotonic() < deadline
      time.sleep(0.5)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
      # Waits for batch mates (30 s) until SIGTERM sends its batch at once.
      response = pool.submit(_post, url + "/v1/translate", {"text": TEXTS})
      while b"nmt_queue_sentences 0.0" in _get(url + "/metrics")[2]:
        time.sleep(0.05)
      process.send_signal(signal.SIGTERM)
      signalled = time.monotonic()
      status, body = response.result(timeout=60)
    assert status == 200 and len(body["translations"]) == len(TEXTS)
    assert time.monotonic() - signalled < 20  # Sent at once, not after 30 s.
    assert process.wait(timeout=60) == 0
    log = process.stderr.read().decode()
    assert '"POST /v1/translate HTTP/1.1" 200' in log, log[-3000:]
    assert "GET /livez" not in log and "GET /metrics" not in log  # Probes stay quiet.
  finally:
    process.kill()
    process.wait()


@pytest.mark.slow
def test_sigterm_during_warmup_exits_within_seconds(workdir):
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  process = subprocess.Popen(  # No compilation cache: warm-up compiles for a while.
      [sys.executable, str(REPO / "serve.py"), f"--workdir={workdir}",
       f"--port={port}", "--batch_tokens=4096", "--compilation_cache_dir="],
      cwd=REPO, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
  try:
    deadline = time.monotonic() + 300
    while b"nmt_ready 0.0" not in _get(url + "/metrics")[2]:  # Serving, not ready.
      assert process.poll() is None, process.stderr.read().decode()[-3000:]
      assert time.monotonic() < deadline
      time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    assert process.wait(timeout=120) == 0
    assert time.monotonic() - signalled < 10
    assert b"Compiled" not in process.stderr.read()  # It did not finish the warm-up.
  finally:
    process.kill()
    process.wait()
