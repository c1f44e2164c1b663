"""A run's bookkeeping, beside the algorithm (train/): checkpoints (torch_dist iter_XXXXXXX/
with the train state), preemption, the run lock, metrics sinks (JSONL, TensorBoard, W&B), phase
timers and memory, plots, and the reward watch."""
