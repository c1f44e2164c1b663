"""rlad_megatron: RL-aware knowledge distillation (RLAD / TRRD) on megatron-core.

Folders follow the data flow of one training step:
runtime/ (processes, parallel state) -> models/ (student, teacher) -> ops/ (vocab-parallel
log-probs) -> rollout/ -> data/ (rewards, advantages, selection) -> losses/ -> train/.
"""

__version__ = "0.1.0"
