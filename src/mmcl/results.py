"""The run directory of the results contract (DESIGN.md section 4), written atomically.

Every file is written to a temporary sibling and renamed into place, so a crash or a kill
never leaves a half-written metrics.json or checkpoint behind.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch
import yaml

CHECKPOINT = "checkpoints/last.pt"
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write(f)` into a temporary sibling of `path`, synced and renamed into place: a large file (a checkpoint)
    goes straight to disk, not through a copy in memory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are ordinary files
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def matrix_csv(matrix: list[list[float | None]], names: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["after\\on"] + names)
    for i, row in enumerate(matrix):
        w.writerow([names[i]] + ["" if v is None else f"{v:.6f}" for v in row])
    return buf.getvalue()


MARKER = ".mmcl-run"  # in every run directory (what --force may replace); locked (flock) by the process running
#                        there, and holding its pid


def is_run_dir(path: Path) -> bool:
    """True if `path` holds an mmcl run (its marker, or the config / checkpoint of a run made before the marker)."""
    path = Path(path)
    return (path / MARKER).exists() or (path / "config.yaml").is_file() or (path / CHECKPOINT).is_file()


def check_out_dir(path: Path) -> None:
    """Refuse an output path that is a file, lies under a file, or is a non-empty folder that is not a run."""
    from mmcl.errors import ConfigError

    path = Path(path)
    for p in [path, *path.parents]:
        if p.exists() and not p.is_dir():
            raise ConfigError(f"--out {path}: {p} is a file, not a folder")
    if path.is_dir() and any(path.iterdir()) and not is_run_dir(path):
        raise ConfigError(f"--out {path}: the folder is not empty and holds no mmcl run; choose another --out "
                          f"(nothing in it was changed)")


class RunDir:
    """One run's directory: config, metrics, matrices, events, report, checkpoints."""

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer  # only rank 0 writes under torchrun
        self._lock = None
        if writer:
            self.path.mkdir(parents=True, exist_ok=True)

    def claim(self) -> None:
        """Mark the directory as a run and hold its lock until the process ends (or `release`); a second
        process gets ConfigError naming the holder's pid."""
        if not self.writer:
            return
        import fcntl

        from mmcl.errors import ConfigError

        f = open(self.path / MARKER, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or "?"
            f.close()
            raise ConfigError(f"{self.path} is in use by another mmcl run (pid {holder}); wait for it to end, "
                              f"or choose another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._lock = f

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None

    def clear(self) -> None:
        """Remove the files of an earlier run in this directory (starting over with --force)."""
        if not self.writer:
            return
        import shutil

        for pattern in ("metrics.json", "matrix_*.csv", "matrix_*.png", "curves.png", "report.html",
                        "events.jsonl", "data_errors.txt", "predictions.jsonl", CHECKPOINT):
            for f in self.path.glob(pattern):
                f.unlink()
        shutil.rmtree(self.path / "tensorboard", ignore_errors=True)
        shutil.rmtree(self.path / "wandb", ignore_errors=True)

    # -- config and metrics -------------------------------------------------------------
    def write_config(self, cfg: dict, versions: dict) -> None:
        if self.writer:
            atomic_write_text(self.path / "config.yaml", yaml.safe_dump({**cfg, "versions": versions}, sort_keys=False))

    def read_config(self) -> dict:
        p = self.path / "config.yaml"
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist: not a run directory")
        try:
            cfg = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{p} is not valid YAML ({getattr(e, 'problem', e)}): the run's config is damaged") from None
        if not isinstance(cfg, dict):
            raise ValueError(f"{p} does not hold a config mapping: the run's config is damaged")
        cfg.pop("versions", None)
        return cfg

    def write_metrics(self, metrics: dict, experience_names: list[str]) -> None:
        if not self.writer:
            return
        atomic_write_text(self.path / "metrics.json", json.dumps(metrics, indent=2))
        for name, m in metrics["matrices"].items():
            atomic_write_text(self.path / f"matrix_{name}.csv", matrix_csv(m, experience_names))

    def read_metrics(self) -> dict:
        p = self.path / "metrics.json"
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist: the run has not finished (try --resume)")
        try:
            m = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not valid JSON ({e})") from None
        missing = [k for k in ("setting", "benchmark", "method", "seed", "experiences", "matrices", "summary", "timing")
                   if k not in m]
        if missing:
            raise ValueError(f"{p} lacks the field(s) {', '.join(missing)}: not an mmcl metrics file, or damaged")
        return m

    # -- checkpoints --------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def save_checkpoint(self, state: dict) -> None:
        if not self.writer:
            return
        atomic_write_with(self.checkpoint_path, lambda f: torch.save(state, f))

    def load_checkpoint(self) -> dict | None:
        p = self.checkpoint_path
        if not p.is_file():
            return None
        try:
            return torch.load(p, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a corrupt file
            raise ValueError(f"{p} is not a readable mmcl checkpoint ({type(e).__name__}: {e})") from None


def _parses(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _wandb_logged_in() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what `wandb login` writes)."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbLog:
    """Weights & Biases: the scalars TensorBoard gets while the run goes, then the summary, the matrices (as
    tables) and the report's images. Offline (files in DIR/wandb, `wandb sync` uploads them later) when
    `logging.wandb_mode=offline`, or `auto` without a W&B login."""

    def __init__(self, run: RunDir, cfg: dict):
        from mmcl.errors import ConfigError

        try:
            import wandb
        except ImportError:
            raise ConfigError("logging.wandb=true needs the wandb package: pip install 'mmcl[wandb]'") from None
        lg = cfg["logging"]
        mode = lg["wandb_mode"]
        if mode == "auto":
            mode = os.environ.get("WANDB_MODE") or ("online" if _wandb_logged_in() else "offline")
        id_file = run.path / "wandb" / "mmcl-run-id"  # a resumed run continues the same W&B run
        if id_file.is_file():
            run_id = id_file.read_text().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            atomic_write_text(id_file, run_id)
        self.wandb = wandb
        self.run = wandb.init(project=lg["wandb_project"], entity=lg["wandb_entity"],
                              name=lg["wandb_name"] or run.path.resolve().name, config=cfg, dir=str(run.path),
                              mode=mode, id=run_id, resume="allow",
                              settings=wandb.Settings(silent=True, console="off", disable_git=True, save_code=False))

    def log(self, event: str, fields: dict) -> None:
        self.run.log({f"{event}/{k}": v for k, v in fields.items()})

    def finish(self, run_dir: Path, metrics: dict | None) -> None:
        if metrics is not None:
            self.run.summary.update({f"{p}/{k}": v for p, s in metrics["summary"].items() for k, v in s.items()})
            names = [e["name"] for e in metrics["experiences"]]
            tables = {f"matrix/{n}": self.wandb.Table(columns=["after \\ on", *names],
                                                      data=[[names[i], *row] for i, row in enumerate(A)])
                      for n, A in metrics["matrices"].items()}
            images = {f"report/{p.stem}": self.wandb.Image(str(p)) for p in sorted(run_dir.glob("*.png"))}
            self.run.log({**tables, **images})
        self.run.finish()
        self.wandb.teardown()  # waits for W&B's writer: the run's files are complete when the run returns


class EventLog:
    """events.jsonl (always), TensorBoard scalars and Weights & Biases (optional); one JSON object per event."""

    def __init__(self, run: RunDir, tensorboard: bool = False, truncate_to: int | None = None,
                 wandb_cfg: dict | None = None):
        self.path = run.path / "events.jsonl"
        self.enabled = run.writer
        self.repaired = False  # resume found events.jsonl damaged and kept its complete lines
        self._f = None
        self._tb = None
        self._wandb = None
        self.run_path = run.path
        if not self.enabled:
            return
        if truncate_to is not None and self.path.exists():
            # drop events logged after the checkpoint we resume from (they will be logged again); a file
            # that lost bytes since (truncated, or cut by a full disk) keeps its complete lines only
            data = self.path.read_bytes()[:truncate_to]
            cut = data.rfind(b"\n") + 1 if not data.endswith(b"\n") else len(data)
            lines = [ln for ln in data[:cut].split(b"\n") if ln.strip()]
            good = [ln for ln in lines if _parses(ln)]
            self.repaired = len(data) != truncate_to or cut != len(data) or len(good) != len(lines)
            atomic_write_bytes(self.path, b"".join(ln + b"\n" for ln in good))
        self._f = open(self.path, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run.path / "tensorboard"))
        if wandb_cfg is not None:
            self._wandb = WandbLog(run, wandb_cfg)

    def log(self, event: str, step: int | None = None, **fields: Any) -> None:
        if not self.enabled:
            return
        if self._f is None:  # closed: the run has ended
            return
        # wall clock, and this process's CPU seconds (what a phase cost, also on a machine shared with other work)
        rec = {"event": event, "time": round(time.time(), 3), "cpu": round(time.process_time(), 3), **fields}
        self._f.write(json.dumps(rec) + "\n")
        scalars = {k: v for k, v in fields.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if step is not None and scalars:
            if self._tb is not None:
                for k, v in scalars.items():
                    self._tb.add_scalar(f"{event}/{k}", v, step)
            if self._wandb is not None:  # W&B counts its own steps (ours restart at every experience)
                self._wandb.log(event, {**scalars, "step": step})

    def tell(self) -> int:
        if not self.enabled:
            return 0
        self._f.flush()
        return self.path.stat().st_size

    def close(self, metrics: dict | None = None) -> None:
        """`metrics`: the finished run's, for W&B (summary, matrices, the report's images)."""
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish(self.run_path, metrics)
            self._wandb = None
