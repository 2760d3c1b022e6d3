"""The network (Flax NNX) and beam search over it; pure math, no I/O."""
from models.decode_state import CrossKV, DecodeCache, OutputTable
from models.transformer import Transformer, TransformerConfig
