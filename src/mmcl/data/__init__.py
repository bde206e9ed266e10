"""Benchmarks: each turns its parameters and a `BuildContext` into a `Stream` of decoded, cached,
validated tensors (see `mmcl.data.registry`). Importing this package registers the built-in ones.
"""
from __future__ import annotations

import dataclasses

from mmcl.data.registry import BENCHMARKS, BuildContext, benchmark_params, build_benchmark, class_order, register_benchmark
from mmcl.errors import DataError
from mmcl.seeds import generator
from mmcl.stream import Stream


def build_stream(benchmark: dict, ctx: BuildContext, split: str = "test", val_fraction: float = 0.2) -> Stream:
    """The stream of a `benchmark` config section; `split="validation"` swaps every test split for held-out
    training data (`validation_stream`)."""
    stream = build_benchmark(benchmark, ctx)
    if split == "validation":
        stream = validation_stream(stream, val_fraction, ctx.seed)
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
    g = generator(seed, "validation")
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


# built-in benchmarks register themselves on import
from mmcl.data import animals, mm5, synthetic, user  # noqa: E402,F401
from mmcl.data.msvqa import benchmark as _msvqa_benchmarks  # noqa: E402,F401  (scenario setting)

__all__ = ["BENCHMARKS", "BuildContext", "DataError", "benchmark_params", "build_benchmark", "build_stream",
           "class_order", "register_benchmark", "validation_stream"]
