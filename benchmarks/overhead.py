"""Wall time of the mmcl engine against a plain PyTorch loop doing the same work.

Both sides load the same cached `animals` stream, build the same model from the same seed,
visit the same batches in the same order with the same optimiser, and fill the same
accuracy matrix (untrained baseline + one row per experience). The engine additionally
writes its run directory (config, events, checkpoints after every experience, metrics);
the report is switched off on both sides. Runs alternate and the median of `--repeats` is
reported.

    python benchmarks/overhead.py [--repeats 3] [--method finetune] [key=value ...]
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

from mmcl.config import load_config
from mmcl import seeds
from mmcl.settings import build_stream
from mmcl.engine import build_method, evaluate, make_optimizer, run, seed_everything


def plain_loop(cfg: dict) -> list[list[float]]:
    """The same training and evaluation, written as one straight PyTorch loop."""
    seed_everything(cfg["seed"])
    stream = build_stream(cfg)
    seed_everything(cfg["seed"])
    method = build_method(stream, cfg)  # used only for its model and for `evaluate`
    model, t = method.model, cfg["train"]
    rows = [evaluate(method, stream, -1)["modality_agnostic"]]
    for i, exp in enumerate(stream):
        method.begin_experience(exp)
        opt = make_optimizer(list(model.parameters()), t)
        n_seen = stream.seen_after(i)
        data, bs = exp.train, t["batch_size"]
        for epoch in range(t["epochs"]):
            g = seeds.generator(cfg["seed"], "batch_order", i, epoch)
            order = torch.randperm(len(data), generator=g)
            for s in range(math.ceil(len(data) / bs)):
                batch = data.take(order[s * bs:(s + 1) * bs])
                loss = F.cross_entropy(model.logits(model(batch), n_seen), batch["y"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        rows.append(evaluate(method, stream, i)["modality_agnostic"])
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config("animals-finetune", ["logging.progress=false", "report=false", *args.overrides])
    build_stream(cfg)  # warm the feature cache outside the timings
    plain_t, engine_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rows = plain_loop(cfg)
        plain_t.append(time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            m = run(cfg, d)
            engine_t.append(time.perf_counter() - t0)
        same = rows[1:] == m["matrices"]["modality_agnostic"]
    p, e = statistics.median(plain_t), statistics.median(engine_t)
    steps = sum(math.ceil(cfg["benchmark"]["train_per_class"] * cfg["benchmark"]["classes_per_experience"]
                          / cfg["train"]["batch_size"]) for _ in range(5)) * cfg["train"]["epochs"]
    print(f"workload: animals / finetune, {steps} optimiser steps, 6 evaluations of 5 experiences, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'':18s}{'median s':>10s}{'runs':>30s}")
    print(f"{'plain PyTorch loop':18s}{p:10.3f}{'  ' + ', '.join(f'{x:.3f}' for x in plain_t):>30s}")
    print(f"{'mmcl engine':18s}{e:10.3f}{'  ' + ', '.join(f'{x:.3f}' for x in engine_t):>30s}")
    print(f"engine overhead: {100 * (e - p) / p:+.1f}%   (identical accuracy matrix: {same})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
