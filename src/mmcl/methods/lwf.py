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

Scenario setting (`setting: scenario`): sequence-level distillation on the answer tokens. From
the second step on the teacher is a frozen deep copy of the VLM taken at the start of the step (as
quad's previous model). Every current batch is tokenised once and run teacher-forced on its
ground-truth answers through both models; at every answer-token position (the positions the
cross-entropy trains, end-of-answer token included) the KL(teacher || student) of the
temperature-softened next-token distributions over the full vocabulary is taken, averaged over
the answer tokens of the batch, and times T^2:

    loss = VLM.loss + alpha * T^2 * mean_tokens KL( softmax(t / T) || softmax(f / T) )

(`VLM.loss`: the answer-token cross-entropy every scenario method trains; the student's logits
for the KL are those of that same forward pass.)

No stored samples: the current questions and images carry the old behaviour. The teacher's
trainable weights (LoRA, projector, tower; the rest is the cached base model) are in the method
state, so a resumed run distils from the same teacher. Search space: alpha in {0.1, 1, 10}; the
token-level KL has no class-count scale to calibrate it against the modality range {0.5, 1, 2},
so the candidates span two decades around 1, as quad's and unifier's weights do.
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
    search_space = {"alpha": [0.5, 1.0, 2.0]}
    search_spaces = {"modality": search_space, "scenario": {"alpha": [0.1, 1.0, 10.0]}}

    @dataclass
    class Hparams:
        alpha: float = 1.0  # weight of the distillation term (the paper's lambda_o)
        temperature: float = 2.0  # softmax temperature T of the distillation (the paper's T = 2)

    def __init__(self, stream, cfg, hp):
        super().__init__(stream, cfg, hp)
        if hp.alpha < 0 or hp.temperature <= 0:
            raise ValueError(f"lwf needs alpha >= 0 and temperature > 0, got {hp.alpha}, {hp.temperature}")
        self.teacher: nn.Module | None = None  # the frozen model of the end of the previous experience
        self.teacher_state: dict | None = None  # its trainable state (what is checkpointed)
        self.num_old = 0  # classes seen before the current experience (the teacher's classes)

    # -- teacher ------------------------------------------------------------------------
    def before_experience(self, exp):
        if exp.index == 0:
            self._set_teacher(None, 0)
            return
        state = {k: v.detach().clone() for k, v in self.model_state().items()}
        self._set_teacher(state, self.stream.seen_after(exp.index - 1))

    def _set_teacher(self, state: dict | None, num_old: int) -> None:
        self.teacher_state, self.num_old, self.teacher = state, num_old, None
        if state is None:
            return
        if self.scenario:  # a deep copy of the VLM with the previous step's trainable weights
            self.teacher = self.frozen_copy(state)
            return
        teacher = self.build_model(self.stream, self.cfg)
        missing, unexpected = teacher.load_state_dict(state, strict=False)
        frozen = getattr(teacher, "FROZEN", ())
        bad = [k for k in missing if not k.startswith(frozen)] + list(unexpected)
        if bad:
            raise ValueError(f"lwf teacher state does not match the model: {bad[:3]}")
        self.teacher = teacher.eval().requires_grad_(False)  # called directly, never DDP-wrapped

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The teacher's logits over the old classes (the distillation target, before the temperature)."""
        return self.teacher.logits(self.teacher(batch), self.num_old)

    # -- loss ---------------------------------------------------------------------------
    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The unweighted terms: 'ce' and, from the second experience on, 'kd' (KL at temperature T)."""
        if self.scenario:
            return self._scenario_terms(batch)
        logits = self.model.logits(self.net(batch), self.num_seen)
        terms = {"ce": F.cross_entropy(logits, batch["y"])}
        if self.teacher is not None and self.num_old > 0:
            T = self.hp.temperature
            target = F.log_softmax(self.teacher_logits(batch) / T, dim=1)
            student = F.log_softmax(logits[:, :self.num_old] / T, dim=1)
            # KL(teacher || student), summed over classes, averaged over the batch
            terms["kd"] = F.kl_div(student, target, reduction="batchmean", log_target=True)
        return terms

    def _scenario_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """Answer-token CE and, with a teacher, the mean over answer tokens of KL(teacher || student) at T."""
        if self.teacher is None:
            return {"ce": self.model.loss(batch)}
        tokens = self.model.batch(batch["images"], batch["questions"], batch["answers"])
        # one student forward: `VLM.loss` (the CE every scenario method trains, with its own
        # reduction), its answer-token logits (N, vocab) caught at the language-model head
        seen: list[torch.Tensor] = []
        hook = self.model.hf.lm_head.register_forward_hook(lambda mod, args, out: seen.append(out))
        try:
            terms = {"ce": self.model.loss(tokens)}
        finally:
            hook.remove()
        with torch.no_grad():
            t_logits = self.teacher.answer_logits(tokens)[0]
        if len(seen) != 1 or seen[0].shape != t_logits.shape:
            raise RuntimeError("lwf: the student's answer-token logits were not caught at lm_head")
        logits = seen[0].float()
        T = self.hp.temperature
        target_lp = F.log_softmax(t_logits / T, dim=-1)
        student_lp = F.log_softmax(logits / T, dim=-1)
        # KL(teacher || student), summed over the vocabulary, averaged over the answer tokens
        terms["kd"] = F.kl_div(student_lp, target_lp, reduction="batchmean", log_target=True)
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
