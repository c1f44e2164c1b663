"""Benchmarks: `python -m bench.<name> [--quick]`; results are written to bench/results/."""
