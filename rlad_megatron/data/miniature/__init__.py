"""The reproduction's miniature tasks (reasoning-gym's chain_sum and knights_knaves, like the
paper's knights and knaves at PPL2-PPL8): their difficulty levels and held-out keys (levels.py)
and their compact prompts and procedural solutions for tiny models trained from scratch
(compact.py, data.format=compact). The general data path (data/tasks.py, data/formats.py)
renders any task; these modules are what the miniature adds."""
