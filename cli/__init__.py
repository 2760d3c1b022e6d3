"""Flag definitions shared by the entry-point scripts (train.py, infer.py, serve.py, ...)."""
