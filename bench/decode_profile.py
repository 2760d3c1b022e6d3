"""Where a beam-search step spends its time, against this machine's floor.

  python -m bench.decode_profile --config=configs/transformer_base.py --batch_sizes=1,8,32

Times, as separate jitted programs on random weights: every piece of one decoder step
(output projection, log-softmax + top-k, each decoder sub-block, the cache reorder),
the whole model step, the whole search step, and the encoder; then the measured floor
of the same run: an fp32 matmul's FLOP/s and the bandwidth of a weight-streaming
product ([4, d] x [d, vocab]). Each piece prints its achieved GB/s (weights it must
read), its share of the search step, and the whole step's distance to the floor
(weights streamed once per step, or the step's matmul FLOPs at the measured peak,
whichever is slower). One JSON line per piece.
"""
from collections.abc import Callable
import json

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from bench import timing
from bench.synthetic import synthetic_sources
from data import tokenizer as tokenizer_lib
from inference import restore
from models import decoding
from models import search
from models import transformer
from parallel import mesh as mesh_lib
from parallel.sharding import Partitioner

CONFIG = config_flags.DEFINE_config_file("config", "configs/transformer_base.py",
                                          "Config whose model to profile.")
BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "Sentences.")
BEAM = flags.DEFINE_integer("beam_size", 4, "Beam width.")
SRC_LEN = flags.DEFINE_integer("src_len", 32, "Source tokens.")
MAX_LEN = flags.DEFINE_integer("max_decode_len", 64, "Cache length (decoder steps).")
VOCAB = flags.DEFINE_integer("vocab_size", 32000, "Vocabulary (random weights).")
DTYPE = flags.DEFINE_string("dtype", "float32", "Parameter and compute dtype (the "
                             "CTranslate2 comparison's float32 by default).")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per piece.")


def _ms(fn: Callable[[], object], repeats: int) -> float:
  return 1000 * timing.time_calls(fn, repeats).median_s


def floor(repeats: int, d: int, vocab: int) -> dict:
  """This machine's fp32 matmul FLOP/s and weight-streaming GB/s, measured now."""
  n = 2048
  a = jnp.ones((n, n), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  gflops = 2 * n**3 / _ms(lambda: matmul(a), repeats) / 1e6
  x, w = jnp.ones((4, d), jnp.float32), jnp.ones((d, vocab), jnp.float32)
  stream = jax.jit(lambda x, w: x @ w)
  gbps = w.size * 4 / _ms(lambda: stream(x, w), repeats) / 1e6
  return {"piece": "floor", "matmul_gflops": round(gflops, 1),
          "stream_gbps": round(gbps, 2)}


def _params_bytes(tree) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def step_floor_ms(model, batch: int, beam: int, floor_row: dict) -> float:
  """The fastest a decoder step can be here: weight streaming or matmul FLOPs.

  Per step every decoder weight used per token is read once (cross-attention keys
  and values are precomputed, so their kernels are not) plus the output table, and
  each of the batch * beam rows multiplies through them (2 FLOPs per weight).
  """
  weights = sum(x.size for x in jax.tree.leaves(nnx.state(model.decoder_layers)))
  for layer in model.decoder_layers:
    weights -= sum(x.size for x in jax.tree.leaves(nnx.state(layer.cross_attn.key)))
    weights -= sum(x.size for x in jax.tree.leaves(nnx.state(layer.cross_attn.value)))
  weights += model.embed.embedding[...].size  # The output projection.
  bytes_ms = 4 * weights / floor_row["stream_gbps"] / 1e6
  flops_ms = 2 * batch * beam * weights / floor_row["matmul_gflops"] / 1e6
  return max(bytes_ms, flops_ms)


def profile_batch(graphdef, params, cfg: transformer.TransformerConfig, batch: int,
                  beam: int, src_len: int, max_len: int, repeats: int
                  ) -> list[dict]:
  """One row per piece for `batch` sentences (rows = batch * beam decoder rows)."""
  rows, d, vocab = batch * beam, cfg.emb_dim, cfg.vocab_size
  model = nnx.merge(graphdef, params)
  layer_params = nnx.state(model.decoder_layers[0], nnx.Param)
  inputs = jnp.asarray(synthetic_sources(batch, src_len, vocab))
  encode = jax.jit(lambda p, x: nnx.merge(graphdef, p).encode(x))
  encoded = encode(params, inputs)
  cross_kv = jax.jit(lambda p, e: nnx.merge(graphdef, p).precompute_cross_kv(e))(
      params, encoded)
  cache = model.init_cache(batch, max_len, beam)
  src_mask = inputs != cfg.pad_id
  y = jax.random.normal(jax.random.key(0), (rows, 1, d), jnp.float32)
  logits = jax.random.normal(jax.random.key(1), (rows, vocab), jnp.float32)
  step_index = jnp.asarray(max_len // 2, jnp.int32)
  table = jax.jit(lambda p: nnx.merge(graphdef, p).output_table())(params)
  self_mask = cache.ancestor_mask(step_index)  # [batch, 1, beam, beam, max_len]
  cross_mask = src_mask[:, None, None, :]
  layer = nnx.graphdef(model.decoder_layers[0])

  def sub(fn):  # A jitted piece over the first decoder layer's parameters.
    return jax.jit(lambda p, *a: fn(nnx.merge(layer, p), *a))

  def self_attn(l, y, k, v):
    # The step's projections and attention over the sentence's beam * max_len
    # cached keys. The one-position cache write is left out: without buffer
    # donation it would copy the whole cache, which the loop writes in place.
    h = l.self_norm(y)
    nk, nv = l.self_attn.project_kv(h)
    return l.self_attn.attend(h, k, v, self_mask, keys_transposed=True), nk, nv

  decoder_bytes = _params_bytes(nnx.state(model.decoder_layers))
  pieces = {  # name: (jitted function, its arguments, weight bytes read, per step)
      "encoder (once per call)": (
          encode, (params, inputs), _params_bytes(nnx.state(model.encoder_layers)), 1),
      "output projection y @ E.T (tied, as trained)": (
          jax.jit(lambda p, y: nnx.merge(graphdef, p).embed.attend(y)), (params, y),
          vocab * d * 4, 1),
      "output projection y @ W [embed, vocab]": (
          jax.jit(lambda t, y: y @ t.kernel), (table, y), vocab * d * 4, 1),
      "log-softmax + top-k": (  # The search's own, EOS barred as in benchmarks.
          jax.jit(lambda x, a: search._best_expansions(  # pylint: disable=W0212
              x.reshape(batch, beam, vocab), a, tokenizer_lib.EOS_ID, cfg.pad_id,
              True)), (logits, jnp.zeros((batch, beam))), 0, 1),
      "self-attention (per layer)": (
          sub(self_attn), (layer_params, y, cache.k[0], cache.v[0]), 4 * d * d * 4,
          cfg.num_decoder_layers),
      "cross-attention (per layer)": (
          sub(lambda l, y, k, v: l.cross_attn.attend(l.cross_norm(y), k, v, cross_mask,
                                                     keys_transposed=True)),
          (layer_params, y, cross_kv.k[0], cross_kv.v[0]), 2 * d * d * 4,
          cfg.num_decoder_layers),
      "mlp (per layer)": (
          sub(lambda l, y: l.mlp(l.mlp_norm(y))), (layer_params, y),
          2 * d * cfg.mlp_dim * 4, cfg.num_decoder_layers),
      # The Transformer's cache moves only its ancestry table (DecodeCache.reorder).
      "cache reorder (all layers)": (
          jax.jit(lambda c, p: search.reorder_cache(c, p).slots),
          (cache, jnp.zeros((batch, beam), jnp.int32)), 0, 1),
      # Logits only: returning the cache, not donated, would copy it all.
      "model step (decode_step)": (
          jax.jit(lambda p, *a: nnx.merge(graphdef, p).decode_step(*a)[0]),
          (params, jnp.ones((rows,), jnp.int32), step_index, cache, cross_kv,
           src_mask, table), decoder_bytes + vocab * d * 4, 1),
  }
  out = []
  for name, (fn, args, weight_bytes, count) in pieces.items():
    ms = _ms(lambda: fn(*args), repeats)  # pylint: disable=cell-var-from-loop
    out.append({"piece": name, "batch": batch, "ms": round(ms, 3),
                "ms_per_step": round(ms * count, 3),
                "weights_gbps": round(weight_bytes / ms / 1e6, 2) if weight_bytes
                else None})
  return out


def random_model() -> tuple[transformer.TransformerConfig, Partitioner, nnx.GraphDef,
                            nnx.State]:
  """The flags' model with random weights, on every local device's batch axis."""
  partitioner = Partitioner(mesh_lib.create_mesh((-1, 1, 1)))
  model = restore.random_params(CONFIG.value, partitioner, vocab_size=VOCAB.value,
                                dtype=DTYPE.value)
  return model.model_config, partitioner, model.graphdef, model.params


def main(argv):
  del argv
  cfg, partitioner, graphdef, params = random_model()
  floor_row = floor(_REPEATS.value, cfg.emb_dim, cfg.vocab_size)
  print(json.dumps({**floor_row, "device": jax.devices()[0].device_kind,
                    "jax": jax.__version__}))
  search = decoding.jit_beam_search(partitioner)
  for batch in (int(b) for b in BATCH_SIZES.value):
    rows = profile_batch(graphdef, params, cfg, batch, BEAM.value, SRC_LEN.value,
                         MAX_LEN.value, _REPEATS.value)
    inputs = synthetic_sources(batch, SRC_LEN.value, cfg.vocab_size)
    whole = timing.time_calls(lambda: search(
        graphdef, params, inputs, 0.6, 1.5, 10.0, eos_id=tokenizer_lib.EOS_ID,
        beam_size=BEAM.value, max_decode_len=MAX_LEN.value,
        forced_len=MAX_LEN.value), max(3, _REPEATS.value // 5)).median_s
    step_ms = 1000 * whole / MAX_LEN.value
    for row in rows:
      row["share_of_search_step"] = round(row["ms_per_step"] / step_ms, 3)
      print(json.dumps(row))
    floor_ms = step_floor_ms(nnx.merge(graphdef, params), batch, BEAM.value,
                             floor_row)
    print(json.dumps({"piece": "search (whole call)", "batch": batch,
                      "ms": round(1000 * whole, 1), "ms_per_step": round(step_ms, 3),
                      "floor_ms_per_step": round(floor_ms, 3),
                      "times_the_floor": round(step_ms / floor_ms, 2)}))


if __name__ == "__main__":
  app.run(main)
