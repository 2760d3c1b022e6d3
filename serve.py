"""HTTP translation server of a trained model (inference/server.py, docs/serving.md).

  python serve.py --workdir=DIR --port=8080
"""
import os

from absl import app
from absl import flags

from cli import inference_flags
from cli import logs
from inference import server

inference_flags.define_translator(batch_tokens=False)
FLAGS = flags.FLAGS
_DEFAULTS = server.ServerConfig()
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind; 0.0.0.0 serves"
                            " other machines too.")
_PORT = flags.DEFINE_integer("port", 8080, "TCP port.")
_BATCH_TOKENS = flags.DEFINE_integer(
    "batch_tokens", _DEFAULTS.batch_tokens, "Source tokens per device batch,"
    " padding included (infer.py's --batch_tokens); each bucket's batch shapes"
    " compile at warm-up.")
flags.DEFINE_alias("max_batch_tokens", "batch_tokens")  # The earlier name, kept.
_MAX_BATCH_WAIT_MS = flags.DEFINE_float(
    "max_batch_wait_ms", _DEFAULTS.max_batch_wait_ms, "How long a sentence waits for"
    " batch mates before its batch is sent anyway.")
_MAX_QUEUE = flags.DEFINE_integer("max_queue_sentences", _DEFAULTS.max_queue_sentences,
                                  "Sentences waiting; beyond it requests get 503.")
_MAX_REQUEST = flags.DEFINE_integer("max_request_sentences",
                                    _DEFAULTS.max_request_sentences,
                                    "Sentences per request.")
_MAX_BODY = flags.DEFINE_integer("max_body_bytes", _DEFAULTS.max_body_bytes,
                                 "Request body size; beyond it 413.")
_TIMEOUT = flags.DEFINE_float("request_timeout_s", _DEFAULTS.request_timeout_s,
                              "A request not answered by then gets 504.")
_WARMUP = flags.DEFINE_bool("warmup", True, "Compile every batch shape before"
                            " /readyz reports ready.")
_ACCESS_LOG = flags.DEFINE_bool("access_log", False, "Log every request but probes"
                                " and scrapes (common log format) to stderr.")
_MODEL_NAME = flags.DEFINE_string("model_name", None, "The model's id in /v1/models;"
                                  " default: the workdir's last path component.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  inference_flags.enable_compilation_cache()
  translator = inference_flags.translator("serve.py")
  name = _MODEL_NAME.value or os.path.basename(os.path.normpath(FLAGS.workdir))
  server.serve(translator, server.ServerConfig(
      batch_tokens=_BATCH_TOKENS.value, model_name=name,
      max_batch_wait_ms=_MAX_BATCH_WAIT_MS.value,
      max_queue_sentences=_MAX_QUEUE.value,
      max_request_sentences=_MAX_REQUEST.value, max_body_bytes=_MAX_BODY.value,
      request_timeout_s=_TIMEOUT.value, warmup=_WARMUP.value), _HOST.value, _PORT.value,
      access_log=_ACCESS_LOG.value)


if __name__ == "__main__":
  logs.run(main)  # app.run, with quiet library logs.
