"""`unifier`: Vision Representation Expansion + Vision Consistency Constraint (scenario setting).

Reference: "Multimodal Continual Learning with MLLMs from Multi-scenario Perspectives" (UNIFIER),
as summarised in DESIGN.md section 3; the surgery itself is `mmcl.models.vre` (read its module
docstring for the branch / projector / VCC details).

What this method does per step of the stream:
- `before_experience`: `VRE.snapshot()` (the projector of the previous model, for VCC), then the
  step's scenario gets its branch: a new one the first time the scenario appears, the same one
  when it returns (20-step protocol); then `VRE.set_trainable(branch)`.
- trainable: in the vision tower only the current branch and the VRE projector (the tower's own
  weights are frozen whatever `vlm.train_vision` says); outside it, what `vlm.*` trains for every
  method: the vision-language projector (`vlm.train_projector`) and the language model's LoRA
  (`vlm.lm_train`). So UNIFIER has the same language-side budget as `finetune`.
- loss = answer-token cross-entropy + lam * VCC.
- test time: `predict` is the base class's greedy generation; every branch runs in one pass, no
  router, no scenario id (the batch has none; `self.experience` is not read).

Ablation switches (`method.vre`, `method.vcc`):
- vre=true,  vcc=true:  the full method.
- vre=true,  vcc=false: branches only (loss = cross-entropy).
- vre=false, vcc=true:  "VCC only", our definition: no branches, the vision tower trains as in
  `finetune` (`vlm.train_vision`), and the consistency term is the temperature-softened KL of the
  vision-language projector's output (the image tokens the language model reads), token-averaged
  and channel-averaged as in VRE's VCC, to the previous model's output on the same images. The
  previous model's vision tower + projector are a frozen copy taken at the start of each step
  (from the second step on) and kept in the method state.
- vre=false, vcc=false: plain fine-tuning.

Follows the published description: a branch per scenario in every vision block, a shared
projector, only the current branch and the projector trained, all branches at test time without a
router, VCC = branch-to-prototype KL + projector-output-to-previous-model KL, total loss task +
lambda * VCC. Our reconstruction: everything `mmcl.models.vre` lists as such; that a returning
scenario reuses (and keeps training) its own branch; the snapshot taken before the step's branch is
added (a new branch is absent from the previous model, so at the first step there is no
previous-model term); LoRA and the vision-language projector trained alongside (the paper's MLLM
recipe is not available to us); the "VCC only" variant above; branch initialisation seeded by
(seed, branch index) so runs and resumes are reproducible.

State: the VRE tensors with their branch count (rebuilt before the model state is loaded), the
scenario -> branch map, the current branch, and (VCC only) the previous tower + projector.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmcl.methods.base import Method, register
from mmcl.seeds import derive_seed
from mmcl.models.vre import VREParams, _two_view_kl, attach_vre


@register("unifier")
class Unifier(Method):
    settings = ("scenario",)
    #: candidates tried on validation data by `mmcl sweep` (the same budget for every method)
    search_space = {"scenario": {"lam": [0.1, 1.0, 10.0]}}

    #: allowed ranges of the numeric hyper-parameters (checked when the config loads)
    ranges = {"lam": ">=0", "temperature": ">0", "bottleneck": ">=1", "branch_dim": ">=0", "scale": ">=0"}
    @dataclass
    class Hparams:
        vre: bool = True  # Vision Representation Expansion: a branch per scenario in every vision block
        vcc: bool = True  # Vision Consistency Constraint in the loss (see the module doc for vre=false)
        lam: float = 1.0  # weight of VCC: loss = task + lam * VCC
        temperature: float = 2.0  # VCC softmax temperature tau
        bottleneck: int = 16  # width of each branch's down projection
        branch_dim: int = 0  # output width of each branch (0 = the block width)
        scale: float = 1.0  # multiplier of the VRE output added to each block's MLP output

    def __init__(self, stream, cfg, hp, setting=None):
        if hp.lam < 0 or hp.temperature <= 0 or hp.bottleneck < 1:
            raise ValueError(f"unifier needs lam >= 0, temperature > 0, bottleneck >= 1; got {hp.lam}, "
                             f"{hp.temperature}, {hp.bottleneck}")
        super().__init__(stream, cfg, hp, setting)
        self.vre = None
        if hp.vre:
            self.vre = attach_vre(self.model, VREParams(
                bottleneck=hp.bottleneck, branch_dim=hp.branch_dim, scale=hp.scale, temperature=hp.temperature,
                lam=hp.lam, vcc_branches=hp.vcc, vcc_previous=hp.vcc))
        self.branch_of: dict[str, int] = {}  # scenario -> its branch
        self.current: int | None = None  # the branch being trained
        # VCC only: the previous model's vision tower + projector, and the current projector output
        self.prev_vision: torch.nn.Module | None = None
        self.prev_vision_state: dict | None = None
        self._proj_out: torch.Tensor | None = None
        self._hook = None
        if not hp.vre and hp.vcc:
            self._hook = self.model.projector.register_forward_hook(self._record_projector)

    # -- steps ---------------------------------------------------------------------------
    def before_experience(self, exp):
        if self.vre is None:
            if self.hp.vcc and exp.index > 0:
                self._set_prev_vision(self._vision_state())
            return
        self.vre.snapshot()  # before the step's branch exists: the previous model's projector
        if exp.scenario not in self.branch_of:
            self.branch_of[exp.scenario] = self.vre.add_branch(seed=derive_seed(self.cfg["seed"], "module", len(self.branch_of)))
        self.current = self.branch_of[exp.scenario]
        self._set_trainable()

    def _set_trainable(self) -> None:
        self.vre.set_trainable(self.current)
        # vision-language projector as vlm.train_projector says (Qwen2-VL's merger sits in the tower)
        self.model.projector.requires_grad_(self.model.params.train_projector)

    # -- loss ----------------------------------------------------------------------------
    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        """The unweighted terms: 'task' (answer-token cross-entropy) and 'vcc'."""
        task = self.model.loss(batch)
        if self.vre is not None:
            vcc = self.vre.vcc_loss() if self.hp.vcc else task.new_zeros(())
            self.vre.clear()
            return {"task": task, "vcc": vcc}
        out, self._proj_out = self._proj_out, None
        if not self.hp.vcc or self.prev_vision is None or out is None:
            return {"task": task, "vcc": task.new_zeros(())}
        with torch.no_grad():
            pixels = self.model._pixels(batch["images"])
            target = self._prev_projector_output(pixels)
        return {"task": task, "vcc": _two_view_kl(out, target, None, self.hp.temperature)}

    def training_loss(self, batch):
        t = self.loss_terms(batch)
        return t["task"] + self.hp.lam * t["vcc"]

    # -- VCC only: the previous model's image tokens -----------------------------------------
    def _record_projector(self, module, args, output):
        if self.model.training and torch.is_grad_enabled():
            self._proj_out = output

    def _vision_state(self) -> dict:
        return {"tower": {k: v.detach().clone() for k, v in self.model.vision_tower.state_dict().items()},
                "projector": {k: v.detach().clone() for k, v in self.model.projector.state_dict().items()}}

    def _set_prev_vision(self, state: dict | None) -> None:
        self.prev_vision_state = state
        if state is None:
            self.prev_vision = None
            return
        self._hook.remove()  # a copied hook would copy this method with it
        prev = torch.nn.ModuleDict({"tower": copy.deepcopy(self.model.vision_tower),
                                    "projector": copy.deepcopy(self.model.projector)})
        self._hook = self.model.projector.register_forward_hook(self._record_projector)
        prev["tower"].load_state_dict(state["tower"])
        prev["projector"].load_state_dict(state["projector"])
        self.prev_vision = prev.eval().requires_grad_(False)

    def _prev_projector_output(self, pixels: torch.Tensor) -> torch.Tensor:
        """The image tokens the previous model would give the language model (LLaVA feature selection)."""
        hf_cfg = self.model.hf.config
        out = self.prev_vision["tower"](pixels, output_hidden_states=True)
        feats = out.hidden_states[hf_cfg.vision_feature_layer]
        if hf_cfg.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        return self.prev_vision["projector"](feats)

    # -- state ---------------------------------------------------------------------------
    def extra_state(self):
        return {"vre": self.vre.state_dict() if self.vre is not None else None,
                "branch_of": dict(self.branch_of), "current": self.current,
                "prev_vision": self.prev_vision_state}

    def restore_structure(self, extra):
        if self.vre is not None and extra["vre"] is not None:  # branches first: the model state holds some
            self.vre.load_state_dict(extra["vre"])
            self.current = extra["current"]
            if self.current is not None:
                self._set_trainable()

    def load_extra_state(self, state):
        self.branch_of = dict(state["branch_of"])
        self.current = state["current"]
        self._set_prev_vision(state["prev_vision"])
