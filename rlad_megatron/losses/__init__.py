"""Pure per-token losses (TRRD and baselines): tensors in, (loss, metrics) out."""
