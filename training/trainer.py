"""The training loop: data, sharded state, jitted steps, evaluation, checkpoints, logs."""
import functools
import json
import signal
import subprocess
import sys
import time

from absl import logging
from etils import epath
import flax
from flax import nnx
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from data import pipeline
from data import prepare
from inference import bleu as bleu_lib
from inference import translate
from models import transformer
from parallel import mesh as mesh_lib
from parallel import sharding
from training import checkpoints
from training import metrics as metrics_lib
from training import optimizer as optimizer_lib
from training import steps


class NonFiniteLossError(RuntimeError):
  """Training diverged; the last checkpoint written holds finite parameters."""


def write_run_info(config, workdir: epath.Path) -> None:
  """config.json (resolved config) and run_info.json (git commit, library versions)."""
  if jax.process_index() != 0:
    return
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True,
                            cwd=epath.Path(__file__).parent).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    commit = "unknown"
  info = {"git_commit": commit, "argv": sys.argv, "python": sys.version.split()[0],
          "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__,
          "orbax": ocp.__version__, "devices": jax.device_count(),
          "platform": jax.devices()[0].platform, "processes": jax.process_count()}
  (workdir / "run_info.json").write_text(json.dumps(info, indent=2))


def create_train_state(model_cfg, tx, mesh, rules, seed: int):
  """Initialises (graphdef, rest, state) with every array created in its own shard.

  Returns the NNX graphdef, the non-parameter model state `rest` (RNG counters; the
  steps pass their own dropout keys), the TrainState, and the TrainState's shardings.
  """
  make_model = lambda: transformer.Transformer(model_cfg, rngs=nnx.Rngs(seed))
  graphdef, abstract_params, abstract_rest = nnx.split(
      nnx.eval_shape(make_model), nnx.Param, ...)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  param_shardings = sharding.state_sharding(abstract_params, mesh, rules)
  opt_shardings = optax.tree_map_params(
      tx, lambda _, s: s, jax.eval_shape(tx.init, abstract_params), param_shardings,
      transform_non_params=lambda _: replicated)
  state_shardings = steps.TrainState(step=replicated, params=param_shardings,
                                     opt_state=opt_shardings)
  rest_shardings = sharding.state_sharding(abstract_rest, mesh, rules)

  @functools.partial(jax.jit, out_shardings=(rest_shardings, state_shardings))
  def init():
    _, params, rest = nnx.split(make_model(), nnx.Param, ...)
    return rest, steps.TrainState(step=jnp.zeros([], jnp.int32), params=params,
                                  opt_state=tx.init(params))

  with sharding.use_mesh(mesh, rules):
    rest, state = init()
  return graphdef, rest, state, state_shardings


def evaluate(eval_fn, params, batches, batch_sharding) -> dict[str, float]:
  """Validation loss, accuracy and perplexity over every batch of every process."""
  # Processes can hold different numbers of batches: all run the largest number,
  # the extra batches being all padding (weight 0).
  count = int(np.max(multihost_utils.process_allgather(np.array(len(batches)))))
  padding = jax.tree.map(np.zeros_like, batches[0])
  sums = None
  for batch in batches + [padding] * (count - len(batches)):
    out = eval_fn(params, pipeline.make_global(batch, batch_sharding))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  return steps.summarize_eval(jax.device_get(sums))


class _Sigterm:
  """Remembers a SIGTERM so the loop can checkpoint the current step and stop.

  Single-process runs only: hosts of a multi-host run would see the signal at
  different steps, so there JAX's preemption service decides when all of them stop
  (`Checkpointer.reached_preemption`).
  """

  def __init__(self):
    self.received = False
    if jax.process_count() == 1:
      signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint at the current step, then stopping.")
    self.received = True


def validation_bleu(config, model_cfg, graphdef, rest, params, mesh, tokenizer,
                    pairs) -> dict[str, float]:
  """Beam-search translations of `pairs` scored as in inference/bleu.py."""
  graphdef, state = nnx.split(nnx.merge(graphdef, params, rest))
  decode = translate.make_decoder(
      graphdef, state, mesh, beam_size=config.eval_beam_size, alpha=config.eval_alpha,
      max_len_a=1.5, max_len_b=10.0, nbest=1, max_len=model_cfg.max_len)
  sources, references = zip(*pairs)
  hypotheses = translate.translate(sources, tokenizer, decode, max_len=model_cfg.max_len,
                                   batch_tokens=config.batch_tokens)
  scores = bleu_lib.score(hypotheses, references)
  return {"bleu": scores["bleu_lc_tok"], "sacrebleu": scores["sacrebleu"],
          "chrf": scores["chrf"]}


def _check_finite(step: int, metrics: dict, checkpointer) -> None:
  if not all(np.isfinite(metrics[k]) for k in ("loss", "grad_norm")):
    last = checkpointer.manager.latest_step()
    raise NonFiniteLossError(
        f"Non-finite loss or gradient at step {step} (loss={metrics['loss']},"
        f" grad_norm={metrics['grad_norm']}). Stopped without saving; the last good"
        f" checkpoint is step {last} in {checkpointer.directory}. Lower"
        " learning_rate, raise warmup_steps or check the data, then rerun to resume.")


def compile_steps(config, graphdef, rest, tx, state_shardings, batch_sharding):
  """The jitted train step (state donated) and eval step, with explicit shardings."""
  train_step = jax.jit(
      functools.partial(
          steps.train_step, graphdef=graphdef, rest=rest, tx=tx,
          schedule=optimizer_lib.learning_rate_schedule(config.learning_rate,
                                                        config.warmup_steps),
          seed=config.seed, label_smoothing=config.label_smoothing,
          inject_nan_at_step=config.inject_nan_at_step),
      in_shardings=(state_shardings, batch_sharding),
      out_shardings=(state_shardings, None), donate_argnums=0)
  eval_step = jax.jit(functools.partial(steps.eval_step, graphdef=graphdef, rest=rest),
                      in_shardings=(state_shardings.params, batch_sharding))
  return train_step, eval_step


def _input_pipelines(config, workdir: epath.Path, mesh, batch_sharding):
  """(tokenizer, training iterator, list of this process's validation batches)."""
  # Process 0 prepares the data (TFDS build, tokenizer) before the others read it.
  if jax.process_index() == 0:
    sources, tokenizer = prepare.prepare(config, str(workdir))
  multihost_utils.sync_global_devices("data prepared")
  if jax.process_index() != 0:
    sources, tokenizer = prepare.prepare(config, str(workdir))
  data_cfg = config.data
  rows = pipeline.local_batch_size(
      config.batch_tokens, data_cfg.max_length, process_count=jax.process_count(),
      num_batch_shards=batch_sharding.num_devices // mesh.shape["tensor"])
  langs = {"source_lang": data_cfg.source_lang, "target_lang": data_cfg.target_lang}
  train_iter = iter(pipeline.train_dataset(
      sources["train"], tokenizer, batch_size=rows, max_length=data_cfg.max_length,
      seed=config.seed, worker_count=data_cfg.worker_count, **langs))
  eval_batches = list(pipeline.eval_dataset(
      sources["validation"], tokenizer, batch_size=rows,
      max_length=data_cfg.eval_max_length, **langs))
  # Sentence pairs translated for validation BLEU (every process decodes all).
  validation = sources["validation"]
  count = len(validation) if config.eval_bleu_sentences < 0 else min(
      config.eval_bleu_sentences, len(validation))
  bleu_pairs = [tuple(pipeline.decode_text(validation[i][lang])
                      for lang in (data_cfg.source_lang, data_cfg.target_lang))
                for i in range(count)]
  return tokenizer, train_iter, eval_batches, bleu_pairs


def run(config, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if any.

  Returns the last step reached (`step`) and the last validation metrics.
  """
  workdir = epath.Path(workdir)
  write_run_info(config, workdir)
  mesh = mesh_lib.create_mesh(config.mesh_shape)
  rules = sharding.normalize_rules(config.logical_axis_rules)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  logging.info("Mesh %s over %d devices, %d processes.", dict(mesh.shape),
               jax.device_count(), jax.process_count())
  tokenizer, train_iter, eval_batches, bleu_pairs = _input_pipelines(
      config, workdir, mesh, batch_sharding)

  # Model, optimizer, state (restored if a checkpoint exists).
  model_cfg = transformer.TransformerConfig.from_config(config.model,
                                                        tokenizer.vocab_size)
  tx = optimizer_lib.create_optimizer(config)
  graphdef, rest, state, state_shardings = create_train_state(
      model_cfg, tx, mesh, rules, config.seed)
  logging.info("Model: %s parameters.",
               f"{sum(x.size for x in jax.tree.leaves(state.params)):,}")
  checkpointer = checkpoints.Checkpointer(
      str(workdir), max_to_keep=config.max_checkpoints_to_keep)
  restored, start_step = checkpointer.restore_latest(
      checkpoints.abstract_like(state), train_iter)
  if restored is not None:
    state = restored
  train_step, eval_step = compile_steps(config, graphdef, rest, tx, state_shardings,
                                        batch_sharding)

  def evaluate_now(params) -> dict[str, float]:
    result = evaluate(eval_step, params, eval_batches, batch_sharding)
    if bleu_pairs:
      result.update(validation_bleu(config, model_cfg, graphdef, rest, params, mesh,
                                    tokenizer, bleu_pairs))
    return result

  writer = metrics_lib.MetricWriter(str(workdir))
  try:
    with sharding.use_mesh(mesh, rules):
      last_eval = _train_loop(config, workdir, state, start_step, train_iter,
                              batch_sharding, train_step, evaluate_now, checkpointer,
                              writer)
  finally:  # A pending async save completes even when training stops on an error.
    checkpointer.close()
    writer.close()
  if jax.process_index() == 0:
    metrics_lib.plot_curves(str(workdir))
  return last_eval


def _train_loop(config, workdir, state, start_step, train_iter, batch_sharding,
                train_step, evaluate_now, checkpointer, writer) -> dict[str, float]:
  """Steps from `start_step` to the end (or a stop request); the last evaluation."""
  sigterm = _Sigterm()
  progress = tqdm.tqdm(total=config.num_train_steps, initial=start_step,
                       disable=jax.process_index() != 0, dynamic_ncols=True)
  last_eval, window_start, window_step = {}, time.perf_counter(), start_step
  step = start_step
  profile_steps = (config.profile_start_step,
                   config.profile_start_step + config.profile_num_steps - 1)
  for step in range(start_step + 1, config.num_train_steps + 1):
    if step == profile_steps[0] > 0:
      jax.profiler.start_trace(str(workdir / "profile"))
    batch = pipeline.make_global(next(train_iter), batch_sharding)
    state, metrics = train_step(state, batch)
    if step == profile_steps[1] and profile_steps[0] > 0:
      jax.block_until_ready(state)
      jax.profiler.stop_trace()

    stopping = sigterm.received or checkpointer.reached_preemption(step)
    last = step == config.num_train_steps
    save = last or stopping or step % config.checkpoint_every_steps == 0
    if save or step % config.log_every_steps == 0:
      metrics = jax.device_get(metrics)
      _check_finite(step, metrics, checkpointer)
      seconds = (time.perf_counter() - window_start) / (step - window_step)
      metrics["step_time_ms"] = 1000 * seconds
      metrics["tokens_per_sec"] = metrics["tokens"] / seconds  # Target tokens.
      writer.write(step, "train", metrics)
      progress.set_postfix(loss=f"{metrics['loss']:.3f}",
                           lr=f"{metrics['learning_rate']:.2e}",
                           tok_s=f"{metrics['tokens_per_sec']:.0f}")
      window_start, window_step = time.perf_counter(), step
    bleu_now = None
    if last or step % config.eval_every_steps == 0:
      last_eval = evaluate_now(state.params)
      bleu_now = last_eval.get("bleu")
      writer.write(step, "validation", last_eval)
      logging.info("Step %d validation: %s", step, last_eval)
    if save:  # BLEU measured at this step ranks the checkpoint.
      checkpointer.save(step, state, train_iter, bleu=bleu_now)
    progress.update(1)
    if stopping:
      logging.warning("Stopping at step %d after a stop request.", step)
      break
  progress.close()
  return {"step": step, **last_eval}
