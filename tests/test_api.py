"""The Python API (mmcl.run / load_run / compare) and the command line layered on it."""
import json

import pytest

import mmcl
from mmcl.cli import main
from mmcl.errors import ConfigError
from tests.harness import metrics_without_timing, tiny_cfg, write_cfg


def test_api_gives_the_metrics_of_the_cli(tmp_path, capsys):
    cfg = tiny_cfg("er", report=False)
    path = write_cfg(tmp_path / "er.yaml", cfg)
    # options and overrides in any order
    assert main(["run", str(path), "--out", str(tmp_path / "cli"), "seed=1", "method.buffer_size=20"]) == 0
    capsys.readouterr()
    a = mmcl.run(cfg, {"seed": 1, "method.buffer_size": 20}, out=tmp_path / "api")
    b = mmcl.run(str(path), ["method.buffer_size=20", "seed=1"], out=tmp_path / "api-list")
    cli = metrics_without_timing(tmp_path / "cli")
    assert cli["seed"] == 1
    for r in (a, b):
        assert metrics_without_timing(r.path) == cli
        assert r.config["method"]["buffer_size"] == 20 and r.config["seed"] == 1
    assert a.summary == cli["summary"] and a.matrices == cli["matrices"]
    assert set(a.paths) >= {"config", "metrics", "events", "matrix_modality_aware", "checkpoint"}
    loaded = mmcl.load_run(tmp_path / "cli")
    assert loaded.metrics == json.loads((tmp_path / "cli" / "metrics.json").read_text())
    rows = mmcl.compare([loaded, tmp_path / "api"])
    assert [(r["run"].split()[0], r["protocol"]) for r in rows] == [
        ("cli", "modality_aware"), ("cli", "modality_agnostic"), ("api", "modality_aware"), ("api", "modality_agnostic")]
    assert rows[0]["last_acc"] == cli["summary"]["modality_aware"]["last_acc"] and rows[0]["benchmark"] == "synthetic"


def test_api_out_never_replaces_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny_cfg("finetune", train={"epochs": 1})
    first, second = mmcl.run(cfg), mmcl.run(cfg)  # default out: runs/<name>, then runs/<name>-2
    assert first.path != second.path and second.path.name.endswith("-2")
    with pytest.raises(ConfigError, match="already holds a finished run"):
        mmcl.run(cfg, out=first.path)
    with pytest.raises(ConfigError, match="unknown config key 'train.lrr'"):
        mmcl.run(cfg, {"train.lrr": 1.0})


def test_cli_takes_arguments_in_any_order(tmp_path, capsys):
    path = write_cfg(tmp_path / "c.yaml", tiny_cfg("finetune", train={"epochs": 1}))
    assert main(["run", "--out", str(tmp_path / "A"), "seed=2", str(path)]) == 0
    assert json.loads((tmp_path / "A" / "metrics.json").read_text())["seed"] == 2
    assert main(["run", "seed=1", str(path), str(path), "--out", str(tmp_path / "B")]) == 2
    assert "one config at a time" in capsys.readouterr().err
