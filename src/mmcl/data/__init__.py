"""Benchmarks: each turns a config into a `Stream` of decoded, cached, validated tensors.

A benchmark is registered with its parameters (a dataclass: every `benchmark.<key>` a
config may set) and a builder `build(params, cfg) -> Stream`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from mmcl.config import ConfigError
from mmcl.stream import Stream

BENCHMARKS: dict[str, tuple[type, Callable]] = {}


class DataError(ConfigError):
    """Input files that cannot be used, found before any training: `lines` holds one `<path>: <reason>`
    per file. The engine writes them to the run directory's data_errors.txt; the CLI exits with 2."""

    SHOWN = 20

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        n = len(self.lines)
        head = (f"{n} data file{'s' if n != 1 else ''} cannot be used (data.on_error=fail stops before training; "
                f"data.on_error=skip leaves them out):")
        more = [f"... and {n - self.SHOWN} more"] if n > self.SHOWN else []
        super().__init__("\n".join([head] + [f"  {ln}" for ln in self.lines[: self.SHOWN]] + more))

    def report(self) -> str:
        return "".join(f"{ln}\n" for ln in self.lines)


def register_benchmark(name: str, params: type):
    def deco(fn):
        BENCHMARKS[name] = (params, fn)
        return fn
    return deco


def benchmark_params(name: str) -> type:
    return BENCHMARKS[name][0]


def build_stream(cfg: dict) -> Stream:
    b = dict(cfg["benchmark"])
    name = b.pop("name")
    params_cls, build = BENCHMARKS[name]
    fields = {f.name for f in dataclasses.fields(params_cls)}
    stream = build(params_cls(**{k: v for k, v in b.items() if k in fields}), cfg)
    if cfg["eval"].get("split") == "validation":
        stream = validation_stream(stream, cfg["eval"]["val_fraction"], cfg["seed"])
    return stream


def validation_stream(stream: Stream, fraction: float, seed: int) -> Stream:
    """The same stream with every experience's test split replaced by held-out training data.

    Per class, a seeded `fraction` of the training samples becomes the evaluation set and is
    removed from training; the test split is dropped, so nothing chosen on this stream has
    seen it. Used to choose hyper-parameters (`eval.split=validation`). Scenario streams
    (visual questions) hold out a seeded `fraction` of every step's training *images* with all
    their questions, so no held-out image was trained on.
    """
    import torch

    from mmcl.stream import SampleSet

    if not 0 < fraction < 1:
        raise ValueError(f"eval.val_fraction must be in (0, 1), got {fraction}")
    g = torch.Generator().manual_seed(int(seed) + 104729)
    exps = []
    for e in stream:
        if isinstance(e.train, SampleSet):
            images = torch.unique(e.train.image_index)
            images = images[torch.randperm(len(images), generator=g)]
            held_images = images[:max(1, round(len(images) * fraction))]
            held_mask = torch.isin(e.train.image_index, held_images)
            if held_mask.all():
                raise ValueError(f"step {e.name}: too few training images to hold out a validation part")
            keep, held = torch.nonzero(~held_mask).flatten(), torch.nonzero(held_mask).flatten()
            exps.append(dataclasses.replace(e, train=e.train.subset(keep), test=e.train.subset(held),
                                            info={**e.info, "train": len(keep), "test": len(held)}))
            continue
        y = e.train["y"]
        keep, held = [], []
        for c in e.classes:
            idx = torch.nonzero(y == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            k = max(1, round(len(idx) * fraction))
            held.append(idx[:k])
            keep.append(idx[k:])
        keep, held = torch.cat(keep).sort().values, torch.cat(held).sort().values
        exps.append(dataclasses.replace(e, train=e.train.subset(keep), test=e.train.subset(held)))
    info = {**stream.info, "split": "validation", "val_fraction": fraction}
    return dataclasses.replace(stream, experiences=exps, info=info)


def class_order(n: int, cfg: dict) -> list[int]:
    """The order in which a benchmark's classes enter the stream: fixed, or a seeded permutation."""
    import numpy as np

    if cfg["stream"]["order"] == "fixed":
        return list(range(n))
    seed = cfg["stream"]["order_seed"]
    seed = cfg["seed"] if seed is None else seed
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


# built-in benchmarks register themselves on import
from mmcl.data import animals, mm5, synthetic, user  # noqa: E402,F401
from mmcl.data.msvqa import benchmark as _msvqa_benchmarks  # noqa: E402,F401  (scenario setting)
