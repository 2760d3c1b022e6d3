"""The network (Flax NNX) and beam search over it; pure math, no I/O."""
from models.transformer import CrossKV, DecodeCache, Transformer, TransformerConfig
