"""Composition: config, the RLAD loop, the student update, checkpoints, metrics."""
