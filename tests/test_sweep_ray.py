"""`mmcl sweep --backend ray`: the same results as the local backend, failures reported and rerun, runs shipped
back from nodes that do not see the sweep's directory. The tests on a Ray instance are skipped where Ray is
not installed (`mmcl[ray]`; `make test` installs it)."""
import json
import os
import signal
import threading
import time

import pytest
import yaml

from mmcl.results import MARKER
from mmcl.sweep import SHARED_MARKER, Sweep, SweepFailed, read_spec, run_task, unpack_run

TINY = {"benchmark": {"name": "synthetic", "num_experiences": 2, "train_per_class": 30, "test_per_class": 10},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.01}, "model": {"hidden_dim": 16}}


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with 2 CPUs for the module (the backend joins it instead of starting its own)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning", log_to_driver=False)
    yield
    ray.shutdown()


def _spec(tmp_path, methods=("finetune", "lwf"), seeds=(0, 1), tune=True, cfg=TINY, overrides=("threads=1",)):
    runs = []
    for m in methods:
        (tmp_path / f"tiny-{m}.yaml").write_text(yaml.safe_dump({**cfg, "method": {"name": m}}))
        runs.append({"name": m, "config": str(tmp_path / f"tiny-{m}.yaml")})
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump({"seeds": list(seeds), "runs": runs, "tune": tune, "overrides": list(overrides)}))
    return read_spec(str(p))


def _without_timing(res: dict) -> dict:
    res = json.loads(json.dumps(res, default=str))
    for r in res["runs"].values():
        r.pop("seconds")
    return res


def test_ray_sweep_gives_the_local_backends_results(tmp_path, local_ray):
    spec = _spec(tmp_path)  # finetune and lwf x 2 seeds; lwf's alpha tuned on validation data (3 runs)
    local = Sweep(spec, tmp_path / "local", quiet=True, in_process=True).run()
    on_ray = Sweep(spec, tmp_path / "ray", quiet=True, backend="ray").run()
    assert _without_timing(on_ray) == _without_timing(local)
    assert json.loads((tmp_path / "ray" / "tuning.json").read_text()) == \
        json.loads((tmp_path / "local" / "tuning.json").read_text())
    assert len(list((tmp_path / "ray" / "tune" / "lwf").glob("*/metrics.json"))) == 3
    assert _without_timing(json.loads((tmp_path / "ray" / "results.json").read_text())) == _without_timing(local)


def test_a_killed_task_is_reported_and_rerun_next_time(tmp_path, local_ray):
    slow = {**TINY, "benchmark": {**TINY["benchmark"], "num_experiences": 4, "train_per_class": 200},
            "train": {**TINY["train"], "epochs": 15}}
    spec = _spec(tmp_path, methods=("finetune",), tune=False, cfg=slow)
    out = tmp_path / "sweep"
    victim = out / "runs" / "finetune" / "seed1"

    def kill_after_first_experience():  # a deadline, not a count of polls: a loaded machine reaches it late
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if (victim / "checkpoints" / "last.pt").exists():
                os.kill(int((victim / MARKER).read_text()), signal.SIGKILL)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_after_first_experience)
    killer.start()
    with pytest.raises(SweepFailed) as e:
        Sweep(spec, out, quiet=True, backend="ray").run()
    killer.join()
    msg = str(e.value)
    assert "runs/finetune/seed1: killed by SIGKILL" in msg and "1 run failed" in msg and "seed1.log" in msg
    assert "seed0" not in msg and (out / "runs" / "finetune" / "seed0" / "metrics.json").exists()  # not stopped
    assert not (victim / "metrics.json").exists() and not (out / "results.json").exists()
    kept = (out / "runs" / "finetune" / "seed0" / "metrics.json").stat().st_mtime_ns
    res = Sweep(spec, out, quiet=True, backend="ray").run()  # the next invocation makes only the killed run
    assert (victim / "metrics.json").exists() and res["runs"]["finetune"]["n"] == 2
    assert (out / "runs" / "finetune" / "seed0" / "metrics.json").stat().st_mtime_ns == kept


def test_a_node_without_the_sweeps_storage_ships_the_run_back(tmp_path):
    """Without Ray: the task's function on a 'node' whose --out holds another token (not shared storage)."""
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "method": {"name": "finetune"}}))
    out = tmp_path / "out"
    out.mkdir()
    (out / SHARED_MARKER).write_text("the driver's token")
    run_dir = out / "runs" / "ft" / "seed0"
    res = run_task(str(tmp_path / "elsewhere" / "tiny.yaml"), (tmp_path / "tiny.yaml").read_text(), ["seed=0"],
                   str(run_dir), str(out), "another token", {})
    assert res["code"] == 0 and not run_dir.exists()  # nothing written into the driver's directory
    unpack_run(res["archive"], run_dir)
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["seed"] == 0 and (run_dir / "checkpoints" / "last.pt").exists()
    assert Sweep(read_spec_for(tmp_path), out, quiet=True)._done(run_dir, str(tmp_path / "tiny.yaml"), ["seed=0"])
    bad = run_task(str(tmp_path / "tiny.yaml"), None, ["train.lrr=1"], str(run_dir), str(out), "another token", {})
    assert bad["code"] == 2 and "train.lrr" in bad["log_tail"] and bad["archive"] is None and bad["log"]


def read_spec_for(tmp_path):
    p = tmp_path / "one.yaml"
    p.write_text(yaml.safe_dump({"runs": [{"name": "ft", "config": str(tmp_path / "tiny.yaml")}]}))
    return read_spec(str(p))


def test_backend_arguments_are_checked(tmp_path):
    from mmcl.config import ConfigError

    spec = _spec(tmp_path, methods=("finetune",), seeds=(0,), tune=False)
    with pytest.raises(ConfigError, match="--address .* needs --backend ray"):
        Sweep(spec, tmp_path / "o", address="10.0.0.1:6379")
    with pytest.raises(ConfigError, match="unknown sweep backend 'slurm'"):
        Sweep(spec, tmp_path / "o", backend="slurm")
