"""The server's Prometheus metrics, in a registry of its own (GET /metrics).

Names follow the Prometheus naming guide: base units in the name
(`nmt_request_duration_seconds`), counters end in `_total`, and rates are left to
PromQL (`rate(nmt_tokens_total[1m])` is tokens/s), so no gauge exports a rate.
`nmt_build_info` carries the versions as labels (value 1), and the process and
platform collectors add `process_*` (CPU seconds, resident memory, open files) and
`python_info`.
"""
from importlib import metadata
import platform

import jax
import prometheus_client as prom

# Seconds: from a few milliseconds (one short greedy sentence) to the request timeout.
_LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = tuple(2**k for k in range(9))  # 1 ... 256 sentences.


def _version() -> str:
  try:
    return metadata.version("nmt-enfr")
  except metadata.PackageNotFoundError:  # Run from a checkout that is not installed.
    return "unknown"


class Metrics:
  """Request, batch and queue metrics of one server, and its build and process."""

  def __init__(self, queue_depth=lambda: 0):
    self.registry = registry = prom.CollectorRegistry()
    prom.ProcessCollector(registry=registry)
    prom.PlatformCollector(registry=registry)
    prom.Info("nmt_build", "Versions of this server.", registry=registry).info({
        "version": _version(), "jax_version": jax.__version__,
        "python_version": platform.python_version()})
    self.requests = prom.Counter(
        "nmt_requests", "HTTP requests by endpoint and status code (499: the client"
        " hung up first); probes and scrapes are not counted.",
        ["endpoint", "code"], registry=registry)
    self.latency = prom.Histogram(
        "nmt_request_duration_seconds", "Request latency, body read to response.",
        ["endpoint"], buckets=_LATENCY_BUCKETS, registry=registry)
    self.sentences = prom.Counter(
        "nmt_sentences", "Sentences translated or scored.", ["kind"], registry=registry)
    self.batch_size = prom.Histogram(
        "nmt_batch_sentences", "Sentences per device batch (before row padding).",
        ["kind"], buckets=_BATCH_BUCKETS, registry=registry)
    self.batch_seconds = prom.Histogram(
        "nmt_batch_duration_seconds", "Time to run one device batch.", ["kind"],
        buckets=_LATENCY_BUCKETS, registry=registry)
    self.tokens = prom.Counter(
        "nmt_tokens", "Tokens processed: source tokens read, target tokens written"
        " (translate) or scored (score).", ["kind", "side"], registry=registry)
    self.queue = prom.Gauge("nmt_queue_sentences", "Sentences waiting for a batch.",
                            registry=registry)
    self.queue.set_function(queue_depth)
    self.ready = prom.Gauge("nmt_ready", "1 once warm-up has compiled every shape.",
                            registry=registry)

  def batch(self, kind: str, sentences: int, source_tokens: int, target_tokens: int,
            seconds: float) -> None:
    """Records one device batch."""
    self.sentences.labels(kind).inc(sentences)
    self.batch_size.labels(kind).observe(sentences)
    self.batch_seconds.labels(kind).observe(seconds)
    self.tokens.labels(kind, "source").inc(source_tokens)
    self.tokens.labels(kind, "target").inc(target_tokens)

  def exposition(self) -> tuple[bytes, str]:
    """(body, content type) of the text exposition format."""
    return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
