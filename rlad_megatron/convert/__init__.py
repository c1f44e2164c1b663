"""Hugging Face <-> Megatron distributed checkpoint conversion."""
