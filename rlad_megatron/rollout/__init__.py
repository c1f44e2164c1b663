"""KV-cached generation on megatron models under TP and PP."""
