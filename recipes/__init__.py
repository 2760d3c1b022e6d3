"""Whole jobs built from training/ and inference/: train-and-score, distillation, data preparation."""
