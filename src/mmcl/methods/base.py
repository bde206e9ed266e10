"""The method interface: hooks the engine calls by name, and the state it checkpoints.

Hooks, in the order the engine calls them for every experience:
  before_experience(exp)      set-up (the engine has set `self.experience = exp` before)
  training_data(exp)          the TensorSet to train on (default: exp.train)
  training_loss(batch)        the loss of one batch (this rank's shard under torchrun)
  after_backward()            after gradients exist, before the optimiser step
  after_experience(exp)       consolidation: buffers, statistics, snapshots
  predict(batch, n, known_modality=False)
                              logits over the first n classes (evaluation); in the
                              scenario setting: the answer strings (n is None)

The scenario setting (`cfg["setting"] == "scenario"`, DESIGN.md section 3) uses the same hooks:
the model is a `VLM` (`mmcl.scenario.base_model`), a batch is {"images", "questions",
"answers", ...} (a `SampleSet` slice), the default loss is the answer-token cross-entropy and
`predict` answers by greedy generation. A method declares the settings it supports in
`settings`; the config rejects the others.

The two protocols. In `batch`, "m" is the sample's input modality (which encoder made its
tokens; per-modality input projections use it, as a real system knows an audio file from an
image). What the modality-agnostic protocol hides is the *task*: which classes and which
modality-specific learned parameters (prompts, experts) apply. A method that picks such
parameters sets `uses_known_modality = True`; the engine then calls `predict` with
`known_modality=False` for the agnostic protocol (the method must infer the choice from the
sample) and with `known_modality=True` for the aware one (it may read batch["m"]).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmcl.models import TextAlignedClassifier
from mmcl.stream import MODALITIES, Experience, Stream, TensorSet

METHODS: dict[str, type["Method"]] = {}


def register(name: str):
    """Class decorator: make a method available as `method.name=<name>`."""
    def deco(cls):
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


class Method:
    """Base class: plain fine-tuning behaviour for every hook."""

    name = "base"
    #: settings whose streams this method can learn (DESIGN.md sections 2 and 3)
    settings: tuple[str, ...] = ("modality",)
    #: predict() picks modality-specific parameters when told the modality (see module doc)
    uses_known_modality = False
    #: hyper-parameters with a closed set of values: name -> allowed values (checked when the config
    #: is loaded, and again here for a method built directly)
    choices: dict[str, tuple] = {}

    @dataclass
    class Hparams:
        pass

    def __init__(self, stream: Stream, cfg: dict, hp):
        for key, allowed in self.choices.items():
            if getattr(hp, key) not in allowed:
                raise ValueError(f"method.{key} must be one of {', '.join(allowed)}, got {getattr(hp, key)!r}")
        self.stream = stream
        self.cfg = cfg
        self.hp = hp
        self.experience: Experience | None = None
        self.scenario = cfg["setting"] == "scenario"
        self.model = self.build_model(stream, cfg)
        # everything random a method does goes through this generator, whose state is
        # checkpointed; seeded identically on every rank
        self.rng = torch.Generator().manual_seed(int(cfg["seed"]) + 7919)
        self._train_module: nn.Module | None = None  # DDP wrapper, set by the engine

    # -- model ------------------------------------------------------------------------
    @staticmethod
    def build_model(stream: Stream, cfg: dict) -> nn.Module:
        if cfg["setting"] == "scenario":
            from mmcl.scenario.base_model import build_scenario_model

            return build_scenario_model(stream, cfg)
        keys = stream.feature_keys
        m = cfg["model"]
        if "tokens" in keys:  # token features: prompts on the frozen transformer
            from mmcl.models.prompted import PromptedAligner, frozen_minilm

            return PromptedAligner(MODALITIES, stream[0].train["tokens"].shape[-1], stream.anchors,
                                   frozen_minilm(m["backbone_layers"]), m["prompt_length"], m["logit_scale"])
        return TextAlignedClassifier(
            in_dim=stream[0].train["x"].shape[1], anchors=stream.anchors, hidden_dim=m["hidden_dim"],
            logit_scale=m["logit_scale"], residual="zs" in keys,
        )

    @property
    def net(self) -> nn.Module:
        """The module to call in training (the DDP wrapper under torchrun)."""
        return self._train_module if self._train_module is not None else self.model

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def param_groups(self) -> list:
        """What the optimiser of the current experience trains: parameters, or torch param-group
        dicts (e.g. {"params": [...], "lr": 1e-4}) for per-group learning rates. Called at the
        start of every experience (after `before_experience`)."""
        return self.trainable_parameters()

    @property
    def num_seen(self) -> int:
        """Classes introduced up to and including the current experience."""
        return self.stream.seen_after(self.experience.index)

    # -- hooks --------------------------------------------------------------------------
    def before_experience(self, exp: Experience) -> None:
        pass

    def training_data(self, exp: Experience) -> TensorSet:
        return exp.train

    def training_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.scenario:  # cross-entropy on the answer tokens
            return self.model.loss(batch)
        logits = self.model.logits(self.net(batch), self.num_seen)
        return F.cross_entropy(logits, batch["y"])

    def after_backward(self) -> None:
        pass

    def after_experience(self, exp: Experience) -> None:
        pass

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor], num_classes: int | None, known_modality: bool = False):
        if self.scenario:  # batched greedy decoding with a KV cache
            return self.model.generate(batch["images"], batch["questions"],
                                       max_new_tokens=self.cfg["eval"]["max_new_tokens"])
        return self.model.logits(self.model(batch), num_classes)

    # -- state --------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """Method state beyond the model (buffers, statistics); must be identical on all ranks."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def model_state(self) -> dict:
        """The model's state without frozen pretrained parts (rebuilt from their packages)."""
        if self.scenario:  # LoRA, projector, trainable tower: the base model is rebuilt from its cache
            return self.model.trainable_state_dict()
        frozen = getattr(self.model, "FROZEN", ())
        return {k: v for k, v in self.model.state_dict().items() if not k.startswith(frozen)}

    def state_dict(self) -> dict:
        return {"model": self.model_state(), "rng": self.rng.get_state(), "extra": self.extra_state()}

    def frozen_copy(self, state: dict) -> nn.Module:
        """Scenario setting: a frozen deep copy of the model holding `state`'s trainable weights (a teacher:
        the previous step's model). Raises if `state` does not cover every trained parameter."""
        import copy

        teacher = copy.deepcopy(self.model)
        _, unexpected = teacher.load_state_dict(state, strict=False)
        trained = [k for k, p in self.model.named_parameters() if p.requires_grad]
        if unexpected or any(k not in state for k in trained):
            raise ValueError(f"{self.name}: previous model state does not match the model")
        return teacher.eval().requires_grad_(False)

    def load_state_dict(self, state: dict) -> None:
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        if self.scenario:
            trained = {n for n, p in self.model.named_parameters() if p.requires_grad}
            bad = [k for k in missing if k in trained] + list(unexpected)
        else:
            frozen = getattr(self.model, "FROZEN", ())
            bad = [k for k in missing if not k.startswith(frozen)] + list(unexpected)
        if bad:
            raise ValueError(f"checkpoint does not match the model: {bad[:3]}")
        self.rng.set_state(state["rng"])
        self.load_extra_state(state["extra"])
