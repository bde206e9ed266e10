"""The setting interface: what kind of continual-learning problem a run is (DESIGN.md sections 2-3).

A setting owns everything that differs between problem types, so the engine and the methods
do not have to ask which one they are in:

  config        `schema` (its config keys with defaults, beside the shared ones), `choices`,
                `ranges` and `check` (what a schema cannot see)
  data          `context` (what benchmark builders may read) and `build_stream`
  stages        `prepare`: work done once before the stream (the scenario base model), cached;
                the engine runs it and records what it returns
  model         `build_model`, and what a checkpoint holds of it (`model_state`, `load_model_state`,
                `check_loaded`, `optimizer_state`); where it computes (`device`, `precision`, `autocast`:
                `mmcl.device`); how it is spread over the ranks beyond data parallelism (`shard`, `copy_model`)
  training      `loss` (the default training loss), `loss_and_outputs` / `outputs` (what a
                distillation compares), `join` (a batch plus replayed samples), `batch_size`
  evaluation    `predict` (the default prediction), `evaluator()` (an object that scores one
                matrix row per call and owns its caches), `matrices`, `extra_metrics`

Settings are registered by name (`@register_setting("name")`) and chosen by the config's
`setting` key. A method holds its run's setting as `self.setting` and calls these; where a
method's idea really differs between settings it declares so in its own file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from mmcl.data.registry import BuildContext
from mmcl.registry import registrar
from mmcl.stream import Stream

SETTINGS: dict[str, type["Setting"]] = {}
register_setting = registrar(SETTINGS, "setting (`setting: <name>`)")


@dataclass
class EvalResult:
    """One evaluation: a row per matrix (scores on every experience, None where not scored) and,
    where the setting has them, one prediction record per test sample."""

    rows: dict[str, list]
    predictions: list[dict] | None = None
    notes: dict = field(default_factory=dict)  # counts worth reporting (e.g. answers that did not parse)


def without(batch: dict, keys: tuple[str, ...]) -> dict:
    """`batch` without `keys`: what `predict` may see of a test batch (never its labels)."""
    return {k: v for k, v in batch.items() if k not in keys}


class Evaluator:
    """Scores a method on every experience of a stream after training experience `after`
    (`after=-1`: the untrained model). Owns whatever it caches between calls. `predict` is handed
    test batches without their labels (`hidden`)."""

    #: batch fields `predict` never sees
    hidden: tuple[str, ...] = ()
    #: called on every rank under torchrun, each predicting its share of the test data and returning the
    #: gathered result (`distributed.gather_objects`); False: rank 0 evaluates alone
    sharded = False

    def __init__(self, setting: "Setting"):
        self.setting = setting
        self.cfg = setting.cfg

    def __call__(self, method, stream: Stream, after: int, progress: bool = False) -> EvalResult:
        raise NotImplementedError


class Setting:
    """Base class; see the module doc for what a setting owns."""

    name = "base"
    #: names of the score matrices (rows = after experience i, columns = experience j)
    matrices: tuple[str, ...] = ()
    #: config keys of this setting (nested, with defaults) beside the shared ones of `mmcl.config.BASE`
    schema: dict[str, Any] = {}
    #: closed sets of values of this setting's keys: dotted key -> allowed values
    choices: dict[str, tuple] = {}
    #: allowed ranges of this setting's numeric keys: dotted key -> ">=1", ">0", "[0,1)", ... (mmcl.config.in_range)
    ranges: dict[str, str] = {}
    #: a setting that differs from another only in how it is scored (say) names it here: it then accepts
    #: that setting's benchmarks and methods
    variant_of: str | None = None
    #: can run under torchrun
    distributed = True
    #: under torchrun, the model is wrapped in DDP (every training forward goes through `net`); False: the
    #: engine averages the trainable parameters' gradients after backward (`distributed.average_gradients`)
    ddp = True
    #: how a replay memory groups samples when it splits its capacity: "label" (class-balanced) or "step"
    replay_group = "label"

    def __init__(self, cfg: dict):
        self.cfg = cfg

    # -- device and precision (`mmcl.device`) ---------------------------------------------
    @cached_property
    def device(self) -> torch.device:
        """The run's device (config key `device`): the model, its batches and the state derived from them."""
        from mmcl.device import resolve_device

        return resolve_device(self.cfg.get("device", "auto"))

    @cached_property
    def precision(self) -> str:
        """fp32 | bf16 | fp16: the precision of forward passes (config key `precision`)."""
        from mmcl.device import resolve_precision

        return resolve_precision(self.cfg.get("precision", "auto"), self.device)

    def autocast(self):
        """The mixed-precision context of the run's forward passes (nothing for fp32)."""
        from mmcl.device import autocast

        return autocast(self.device, self.precision)

    # -- config ---------------------------------------------------------------------------
    @classmethod
    def extra_schema(cls, cfg: dict) -> dict[str, Any]:
        """Flat keys -> defaults that depend on more than `schema` (e.g. a model dataclass's fields)."""
        return {}

    @classmethod
    def check(cls, cfg: dict) -> None:
        """Config-time checks of the resolved config beyond types and choices; raise ConfigError."""

    @classmethod
    def check_method(cls, cfg: dict, methods: dict) -> None:
        """Config-time checks of the chosen method (`methods`: name -> class, the registry) against this
        setting's keys; raise ConfigError."""

    # -- data -----------------------------------------------------------------------------
    def context(self) -> BuildContext:
        cfg = self.cfg
        return BuildContext(seed=int(cfg["seed"]), stream=dict(cfg["stream"]),
                            progress=bool(cfg["logging"]["progress"]))

    def build_stream(self) -> Stream:
        from mmcl.data import build_stream

        e = self.cfg["eval"]
        return build_stream(self.cfg["benchmark"], self.context(), e.get("split", "test"), e.get("val_fraction", 0.2))

    # -- stages ---------------------------------------------------------------------------
    def prepare(self, stream: Stream, progress: bool = False) -> dict:
        """Run the stages before the stream (cached where they are expensive); returns what to record,
        stage name -> info. Calling it again is cheap."""
        return {}

    # -- model ----------------------------------------------------------------------------
    def build_model(self, stream: Stream) -> nn.Module:
        raise NotImplementedError

    def model_state(self, model: nn.Module, checkpoint: bool = False) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps of the model: everything but the frozen pretrained parts. `checkpoint`: for
        the checkpoint file rank 0 writes (a sharded model gathers it there only)."""
        frozen = getattr(model, "FROZEN", ())
        return {k: v for k, v in model.state_dict().items() if not k.startswith(frozen)}

    def load_model_state(self, model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Load a `model_state` into `model` (not strict); returns the (missing, unexpected) keys."""
        missing, unexpected = model.load_state_dict(state, strict=False)
        return list(missing), list(unexpected)

    def optimizer_state(self, model: nn.Module, opt: torch.optim.Optimizer) -> dict:
        """What a checkpoint keeps of the optimiser of `model`'s parameters."""
        return opt.state_dict()

    def load_optimizer_state(self, model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
        opt.load_state_dict(state)

    def shard(self, model: nn.Module) -> None:
        """Spread `model`'s weights over the ranks beyond data parallelism (nothing by default). Called with the
        model on its device, before an optimiser is made; again at every experience (only the first call acts)."""

    def copy_model(self, model: nn.Module, stream: Stream) -> nn.Module:
        """A copy of `model` (structure and weights) for a method's teacher."""
        import copy

        return copy.deepcopy(model)

    def check_loaded(self, model: nn.Module, missing: list[str], unexpected: list[str]) -> list[str]:
        """Keys that make a loaded `model_state` unusable (missing learned weights, unknown keys)."""
        frozen = getattr(model, "FROZEN", ())
        return [k for k in missing if not k.startswith(frozen)] + list(unexpected)

    # -- training -------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict, num_classes: int, net: nn.Module | None = None) -> torch.Tensor:
        """The default training loss of a batch (mean over its samples); `net` is the module to call
        in training (the DDP wrapper under torchrun), `model` the bare one."""
        return self.loss_and_outputs(model, batch, num_classes, net)[0]

    def loss_and_outputs(self, model, batch: dict, num_classes: int, net=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss and, from the same forward pass, the outputs a distillation compares."""
        raise NotImplementedError

    def outputs(self, model: nn.Module, batch: dict, num_classes: int) -> torch.Tensor:
        """What a distillation compares (a teacher's view of `batch`), over the first `num_classes`
        classes where the setting has classes; the last dimension is the distribution's."""
        raise NotImplementedError

    @staticmethod
    def join(batch: dict, extra: dict) -> dict:
        """`batch` followed by `extra` (replayed samples), field by field (the fields both have), on the
        batch's device (a memory may be kept elsewhere)."""
        from mmcl.device import no_autocast

        out = {}
        for k in batch:
            if k not in extra:
                continue
            a, b = batch[k], extra[k]
            if isinstance(a, torch.Tensor):
                with no_autocast():  # data, not computation: stored inputs keep their dtype
                    out[k] = torch.cat([a, b.to(a.device)])
            else:
                out[k] = list(a) + list(b)
        return out

    @staticmethod
    def batch_size(batch: dict) -> int:
        v = next(iter(batch.values()))
        return len(v)

    # -- evaluation -----------------------------------------------------------------------
    def predict(self, model: nn.Module, batch: dict, num_classes: int | None):
        raise NotImplementedError

    def evaluator(self) -> Evaluator:
        raise NotImplementedError

    def extra_metrics(self, rows: dict[str, list], stream: Stream) -> dict:
        """Setting-specific entries of metrics.json beyond the contract's."""
        return {}


def make_setting(cfg: dict) -> Setting:
    """The setting object of a resolved config."""
    return SETTINGS[cfg["setting"]](cfg)


__all__ = ["SETTINGS", "EvalResult", "Evaluator", "Setting", "make_setting", "register_setting"]
