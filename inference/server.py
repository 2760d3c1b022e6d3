"""HTTP translation server: aiohttp in front of a Translator, with dynamic batching.

  POST /v1/translate {"text": [...], "beam_size"?, "alpha"?, "nbest"?,
                      "min_decoding_length"?, "max_decoding_length"?,
                      "no_repeat_ngram_size"?, "return_token_scores"?,
                      "return_alternatives"?, "return_alignment"?,
                      "alignment_layer"?,
                      "num_samples"?, "sampling_topk"?, "sampling_topp"?,
                      "sampling_temperature"?, "seed"?, "use_shortlist"?,
                      "target_prefix"?: [str | null, ...] (one per text)}
       -> {"translations": [{"text", "score", "tokens", "truncated", "nbest"?,
                             "token_scores"?, "prefix_tokens"?,
                             "alternatives"?, "alignment"?}, ...]}
  POST /v1/score     {"source": [...], "target": [...]}
       -> {"scores": [{"score", "tokens", "token_scores", "truncated"}, ...]}
  GET  /v1/models    the model served: name, step, parameters, decode defaults, limits
  GET  /livez        200 while the process serves HTTP (a liveness probe)
  GET  /readyz       200 once warm-up has compiled every batch shape, else 503
  GET  /healthz      the same as /readyz
  GET  /metrics      Prometheus text format (serving_metrics.py)

Why aiohttp: one dependency (no pydantic, no separate ASGI server), a client for the
load test in the same package, and the limits we need built in (`client_max_size`
answers 413; `run_app` turns SIGTERM into a graceful shutdown). The handlers only
parse, validate and tokenize; sentences go to a `dynamic_batching.Batcher`, whose
device batches run in one worker thread.

Errors are JSON {"error": message, "code": stable name}: 400 for a malformed body,
413 for one over `max_body_bytes`, 503 with Retry-After while warming up or when the
queue is full, 504 when a request takes longer than `request_timeout_s`; a client that
hangs up has its waiting sentences dropped before they are decoded (counted as 499).
On SIGTERM the server stops accepting connections, sends what is queued at once,
answers the requests in flight and exits 0; during warm-up it exits at once.
"""
import asyncio
import concurrent.futures
import dataclasses
import logging as py_logging
import math
import os
import sys
import threading
import time

from absl import logging
from aiohttp import web
from aiohttp import web_log
import jax

from inference import bucketing
from inference import decoder as decoder_lib
from inference import dynamic_batching
from inference import request_parsing
from inference.request_parsing import ClientError
from inference import scoring
from inference import serving_metrics
from inference.translator import Hypothesis
from inference.translator import Translation
from inference.translator import Translator
from models import limits

# Routes that are neither counted in nmt_requests_total nor written to the access log.
PROBES = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})
# A client that closed its connection before the answer (nginx's convention).
CLIENT_CLOSED = 499


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  batch_tokens: int = 1024  # Source tokens per device batch, padding included.
  max_batch_wait_ms: float = 5.0  # How long a sentence waits for batch mates.
  max_queue_sentences: int = 4096  # Sentences waiting; more gets 503.
  max_request_sentences: int = 256  # Per request; more gets 400.
  max_body_bytes: int = 1 << 20  # More gets 413.
  request_timeout_s: float = 60.0  # Longer gets 504.
  max_beam_size: int = limits.MAX_BEAM_SIZE  # The CLI's and training's cap too.
  max_alpha: float = 10.0  # Length-penalty exponents above it get 400.
  warmup: bool = True  # Compile every batch shape before /readyz says ready.
  model_name: str = "nmt-enfr"  # The `id` that /v1/models reports.


def _finite(x: float | None) -> float | None:
  """JSON has no infinity: a missing hypothesis (score -inf) gets null."""
  return x if x is not None and math.isfinite(x) else None


def _translation_json(t: Translation, nbest: int, token_scores: bool = False) -> dict:
  """A translation's JSON; `token_scores` adds each hypothesis's per-token
  log-probabilities (EOS's last when it ends with one)."""
  def hypothesis(h: Hypothesis) -> dict:
    out = {"text": h.text, "score": _finite(h.score), "tokens": list(h.ids)}
    if token_scores:
      out["token_scores"] = list(h.token_scores)
    if h.prefix_len:  # The first tokens, given as the target prefix.
      out["prefix_tokens"] = h.prefix_len
    if h.alignment:  # Pharaoh i-j pairs (source, target), as fairseq prints them.
      out["alignment"] = h.alignment_text
    if h.alternatives:
      out["alternatives"] = [[{"token": i, "score": x} for i, x in position]
                             for position in h.alternatives]
    return out

  out = {**(hypothesis(t.nbest[0]) if t.nbest else hypothesis(Hypothesis("", None))),
         "truncated": t.truncated}
  if nbest > 1:
    out["nbest"] = [hypothesis(h) for h in t.nbest]
  return out


def _score_json(s: scoring.Score) -> dict:
  return {"score": s.score, "tokens": list(s.ids), "token_scores": list(s.token_scores),
          "truncated": s.truncated}


class _State:
  """One server's translator, batcher, metrics and readiness."""

  def __init__(self, translator: Translator, config: ServerConfig):
    self.translator, self.config = translator, config
    self.executor = concurrent.futures.ThreadPoolExecutor(1, "decode")
    # Made on the server's event loop.
    self.batcher: dynamic_batching.Batcher | None = None
    self.metrics = serving_metrics.Metrics(
        lambda: self.batcher.depth if self.batcher else 0)
    self.ready = False
    self.draining = False
    # Warm-up compiles in a daemon thread of its own, so that SIGTERM during it
    # need not wait for the compiler (`serve` then exits without joining it).
    self.warmup_thread: threading.Thread | None = None

  def per_batch(self, key) -> int:
    return bucketing.rows_per_batch(key[1], self.config.batch_tokens)

  @staticmethod
  def fillers(key) -> list:
    """The same options' smaller buckets, nearest first: they pad up to `key`'s."""
    kind, length, *options = key
    return [(kind, b, *options) for b in reversed(bucketing.BUCKETS) if b < length]

  def run(self, key, items: list) -> list:
    """One device batch (in the worker thread): key (kind, bucket, ...options)."""
    kind, length, *options = key
    rows = bucketing.padded_rows(len(items), self.per_batch(key))
    start = time.perf_counter()
    if kind == "translate":
      settings, nbest, _ = options  # The last: whether the batch has prefixes.
      results = self.translator.translate_batch(items, length, rows, settings, nbest)
      source = sum(len(s.ids) for s in items)
      target = sum(len(t.ids) + 1 for t in results)  # The best hypotheses, EOS too.
    else:
      results = self.translator.score_batch(items, length, rows)
      source = sum(len(p.source) for p in items)
      target = sum(len(p.target) for p in items)
    self.metrics.batch(kind, len(items), source, target, time.perf_counter() - start)
    return results

  def warmup(self) -> None:
    try:
      if self.config.warmup:
        self.translator.warmup(self.config.batch_tokens)
    except Exception:  # pylint: disable=broad-except
      logging.exception("Warm-up failed; /readyz stays 503.")
      return
    self.ready = True
    self.metrics.ready.set(1)
    logging.info("Ready.")

  def model_card(self) -> dict:
    """What /v1/models says about the model served."""
    t = self.translator
    return {"id": self.config.model_name, "object": "model", "step": t.step,
            "parameters": sum(x.size for x in jax.tree.leaves(t.params)),
            "max_source_len": t.max_len,
            "decode": {**{k: v for k, v in dataclasses.asdict(t.settings).items()
                          if k not in _RULES}, "nbest": t.decoder.nbest},
            # The optional rules a request may set, and their defaults here.
            "rules": {k: getattr(t.settings, k) for k in _RULES},
            "limits": {"max_beam_size": self.config.max_beam_size,
                       "max_alpha": self.config.max_alpha,
                       "max_request_sentences": self.config.max_request_sentences,
                       "batch_tokens": self.config.batch_tokens}}

  async def gather(self, jobs: list) -> list:
    """Queues (key, item) jobs and waits for their results, in order.

    If the request is cancelled (the client hung up) or times out, its futures are
    cancelled and the batcher drops the sentences that still wait.
    """
    if not self.ready or self.draining:
      raise ClientError(503, "warming_up" if not self.ready else "shutting_down",
                        "warming up: compiling the decoder" if not self.ready
                        else "shutting down", retry_after=5)
    try:
      futures = self.batcher.submit(jobs)
    except dynamic_batching.QueueFull as e:
      raise ClientError(503, "queue_full", f"queue full: {e}", retry_after=1) from None
    try:
      return await asyncio.wait_for(asyncio.gather(*futures),
                                    self.config.request_timeout_s)
    except TimeoutError:
      raise ClientError(504, "timeout", f"not done within"
                        f" {self.config.request_timeout_s} s; send fewer sentences"
                        " per request or retry later.") from None


_STATE = web.AppKey("state", _State)
_RULES = decoder_lib.OPTIONAL_FIELDS  # The optional settings a request may set.
_FLOAT_RULES = ("sampling_topp", "sampling_temperature")


async def _translate(request: web.Request) -> web.Response:
  state: _State = request.app[_STATE]
  config = state.config
  body = await request_parsing.json_body(request, {"text", "beam_size", "alpha",
                                                   "nbest", "target_prefix", *_RULES})
  texts = request_parsing.texts(body, "text", config.max_request_sentences)
  beam = request_parsing.number(body, "beam_size", int, config.max_beam_size)
  longest = state.translator.decoder.max_len  # No output is longer.
  limits = {"num_samples": decoder_lib.MAX_SAMPLES, "seed": 2**32 - 1,
            "return_alternatives": decoder_lib.MAX_ALTERNATIVES,
            "sampling_topk": state.translator.tokenizer.vocab_size,
            "sampling_topp": 1.0, "sampling_temperature": 100.0}
  flags = ("return_token_scores", "return_alignment", "use_shortlist")
  rules = {field: request_parsing.number(
      body, field, float if field in _FLOAT_RULES else int,
      limits.get(field, longest)) for field in _RULES if field not in flags}
  rules.update({field: request_parsing.boolean(body, field) for field in flags})
  try:
    settings, nbest = state.translator.options(
        beam, request_parsing.number(body, "alpha", float, config.max_alpha),
        request_parsing.number(body, "nbest", int, config.max_beam_size), **rules)
  except ValueError as e:
    raise ClientError(400, "invalid_field", str(e)) from None
  prefixes = request_parsing.prefixes(body, "target_prefix", len(texts))
  sources = state.translator.tokenize(texts, target_prefix=prefixes)
  todo = [s for s in sources if s.ids]  # Empty lines never reach the model.
  # Prefixed sentences batch apart: their search is another program.
  results = await state.gather([(("translate", bucketing.bucket(len(s.ids)), settings,
                                  nbest, bool(getattr(s, "prefix", None))), s)
                                for s in todo])
  translations = [Translation([])] * len(sources)
  for source, result in zip(todo, results):
    translations[source.line - 1] = result
  return web.json_response({"translations": [
      _translation_json(t, nbest, settings.return_token_scores
                        or bool(settings.return_alternatives))
      for t in translations]})


async def _score_handler(request: web.Request) -> web.Response:
  state: _State = request.app[_STATE]
  body = await request_parsing.json_body(request, {"source", "target"})
  limit = state.config.max_request_sentences
  sources = request_parsing.texts(body, "source", limit)
  targets = request_parsing.texts(body, "target", limit)
  if len(sources) != len(targets):
    raise ClientError(400, "invalid_field", f'"source" has {len(sources)} sentences'
                      f' but "target" has {len(targets)}; give one target per source.')
  pairs = scoring.tokenize(sources, targets, state.translator.tokenizer,
                           state.translator.max_len, "<request>")
  results = await state.gather([(("score", bucketing.bucket(p.length)), p)
                                for p in pairs])
  return web.json_response({"scores": [_score_json(s) for s in results]})


async def _models(request: web.Request) -> web.Response:
  return web.json_response({"object": "list",
                            "data": [request.app[_STATE].model_card()]})


async def _livez(request: web.Request) -> web.Response:
  del request
  return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
  state: _State = request.app[_STATE]
  if state.ready and not state.draining:
    return web.json_response({"status": "ready", "step": state.translator.step})
  return web.json_response({"status": "draining" if state.draining else "warming up"},
                           status=503, headers={"Retry-After": "5"})


async def _metrics(request: web.Request) -> web.Response:
  body, content_type = request.app[_STATE].metrics.exposition()
  return web.Response(body=body, headers={"Content-Type": content_type})


async def _respond(request: web.Request, handler) -> web.StreamResponse:
  """The handler's response, or the JSON error body of what it raised."""
  try:
    return await handler(request)
  except ClientError as e:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    return request_parsing.error_response(e.status, e.code, str(e), headers)
  except web.HTTPException as e:  # 404, 405, 413 (body over client_max_size), ...
    code = request_parsing.HTTP_CODES.get(e.status, "http_error")
    headers = {k: v for k, v in e.headers.items() if k != "Content-Type"}
    return request_parsing.error_response(e.status, code, e.text or e.reason, headers)
  except Exception as e:  # pylint: disable=broad-except
    logging.exception("%s %s failed.", request.method, request.path)
    return request_parsing.error_response(500, "internal", f"internal error: {e!r}")


@web.middleware
async def _errors_and_metrics(request: web.Request, handler) -> web.StreamResponse:
  """JSON errors for every failure, and the count and latency of non-probe requests."""
  start = time.perf_counter()
  resource = request.match_info.route.resource
  endpoint = resource.canonical if resource else "other"
  state: _State = request.app[_STATE]
  status = CLIENT_CLOSED
  try:
    response = await _respond(request, handler)
    status = response.status
    return response
  finally:  # Also when the client hung up and aiohttp cancelled the handler.
    if endpoint not in PROBES:
      state.metrics.requests.labels(endpoint, str(status)).inc()
      state.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


class AccessLogger(web_log.AccessLogger):
  """aiohttp's access log (common log format) without the probe routes."""

  def log(self, request, response, elapsed):
    if request.path not in PROBES:
      super().log(request, response, elapsed)


def _access_logger() -> py_logging.Logger:
  """The access log's logger: INFO, and named as ours, so cli/logs.py passes it."""
  logger = py_logging.getLogger("nmt.access")
  logger.setLevel(py_logging.INFO)
  return logger


# aiohttp options of every runner of the app: cancel a handler whose client hung up,
# so its sentences leave the queue before they are decoded.
RUNNER_OPTIONS = {"handler_cancellation": True}


def make_app(translator: Translator, config: ServerConfig = ServerConfig()
             ) -> web.Application:
  """The aiohttp application; warm-up starts with it, in a thread of its own."""
  state = _State(translator, config)
  app = web.Application(client_max_size=config.max_body_bytes,
                        middlewares=[_errors_and_metrics])
  app[_STATE] = state
  app.router.add_post("/v1/translate", _translate)
  app.router.add_post("/v1/score", _score_handler)
  app.router.add_get("/v1/models", _models)
  app.router.add_get("/livez", _livez)
  app.router.add_get("/readyz", _readyz)
  app.router.add_get("/healthz", _readyz)
  app.router.add_get("/metrics", _metrics)

  async def lifecycle(app):
    state.batcher = dynamic_batching.Batcher(
        state.run, state.per_batch, max_wait_s=config.max_batch_wait_ms / 1000,
        max_queue=config.max_queue_sentences, executor=state.executor,
        fillers=state.fillers)
    state.batcher.start()
    state.warmup_thread = threading.Thread(target=state.warmup, name="warmup",
                                           daemon=True)
    state.warmup_thread.start()
    yield
    await state.batcher.close()  # Requests have had their answers by now.
    state.executor.shutdown(wait=True)

  async def on_shutdown(app):  # After the listening sockets close, before the wait
    state.draining = True  # for the requests in flight: send their batches at once.
    state.batcher.drain()

  app.cleanup_ctx.append(lifecycle)
  app.on_shutdown.append(on_shutdown)
  return app


def serve(translator: Translator, config: ServerConfig, host: str, port: int,
          access_log: bool = False) -> None:
  """Serves until SIGINT/SIGTERM, then drains and returns.

  Stopped during warm-up, it exits the process at once (status 0): no request is in
  flight, and a compilation in progress cannot be interrupted.
  """
  app = make_app(translator, config)
  web.run_app(app, host=host, port=port,
              shutdown_timeout=config.request_timeout_s + 5,
              access_log=_access_logger() if access_log else None,
              access_log_class=AccessLogger,
              print=lambda msg: logging.info("%s", msg), **RUNNER_OPTIONS)
  warmup = app[_STATE].warmup_thread
  if warmup is not None and warmup.is_alive():
    logging.info("Stopped during warm-up; exiting without waiting for the compiler.")
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # pylint: disable=protected-access
