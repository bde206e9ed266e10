"""Misuse gets one line naming the key or path, exit 2 (130 for Ctrl-C), and nothing earlier is lost."""
import errno
import json
import os
import shutil

import pytest

from mmcl import cli, results
from mmcl.config import load_config
from mmcl.errors import ConfigError
from tests.harness import tiny_cfg, write_cfg


@pytest.fixture
def cfg_file(tmp_path):
    return str(write_cfg(tmp_path / "syn.yaml", tiny_cfg("finetune")))


def _one_line(err: str) -> bool:
    return err.strip().count("\n") == 0


def _interrupted_run(tmp_path, cfg_file, monkeypatch, capsys):
    """A run stopped by SIGTERM in the middle of an experience: a checkpoint to resume from."""
    from mmcl.methods.finetune import Finetune
    from tests.harness import sigterm_at_loss

    original = sigterm_at_loss(monkeypatch, Finetune, 15)
    assert cli.main(["run", cfg_file, "--out", str(tmp_path / "r")]) == 128 + 15
    monkeypatch.setattr(Finetune, "training_loss", original)
    capsys.readouterr()
    return tmp_path / "r"


def test_resume_overrides_apply_to_the_stored_config(tmp_path, cfg_file, monkeypatch, capsys):
    r = _interrupted_run(tmp_path, cfg_file, monkeypatch, capsys)
    # a key that may differ on resume (threads) goes onto the stored config, not onto the default config
    assert cli.main(["run", "--resume", str(r), "threads=1"]) == 0
    assert json.loads((r / "metrics.json").read_text())["benchmark"] == "synthetic"


def test_resume_refuses_a_key_that_changes_the_run(tmp_path, cfg_file, capsys):
    assert cli.main(["run", cfg_file, "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(tmp_path / "r"), "seed=3"]) == 2
    err = capsys.readouterr().err
    assert "differs from the run being resumed" in err and "'seed'" in err and _one_line(err)


def test_resume_with_another_out_is_refused(tmp_path, cfg_file, capsys):
    assert cli.main(["run", cfg_file, "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(tmp_path / "r"), "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and _one_line(err) and not (tmp_path / "other").exists()


def test_ctrl_c_during_set_up_exits_130_with_one_line(tmp_path, cfg_file, monkeypatch, capsys):
    from mmcl.settings.modality import ModalitySetting

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(ModalitySetting, "build_stream", interrupted)
    assert cli.main(["run", cfg_file, "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "mmcl: interrupted" and not (tmp_path / "r").exists()


def test_a_full_disk_is_said_and_the_last_checkpoint_stays_intact(tmp_path, cfg_file, monkeypatch, capsys):
    r = _interrupted_run(tmp_path, cfg_file, monkeypatch, capsys)
    ckpt = r / "checkpoints" / "last.pt"
    before = ckpt.read_bytes()
    real = results.atomic_write_with  # checkpoints are streamed into the temporary file (atomic_write_with)

    def full(path, write):
        if str(path).endswith("last.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, write)

    monkeypatch.setattr(results, "atomic_write_with", full)
    assert cli.main(["run", "--resume", str(r)]) == 2
    err = capsys.readouterr().err
    assert "disk full" in err and "--resume" in err and _one_line(err)
    assert ckpt.read_bytes() == before  # the checkpoint of before is whole
    monkeypatch.setattr(results, "atomic_write_with", real)
    assert cli.main(["run", "--resume", str(r)]) == 0  # space freed: the run goes on from it


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_an_unusable_cache_folder_is_named(tmp_path, cfg_file, monkeypatch, capsys, kind):
    target = tmp_path / "cache"
    if kind == "file":
        target.write_text("x")
    else:
        target.mkdir()
        target.chmod(0o500)
        if os.access(target, os.W_OK):  # root ignores permissions: nothing to test here
            pytest.skip("running as a user who can write anywhere")
    monkeypatch.setenv("MMCL_CACHE", str(target))
    assert cli.main(["run", "animals-er", "--out", str(tmp_path / "r")]) == 2  # animals' features are cached
    err = capsys.readouterr().err
    assert f"MMCL_CACHE={target}" in err and _one_line(err)


def test_a_checkpoint_of_another_run_is_refused_in_one_line(tmp_path, capsys):
    a = write_cfg(tmp_path / "a.yaml", tiny_cfg("finetune"))
    b = write_cfg(tmp_path / "b.yaml", tiny_cfg("finetune", model={"hidden_dim": 16}))
    assert cli.main(["run", str(a), "--out", str(tmp_path / "a")]) == 0
    assert cli.main(["run", str(b), "--out", str(tmp_path / "b")]) == 0
    shutil.copy(tmp_path / "b" / "checkpoints" / "last.pt", tmp_path / "a" / "checkpoints" / "last.pt")
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "checkpoint does not match the model" in err and _one_line(err)


def test_a_damaged_config_yaml_is_named(tmp_path, cfg_file, capsys):
    assert cli.main(["run", cfg_file, "--out", str(tmp_path / "r")]) == 0
    (tmp_path / "r" / "config.yaml").write_text("seed: [unclosed\n")
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "config.yaml is not valid YAML" in err and _one_line(err)


def test_report_and_compare_on_a_metrics_file_with_missing_fields(tmp_path, cfg_file, capsys):
    assert cli.main(["run", cfg_file, "--out", str(tmp_path / "r")]) == 0
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    del m["summary"]
    (tmp_path / "r" / "metrics.json").write_text(json.dumps(m))
    capsys.readouterr()
    for args in (["report", str(tmp_path / "r")], ["compare", str(tmp_path / "r")]):
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert "lacks the field(s) summary" in err and _one_line(err)


def test_compare_warns_when_benchmarks_differ(tmp_path, capsys):
    a = write_cfg(tmp_path / "a.yaml", tiny_cfg("finetune"))
    assert cli.main(["run", str(a), "--out", str(tmp_path / "a")]) == 0
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.json").write_text(json.dumps({**m, "benchmark": "animals"}))
    capsys.readouterr()
    assert cli.main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    captured = capsys.readouterr()
    assert "different benchmarks" in captured.err and "animals" in captured.err and "synthetic" in captured.err
    assert "(synthetic/finetune)" in captured.out and "(animals/finetune)" in captured.out  # each row says which


def test_a_user_stream_without_its_benchmark_name_says_which_name(tmp_path):
    with pytest.raises(ConfigError, match="belongs to benchmark 'user'; set benchmark.name: user"):
        load_config(None, ["benchmark.experiences=[]"])


def test_mmcl_data_mm5_rehashes_what_it_validates_and_json_is_pure(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from mmcl.data import mm5

    args = ["data", "mm5", "benchmark.modalities=[image]", "benchmark.train_per_class=3", "benchmark.test_per_class=1"]
    assert cli.main(args + ["--json"]) == 0
    manifests = json.loads(capsys.readouterr().out)  # stdout is one JSON document
    assert [m["modality"] for m in manifests] == ["image"]
    p = mm5.MM5Params(modalities=["image"], train_per_class=3, test_per_class=1)
    root, man = mm5.ensure_data("image", p)
    victim = root / man["files"][0]["path"]
    try:
        other = np.asarray(Image.open(root / man["files"][1]["path"]))
        Image.fromarray(other).save(victim)  # another valid PNG in its place
        assert cli.main(args) == 2
        err = capsys.readouterr().err
        assert "files changed since they were generated" in err and str(root) in err and _one_line(err)
    finally:
        shutil.rmtree(root)  # regenerated by the next user
