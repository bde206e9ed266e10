"""`lwf`: Learning without Forgetting, knowledge distillation from the previous model.

Reference: Li, Hoiem, "Learning without Forgetting", ECCV 2016 (TPAMI 2017).

At the start of every experience after the first, a frozen copy of the model (the teacher) is
kept. Training on the current experience's data adds a distillation term that asks the model to
keep answering like the teacher on the classes it already knew:

    loss = CE(f(x)[:n], y) + alpha * T^2 * KL( softmax(t(x)[:k] / T) || softmax(f(x)[:k] / T) )

with f the model being trained, t the teacher, n the classes seen so far (`self.num_seen`) and k
the classes seen before the current experience. No stored samples: the current data carry the
old responses. The KL is averaged over the batch; T^2 keeps the term's gradient scale
independent of the temperature (Hinton et al., 2015).

Adapted to this setting:
- Class-incremental with text anchors instead of separate task heads: old and new classes share
  one head (scaled cosine logits to the anchors), so the paper's "old task outputs" are the logits
  of the k previously seen classes, and the "new task" loss is the cross-entropy over all n
  classes seen so far (the standard class-incremental LwF of e.g. iCaRL / Avalanche).
- No warm-up phase: the paper first trains only the new head with the backbone frozen; there is
  no new head here (new classes come with fixed text anchors), so training starts at once.
- The paper's modified cross-entropy on temperature-scaled probabilities equals the KL used here
  up to a constant (the teacher's entropy), so the gradients are the same.
- The teacher is stored (its trainable state only) in `extra_state`, so a run resumed in the
  middle of an experience distils from the same teacher as an uninterrupted one.

Scenario setting: the same distillation on the answer tokens. The teacher's and the student's
outputs are the next-token distributions at every answer-token position of the current batch,
teacher-forced on its ground-truth answers (`Setting.outputs`), so the KL is taken over the whole
vocabulary and averaged over the answer tokens:
    loss = answer-token CE + alpha * T^2 * mean_tokens KL( softmax(t / T) || softmax(f / T) )
The search space spans two decades around 1 ({0.1, 1, 10}): the token-level KL has no
class-count scale to calibrate it against the modality range {0.5, 1, 2}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmcl.methods.base import Method, register


@register("lwf")
class LwF(Method):
    settings = ("modality", "scenario")
    #: candidates tried on validation data by `mmcl sweep` (the same budget for every method)
    search_space = {"modality": {"alpha": [0.5, 1.0, 2.0]}, "scenario": {"alpha": [0.1, 1.0, 10.0]}}

    #: allowed ranges of the numeric hyper-parameters (checked when the config loads)
    ranges = {"alpha": ">=0", "temperature": ">0"}
    @dataclass
    class Hparams:
        alpha: float = 1.0  # weight of the distillation term (the paper's lambda_o)
        temperature: float = 2.0  # softmax temperature T of the distillation (the paper's T = 2)

    def __init__(self, stream, cfg, hp, setting=None):
        if hp.alpha < 0 or hp.temperature <= 0:
            raise ValueError(f"lwf needs alpha >= 0 and temperature > 0, got {hp.alpha}, {hp.temperature}")
        super().__init__(stream, cfg, hp, setting)
        self.teacher: nn.Module | None = None  # the frozen model of the end of the previous experience
        self.teacher_state: dict | None = None  # its trainable state (what is checkpointed)
        self.num_old = 0  # classes seen before the current experience (the teacher's classes)

    # -- teacher ------------------------------------------------------------------------
    def before_experience(self, exp):
        if exp.index == 0:
            self._set_teacher(None, 0)
            return
        self._set_teacher(self.snapshot(), self.stream.seen_after(exp.index - 1))

    def _set_teacher(self, state: dict | None, num_old: int) -> None:
        self.teacher_state, self.num_old = state, num_old
        self.teacher = self.frozen_teacher(state)

    @torch.no_grad()
    def teacher_outputs(self, batch: dict) -> torch.Tensor:
        """The teacher's outputs (`Setting.outputs`): logits over the old classes, or answer-token logits."""
        return self.setting.outputs(self.teacher, batch, self.num_old)

    # -- loss ---------------------------------------------------------------------------
    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """The unweighted terms: 'ce' and, from the second experience on, 'kd' (KL at temperature T)."""
        ce, outputs = self.setting.loss_and_outputs(self.model, batch, self.num_seen, self.net)
        terms = {"ce": ce}
        if self.teacher is not None:
            target = self.teacher_outputs(batch)
            k = target.shape[-1]  # the teacher's classes (modality) or the vocabulary (scenario)
            if k and len(target):
                T = self.hp.temperature
                # KL(teacher || student), summed over the distribution, averaged over samples / answer tokens
                terms["kd"] = F.kl_div(F.log_softmax(outputs[..., :k].float() / T, dim=-1),
                                       F.log_softmax(target / T, dim=-1), reduction="batchmean", log_target=True)
        return terms

    def training_loss(self, batch):
        t = self.loss_terms(batch)
        if "kd" not in t:
            return t["ce"]
        return t["ce"] + self.hp.alpha * self.hp.temperature ** 2 * t["kd"]

    # -- state --------------------------------------------------------------------------
    def extra_state(self):
        return {"teacher": self.teacher_state, "num_old": self.num_old}

    def load_extra_state(self, state):
        self._set_teacher(state["teacher"], state["num_old"])
