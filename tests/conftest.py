"""Shared helpers: tiny configs built in code, run in a temporary cache."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mmcl.config import BASE, deep_merge, validate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    # one cache per test session: real encoders' outputs are computed once, never in ~/.cache
    monkeypatch.setenv("MMCL_CACHE", str(tmp_path_factory.getbasetemp() / "mmcl-cache"))


def tiny_cfg(method_name: str = "finetune", /, **sections) -> dict:
    """A validated config on the synthetic stream; `sections` are nested overrides."""
    cfg = copy.deepcopy(BASE)
    cfg = deep_merge(cfg, {
        "benchmark": {"name": "synthetic"},
        "method": {"name": method_name},
        "train": {"epochs": 3, "batch_size": 16, "lr": 0.01},
        "model": {"hidden_dim": 32},
        "logging": {"progress": False},
        "report": False,
    })
    return validate(deep_merge(cfg, sections))


def write_cfg(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def mmcl_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmcl", *args]


def run_cli(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.run(mmcl_cmd(*args), capture_output=True, text=True, env=env, timeout=600, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"mmcl {' '.join(args)} exited {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def metrics_without_timing(run_dir: Path) -> dict:
    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    m.pop("timing")
    return m


def tiny_token_cfg(method_name: str = "finetune", /, **sections) -> dict:
    """A validated config on a tiny synthetic *token* stream (prompted frozen-MiniLM model).

    Three experiences of two classes each, in three modalities (image, audio, depth), so
    prompt-selection and modality-relevance behaviour can be tested in seconds.
    """
    bench = {"name": "synthetic", "tokens": 4, "dim": 16, "modalities": ["image", "audio", "depth"],
             "train_per_class": 40, "test_per_class": 20}
    bench.update(sections.pop("benchmark", {}))
    return tiny_cfg(method_name, benchmark=bench, **sections)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: threads buy nothing, and on a shared machine they oversubscribe the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def train_steps(m, exp, steps: int, opt=None):
    """`steps` optimiser steps of method `m` on batches of 8 of `exp`'s training data, in order."""
    from mmcl.engine import make_optimizer

    m.experience = exp
    opt = opt or make_optimizer(m.param_groups(), m.cfg["train"])
    for s in range(steps):
        batch = exp.train.take(torch.arange(s * 8, s * 8 + 8) % len(exp.train))
        loss = m.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt


def run_experience(m, exp, steps: int, opt=None):
    """What the engine does for one experience, with fewer steps."""
    m.experience = exp
    m.before_experience(exp)
    opt = train_steps(m, exp, steps, opt)
    m.after_experience(exp)
    return opt
