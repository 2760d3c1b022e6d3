"""A tiny model and few steps on Multi30k: for tests and CI, not for quality."""
from configs import default


def get_config():
  config = default.get_config()
  config.batch_tokens = 512  # 16 rows of 32 tokens.
  config.num_train_steps = 20
  config.warmup_steps = 5
  config.schedule = "rsqrt"  # Open-ended: tests stop, resume and extend runs at any step.
  config.learning_rate = 3e-3
  config.log_every_steps = 1
  config.eval_every_steps = 10
  config.checkpoint_every_steps = 5
  config.eval_bleu_sentences = 0  # Tests that need BLEU turn it on.
  config.final_eval_splits = ()  # No averaging and scoring after training, likewise.
  config.data.vocab_size = 1000  # Small vocabulary.
  config.data.spm_max_sentences = 10_000  # SentencePiece trains in a few seconds.
  config.data.max_length = 32  # Short rows.
  config.data.eval_max_length = 128  # Keeps every validation sentence whole.
  config.model.emb_dim = 32
  config.model.num_heads = 4
  config.model.num_encoder_layers = 2
  config.model.num_decoder_layers = 2
  config.model.qkv_dim = 32
  config.model.mlp_dim = 64
  config.model.dropout_rate = 0.1
  config.model.attention_dropout_rate = 0.0
  return config
