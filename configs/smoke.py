"""A tiny model and few steps on Multi30k: for tests and CI, not for quality."""
from configs import default


def get_config():
  config = default.get_config()
  config.batch_tokens = 512  # 16 rows of 32 tokens.
  config.data.vocab_size = 1000  # Small vocabulary: SentencePiece trains in seconds.
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
