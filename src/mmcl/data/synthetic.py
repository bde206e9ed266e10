"""`synthetic`: a seeded Gaussian stream for tests and engine benchmarks (no real data).

Purely synthetic, on purpose: it needs no encoder, loads in milliseconds and lets tests
build tiny streams in code. Each class has a random mean in feature space (scaled by
`separation`) and unit-variance noise; anchors are random unit vectors in `anchor_dim`
dimensions (there is no text encoder here). Experience e takes modality
`modalities[e % len(modalities)]`. Everything is drawn from `numpy.random.default_rng(data_seed)`.

With `tokens=T > 0` the samples are token sequences instead (features "tokens" (n, T, dim),
"mask", "m" and a zero "zs", exactly the keys of `mm5`), so the prompted model and the
prompt-based methods run on it: a sample is its class's mean sequence plus its modality's
own offset (a modality signature that a relevance classifier can learn) plus unit noise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mmcl.data.registry import BuildContext, register_benchmark
from mmcl.stream import MODALITIES, Experience, Stream, TensorSet


@dataclass
class SyntheticParams:
    ranges = {"num_experiences": ">=1", "classes_per_experience": ">=1", "dim": ">=1", "anchor_dim": ">=1",
              "train_per_class": ">=1", "test_per_class": ">=1", "separation": ">=0", "data_seed": ">=0", "tokens": ">=0"}
    num_experiences: int = 3
    classes_per_experience: int = 2
    dim: int = 32  # feature dimension
    anchor_dim: int = 16
    train_per_class: int = 60
    test_per_class: int = 30
    separation: float = 3.0  # distance scale of the class means relative to unit noise
    modalities: list = field(default_factory=lambda: ["image"])
    data_seed: int = 0
    tokens: int = 0  # > 0: token sequences of this length (prompted model) instead of vectors


@register_benchmark("synthetic", SyntheticParams)
def build(p: SyntheticParams, ctx: BuildContext) -> Stream:
    rng = np.random.default_rng(p.data_seed)
    n_cls = p.num_experiences * p.classes_per_experience
    means = rng.normal(size=(n_cls, p.dim)) * p.separation / np.sqrt(p.dim) * 2
    anchors = rng.normal(size=(n_cls, p.anchor_dim))
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)

    if p.tokens > 0:
        unknown = sorted(set(p.modalities) - set(MODALITIES))
        if unknown:
            raise ValueError(f"benchmark.modalities: unknown {unknown}; expected some of {MODALITIES}")
        seq_means = rng.normal(size=(n_cls, p.tokens, p.dim)) * p.separation / np.sqrt(p.dim) * 2
        mod_offset = {m: rng.normal(size=(1, p.dim)) * p.separation / np.sqrt(p.dim) * 2 for m in MODALITIES}

    def sample(c: int, n: int, mod: str) -> dict[str, torch.Tensor]:
        y = torch.full((n,), c, dtype=torch.long)
        if p.tokens > 0:
            x = seq_means[c] + mod_offset[mod] + rng.normal(size=(n, p.tokens, p.dim))
            return {"tokens": torch.tensor(x, dtype=torch.float32), "mask": torch.ones(n, p.tokens),
                    "zs": torch.zeros(n, p.anchor_dim), "m": torch.full((n,), MODALITIES.index(mod)), "y": y}
        x = means[c] + rng.normal(size=(n, p.dim))
        return {"x": torch.tensor(x, dtype=torch.float32), "y": y}

    exps, modality_of = [], []
    for e in range(p.num_experiences):
        ks = list(range(e * p.classes_per_experience, (e + 1) * p.classes_per_experience))
        mod = p.modalities[e % len(p.modalities)]
        modality_of += [mod] * len(ks)
        parts_tr = [sample(c, p.train_per_class, mod) for c in ks]
        parts_te = [sample(c, p.test_per_class, mod) for c in ks]
        cat = lambda parts: TensorSet({f: torch.cat([d[f] for d in parts]) for f in parts[0]})  # noqa: E731
        exps.append(Experience(e, f"{mod}/c{ks[0]}-c{ks[-1]}", cat(parts_tr), cat(parts_te), modality=mod, classes=ks))
    names = [f"class {c}" for c in range(n_cls)]
    return Stream("synthetic", exps, names, modality_of, torch.tensor(anchors, dtype=torch.float32),
                  {"source": "seeded Gaussian clusters (synthetic)", "data_seed": p.data_seed})
