"""Transformer-base (Vaswani et al. 2017) shapes on WMT14 En->Fr: 6+6 layers, d 512."""
from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = "wmt14"  # TFDS wmt14_translate/fr-en, read en->fr.
  config.data.manual_dir = ""  # WMT14 comes through TFDS's own download.
  config.data.vocab_size = 32000  # Shared En+Fr vocabulary.
  config.data.max_length = 128  # Packed row length.
  config.data.eval_max_length = 256  # newstest sentences are longer than captions.
  config.final_eval_splits = ("validation", "test")  # newstest2013, newstest2014.
  config.batch_tokens = 256 * 128  # 256 rows of 128 tokens per side.
  config.num_train_steps = 300_000
  config.learning_rate = 7e-4
  config.warmup_steps = 4000
  config.eval_every_steps = 5000
  config.checkpoint_every_steps = 5000
  config.max_checkpoints_to_keep = 5  # Averaged at the end: the last 25k steps.
  config.log_every_steps = 100
  config.model.emb_dim = 512
  config.model.num_heads = 8
  config.model.num_encoder_layers = 6
  config.model.num_decoder_layers = 6
  config.model.qkv_dim = 512
  config.model.mlp_dim = 2048
  config.model.dropout_rate = 0.1
  config.model.attention_dropout_rate = 0.0
  # JAX's default generator (default.py's 8-bit draws are a CPU speed-up).
  config.dropout_rng_impl = "threefry2x32"
  config.model.dtype = "bfloat16"  # bf16 compute, fp32 parameters (GPU/TPU).
  config.decode.alpha = 0.6  # The usual WMT value; default.py's 1.0 is Multi30k's.
  return config
