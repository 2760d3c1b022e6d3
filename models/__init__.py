"""The network (Flax NNX) and, later, the decoder; pure math, no I/O."""
from models.transformer import CrossKV, DecodeCache, Transformer, TransformerConfig
