"""Where a run computes and in which precision: the config keys `device` and `precision`, resolved once.

`device: auto | cpu | cuda | cuda:N` (auto: CUDA when available; under torchrun each rank takes
`cuda:LOCAL_RANK`). `precision: auto | fp32 | bf16 | fp16` (auto: bf16 on a GPU that supports it,
fp32 otherwise) is mixed precision: weights and optimiser state stay in fp32 and `torch.autocast`
runs the forward passes (training and evaluation) in the lower precision; fp16 adds a gradient
scaler. Data stays on the CPU where it was decoded and cached; batches, the model and the state
methods derive from it (teachers, statistics, Fisher terms) live on the run's device. Checkpoints
hold CPU tensors only (`to_device(state, "cpu")`), so a run saved on a GPU resumes on a CPU and the
other way round.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import re

import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_device(spec: str, key: str = "device") -> None:
    """Config-time check of the form of a device value (whether it exists is known only when the run starts)."""
    from mmcl.errors import ConfigError

    if not isinstance(spec, str) or not DEVICE_PATTERN.match(spec):
        raise ConfigError(f"config key '{key}' must be auto, cpu, cuda or cuda:N, got {spec!r}")


def resolve_device(spec: str = "auto") -> torch.device:
    """The torch device of a config value; raises ConfigError when CUDA is asked for and absent."""
    from mmcl.errors import ConfigError

    check_device(spec)
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"config key 'device' is {spec!r} but torch sees no CUDA device here "
                          f"(torch {torch.__version__}, cuda build: {torch.version.cuda}); use device=cpu or auto")
    if spec in ("auto", "cuda"):  # under torchrun: one GPU per rank of this node
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    index = int(spec.split(":")[1])
    if index >= torch.cuda.device_count():
        raise ConfigError(f"config key 'device' is {spec!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return torch.device(spec)


def resolve_precision(spec: str, device: torch.device) -> str:
    """fp32 | bf16 | fp16 for a config value on `device` (auto: bf16 on a GPU that supports it, else fp32)."""
    from mmcl.errors import ConfigError

    if spec not in PRECISIONS:
        raise ConfigError(f"config key 'precision' must be one of {', '.join(PRECISIONS)}, got {spec!r}")
    if spec == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return spec


def autocast(device: torch.device, precision: str):
    """The mixed-precision context of training and evaluation forward passes (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


@contextlib.contextmanager
def no_autocast():
    """Autocast off, for data handling inside a mixed-precision region: concatenating stored inputs (mm5's
    float16 tokens) under bf16 autocast is refused by torch ("Unexpected floating ScalarType")."""
    with torch.autocast("cpu", enabled=False):
        if torch.cuda.is_available():
            with torch.autocast("cuda", enabled=False):
                yield
        else:
            yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled for fp16 only (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def to_device(obj, device: torch.device | str, non_blocking: bool = False):
    """`obj` with every tensor in it (nested dicts, lists, tuples) on `device`; other values as they are."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and any(isinstance(v, (torch.Tensor, dict, list, tuple)) for v in obj):
        out = [to_device(v, device, non_blocking) for v in obj]
        return out if isinstance(obj, list) else type(obj)(out) if not hasattr(obj, "_fields") else type(obj)(*out)
    return obj


# The device frozen encoders compute features on while a stream is built (set by the run, read by
# `mmcl.models.encoders`): feature extraction is called deep inside benchmark builders.
_encoding_device: contextvars.ContextVar[torch.device] = contextvars.ContextVar("encoding_device",
                                                                               default=torch.device("cpu"))


def encoding_device() -> torch.device:
    return _encoding_device.get()


@contextlib.contextmanager
def encoding_on(device: torch.device):
    """Within the block, frozen encoders run on `device` (their features are returned on the CPU)."""
    token = _encoding_device.set(torch.device(device))
    try:
        yield
    finally:
        _encoding_device.reset(token)
