"""Multi30k En->Fr: the CPU recipe, a small Transformer trained in under an hour on 2 cores.

Hyperparameters chosen on validation BLEU (docs/multi30k.md has the search).
"""
import os

import ml_collections

from parallel import sharding


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds parameter init, dropout and data shuffling.
  # Global token budget per step and per side (source, target), padding included;
  # with packing, a batch is [batch_tokens // data.max_length, data.max_length].
  config.batch_tokens = 4096
  # Optimizer steps: what fits in an hour on 2 CPU cores; validation BLEU still rises
  # at the end (docs/multi30k.md has the curve and the step times).
  config.num_train_steps = 2000
  config.learning_rate = 3e-3  # Peak learning rate, reached at the end of warmup.
  config.warmup_steps = 200  # Linear warmup to learning_rate, then config.schedule.
  # Decay after warmup: 'rsqrt' (1/sqrt(step), no end), 'linear' or 'cosine' (0 at the end).
  # rsqrt, because it has no end: a finished run can be continued with more steps, and
  # linear decay scored within rsqrt's seed spread (docs/multi30k.md).
  config.schedule = "rsqrt"
  config.optimizer = "adamw"  # 'adamw' or 'adafactor'.
  config.adam_b1 = 0.9  # AdamW first-moment decay.
  config.adam_b2 = 0.98  # AdamW second-moment decay.
  config.adam_eps = 1e-9  # AdamW epsilon.
  config.weight_decay = 1e-4  # Decoupled weight decay.
  config.grad_clip_norm = 1.0  # Clip gradients to this global norm (0: off).
  config.grad_accum_steps = 1  # Micro-batches per optimizer update (optax.MultiSteps).
  # Generator of dropout masks, a key of training.steps.DROPOUT_RNG_IMPLS (init: threefry).
  # 8-bit draws packed from threefry words: a cheaper CPU step, so more steps an hour.
  config.dropout_rng_impl = "threefry2x32_8bit"
  config.label_smoothing = 0.1  # Probability mass spread over non-reference tokens.
  config.log_every_steps = 50  # Train metrics to TensorBoard, metrics.jsonl, stdout.
  config.eval_every_steps = 550  # Validation loss, accuracy, perplexity and BLEU.
  config.eval_bleu_sentences = -1  # Validation pairs translated for BLEU (-1 all, 0 off).
  config.checkpoint_every_steps = 50  # Asynchronous orbax saves.
  config.max_checkpoints_to_keep = 10  # Older ones are deleted, except the best by BLEU.
  # After the last step: average this many last checkpoints (1: the last as it is)...
  config.average_last_checkpoints = 5
  # ...and score the average on these splits with config.decode (WORKDIR/results.json).
  config.final_eval_splits = ("validation", "test_2016_flickr")
  config.profile_start_step = -1  # Step at which a jax.profiler trace starts (-1: off).
  config.profile_num_steps = 5  # Steps in the trace, written to WORKDIR/profile.

  # Device mesh ('data', 'fsdp', 'tensor'); -1 takes the remaining devices.
  config.mesh_shape = (-1, 1, 1)
  # Logical axis name -> mesh axes: the whole sharding policy (parallel/sharding.py).
  config.logical_axis_rules = sharding.DEFAULT_RULES

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "multi30k"  # 'multi30k' (task 1, en-fr) or 'wmt14' (wmt14_translate/fr-en).
  data.source_lang = "en"  # Feature translated from.
  data.target_lang = "fr"  # Feature translated to.
  # Folder with the raw <split>.{en,fr}.gz files for an offline build; empty downloads.
  data.manual_dir = os.environ.get("MULTI30K_DIR", "")
  data.tfds_data_dir = ""  # Where TFDS writes array_record files; empty = TFDS default.
  data.vocab_size = 8000  # Joint En+Fr SentencePiece vocabulary, byte pieces included.
  data.spm_model_type = "unigram"  # SentencePiece algorithm: 'unigram' or 'bpe'.
  data.spm_max_sentences = 2_000_000  # Sentences sampled to train SentencePiece.
  data.max_length = 64  # Packed row length; longer training pairs are dropped.
  data.eval_max_length = 128  # Row length for evaluation; longer sides are truncated.
  data.worker_count = 0  # grain worker processes (0: in the training process).

  # Beam search for validation BLEU and the final scores; saved with the run, it
  # gives infer.py its defaults (its flags override them).
  config.decode = decode = ml_collections.ConfigDict()
  decode.beam_size = 4  # Beam width (1: greedy).
  # GNMT length penalty exponent; 1.0 beats the usual 0.6 on Multi30k validation
  # (docs/multi30k.md).
  decode.alpha = 1.0
  decode.max_len_a = 1.5  # Output limit a * source_len + b tokens...
  decode.max_len_b = 10.0  # ...EOS included.

  config.model = model = ml_collections.ConfigDict()
  model.emb_dim = 128  # Model width d_model.
  model.num_heads = 4  # Attention heads.
  model.num_encoder_layers = 4  # Encoder blocks.
  model.num_decoder_layers = 4  # Decoder blocks.
  model.qkv_dim = 128  # Width of queries, keys and values over all heads.
  model.mlp_dim = 512  # Hidden width of the feed-forward blocks.
  model.max_len = 256  # Longest position the sinusoidal table covers.
  model.dropout_rate = 0.1  # Dropout on embeddings, residual branches and the MLP.
  model.attention_dropout_rate = 0.1  # Dropout on attention weights.
  model.share_embeddings = True  # One table for source, target and output logits.
  model.pre_layer_norm = True  # Pre-LN blocks (False: post-LN as in Vaswani et al.).
  model.dtype = "float32"  # Compute dtype ('bfloat16' on GPU/TPU).
  model.param_dtype = "float32"  # Parameter dtype.
  # Recompute each layer's activations in the backward pass instead of keeping them:
  # one more forward pass per step, for a batch that would not fit otherwise (docs/tpu.md).
  model.remat = False
  return config
