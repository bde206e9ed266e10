"""`device` and `precision` (mmcl.device), both settings: the CPU is the device here, CUDA paths are
checked by benchmarks/gpu_check.sh on a GPU machine."""
from __future__ import annotations

import pytest
import torch

from mmcl import cli
from mmcl.config import ConfigError
from mmcl.device import resolve_device, resolve_precision, to_device
from mmcl.engine import Interrupted, run
from mmcl.methods.er import ER
from tests.harness import ANSWERING_BASE, metrics_without_timing, scenario_cfg, sigterm_at_loss, tiny_cfg, write_cfg


def summaries_close(a: dict, b: dict, tol: float, keys: tuple[str, ...] | None = None) -> None:
    assert set(a["summary"]) == set(b["summary"])
    for name, s in a["summary"].items():
        for key, v in s.items():
            if keys is not None and key not in keys:
                continue
            w = b["summary"][name][key]
            assert (v is None) == (w is None) and (v is None or abs(v - w) <= tol), (name, key, v, w)


def test_config_checks_device_and_precision(tmp_path, capsys):
    with pytest.raises(ConfigError, match="config key 'device' must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        tiny_cfg(device="gpu")
    with pytest.raises(ConfigError, match="config key 'precision' must be one of auto, fp32, bf16, fp16"):
        tiny_cfg(precision="fp8")
    assert resolve_device("cpu") == torch.device("cpu") and resolve_precision("auto", torch.device("cpu")) == "fp32"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'device' is 'cuda:1' but torch sees no CUDA device"):
            resolve_device("cuda:1")
        assert resolve_device("auto") == torch.device("cpu")
        # refused before anything is written
        cfg = write_cfg(tmp_path / "c.yaml", tiny_cfg(device="cuda"))
        assert cli.main(["run", str(cfg), "--out", str(tmp_path / "r")]) == 2
        assert "torch sees no CUDA device" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_to_device_moves_nested_tensors_and_keeps_the_rest():
    x = {"a": torch.ones(2, dtype=torch.float64), "b": ["q", "r"], "c": ({"d": torch.zeros(1)}, 3), "e": None}
    y = to_device(x, "cpu")
    assert torch.equal(y["a"], x["a"]) and y["b"] == ["q", "r"] and y["c"][1] == 3 and y["e"] is None


def test_cpu_and_auto_give_identical_metrics_and_record_the_device(tmp_path):
    cfg = dict(benchmark={"name": "synthetic", "num_experiences": 3}, train={"epochs": 1})
    a = run(tiny_cfg("er", device="cpu", **cfg), str(tmp_path / "cpu"))
    b = run(tiny_cfg("er", device="auto", **cfg), str(tmp_path / "auto"))
    assert a["device"] == "cpu" and a["precision"] == "fp32"
    if not torch.cuda.is_available():
        assert metrics_without_timing(tmp_path / "cpu") == metrics_without_timing(tmp_path / "auto")


@pytest.mark.parametrize("method", ["er", "derpp"])
def test_bf16_and_fp16_runs_of_the_modality_setting_stay_close_to_fp32(tmp_path, method):
    cfg = dict(benchmark={"name": "synthetic", "num_experiences": 3}, train={"epochs": 2}, device="cpu")
    full = run(tiny_cfg(method, precision="fp32", **cfg), str(tmp_path / "fp32"))
    half = run(tiny_cfg(method, precision="bf16", **cfg), str(tmp_path / "bf16"))
    assert half["precision"] == "bf16"
    summaries_close(full, half, 0.03)
    if method == "er":  # fp16: the gradient scaler's path (its state is checkpointed)
        f16 = run(tiny_cfg(method, precision="fp16", **cfg), str(tmp_path / "fp16"))
        # the scaler skips the first steps (its initial scale overflows), so the trajectory differs a little;
        # fwt (scores of never-trained classes, near chance) moves with any change of trajectory
        summaries_close(full, f16, 0.03, keys=("last_acc", "avg_inc_acc"))
        state = torch.load(tmp_path / "fp16" / "checkpoints" / "last.pt", weights_only=False)
        assert state["scaler"] and state["scaler"]["scale"] > 0


def test_bf16_run_of_the_scenario_setting_stays_close_to_fp32(tmp_path):
    bench = {**ANSWERING_BASE["benchmark"], "scenarios": ["high-altitude", "underwater"]}
    cfg = dict(device="cpu", base=ANSWERING_BASE["base"], benchmark=bench)
    full = run(scenario_cfg("finetune", precision="fp32", **cfg), str(tmp_path / "fp32"))
    half = run(scenario_cfg("finetune", precision="bf16", **cfg), str(tmp_path / "bf16"))
    assert half["precision"] == "bf16"
    assert any(v > 0 for r in full["matrices"]["vqa"] for v in r)  # a model that answers something
    summaries_close(full, half, 0.03)


def _as_if_saved_on_cuda(path) -> None:
    """Rewrite a checkpoint so that its tensors say they were saved on cuda:0 (what a GPU run's
    `torch.save` of device tensors writes): loading it without a map_location needs CUDA."""
    state = torch.load(path, weights_only=False)
    tag = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(state, path)
    finally:
        torch.serialization.location_tag = tag


def test_a_run_saved_on_one_device_resumes_on_another(tmp_path, monkeypatch):
    cfg = tiny_cfg("er", benchmark={"name": "synthetic", "num_experiences": 3}, train={"epochs": 2})
    run(cfg, str(tmp_path / "full"))
    original = sigterm_at_loss(monkeypatch, ER, 20)  # in experience 2, replaying
    with pytest.raises(Interrupted):
        run(cfg, str(tmp_path / "cut"))
    monkeypatch.setattr(ER, "training_loss", original)
    ckpt = tmp_path / "cut" / "checkpoints" / "last.pt"
    saved = torch.load(ckpt, weights_only=False)
    devices = set()

    def walk(x):
        if isinstance(x, torch.Tensor):
            devices.add(x.device.type)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
    walk(saved)
    assert devices == {"cpu"}  # device-independent as written
    assert "cuda" not in saved["rng"] or torch.cuda.is_available()  # CUDA's generators only where CUDA is
    saved["rng"].setdefault("cuda", [torch.zeros(16, dtype=torch.uint8)])  # as a GPU run's checkpoint holds
    torch.save(saved, ckpt)
    _as_if_saved_on_cuda(ckpt)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(ckpt, weights_only=False)  # the simulation is real: these tensors claim a GPU
    # resumed here (map_location), on another device setting than it started with
    run({**cfg, "device": "cpu"}, str(tmp_path / "cut"), resume=True)
    full, cut = metrics_without_timing(tmp_path / "full"), metrics_without_timing(tmp_path / "cut")
    assert cut == full


def test_cuda_generators_are_checkpointed_where_cuda_is_and_restored_only_there(monkeypatch):
    """`engine.rng_state` / `set_rng_state` with CUDA present (simulated): its generators' states are saved and
    restored, for the GPUs that exist; without CUDA a checkpoint's CUDA states are skipped, and a checkpoint
    without them (saved on a CPU) restores the others."""
    from mmcl import engine

    cuda = [torch.full((8,), 1, dtype=torch.uint8), torch.full((8,), 2, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: list(cuda))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend(states))
    state = engine.rng_state()
    assert [torch.equal(a, b) for a, b in zip(state["cuda"], cuda)] == [True, True]
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(4)
    engine.set_rng_state({**state, "torch": torch.manual_seed(3).get_state()})
    assert torch.equal(torch.rand(3), expected) and len(restored) == 1 and torch.equal(restored[0], cuda[0])
    engine.set_rng_state({k: v for k, v in state.items() if k != "cuda"})  # a CPU checkpoint on a GPU machine
    assert len(restored) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU checkpoint on a CPU machine
    engine.set_rng_state(state)
    assert len(restored) == 1 and "cuda" not in engine.rng_state()
