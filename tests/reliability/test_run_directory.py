"""The run directory: nothing of the user's is lost, one run at a time, events.jsonl always parses."""
import json
import os

import pytest

from mmcl import cli
from mmcl.engine import Interrupted, run
from mmcl.methods.finetune import Finetune
from mmcl.results import RunDir
from tests.harness import metrics_without_timing, sigterm_at_loss, tiny_cfg, write_cfg


@pytest.fixture
def cfg_file(tmp_path):
    return str(write_cfg(tmp_path / "syn.yaml", tiny_cfg("finetune")))


def test_a_folder_that_is_not_a_run_is_refused_and_left_as_it_was(tmp_path, cfg_file, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "matrix_budget.csv").write_text("1")
    (d / "data_errors.txt").write_text("2")
    for extra in ([], ["--force"]):
        assert cli.main(["run", cfg_file, "--out", str(d), *extra]) == 2
        assert "not empty and holds no mmcl run" in capsys.readouterr().err
        assert sorted(os.listdir(d)) == ["data_errors.txt", "matrix_budget.csv"]
        assert (d / "matrix_budget.csv").read_text() == "1" and (d / "data_errors.txt").read_text() == "2"


def test_an_out_path_that_is_a_file_or_under_one_is_refused(tmp_path, cfg_file, capsys):
    f = tmp_path / "file.txt"
    f.write_text("keep")
    for out in (f, f / "sub"):
        assert cli.main(["run", cfg_file, "--out", str(out)]) == 2
        assert "is a file, not a folder" in capsys.readouterr().err
    assert f.read_text() == "keep"


def test_force_replaces_a_run(tmp_path, cfg_file):
    assert cli.main(["run", cfg_file, "--out", str(tmp_path / "r")]) == 0
    assert cli.main(["run", cfg_file, "--out", str(tmp_path / "r"), "--force"]) == 0


def test_a_second_run_in_a_live_directory_is_refused_naming_the_holder(tmp_path, cfg_file, capsys):
    assert cli.main(["run", cfg_file, "--out", str(tmp_path / "r")]) == 0
    before = (tmp_path / "r" / "metrics.json").read_bytes()
    holder = RunDir(tmp_path / "r")
    holder.claim()  # another run is using the directory
    try:
        assert cli.main(["run", cfg_file, "--out", str(tmp_path / "r"), "--force"]) == 2
        assert f"in use by another mmcl run (pid {os.getpid()})" in capsys.readouterr().err
        assert cli.main(["run", "--resume", str(tmp_path / "r")]) == 2
        assert "in use by another mmcl run" in capsys.readouterr().err
    finally:
        holder.release()
    assert (tmp_path / "r" / "metrics.json").read_bytes() == before  # nothing of the live run was touched
    assert cli.main(["run", cfg_file, "--out", str(tmp_path / "r"), "--force"]) == 0  # released: usable again


def test_resume_repairs_a_damaged_events_file(tmp_path, monkeypatch):
    cfg = tiny_cfg("finetune")
    run(cfg, str(tmp_path / "full"))
    original = sigterm_at_loss(monkeypatch, Finetune, 12)  # in the second experience
    with pytest.raises(Interrupted):
        run(cfg, str(tmp_path / "cut"))
    monkeypatch.setattr(Finetune, "training_loss", original)
    events = tmp_path / "cut" / "events.jsonl"
    data = events.read_bytes()
    events.write_bytes(data[: len(data) // 2 + 7])  # lost its end, mid-line (a crash, a full disk)
    run(cfg, str(tmp_path / "cut"), resume=True)
    lines = events.read_text().splitlines()
    assert lines and all(isinstance(json.loads(ln), dict) for ln in lines)  # every line parses: no NUL padding
    assert b"\0" not in events.read_bytes()
    assert any(json.loads(ln).get("events_repaired") for ln in lines if '"resume"' in ln)
    assert metrics_without_timing(tmp_path / "cut") == metrics_without_timing(tmp_path / "full")
