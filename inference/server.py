"""HTTP translation server: aiohttp in front of a Translator, with dynamic batching.

  POST /v1/translate {"text": [...], "beam_size"?, "alpha"?, "nbest"?}
       -> {"translations": [{"text", "score", "tokens", "truncated", "nbest"?}, ...]}
  POST /v1/score     {"source": [...], "target": [...]}
       -> {"scores": [{"score", "tokens", "token_scores", "truncated"}, ...]}
  GET  /healthz      200 once warm-up has compiled every batch shape, else 503
  GET  /metrics      Prometheus text format (serving_metrics.py)

Why aiohttp: one dependency (no pydantic, no separate ASGI server), a client for the
load test in the same package, and the limits we need built in (`client_max_size`
answers 413; `run_app` turns SIGTERM into a graceful shutdown). The handlers only
parse, validate and tokenize; sentences go to a `dynamic_batching.Batcher`, whose
device batches run in one worker thread.

Errors are JSON {"error": message}: 400 for a malformed body, 413 for one over
`max_body_bytes`, 503 with Retry-After while warming up or when the queue is full,
504 when a request takes longer than `request_timeout_s`. On SIGTERM the server stops
accepting connections, sends what is queued at once, answers the requests in flight
and exits 0.
"""
import asyncio
import concurrent.futures
import dataclasses
import json
import math
import time

from absl import logging
from aiohttp import web

from inference import bucketing
from inference import dynamic_batching
from inference import scoring
from inference import serving_metrics
from inference.translator import Translation
from inference.translator import Translator


@dataclasses.dataclass(frozen=True)
class ServerConfig:
  max_batch_tokens: int = 1024  # Source tokens per device batch, padding included.
  max_batch_wait_ms: float = 5.0  # How long a sentence waits for batch mates.
  max_queue_sentences: int = 4096  # Sentences waiting; more gets 503.
  max_request_sentences: int = 256  # Per request; more gets 400.
  max_body_bytes: int = 1 << 20  # More gets 413.
  request_timeout_s: float = 60.0  # Longer gets 504.
  max_beam_size: int = 16
  warmup: bool = True  # Compile every batch shape before /healthz says ready.


class _Error(Exception):
  def __init__(self, status: int, message: str, retry_after: int | None = None):
    super().__init__(message)
    self.status, self.retry_after = status, retry_after


def _finite(x: float | None) -> float | None:
  """JSON has no infinity: a missing hypothesis (score -inf) gets null."""
  return x if x is not None and math.isfinite(x) else None


def _translation_json(t: Translation, nbest: int) -> dict:
  out = {"text": t.text, "score": _finite(t.score), "tokens": list(t.ids),
         "truncated": t.truncated}
  if nbest > 1:
    out["nbest"] = [{"text": h.text, "score": _finite(h.score), "tokens": list(h.ids)}
                    for h in t.nbest]
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

  def per_batch(self, key) -> int:
    return bucketing.rows_per_batch(key[1], self.config.max_batch_tokens)

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
      results = self.translator.translate_batch(items, length, rows, *options)
      source = sum(len(s.ids) for s in items)
      target = sum(len(t.ids) + 1 for t in results)  # The best hypotheses, EOS too.
    else:
      results = self.translator.score_batch(items, length, rows)
      source = sum(len(p.source) for p in items)
      target = sum(len(p.target) for p in items)
    self.metrics.batch(kind, len(items), source, target, time.perf_counter() - start)
    return results

  def warmup(self) -> None:
    if self.config.warmup:
      self.translator.warmup(self.config.max_batch_tokens)
    self.ready = True
    self.metrics.ready.set(1)
    logging.info("Ready.")

  async def gather(self, jobs: list) -> list:
    """Queues (key, item) jobs and waits for their results, in order."""
    if not self.ready or self.draining:
      raise _Error(503, "warming up: compiling the decoder" if not self.ready
                   else "shutting down", retry_after=5)
    try:
      futures = self.batcher.submit(jobs)
    except dynamic_batching.QueueFull as e:
      raise _Error(503, f"queue full: {e}", retry_after=1) from None
    try:
      return await asyncio.wait_for(asyncio.gather(*futures),
                                    self.config.request_timeout_s)
    except TimeoutError:
      raise _Error(504, f"not done within {self.config.request_timeout_s} s;"
                   " send fewer sentences per request or retry later.") from None


_STATE = web.AppKey("state", _State)


async def _body(request: web.Request, allowed: set[str]) -> dict:
  """The request's JSON object; 400 unless it is one with only `allowed` fields."""
  try:
    body = await request.json()
  except json.JSONDecodeError as e:
    raise _Error(400, f"body is not valid JSON: {e}") from None
  except UnicodeDecodeError:
    raise _Error(400, "body is not UTF-8.") from None
  if not isinstance(body, dict):
    raise _Error(400, f"body must be a JSON object, not {type(body).__name__}.")
  if unknown := set(body) - allowed:
    raise _Error(400, f"unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}.")
  return body


def _texts(body: dict, field: str, limit: int) -> list[str]:
  texts = body.get(field)
  if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
    raise _Error(400, f'"{field}" must be a list of strings.')
  if len(texts) > limit:
    raise _Error(400, f'"{field}" has {len(texts)} sentences; at most {limit} per'
                 " request.")
  return texts


def _option(body: dict, field: str, kind: type) -> int | float | None:
  """body[field] as `kind` (int, or float accepting ints), or None if absent."""
  value = body.get(field)
  if value is None:
    return None
  accepted = int if kind is int else (int, float)
  if isinstance(value, bool) or not isinstance(value, accepted):
    raise _Error(400, f'"{field}" must be {"an integer" if kind is int else "a number"},'
                 f" not {json.dumps(value)}.")
  return kind(value)


async def _translate(request: web.Request) -> web.Response:
  state: _State = request.app[_STATE]
  body = await _body(request, {"text", "beam_size", "alpha", "nbest"})
  texts = _texts(body, "text", state.config.max_request_sentences)
  beam = _option(body, "beam_size", int)
  if beam is not None and beam > state.config.max_beam_size:
    raise _Error(400, f'"beam_size" {beam} is over the limit of'
                 f" {state.config.max_beam_size}.")
  try:
    settings, nbest = state.translator.options(beam, _option(body, "alpha", float),
                                               _option(body, "nbest", int))
  except ValueError as e:
    raise _Error(400, str(e)) from None
  sources = state.translator.tokenize(texts)
  todo = [s for s in sources if s.ids]  # Empty lines never reach the model.
  results = await state.gather([(("translate", bucketing.bucket(len(s.ids)), settings,
                                  nbest), s) for s in todo])
  translations = [Translation([])] * len(sources)
  for source, result in zip(todo, results):
    translations[source.line - 1] = result
  return web.json_response({"translations": [_translation_json(t, nbest)
                                             for t in translations]})


async def _score_handler(request: web.Request) -> web.Response:
  state: _State = request.app[_STATE]
  body = await _body(request, {"source", "target"})
  limit = state.config.max_request_sentences
  sources, targets = _texts(body, "source", limit), _texts(body, "target", limit)
  if len(sources) != len(targets):
    raise _Error(400, f'"source" has {len(sources)} sentences but "target" has'
                 f" {len(targets)}; give one target per source.")
  pairs = scoring.tokenize(sources, targets, state.translator.tokenizer,
                           state.translator.max_len, "<request>")
  results = await state.gather([(("score", bucketing.bucket(p.length)), p)
                                for p in pairs])
  return web.json_response({"scores": [_score_json(s) for s in results]})


async def _healthz(request: web.Request) -> web.Response:
  state: _State = request.app[_STATE]
  if state.ready and not state.draining:
    return web.json_response({"status": "ready", "step": state.translator.step})
  return web.json_response({"status": "draining" if state.draining else "warming up"},
                           status=503, headers={"Retry-After": "5"})


async def _metrics(request: web.Request) -> web.Response:
  body, content_type = request.app[_STATE].metrics.exposition()
  return web.Response(body=body, headers={"Content-Type": content_type})


@web.middleware
async def _errors_and_metrics(request: web.Request, handler) -> web.StreamResponse:
  """JSON errors for every failure, and the request count and latency."""
  start = time.perf_counter()
  state: _State = request.app[_STATE]
  try:
    response = await handler(request)
  except _Error as e:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after else None
    response = web.json_response({"error": str(e)}, status=e.status, headers=headers)
  except web.HTTPException as e:  # 404, 405, 413 (body over client_max_size), ...
    response = web.json_response({"error": e.text or e.reason}, status=e.status,
                                 headers={k: v for k, v in e.headers.items()
                                          if k != "Content-Type"})
  except Exception as e:  # pylint: disable=broad-except
    logging.exception("%s %s failed.", request.method, request.path)
    response = web.json_response({"error": f"internal error: {e!r}"}, status=500)
  endpoint = request.match_info.route.resource.canonical if (
      request.match_info.route.resource) else "other"
  state.metrics.requests.labels(endpoint, str(response.status)).inc()
  state.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
  return response


def _log_failure(future: asyncio.Future) -> None:
  if not future.cancelled() and future.exception() is not None:
    logging.error("Warm-up failed; /healthz stays 503.", exc_info=future.exception())


def make_app(translator: Translator, config: ServerConfig = ServerConfig()
             ) -> web.Application:
  """The aiohttp application; warm-up starts with it, in the worker thread."""
  state = _State(translator, config)
  app = web.Application(client_max_size=config.max_body_bytes,
                        middlewares=[_errors_and_metrics])
  app[_STATE] = state
  app.router.add_post("/v1/translate", _translate)
  app.router.add_post("/v1/score", _score_handler)
  app.router.add_get("/healthz", _healthz)
  app.router.add_get("/metrics", _metrics)

  async def lifecycle(app):
    loop = asyncio.get_running_loop()
    state.batcher = dynamic_batching.Batcher(
        state.run, state.per_batch, max_wait_s=config.max_batch_wait_ms / 1000,
        max_queue=config.max_queue_sentences, executor=state.executor,
        fillers=state.fillers)
    state.batcher.start()
    warmup = loop.run_in_executor(state.executor, state.warmup)
    warmup.add_done_callback(_log_failure)
    yield
    await state.batcher.close()  # Requests have had their answers by now.
    await asyncio.gather(warmup, return_exceptions=True)
    state.executor.shutdown(wait=True)

  async def on_shutdown(app):  # After the listening sockets close, before the wait
    state.draining = True  # for the requests in flight: send their batches at once.
    state.batcher.drain()

  app.cleanup_ctx.append(lifecycle)
  app.on_shutdown.append(on_shutdown)
  return app


def serve(translator: Translator, config: ServerConfig, host: str, port: int) -> None:
  """Serves until SIGINT/SIGTERM, then drains and returns."""
  web.run_app(make_app(translator, config), host=host, port=port,
              shutdown_timeout=config.request_timeout_s + 5, access_log=None,
              print=lambda msg: logging.info("%s", msg))
