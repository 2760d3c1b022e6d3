"""Compile-only checks for Cloud TPU: the project's programs compiled for a named TPU
topology on a CPU host (libtpu's compile-only devices), and what the compiled code
says about memory, FLOPs, collectives and a roofline step time (compile_tpu.py).
"""
