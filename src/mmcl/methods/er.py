"""`er`: experience replay from a fixed-size, class-balanced memory.

Every training batch is joined by an equally sized batch drawn from the memory; after each
experience the memory is rebalanced over all classes seen (see `ReplayBuffer`).

Scenario setting (`setting: scenario`). The memory holds whole samples: the image (uint8 tensor),
the question, the ground-truth answer and the grounding flag, at most `buffer_size` questions in
total (default 200, quad's `memory`), split equally over the steps seen so far. After each step a
seeded random order of that step's training questions (`self.rng`) is stored, and every step's
share is cut to `buffer_size // steps` by dropping its last samples (as quad's question memory).
From the second step on, every training batch is joined by `replay_batch_size` stored samples
drawn without replacement with `self.rng`, and the loss is the answer-token cross-entropy over the
joint batch (`VLM.loss` of the joint batch: current and replayed questions alike). The scenario default of
`replay_batch_size` is 8, not 0 (= the training batch size, 32 in the bundled config): 8 is what
quad replays per batch, so er and quad see the same number of replayed questions per step and
store the same number of questions (er keeps images and answers, quad questions only). The memory
is in the method state, so a resumed run replays exactly what an uninterrupted one does.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmcl import distributed as dist
from mmcl.buffers import ReplayBuffer
from mmcl.methods.base import Method, register


@register("er")
class ER(Method):
    settings = ("modality", "scenario")
    #: defaults that differ in the scenario setting (see the module doc): quad's replay budget
    setting_defaults = {"scenario": {"replay_batch_size": 8}}

    @dataclass
    class Hparams:
        buffer_size: int = 200  # memory size in samples, over all classes (scenario: questions, over all steps)
        replay_batch_size: int = 0  # replayed samples per step; 0 = the training batch size (scenario default: 8)

    def __init__(self, stream, cfg, hp):
        super().__init__(stream, cfg, hp)
        if self.scenario and (hp.buffer_size < 0 or hp.replay_batch_size < 0):
            raise ValueError(f"er needs buffer_size >= 0 and replay_batch_size >= 0, got {hp}")
        self.buffer = ReplayBuffer(hp.buffer_size)
        # scenario setting: step name -> {"images" (k, 3, H, W) uint8, "questions", "answers", "grounding"}
        self.memory: dict[str, dict] = {}

    def training_loss(self, batch):
        if self.scenario:
            return self.model.loss(self.with_replay(batch))
        if len(self.buffer):
            n = self.hp.replay_batch_size or self.cfg["train"]["batch_size"]
            # draw the global replay batch identically on every rank, keep this rank's share
            replay = dist.shard(self.buffer.sample(n, self.rng))
            batch = {k: torch.cat([batch[k], replay[k]]) for k in batch}
        logits = self.model.logits(self.net(batch), self.num_seen)
        return F.cross_entropy(logits, batch["y"])

    def after_experience(self, exp):
        if self.scenario:
            self._store(exp)
            return
        self.buffer.update(exp.train, self.rng)

    # -- scenario setting ----------------------------------------------------------------
    def memory_size(self) -> int:
        return sum(len(m["questions"]) for m in self.memory.values())

    def _store(self, exp) -> None:
        """A seeded random order of the step's questions, then every step cut to an equal share."""
        data = exp.train
        order = torch.randperm(len(data), generator=self.rng)[: self.hp.buffer_size]
        s = data.take(order)
        self.memory[exp.name] = {"images": s["images"].clone(), "questions": s["questions"],
                                 "answers": s["answers"], "grounding": s["grounding"].clone()}
        quota = self.hp.buffer_size // len(self.memory)
        for m in self.memory.values():
            for k in ("images", "questions", "answers", "grounding"):
                m[k] = m[k][:quota]

    def with_replay(self, batch: dict) -> dict:
        """`batch` joined by `replay_batch_size` stored samples (no replay at the first step or with an empty memory)."""
        total = self.memory_size()
        if total == 0:
            return batch
        n = self.hp.replay_batch_size or self.cfg["train"]["batch_size"]
        if n == 0:
            return batch
        pick = torch.randperm(total, generator=self.rng)[: min(n, total)].tolist()
        flat = [(m, i) for m in self.memory.values() for i in range(len(m["questions"]))]
        chosen = [flat[j] for j in pick]
        return {"images": torch.cat([batch["images"], torch.stack([m["images"][i] for m, i in chosen])]),
                "questions": list(batch["questions"]) + [m["questions"][i] for m, i in chosen],
                "answers": list(batch["answers"]) + [m["answers"][i] for m, i in chosen],
                "grounding": torch.cat([batch["grounding"], torch.stack([m["grounding"][i] for m, i in chosen])])}

    # -- state --------------------------------------------------------------------------
    def extra_state(self):
        if self.scenario:
            return {"memory": copy.deepcopy(self.memory)}
        return {"buffer": self.buffer.state_dict()}

    def load_extra_state(self, state):
        if self.scenario:
            self.memory = copy.deepcopy(state["memory"])
            return
        self.buffer.load_state_dict(state["buffer"])
