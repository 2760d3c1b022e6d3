"""Transformer-big shapes: d 1024, ffn 4096, 16 heads, otherwise as transformer_base."""
from configs import transformer_base


def get_config():
  config = transformer_base.get_config()
  config.learning_rate = 5e-4
  config.model.emb_dim = 1024
  config.model.num_heads = 16
  config.model.qkv_dim = 1024
  config.model.mlp_dim = 4096
  config.model.dropout_rate = 0.3
  return config
