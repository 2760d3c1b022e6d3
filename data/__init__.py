"""Data: the Multi30k TFDS builder, dataset loading, SentencePiece, the grain pipeline."""
