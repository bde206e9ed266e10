"""Replay memory with a fixed capacity, split in equal quotas over groups (classes, or steps)."""
from __future__ import annotations

from typing import Any, Hashable, Sequence

import torch

#: how a memory splits its capacity: per class label (class-balanced) or per step of the stream
GROUPINGS = ("label", "step")


def _take(column, idx: torch.Tensor):
    if isinstance(column, torch.Tensor):
        return column[idx]
    return [column[i] for i in idx.tolist()]


def _cat(columns: list):
    if isinstance(columns[0], torch.Tensor):
        from mmcl.device import no_autocast

        with no_autocast():  # called inside training_loss, under the run's autocast
            return torch.cat(columns)
    return [x for c in columns for x in c]


class ReplayBuffer:
    """A replay memory of at most `capacity` samples, split over groups in equal quotas.

    A group is a class label (`group_by="label"`: class-balanced, the first `capacity % groups`
    groups get one sample more) or a step of the stream (`group_by="step"`: every step gets
    `capacity // steps`, quad's rule). When new groups arrive, old groups shrink to their quota
    by dropping their last stored samples and each new group fills its quota with a random draw
    (without replacement) from its samples. Samples are dicts of columns (tensors, or lists such
    as questions); `columns` keeps only those named. All draws use the caller's generator, so
    every rank of a distributed run builds the same memory.
    """

    def __init__(self, capacity: int, group_by: str = "label", columns: Sequence[str] | None = None):
        if capacity < 0:
            raise ValueError(f"replay buffer capacity must be >= 0, got {capacity}")
        if group_by not in GROUPINGS:
            raise ValueError(f"group_by must be one of {', '.join(GROUPINGS)}, got {group_by!r}")
        self.capacity, self.group_by = capacity, group_by
        self.columns = tuple(columns) if columns is not None else None
        self.groups: dict[Hashable, dict[str, Any]] = {}  # in order of arrival
        self._flat: dict[str, Any] | None = None  # the groups concatenated (cached)
        self._n: int | None = None  # their length (cached)

    def __len__(self) -> int:
        if self._n is None:  # one sum per change of the memory, not one per group at every draw
            self._n = sum(_len(g) for g in self.groups.values())
        return self._n

    def _quotas(self, keys: list) -> dict:
        base, extra = divmod(self.capacity, len(keys))
        spread = self.group_by == "label"
        return {k: base + (1 if spread and i < extra else 0) for i, k in enumerate(keys)}

    def add(self, data, groups: Sequence[Hashable], generator: torch.Generator) -> None:
        """Store samples of `data` (anything with `take(index) -> dict of columns` and a length),
        `groups[i]` being sample i's group; groups already stored are left as they are."""
        if self.capacity == 0 or len(data) == 0:
            return
        old = list(self.groups)
        member = groups if isinstance(groups, torch.Tensor) else None
        new = sorted(set(groups.tolist() if member is not None else groups) - set(old))
        if not new:
            return
        quota = self._quotas(old + new)
        for k in old:
            if _len(self.groups[k]) > quota[k]:  # only groups over their new quota shrink (not all, every time)
                self.groups[k] = {c: v[: quota[k]] for c, v in self.groups[k].items()}
        for k in new:
            if member is not None:
                idx = torch.nonzero(member == k).flatten()
            else:
                idx = torch.tensor([i for i, g in enumerate(groups) if g == k], dtype=torch.long)
            idx = idx[torch.randperm(len(idx), generator=generator)[: quota[k]]]
            cols = data.take(idx)
            self.groups[k] = {c: (v.clone() if isinstance(v, torch.Tensor) else list(v)) for c, v in cols.items()
                              if self.columns is None or c in self.columns}
        self._flat = self._n = None

    @property
    def data(self) -> dict[str, Any]:
        """Every stored sample, group after group: column -> tensor or list."""
        if self._flat is None:
            parts = list(self.groups.values())
            self._flat = {c: _cat([p[c] for p in parts]) for c in parts[0]} if parts else {}
        return self._flat

    def sample(self, n: int, generator: torch.Generator) -> dict[str, Any]:
        """`n` distinct stored samples (fewer if the memory is smaller), uniformly at random."""
        idx = torch.randperm(len(self), generator=generator)[: min(n, len(self))]
        return {c: _take(v, idx) for c, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "group_by": self.group_by, "columns": self.columns,
                "groups": [(k, dict(v)) for k, v in self.groups.items()]}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.group_by, self.columns = state["capacity"], state["group_by"], state["columns"]
        self.groups = {k: dict(v) for k, v in state["groups"]}
        self._flat = self._n = None


def _len(columns: dict) -> int:
    return len(next(iter(columns.values()))) if columns else 0
