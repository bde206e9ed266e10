"""`er`: experience replay from a fixed-size memory.

Every training batch is joined by `replay_batch_size` samples drawn from the memory (without
replacement, with `self.rng`); after each experience the memory takes in samples of it. The memory
(`ReplayBuffer`) splits its capacity in equal quotas over the setting's groups: classes in the
modality setting (class-balanced), steps in the scenario setting (every step `buffer_size // steps`
questions, with their images and answers). The memory is method state, so a resumed run replays
exactly what an uninterrupted one does.

In the scenario setting `replay_batch_size` defaults to 8, what quad replays per batch, so er and
quad see the same number of replayed questions per step and store the same number of questions
(er keeps images and answers, quad questions only).
"""
from dataclasses import dataclass

from mmcl import distributed as dist
from mmcl.buffers import ReplayBuffer
from mmcl.methods.base import Method, register

#: what a stored sample keeps, per grouping (scenario steps: not the ids)
COLUMNS = {"label": None, "step": ("images", "questions", "answers", "grounding", "boxes")}


@register("er")
class ER(Method):
    settings = ("modality", "scenario")
    setting_defaults = {"scenario": {"replay_batch_size": 8}}

    #: allowed ranges of the numeric hyper-parameters (checked when the config loads)
    ranges = {"buffer_size": ">=0", "replay_batch_size": ">=0"}
    @dataclass
    class Hparams:
        buffer_size: int = 200  # memory size in samples (scenario: questions), over all classes / steps
        replay_batch_size: int = 0  # replayed samples per batch; 0 = the training batch size

    def __init__(self, stream, cfg, hp, setting=None):
        if hp.buffer_size < 0 or hp.replay_batch_size < 0:
            raise ValueError(f"er needs buffer_size >= 0 and replay_batch_size >= 0, got {hp}")
        super().__init__(stream, cfg, hp, setting)
        group = self.setting.replay_group
        self.memory = ReplayBuffer(hp.buffer_size, group_by=group, columns=COLUMNS[group])

    def training_loss(self, batch):
        n = self.hp.replay_batch_size or self.cfg["train"]["batch_size"]
        if len(self.memory) and n:
            # drawn identically on every rank; each keeps its share
            batch = self.setting.join(batch, dist.shard(self.memory.sample(n, self.rng)))
        return self.setting.loss(self.model, batch, self.num_seen, self.net)

    def after_experience(self, exp):
        data = exp.train
        groups = data["y"] if self.memory.group_by == "label" else [exp.name] * len(data)
        self.memory.add(data, groups, self.rng)

    def extra_state(self):
        return {"memory": self.memory.state_dict()}

    def load_extra_state(self, state):
        self.memory.load_state_dict(state["memory"])
