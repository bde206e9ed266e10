"""Weights & Biases logging (`logging.wandb=true`): offline without a login, files written into the run."""
import pytest

pytest.importorskip("wandb")

import mmcl  # noqa: E402
from tests.harness import tiny_cfg  # noqa: E402


def test_wandb_offline_writes_scalars_matrices_and_report_images(tmp_path, monkeypatch):
    for k in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))  # not logged in
    for k in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(k, str(tmp_path / k.lower()))
    cfg = tiny_cfg("er", report=True, logging={"wandb": True, "wandb_project": "mmcl-test", "log_every": 1,
                                               "progress": False}, train={"epochs": 1})
    r = mmcl.run(cfg, out=tmp_path / "run")
    runs = list((r.path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "auto mode without a login is offline"
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    run_id = (r.path / "wandb" / "mmcl-run-id").read_text().strip()
    assert runs[0].name.endswith(run_id)
    for key in (b"train/loss", b"mmcl-test", b"modality_aware/last_acc", b"matrix/modality_agnostic",
                b"report/curves"):
        assert key in log, key
    media = {p.name.split("_")[0] for p in runs[0].rglob("files/media/images/report/*.png")}
    assert media == {"curves", "matrix"}  # the report's PNGs: curves and both matrices
    assert len(list(runs[0].rglob("files/media/images/report/*.png"))) == 3
    assert r.summary["modality_aware"]["last_acc"] is not None


def test_wandb_without_the_package_is_refused_when_the_config_loads(monkeypatch):
    import importlib.util

    from mmcl.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"logging.wandb' needs the wandb package: pip install 'mmcl\[wandb\]'"):
        tiny_cfg("finetune", logging={"wandb": True})
