"""Multi30k En->Fr with a small Transformer sized to train on a laptop CPU."""
import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds parameter init, dropout and data shuffling.
  # Global token budget per step and per side (source, target), padding included;
  # with packing, a batch is [batch_tokens // data.max_length, data.max_length].
  config.batch_tokens = 4096

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

  config.model = model = ml_collections.ConfigDict()
  model.emb_dim = 256  # Model width d_model.
  model.num_heads = 4  # Attention heads.
  model.num_encoder_layers = 3  # Encoder blocks.
  model.num_decoder_layers = 3  # Decoder blocks.
  model.qkv_dim = 256  # Width of queries, keys and values over all heads.
  model.mlp_dim = 1024  # Hidden width of the feed-forward blocks.
  model.max_len = 256  # Longest position the sinusoidal table covers.
  model.dropout_rate = 0.3  # Dropout on embeddings, residual branches and the MLP.
  model.attention_dropout_rate = 0.1  # Dropout on attention weights.
  model.share_embeddings = True  # One table for source, target and output logits.
  model.pre_layer_norm = True  # Pre-LN blocks (False: post-LN as in Vaswani et al.).
  model.dtype = "float32"  # Compute dtype ('bfloat16' on GPU/TPU).
  model.param_dtype = "float32"  # Parameter dtype.
  return config
