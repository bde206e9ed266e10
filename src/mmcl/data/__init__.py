"""Benchmarks: each turns a config into a `Stream` of decoded, cached, validated tensors.

A benchmark is registered with its parameters (a dataclass: every `benchmark.<key>` a
config may set) and a builder `build(params, cfg) -> Stream`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from mmcl.stream import Stream

BENCHMARKS: dict[str, tuple[type, Callable]] = {}


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
    return build(params_cls(**{k: v for k, v in b.items() if k in fields}), cfg)


def class_order(n: int, cfg: dict) -> list[int]:
    """The order in which a benchmark's classes enter the stream: fixed, or a seeded permutation."""
    import numpy as np

    if cfg["stream"]["order"] == "fixed":
        return list(range(n))
    seed = cfg["stream"]["order_seed"]
    seed = cfg["seed"] if seed is None else seed
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


# built-in benchmarks register themselves on import
from mmcl.data import animals, mm5, synthetic  # noqa: E402,F401
