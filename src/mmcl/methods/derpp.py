"""`derpp`: DER++, dark experience replay with labels.

Reference: Buzzega, Boschini, Porrello, Abati, Calderara, "Dark Experience for General Continual
Learning: a Strong, Simple Baseline", NeurIPS 2020 (and its official code, mammoth's models/derpp.py).

A reservoir memory keeps inputs, labels and the logits the model produced for them when they were
stored. Every training step adds two replay terms to the cross-entropy of the current batch:

    loss = CE(f(x), y) + alpha * MSE(f(x'), z') + beta * CE(f(x''), y'')

where (x', z') and (x'', y'') are two independent batches drawn from the memory. Matching the stored
logits ("dark knowledge") preserves the old responses over all classes; the label term (the "++")
corrects stored logits that were wrong or are stale.

As published: after every training step the step's batch is offered to the reservoir (Vitter's
algorithm R over every sample offered so far, current experience included, once per epoch), with
the logits of that step's forward pass, so stored logits are samples of the optimisation
trajectory and replay acts from the first experience's second step on. Under torchrun each rank
sees its shard of the batch: the shards and their logits are gathered (rank order: the global
batch) and every rank offers the same rows with the same generator, so the memories stay
bit-identical.

Adapted to class-incremental learning with a growing label set: logits are over the classes seen
so far (`self.num_seen`), so a stored sample's logits cover only the classes seen when it was
stored. They are kept zero-padded to the stream's total number of classes, with the number of
valid columns per sample; the MSE is the mean over valid entries only (the paper's plain mean when
all widths agree). The label CE is over all classes seen so far, like the current batch's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmcl import distributed as dist
from mmcl.device import no_autocast
from mmcl.methods.base import Method, register
from mmcl.stream import TensorSet


class LogitReservoir:
    """A reservoir sample (algorithm R) of at most `capacity` stream samples, with stored logits.

    `data` holds the samples' fields, 'y', 'logits' (N, num_classes; zero beyond the valid columns)
    and 'n_logits' (N,; the number of valid logit columns). `seen` counts the samples offered so
    far, which is what makes every sample ever offered equally likely to be in the memory.
    """

    def __init__(self, capacity: int, num_classes: int):
        if capacity < 0:
            raise ValueError(f"derpp buffer_size must be >= 0, got {capacity}")
        self.capacity = capacity
        self.num_classes = num_classes
        self.seen = 0
        self._store: dict[str, torch.Tensor] | None = None  # capacity rows per field, the first `_size` in use
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def plan(self, n_new: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Offer `n_new` samples in order; returns (slots, picked): new sample picked[i] goes to slots[i].

        The first offers fill the free slots; after that, the sample offered when `k` samples have
        been seen replaces slot j ~ U{0..k} if j < capacity (a later offer overwrites an earlier one).
        """
        room = max(0, min(self.capacity - len(self), n_new))
        where = {len(self) + i: i for i in range(room)}  # slot -> index among the new samples
        rest = torch.arange(room, n_new)
        before = self.seen + rest  # samples seen before each offer
        j = (torch.rand(len(rest), generator=generator, dtype=torch.float64) * (before + 1)).long()
        hit = j < self.capacity
        for i, s in zip(rest[hit].tolist(), j[hit].tolist()):
            where[s] = i
        self.seen += n_new
        slots = torch.tensor(sorted(where), dtype=torch.long)
        return slots, torch.tensor([where[s] for s in slots.tolist()], dtype=torch.long)

    def write(self, slots: torch.Tensor, rows: dict[str, torch.Tensor]) -> None:
        """Put `rows` (fields, 'y', 'logits', 'n_logits') into `slots`, in place (storage for the whole
        capacity is allocated once)."""
        if not len(slots):
            return
        if self._store is None:
            self._store = {k: v.new_zeros((self.capacity, *v.shape[1:])) for k, v in rows.items()}
        elif set(rows) != set(self._store):
            raise ValueError(f"memory fields {sorted(self._store)} differ from new rows {sorted(rows)}")
        for k, v in rows.items():
            self._store[k][slots] = v
        self._size = max(self._size, int(slots.max()) + 1)

    @property
    def data(self) -> TensorSet:
        if self._store is None or not self._size:
            return TensorSet.empty()
        return TensorSet({k: v[: self._size] for k, v in self._store.items()})

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """`n` distinct memory samples (fewer if the memory is smaller), uniformly at random."""
        idx = torch.randperm(len(self), generator=generator)[: min(n, len(self))]
        return self.data.take(idx)

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "num_classes": self.num_classes, "seen": self.seen,
                "data": {k: v.clone() for k, v in self.data.tensors.items()} if len(self) else {}}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.num_classes, self.seen = state["capacity"], state["num_classes"], state["seen"]
        self._store, self._size = None, 0
        data = state["data"]
        if data:
            n = len(next(iter(data.values())))
            self.write(torch.arange(n), data)


@register("derpp")
class DERpp(Method):
    #: candidates tried on validation data by `mmcl sweep` (the same budget for every method)
    search_space = {"modality": {"alpha": [0.1, 0.3, 1.0]}}

    #: allowed ranges of the numeric hyper-parameters (checked when the config loads)
    ranges = {"buffer_size": ">=0", "alpha": ">=0", "beta": ">=0", "replay_batch_size": ">=0"}
    @dataclass
    class Hparams:
        buffer_size: int = 200  # memory size in samples (reservoir over the whole stream)
        alpha: float = 0.1  # weight of the logit-matching (MSE) term on a memory batch
        beta: float = 0.5  # weight of the label (CE) term on a second memory batch
        replay_batch_size: int = 0  # samples per memory batch (each of the two); 0 = the training batch size

    def __init__(self, stream, cfg, hp, setting=None):
        super().__init__(stream, cfg, hp, setting)
        self.memory = LogitReservoir(hp.buffer_size, len(stream.class_names))
        self._pending: tuple[dict, torch.Tensor] | None = None  # the step's batch and logits, until after_backward

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The unweighted terms: 'ce' (current batch) and, once the memory is non-empty, 'mse' and 'replay_ce'.
        Keeps the current batch and its logits, offered to the memory after the step (`after_backward`)."""
        n = self.num_seen
        if not len(self.memory):
            logits = self.model.logits(self.net(batch), n)
            self._pending = (batch, logits.detach())
            return {"ce": F.cross_entropy(logits, batch["y"])}
        size = self.hp.replay_batch_size or self.cfg["train"]["batch_size"]
        # two independent global draws, identical on every rank; each rank keeps its share
        mem_z = self.to_device(dist.shard(self.memory.sample(size, self.rng)))  # the memory stays on the CPU
        mem_y = self.to_device(dist.shard(self.memory.sample(size, self.rng)))
        with no_autocast():  # data, not computation: stored inputs keep their dtype
            joint = {k: torch.cat([batch[k], mem_z[k], mem_y[k]]) for k in batch}  # one forward (DDP)
        logits = self.model.logits(self.net(joint), n)
        cur, out_z, out_y = logits.split([len(batch["y"]), len(mem_z["y"]), len(mem_y["y"])])
        self._pending = (batch, cur.detach())
        zero = logits.sum() * 0.0  # an empty shard contributes nothing (but stays in the graph)
        # stored logits cover the classes seen when stored: compare those columns only
        valid = torch.arange(n, device=out_z.device) < mem_z["n_logits"][:, None]
        sq = (out_z.float() - mem_z["logits"][:, :n]).pow(2)[valid]
        return {
            "ce": F.cross_entropy(cur, batch["y"]),
            "mse": sq.mean() if sq.numel() else zero,
            "replay_ce": F.cross_entropy(out_y, mem_y["y"]) if len(out_y) else zero,
        }

    def training_loss(self, batch):
        t = self.loss_terms(batch)
        if "mse" not in t:
            return t["ce"]
        return t["ce"] + self.hp.alpha * t["mse"] + self.hp.beta * t["replay_ce"]

    def after_backward(self):
        """Offer the step's (global) batch to the reservoir with the logits of its forward pass."""
        if self._pending is None:
            return
        batch, logits = self._pending
        self._pending = None
        n = logits.shape[1]
        padded = torch.zeros(len(logits), self.memory.num_classes)
        padded[:, :n] = logits.float().cpu()
        rows = dist.gather_rows({**{k: v.detach().cpu() for k, v in batch.items()}, "logits": padded,
                                 "n_logits": torch.full((len(logits),), n, dtype=torch.long)})
        slots, picked = self.memory.plan(len(rows["y"]), self.rng)
        self.memory.write(slots, {k: v[picked] for k, v in rows.items()})

    def extra_state(self):
        return {"memory": self.memory.state_dict()}

    def load_extra_state(self, state):
        self.memory.load_state_dict(state["memory"])
