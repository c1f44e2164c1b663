"""Which prompts each RL step uses: a seeded permutation per epoch, resumable by position.

    sampler = PromptSampler(items, seed=0)
    prompts = sampler.next(16)           # the same 16 items on every rank (DP shards them later)
    state = sampler.state_dict()         # {"consumed": ..., "seed": ...} goes into checkpoints

The order depends only on (seed, epoch), so resuming from `consumed` reproduces an uninterrupted
run exactly.
"""

from __future__ import annotations

from typing import Generic, Sequence, TypeVar

import torch

T = TypeVar("T")


class PromptSampler(Generic[T]):
    def __init__(self, items: Sequence[T], seed: int = 0):
        if not items:
            raise ValueError("PromptSampler: no prompts (the train split is empty)")
        self.items = list(items)
        self.seed = seed
        self.consumed = 0

    def _order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.items), generator=g).tolist()

    def next(self, n: int) -> list[T]:
        out, size = [], len(self.items)
        while len(out) < n:
            epoch, pos = divmod(self.consumed, size)
            take = min(n - len(out), size - pos)
            order = self._order(epoch)
            out.extend(self.items[i] for i in order[pos:pos + take])
            self.consumed += take
        return out

    @property
    def epoch(self) -> int:
        return self.consumed // len(self.items)

    def state_dict(self) -> dict:
        return {"consumed": self.consumed, "seed": self.seed, "size": len(self.items)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("size", len(self.items)) != len(self.items) or state.get("seed") != self.seed:
            raise ValueError(f"data position in the checkpoint is for {state.get('size')} prompts "
                             f"with seed {state.get('seed')}, this run has {len(self.items)} with "
                             f"seed {self.seed}: data.* must match the run being resumed")
        self.consumed = int(state["consumed"])
