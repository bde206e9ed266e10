"""`vlm.fsdp`: the scenario model's language model sharded by FSDP2 (`fully_shard`) under torchrun, on the CPU
(gloo); checkpoints hold full tensors, so a run resumes exactly and on another number of ranks."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmcl.config import ConfigError
from mmcl.engine import run
from mmcl.methods.lwf import LwF
from tests.harness import (ANSWERING_BASE, TINY_VLM, cfg_for, interrupt_and_resume, metrics_without_timing,
                           scenario_cfg, write_cfg)

TORCHRUN = Path(sys.executable).parent / "torchrun"

#: the 2-process runs: each rank stops itself at its 3rd training step (the first of step 2, with the teacher)
STOP_AT_THIRD_LOSS = """
import os, signal, sys
from mmcl.methods.lwf import LwF
original, calls = LwF.training_loss, []
def loss_then_sigterm(self, batch):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGTERM)
    return original(self, batch)
LwF.training_loss = loss_then_sigterm
from mmcl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_fsdp_config_is_checked():
    with pytest.raises(ConfigError, match="'vlm.fsdp' expects bool"):
        scenario_cfg("lwf", vlm={**TINY_VLM, "fsdp": "maybe"})
    with pytest.raises(ConfigError, match="config key 'vlm.fsdp': method 'ewc' keeps state per parameter") as e:
        scenario_cfg("ewc", vlm={**TINY_VLM, "fsdp": True})
    assert "lwf" in str(e.value) and "olora" not in str(e.value).split("one of:")[1] and "\n" not in str(e.value)


@pytest.mark.parametrize("grounded", [False, True])
def test_fsdp_state_dicts_resume_exactly_in_one_process(tmp_path, monkeypatch, grounded):
    """One process, `vlm.fsdp` on: the model is not sharded, but model and optimiser states go through
    torch.distributed.checkpoint's full state dicts (the optimiser's keyed by parameter name), and the teacher
    loads through them too; an interrupted run resumes to the uninterrupted run's metrics. `grounded`: the
    bundled msvqa-mini regime (cut vocabulary, tied embeddings trained beside LoRA, the region term)."""
    extra = {"vocab": "msvqa-mini", "train_embeddings": True} if grounded else {}
    cfg = cfg_for({"name": "lwf"}, vlm={**TINY_VLM, "fsdp": True, **extra})
    if grounded:
        cfg["train"]["region_weight"] = 1.0
    state = interrupt_and_resume(tmp_path, monkeypatch, LwF, cfg, 3)
    assert state["position"] == {"exp": 1, "epoch": 0, "step": 1}
    names = set(state["method"]["model"])
    assert names and all("lora_" in n or "vision_tower" in n or "projector" in n or (grounded and "embed_tokens" in n)
                         for n in names)
    assert any("embed_tokens" in n for n in names) == grounded
    assert set(state["optimizer"]["state"]) <= names and state["optimizer"]["state"]
    assert set(state["method"]["extra"]["teacher"]) == names  # the snapshot: full tensors, nothing more
    m = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert m["fsdp"] == {"ranks": 1, "sharded_units": 0}


def _torchrun(*args: str, script: Path | None = None) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=2 -m mmcl run ARGS` (or `script run ARGS`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    target = [str(script)] if script else ["-m", "mmcl"]
    return subprocess.run([str(TORCHRUN if TORCHRUN.exists() else "torchrun"), "--standalone", "--nproc_per_node=2",
                           *target, "run", *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(not TORCHRUN.exists() and not shutil.which("torchrun"), reason="torchrun not installed")
def test_two_process_fsdp_matches_one_process_and_resumes_on_any_number_of_ranks(tmp_path, monkeypatch):
    """2 ranks over gloo, the language model's decoder layers and the model around them sharded, LwF's teacher a
    second sharded model, answers generated in lockstep: metrics within 0.02 of one process. A sharded run
    stopped mid-step resumes on 2 ranks to exactly the uninterrupted sharded run, and its checkpoint (full
    tensors) resumes in one process too. (The data and base model of test_distributed's scenario test: cached.)"""
    cfg = scenario_cfg("lwf", device="cpu", threads=1, vlm={**TINY_VLM, "fsdp": True},
                       train={"epochs": 1, "batch_size": 8, "lr": 3e-3}, eval={"batch_size": 4, "max_new_tokens": 8},
                       **ANSWERING_BASE)
    cfg_path = write_cfg(tmp_path / "c.yaml", cfg)
    run(cfg, str(tmp_path / "single"))  # also fills the base-model cache the ranks read
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert any(v > 0 for r in single["matrices"]["vqa"] for v in r)  # a model that answers something

    p = _torchrun(str(cfg_path), "--out", str(tmp_path / "fsdp"))
    assert p.returncode == 0, p.stdout + p.stderr
    sharded = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    assert sharded["world_size"] == 2 and sharded["fsdp"] == {"ranks": 2, "sharded_units": TINY_VLM["lm_layers"] + 1}  # layers + LM
    for name in single["summary"]:
        for key, a in single["summary"][name].items():
            b = sharded["summary"][name][key]
            assert (a is None) == (b is None) and (a is None or abs(a - b) <= 0.02), (name, key, a, b)

    script = tmp_path / "stop.py"
    script.write_text(STOP_AT_THIRD_LOSS)
    p = _torchrun(str(cfg_path), "--out", str(tmp_path / "cut"), script=script)
    assert p.returncode != 0 and "interrupted" in (tmp_path / "cut" / "events.jsonl").read_text()
    state = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=False)
    assert state["position"] == {"exp": 1, "epoch": 0, "step": 1}
    full = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=False)
    shapes = lambda d: {k: tuple(v.shape) for k, v in d.items()}  # noqa: E731
    assert shapes(state["method"]["model"]) == shapes(full["method"]["model"])  # full tensors, not shards
    assert all(isinstance(v, torch.Tensor) and type(v) is torch.Tensor and v.device.type == "cpu"
               for s in state["optimizer"]["state"].values() for v in s.values() if isinstance(v, torch.Tensor))
    shutil.copytree(tmp_path / "cut", tmp_path / "cut-one")

    p = _torchrun("--resume", str(tmp_path / "cut"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert metrics_without_timing(tmp_path / "cut") == metrics_without_timing(tmp_path / "fsdp")

    (tmp_path / "cut-one" / ".mmcl-run").unlink(missing_ok=True)
    run(cfg, str(tmp_path / "cut-one"), resume=True)  # 2 ranks' checkpoint, one process
    one = json.loads((tmp_path / "cut-one" / "metrics.json").read_text())
    for name in single["summary"]:
        for key, a in single["summary"][name].items():
            b = one["summary"][name][key]
            assert (a is None) == (b is None) and (a is None or abs(a - b) <= 0.02), (name, key, a, b)
