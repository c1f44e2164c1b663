"""Cluster launch: nemo-run factories and the layout/memory planner."""
