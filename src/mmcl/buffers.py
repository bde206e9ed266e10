"""Replay memory with a fixed size in samples, kept class-balanced."""
from __future__ import annotations

import torch

from mmcl.stream import TensorSet


class ReplayBuffer:
    """A class-balanced replay memory of at most `capacity` samples.

    After each experience every class seen so far gets an equal share of the capacity (the
    first `capacity % n_classes` classes one more); old classes shrink to their share by
    dropping their last stored samples, new classes fill theirs with a random draw from the
    experience. All draws use the caller's generator, so every rank builds the same buffer.
    """

    def __init__(self, capacity: int):
        if capacity < 0:
            raise ValueError(f"replay buffer capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.data = TensorSet.empty()

    def __len__(self) -> int:
        return len(self.data)

    def classes(self) -> list[int]:
        return sorted(set(self.data["y"].tolist()))

    def update(self, new: TensorSet, generator: torch.Generator) -> None:
        if self.capacity == 0 or len(new) == 0:
            return
        old_classes = self.classes()
        new_classes = sorted(set(new["y"].tolist()) - set(old_classes))
        all_classes = old_classes + new_classes
        base, extra = divmod(self.capacity, len(all_classes))
        quota = {c: base + (1 if k < extra else 0) for k, c in enumerate(all_classes)}
        parts = []
        for c in old_classes:
            idx = torch.nonzero(self.data["y"] == c).flatten()[: quota[c]]
            parts.append(self.data.subset(idx))
        for c in new_classes:
            idx = torch.nonzero(new["y"] == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=generator)[: quota[c]]]
            parts.append(new.subset(idx))
        self.data = TensorSet.cat(parts)

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randperm(len(self.data), generator=generator)[: min(n, len(self.data))]
        return self.data.take(idx)

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "data": dict(self.data.tensors)}

    def load_state_dict(self, state: dict) -> None:
        self.capacity = state["capacity"]
        self.data = TensorSet(state["data"])
