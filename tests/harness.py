"""The shared test harness: tiny configs built in code for both settings, and the training / resume
helpers the method tests use (tests/methods/test_<name>.py covers every setting a method supports).

Fixtures (the isolated cache, `one_thread`) live in tests/conftest.py, which re-exports these helpers.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mmcl.config import BASE, deep_merge, validate
from mmcl.engine import Interrupted, build_method, run
from mmcl.settings import build_stream

ROOT = Path(__file__).resolve().parents[1]


# -- configs and commands ---------------------------------------------------------------------
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


# -- modality setting -------------------------------------------------------------------------
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


def tiny_token_cfg(method_name: str = "finetune", /, **sections) -> dict:
    """A validated config on a tiny synthetic *token* stream (prompted frozen-MiniLM model).

    Three experiences of two classes each, in three modalities (image, audio, depth), so
    prompt-selection and modality-relevance behaviour can be tested in seconds.
    """
    bench = {"name": "synthetic", "tokens": 4, "dim": 16, "modalities": ["image", "audio", "depth"],
             "train_per_class": 40, "test_per_class": 20}
    bench.update(sections.pop("benchmark", {}))
    return tiny_cfg(method_name, benchmark=bench, **sections)


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
        m.after_backward()
        opt.step()
    return opt


def run_experience(m, exp, steps: int, opt=None):
    """What the engine does for one experience, with fewer steps."""
    m.experience = exp
    m.before_experience(exp)
    opt = train_steps(m, exp, steps, opt)
    m.after_experience(exp)
    return opt


# -- scenario setting -------------------------------------------------------------------------
TINY_VLM = {"preset": "tiny", "image_size": 32, "patch_size": 16, "lm_dim": 64, "lm_layers": 1,
            "vision_dim": 32, "vision_layers": 1}

TWO_STEPS = {"name": "msvqa-mini", "train_images": 5, "test_images": 5, "questions_per_image": 3,
             "scenarios": ["high-altitude", "underwater"]}


#: a base model that answers something (trained on 12 ground images for 20 epochs, cached once), for tests
#: that compare the scores of two runs (a comparison of zeros would prove nothing)
ANSWERING_BASE = {"benchmark": {"name": "msvqa-mini", "train_images": 5, "test_images": 6, "questions_per_image": 3,
                                "base_images": 12},
                  "base": {"epochs": 20, "lr": 3e-3, "batch_size": 16}}


def scenario_cfg(method: str = "finetune", /, **sections) -> dict:
    """A validated scenario config: msvqa-mini with 5 train / 5 test images per scenario, a tiny model."""
    cfg = deep_merge(BASE, {
        "setting": "scenario",
        "benchmark": {"name": "msvqa-mini", "train_images": 5, "test_images": 5, "questions_per_image": 3},
        "method": {"name": method},
        "vlm": TINY_VLM,
        "base": {"epochs": 2, "lr": 3e-3, "batch_size": 16},
        "train": {"epochs": 1, "batch_size": 16, "lr": 3e-3},
        "eval": {"batch_size": 32, "max_new_tokens": 8},
        "logging": {"progress": False},
        "report": False,
    })
    if "benchmark" in sections:  # another benchmark's keys replace msvqa-mini's
        cfg["benchmark"] = sections.pop("benchmark")
    return validate(deep_merge(cfg, sections))


def train_step(m, exp, lr: float = 3e-3, batch_size: int = 8) -> None:
    """What the engine does for one experience: one epoch in stored order, a fresh Adam."""
    m.begin_experience(exp)
    opt = torch.optim.Adam(m.param_groups(), lr=lr)
    for batch in exp.train.batches(batch_size):
        loss = m.training_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    m.after_experience(exp)


def sigterm_at_loss(monkeypatch, cls, n: int):
    """The n-th call of `cls.training_loss` first sends SIGTERM to this process (an interruption
    in the middle of a step); returns the original method, to restore before resuming."""
    original, calls = cls.training_loss, {"n": 0}

    def loss_then_sigterm(self, batch):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch)

    monkeypatch.setattr(cls, "training_loss", loss_then_sigterm)
    return original


def cfg_for(method: dict, **sections) -> dict:
    """Two steps of 15 questions, batches of 8 (2 per step), short answers at evaluation."""
    return scenario_cfg(benchmark=TWO_STEPS, method=method, train={"epochs": 1, "batch_size": 8, "lr": 3e-3},
                        eval={"batch_size": 32, "max_new_tokens": 4}, **sections)


def pair(method: dict):
    """The method and a `finetune` twin built from the same config (same base model, same LoRA init)."""
    cfg = cfg_for(method)
    stream = build_stream(cfg)
    return stream, build_method(stream, cfg), build_method(stream, cfg_for({"name": "finetune"}))


def copy_weights(src, dst) -> None:
    dst.model.load_state_dict(src.model_state(), strict=False)


def trained(m) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.model.named_parameters() if p.requires_grad}


def interrupt_and_resume(tmp_path, monkeypatch, cls, cfg: dict, at: int) -> dict:
    """Run `cfg` into tmp_path/full; run it again into tmp_path/cut, stopped by SIGTERM in the `at`-th call of
    `cls.training_loss`, then resume it. Asserts that the resumed run's metrics equal the uninterrupted run's;
    returns the checkpoint the interrupted run left (before resuming)."""
    run(cfg, str(tmp_path / "full"))
    original = sigterm_at_loss(monkeypatch, cls, at)
    with pytest.raises(Interrupted):
        run(cfg, str(tmp_path / "cut"))
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)
    monkeypatch.setattr(cls, "training_loss", original)
    run(cfg, str(tmp_path / "cut"), resume=True)
    assert metrics_without_timing(tmp_path / "cut") == metrics_without_timing(tmp_path / "full")
    return state


def resume_equals_uninterrupted(tmp_path, monkeypatch, cls, method: dict) -> None:
    state = interrupt_and_resume(tmp_path, monkeypatch, cls, cfg_for(method), 3)  # first batch of step 2: memory /
    assert state["position"] == {"exp": 1, "epoch": 0, "step": 1}  # Fisher / teacher in use
