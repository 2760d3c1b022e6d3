"""Inference: restore parameters, batch and translate, score BLEU."""
