"""Vocab-parallel kernels: the only code that knows the vocabulary is sharded over TP."""
