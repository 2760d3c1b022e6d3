"""Experiment configs: plain Python files returning an `ml_collections.ConfigDict`."""
