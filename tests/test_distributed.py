"""`torchrun --nproc_per_node=2 -m mmcl run ...` on the CPU (gloo)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import run_cli, tiny_cfg, write_cfg

TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists() and not shutil.which("torchrun"), reason="torchrun not installed")
@pytest.mark.parametrize("method", ["er", "derpp"])  # a memory filled after experiences / during every step
def test_two_process_ddp_matches_single_process(tmp_path, method):
    cfg = tiny_cfg(method, benchmark={"name": "synthetic", "num_experiences": 3, "train_per_class": 64},
                   method={"name": method, "buffer_size": 40})
    cfg_path = write_cfg(tmp_path / "c.yaml", cfg)
    run_cli("run", str(cfg_path), "--out", str(tmp_path / "single"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([str(TORCHRUN if TORCHRUN.exists() else "torchrun"), "--standalone", "--nproc_per_node=2",
                        "-m", "mmcl", "run", str(cfg_path), "--out", str(tmp_path / "ddp")],
                       capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    # one summary table printed (rank 0 only), one run directory
    assert p.stdout.count("run directory:") == 1
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    for name in single["matrices"]:
        for ra, rb in zip(single["matrices"][name], ddp["matrices"][name]):
            for a, b in zip(ra, rb):
                assert abs(a - b) <= 0.02, (name, ra, rb)
    # evaluated once: one eval event per experience (+ the untrained baseline)
    events = [json.loads(l) for l in (tmp_path / "ddp" / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "eval" for e in events) == 3 + 1
    # the replay memory holds the same samples on every rank after every experience
    ends = [e for e in events if e["event"] == "experience_end"]
    assert len(ends) == 3
    for e in ends:
        assert len(e["state_digests"]) == 2 and e["state_digests"][0] == e["state_digests"][1]


@pytest.mark.skipif(not TORCHRUN.exists() and not shutil.which("torchrun"), reason="torchrun not installed")
def test_two_process_ddp_on_a_multimodal_token_stream(tmp_path):
    """COMM on the prompted token model: each step uses one modality's input projection and prompts,
    so the others get no gradient (DDP must allow unused parameters); statistics stay identical."""
    from tests.harness import tiny_token_cfg

    cfg = tiny_token_cfg("comm", train={"epochs": 2})
    cfg_path = write_cfg(tmp_path / "c.yaml", cfg)
    run_cli("run", str(cfg_path), "--out", str(tmp_path / "single"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([str(TORCHRUN if TORCHRUN.exists() else "torchrun"), "--standalone", "--nproc_per_node=2",
                        "-m", "mmcl", "run", str(cfg_path), "--out", str(tmp_path / "ddp")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert ddp["world_size"] == 2
    for name in single["matrices"]:
        last_single, last_ddp = single["summary"][name]["last_acc"], ddp["summary"][name]["last_acc"]
        assert abs(last_single - last_ddp) <= 0.1, (name, last_single, last_ddp)
    events = [json.loads(l) for l in (tmp_path / "ddp" / "events.jsonl").read_text().splitlines()]
    ends = [e for e in events if e["event"] == "experience_end"]
    assert len(ends) == 3 and all(e["state_digests"][0] == e["state_digests"][1] for e in ends)


@pytest.mark.skipif(not TORCHRUN.exists() and not shutil.which("torchrun"), reason="torchrun not installed")
def test_two_process_scenario_run_matches_single_process(tmp_path):
    """The scenario setting under torchrun: gradients averaged over the ranks, the global batch sharded,
    the test questions answered half by each rank and gathered; the replay memory identical on both."""
    from tests.harness import ANSWERING_BASE, scenario_cfg

    cfg = scenario_cfg("er", device="cpu", threads=1, **ANSWERING_BASE)  # one thread: 2 processes on 2 cores
    cfg_path = write_cfg(tmp_path / "c.yaml", cfg)
    run_cli("run", str(cfg_path), "--out", str(tmp_path / "single"))  # also fills the base-model cache
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([str(TORCHRUN if TORCHRUN.exists() else "torchrun"), "--standalone", "--nproc_per_node=2",
                        "-m", "mmcl", "run", str(cfg_path), "--out", str(tmp_path / "ddp")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("run directory:") == 1 and sorted(f.name for f in tmp_path.iterdir()) == \
        ["c.yaml", "ddp", "single"]
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1 and len(ddp["experiences"]) == 4
    assert any(v > 0 for r in single["matrices"]["vqa"] for v in r)  # a model that answers something
    for name in single["summary"]:
        for key, a in single["summary"][name].items():
            b = ddp["summary"][name][key]
            assert (a is None) == (b is None) and (a is None or abs(a - b) <= 0.02), (name, key, a, b)
    preds = (tmp_path / "ddp" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == len((tmp_path / "single" / "predictions.jsonl").read_text().splitlines())
    events = [json.loads(l) for l in (tmp_path / "ddp" / "events.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "eval" for e in events) == 4 + 1  # recorded once (by rank 0)
    ends = [e for e in events if e["event"] == "experience_end"]
    assert len(ends) == 4 and all(len(e["state_digests"]) == 2 and len(set(e["state_digests"])) == 1 for e in ends)
