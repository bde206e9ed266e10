"""The benchmark registry and what a builder is given: its own parameters and a small context.

A benchmark is registered with its parameters (a dataclass: every `benchmark.<key>` a config may
set) and a builder `build(params, ctx) -> Stream`; `ctx` is a `BuildContext`, the few run-level
values a builder may read (seed, stream order, ...), made by the run's setting from the config.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

from mmcl.stream import Stream

BENCHMARKS: dict[str, tuple[type, Callable]] = {}


@dataclass(frozen=True)
class BuildContext:
    """What a benchmark builder may know of the run besides its own parameters."""

    seed: int = 0
    stream: dict = field(default_factory=dict)  # the config's stream section (order, order_seed, protocol, ...)
    progress: bool = False  # show progress bars while generating / encoding
    anchor_template: str = "{}"  # modality setting: text embedded as each class anchor
    encoders: dict = field(default_factory=dict)  # modality setting: modality -> "default" | "hf:<dir>"
    on_error: str = "fail"  # what to do with input files that cannot be used: fail | skip
    image_size: int | None = None  # scenario setting: the model's input side (None: keep the files' size)

    @property
    def order_seed(self) -> int:
        """The seed of a random stream order: `stream.order_seed`, else the run's seed."""
        s = self.stream.get("order_seed")
        return int(self.seed if s is None else s)


def register_benchmark(name: str, params: type):
    """Decorator: make a builder available as `benchmark.name=<name>`."""
    def deco(fn):
        BENCHMARKS[name] = (params, fn)
        return fn
    return deco


def benchmark_params(name: str) -> type:
    return BENCHMARKS[name][0]


def build_benchmark(section: dict, ctx: BuildContext) -> Stream:
    """The stream of the config's `benchmark` section."""
    b = dict(section)
    name = b.pop("name")
    params_cls, build = BENCHMARKS[name]
    fields = {f.name for f in dataclasses.fields(params_cls)}
    return build(params_cls(**{k: v for k, v in b.items() if k in fields}), ctx)


def class_order(n: int, ctx: BuildContext) -> list[int]:
    """The order in which a benchmark's classes enter the stream: fixed, or a seeded permutation."""
    import numpy as np

    if ctx.stream.get("order", "fixed") == "fixed":
        return list(range(n))
    return [int(i) for i in np.random.default_rng(ctx.order_seed).permutation(n)]
