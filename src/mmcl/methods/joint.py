"""`joint`: at each experience, train on the union of all experiences seen so far.

The upper reference: it stores every past sample (no memory limit), which continual
methods may not. In the scenario setting the union is of all steps' visual questions so far.

`budget` says how much of that union one experience trains on:

- `union` (the modality setting's default): every sample of the union, every epoch. Step t of
  an n-step stream then costs t times a continual method's step; over 20 steps that is 10.5
  times finetune's training.
- `step` (the scenario setting's default): as many samples as the current experience has,
  drawn without replacement from the union (seeded by the run seed and the step; the same
  draw on resume), for the same epochs. Every step then costs what it costs every continual
  method, so `joint` is the reference *at the same compute*: the difference to finetune is
  what access to all past data buys, not extra training. With one step (or `budget: union`)
  this is ordinary joint training.
"""
from dataclasses import dataclass

import torch

from mmcl.methods.base import Method, register
from mmcl.seeds import generator
from mmcl.stream import Experience, TensorSet

BUDGETS = ("union", "step")


@register("joint")
class Joint(Method):
    settings = ("modality", "scenario")
    setting_defaults = {"scenario": {"budget": "step"}}
    choices = {"budget": BUDGETS}

    @dataclass
    class Hparams:
        budget: str = "union"  # union | step (see the module doc); scenario default: step

    def training_data(self, exp: Experience) -> TensorSet:
        data = type(exp.train)  # TensorSet, or SampleSet in the scenario setting
        union = data.cat([e.train for e in self.stream.experiences[: exp.index + 1]])
        if self.hp.budget == "union" or len(union) <= len(exp.train):
            return union
        g = generator(self.cfg["seed"], "joint_budget", exp.index)
        return union.subset(torch.randperm(len(union), generator=g)[: len(exp.train)])
