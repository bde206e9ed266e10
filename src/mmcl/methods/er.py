"""`er`: experience replay from a fixed-size, class-balanced memory.

Every training batch is joined by an equally sized batch drawn from the memory; after each
experience the memory is rebalanced over all classes seen (see `ReplayBuffer`).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmcl import distributed as dist
from mmcl.buffers import ReplayBuffer
from mmcl.methods.base import Method, register


@register("er")
class ER(Method):
    @dataclass
    class Hparams:
        buffer_size: int = 200  # memory size in samples, over all classes
        replay_batch_size: int = 0  # replayed samples per step; 0 = the training batch size

    def __init__(self, stream, cfg, hp):
        super().__init__(stream, cfg, hp)
        self.buffer = ReplayBuffer(hp.buffer_size)

    def training_loss(self, batch):
        if len(self.buffer):
            n = self.hp.replay_batch_size or self.cfg["train"]["batch_size"]
            # draw the global replay batch identically on every rank, keep this rank's share
            replay = dist.shard(self.buffer.sample(n, self.rng))
            batch = {k: torch.cat([batch[k], replay[k]]) for k in batch}
        logits = self.model.logits(self.net(batch), self.num_seen)
        return F.cross_entropy(logits, batch["y"])

    def after_experience(self, exp):
        self.buffer.update(exp.train, self.rng)

    def extra_state(self):
        return {"buffer": self.buffer.state_dict()}

    def load_extra_state(self, state):
        self.buffer.load_state_dict(state["buffer"])
