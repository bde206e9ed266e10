"""The method interface: hooks the engine calls by name, and the state it checkpoints.

Hooks, in the order the engine calls them for every experience:
  before_experience(exp)      set-up (`self.experience` is `exp` from here on)
  training_data(exp)          the data to train on (default: exp.train)
  training_loss(batch)        the loss of one batch (this rank's shard under torchrun)
  after_backward()            after gradients exist, before the optimiser step
  after_experience(exp)       consolidation: buffers, statistics, snapshots
  predict(batch, n, known_modality=False)
                              the setting's prediction (`Setting.predict`: logits over the
                              first n classes, or answer strings)

What a loss, a prediction, a batch and a checkpoint are depends on the run's setting
(`mmcl.settings`), which a method holds as `self.setting`: the default `training_loss` is
`self.setting.loss(...)`, distillation compares `self.setting.outputs(...)`, replayed samples
join a batch with `self.setting.join(...)`. A method lists the settings it supports in `settings`;
the config rejects the others.

The two protocols of the modality setting. In `batch`, "m" is the sample's input modality
(which encoder made its tokens; per-modality input projections use it, as a real system knows
an audio file from an image). What the modality-agnostic protocol hides is the *task*: which
classes and which modality-specific learned parameters (prompts, experts) apply. A method that
picks such parameters sets `uses_known_modality = True`; the evaluator then calls `predict` with
`known_modality=False` for the agnostic protocol (the method must infer the choice from the
sample) and with `known_modality=True` for the aware one (it may read batch["m"]).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmcl import distributed as dist
from mmcl import seeds
from mmcl.device import to_device
from mmcl.registry import registrar
from mmcl.settings import Setting, make_setting
from mmcl.stream import Experience, Stream

METHODS: dict[str, type["Method"]] = {}
register = registrar(METHODS, "method (`method.name=<name>`)")


class Method:
    """Base class: plain fine-tuning behaviour for every hook."""

    name = "base"
    #: settings whose streams this method can learn (DESIGN.md sections 2 and 3)
    settings: tuple[str, ...] = ("modality",)
    #: predict() picks modality-specific parameters when told the modality (see module doc)
    uses_known_modality = False
    #: runs with the scenario model's language model sharded by FSDP (`vlm.fsdp`): keeps no state per parameter
    #: of the language model (each rank holds only its shards) and adds no module to it
    fsdp = True
    #: hyper-parameters with a closed set of values: name -> allowed values (checked when the config
    #: is loaded, and again here for a method built directly)
    choices: dict[str, tuple] = {}
    #: allowed ranges of numeric hyper-parameters: name -> ">=0", "(0,1]", ... (checked when the config loads)
    ranges: dict[str, str] = {}
    #: hyper-parameter defaults that differ in a setting: setting -> {name: value}
    setting_defaults: dict[str, dict] = {}
    #: candidates `mmcl sweep` tries on validation data, per setting: setting -> {name: [v1, v2, v3]}
    search_space: dict[str, dict[str, list]] = {}

    @dataclass
    class Hparams:
        pass

    def __init__(self, stream: Stream, cfg: dict, hp, setting: Setting | None = None):
        for key, allowed in self.choices.items():
            if getattr(hp, key) not in allowed:
                raise ValueError(f"method.{key} must be one of {', '.join(allowed)}, got {getattr(hp, key)!r}")
        self.stream = stream
        self.cfg = cfg
        self.hp = hp
        self.setting = setting if setting is not None else make_setting(cfg)
        self.experience: Experience | None = None
        #: where the model, its batches and the state derived from them live (config key `device`)
        self.device = self.setting.device
        self.model = self.setting.build_model(stream).to(self.device)
        # everything random a method does goes through this generator, whose state is
        # checkpointed; seeded identically on every rank
        self.rng = seeds.generator(cfg["seed"], "method")
        self._train_module: nn.Module | None = None  # the DDP wrapper under torchrun (`distribute`)

    # -- model ------------------------------------------------------------------------
    @property
    def net(self) -> nn.Module:
        """The module to call in training (the DDP wrapper under torchrun)."""
        return self._train_module if self._train_module is not None else self.model

    def distribute(self) -> None:
        """Put the model on the run's device (with whatever the method added to it) and, under torchrun, wrap
        it in DDP for training over its trainable parameters. The engine calls this once the method is
        built, and `begin_experience` again (a method may add adapters or branches, or freeze some)."""
        self.model.to(self.device)
        self.setting.shard(self.model)  # e.g. FSDP over the scenario model's language model (`vlm.fsdp`)
        self._train_module = None
        if dist.active() and self.setting.ddp and self.trainable_parameters():
            # find_unused_parameters: on a multimodal stream a step uses one modality's input projection
            # (and a method's own subset of prompts); the others get no gradient in that step
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._train_module = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                     find_unused_parameters=True)

    def to_device(self, batch):
        """`batch` (a dict of tensors and lists) on the run's device."""
        return to_device(batch, self.device)

    def batches(self, data, batch_size: int):
        """`data`'s batches in stored order, on the run's device (a method's own passes over data)."""
        for batch in data.batches(batch_size):
            yield self.to_device(batch)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def param_groups(self) -> list:
        """What the optimiser of the current experience trains: parameters, or torch param-group
        dicts (e.g. {"params": [...], "lr": 1e-4}) for per-group learning rates. Called at the
        start of every experience (after `before_experience`)."""
        return self.trainable_parameters()

    @property
    def num_seen(self) -> int:
        """Classes introduced up to and including the current experience (0 in a setting without classes)."""
        return self.stream.seen_after(self.experience.index)

    # -- helpers written once for every method ---------------------------------------------
    def snapshot(self) -> dict[str, torch.Tensor]:
        """A detached copy of the model's checkpointed state (`model_state`)."""
        return {k: v.detach().clone() for k, v in self.model_state().items()}

    def frozen_teacher(self, state: dict | None) -> nn.Module | None:
        """A frozen deep copy of the model holding `state` (a `snapshot`): the previous model that
        distillation and self-regularisation compare with. None for None; raises if `state` does not
        cover the model's learned weights."""
        if state is None:
            return None
        teacher = self.setting.copy_model(self.model, self.stream)
        missing, unexpected = self.setting.load_model_state(teacher, state)
        bad = self.setting.check_loaded(teacher, missing, unexpected)
        if bad:
            raise ValueError(f"{self.name}: previous model state does not match the model: {bad[:3]}")
        return teacher.eval().requires_grad_(False)  # called directly, never DDP-wrapped

    # -- hooks --------------------------------------------------------------------------
    def begin_experience(self, exp: Experience, resumed: bool = False) -> None:
        """Make `exp` the current experience and run `before_experience`, unless the run resumes in the
        middle of it (its effects are then in the restored state)."""
        self.experience = exp
        if not resumed:
            self.before_experience(exp)
        self.distribute()

    def before_experience(self, exp: Experience) -> None:
        pass

    def training_data(self, exp: Experience):
        return exp.train

    def training_loss(self, batch: dict) -> torch.Tensor:
        return self.setting.loss(self.model, batch, self.num_seen, self.net)

    def after_backward(self) -> None:
        pass

    def after_experience(self, exp: Experience) -> None:
        pass

    @torch.no_grad()
    def predict(self, batch: dict, num_classes: int | None, known_modality: bool = False):
        return self.setting.predict(self.model, batch, num_classes)

    # -- state --------------------------------------------------------------------------
    def extra_state(self) -> dict:
        """Method state beyond the model (buffers, statistics); must be identical on all ranks."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def restore_structure(self, extra: dict) -> None:
        """Before a checkpoint's weights load: rebuild what the method added to the model since it was
        built (adapters, branches), from the checkpoint's `extra_state`."""

    def model_state(self, checkpoint: bool = False) -> dict:
        """The model's checkpointed state (the setting's choice: what training changes); `checkpoint`: for the
        file rank 0 writes (`Setting.model_state`)."""
        return self.setting.model_state(self.model, checkpoint)

    def state_dict(self) -> dict:
        return {"model": self.model_state(checkpoint=True), "rng": self.rng.get_state(), "extra": self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        self.restore_structure(state["extra"])
        try:
            missing, unexpected = self.setting.load_model_state(self.model, state["model"])
        except RuntimeError as e:  # shapes differ: a checkpoint of another model
            first = str(e).strip().splitlines()[-1].strip()
            raise ValueError(f"checkpoint does not match the model (from another run?): {first}") from None
        bad = self.setting.check_loaded(self.model, missing, unexpected)
        if bad:
            raise ValueError(f"checkpoint does not match the model: {bad[:3]}")
        self.rng.set_state(state["rng"])
        self.load_extra_state(state["extra"])
