"""The server's Prometheus metrics, in a registry of its own (GET /metrics).

Rates come from counters (`rate(nmt_tokens_total[1m])` is tokens/s); the latest
batch's throughput is also a gauge, for a glance without a Prometheus server.
"""
import prometheus_client as prom

# Seconds: from a few milliseconds (one short greedy sentence) to the request timeout.
_LATENCY_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)
_BATCH_BUCKETS = tuple(2**k for k in range(9))  # 1 ... 256 sentences.


class Metrics:
  """Request, batch and queue metrics of one server."""

  def __init__(self, queue_depth=lambda: 0):
    self.registry = registry = prom.CollectorRegistry()
    self.requests = prom.Counter(
        "nmt_requests", "HTTP requests by endpoint and status code.",
        ["endpoint", "code"], registry=registry)
    self.latency = prom.Histogram(
        "nmt_request_seconds", "Request latency, body read to response.",
        ["endpoint"], buckets=_LATENCY_BUCKETS, registry=registry)
    self.sentences = prom.Counter(
        "nmt_sentences", "Sentences translated or scored.", ["kind"], registry=registry)
    self.batch_size = prom.Histogram(
        "nmt_batch_sentences", "Sentences per device batch (before row padding).",
        ["kind"], buckets=_BATCH_BUCKETS, registry=registry)
    self.batch_seconds = prom.Histogram(
        "nmt_batch_seconds", "Time to run one device batch.", ["kind"],
        buckets=_LATENCY_BUCKETS, registry=registry)
    self.tokens = prom.Counter(
        "nmt_tokens", "Tokens processed: source tokens read, target tokens written"
        " (translate) or scored (score).", ["kind", "side"], registry=registry)
    self.tokens_per_second = prom.Gauge(
        "nmt_tokens_per_second", "Target tokens per second of the latest batch.",
        ["kind"], registry=registry)
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
    self.tokens_per_second.labels(kind).set(target_tokens / max(seconds, 1e-9))

  def exposition(self) -> tuple[bytes, str]:
    """(body, content type) of the text exposition format."""
    return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST
