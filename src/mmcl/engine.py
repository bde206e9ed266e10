"""The continual-learning loop: for each experience -> method hooks -> evaluate -> checkpoint.

The engine knows hooks, not methods (see `mmcl.methods.base`), and settings, not their names
(see `mmcl.settings`): the run's setting builds the stream, runs its stages before the stream
(e.g. the scenario base model), builds the model, and evaluates. The engine owns the data order
(a permutation seeded by (seed, experience, epoch), so a resumed run sees exactly the batches an
uninterrupted one would), the optimiser, checkpoints and timing.
"""
from __future__ import annotations

import json
import math
from importlib import metadata
import platform
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmcl import distributed as dist
from mmcl import seeds
from mmcl.config import diff_keys
from mmcl.device import encoding_on, grad_scaler, to_device
from mmcl.errors import ConfigError, DataError
from mmcl.methods import METHODS, Method
from mmcl.metrics import SUMMARY_KEYS, summary
from mmcl.results import MARKER, EventLog, RunDir, atomic_write_text, check_out_dir
from mmcl.settings import Setting, make_setting
from mmcl.stream import Stream


class Interrupted(Exception):
    """Raised after state was saved because SIGINT/SIGTERM arrived; carries the exit code."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.exit_code = 128 + signum


@dataclass
class Position:
    """Where training stands: the next (experience, epoch, step) to run."""

    exp: int = 0
    epoch: int = 0
    step: int = 0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The global generators' states (torch, numpy, python), and CUDA's (one per visible GPU) where CUDA is
    available: dropout on a GPU draws from CUDA's generators."""
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()`'s generators. CUDA's only where CUDA is available (a GPU run resumed on a CPU has no
    CUDA generator; a CPU run resumed on a GPU keeps the seeded one), and for the GPUs that exist here."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(cuda)[:torch.cuda.device_count()])


def versions() -> dict:
    return {"mmcl": metadata.version("mmcl"), "torch": str(torch.__version__), "numpy": str(np.__version__),
            "python": platform.python_version()}


def build_method(stream: Stream, cfg: dict, setting: Setting | None = None) -> Method:
    cls = METHODS[cfg["method"]["name"]]
    hp = cls.Hparams(**{k: v for k, v in cfg["method"].items() if k != "name"})
    return cls(stream, cfg, hp, setting if setting is not None else make_setting(cfg))


def make_optimizer(params, tcfg: dict) -> torch.optim.Optimizer | None:
    """The configured optimiser over `params` (tensors or param groups); None when there is nothing to train.

    With `train.fused`, torch's fused kernel where it applies: the same update rule in one pass per parameter
    instead of one per elementwise operation, a third of the optimiser step's time on CPU, where the step is a
    large share of a small model's training loop. Off by default: its results differ from the default kernel's
    in the last float bits (and so, after training, in published figures)."""
    params = [{**g, "params": list(g["params"])} if isinstance(g, dict) else g for g in params]
    if not params:
        return None
    tensors = [t for g in params for t in (g["params"] if isinstance(g, dict) else [g])]
    if tcfg.get("fused") and all(t.device.type in ("cpu", "cuda") and t.dtype in _FUSED_DTYPES for t in tensors):
        try:
            return _optimizer(params, tcfg, fused=True)
        except RuntimeError:  # a torch without fused kernels for this device
            pass
    # the multi-tensor ("foreach") kernel: bitwise the same result as torch's CPU default (one tensor at a
    # time), in fewer passes (tested); not over FSDP's sharded parameters beside plain ones (`vlm.fsdp`), which
    # one multi-tensor call cannot mix
    from torch.distributed.tensor import DTensor

    return _optimizer(params, tcfg, foreach=not any(isinstance(t, DTensor) for t in tensors))


_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _optimizer(params, tcfg: dict, **kw) -> torch.optim.Optimizer:
    if tcfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=tcfg["lr"], momentum=tcfg["momentum"], weight_decay=tcfg["weight_decay"],
                               **kw)
    return torch.optim.Adam(params, lr=tcfg["lr"], weight_decay=tcfg["weight_decay"], **kw)


def evaluate(method: Method, stream: Stream, after: int, progress: bool = False) -> dict[str, list]:
    """One row per matrix after training experience `after` (-1: the untrained model), scored by a fresh
    evaluator of the method's setting (`Setting.evaluator`)."""
    return method.setting.evaluator()(method, stream, after, progress).rows


def summarize(A: list, b: list | None) -> dict:
    """`metrics.summary`, or all None when a trained cell has no score (a step without questions of that kind)."""
    if any(A[i][j] is None for i in range(len(A)) for j in range(i + 1)):
        return {k: None for k in SUMMARY_KEYS}
    return summary(A, b)


class Engine:
    """Runs one config into one run directory, resumably."""

    def __init__(self, cfg: dict, out: str, resume: bool = False):
        self.cfg = cfg
        self.resume = resume
        self.stop_signal: int | None = None
        dist.init()
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        self._made_dir = not Path(out).exists()  # a refused run removes the (empty) directory it made
        self.run_dir = RunDir(out, writer=dist.is_main())
        self.progress = bool(cfg["logging"]["progress"]) and dist.is_main()

    # -- set-up -------------------------------------------------------------------------
    def _setup(self):
        cfg = self.cfg
        self.setting = setting = make_setting(cfg)
        if dist.active() and not setting.distributed:
            raise ConfigError(f"the {setting.name} setting runs in one process for now (no torchrun)")
        device = setting.device  # resolved (and refused when absent) before anything is computed
        if device.type == "cuda":
            torch.cuda.set_device(device)
        seed_everything(cfg["seed"])
        if dist.is_main():  # rank 0 fills the feature cache first, the others then read it
            try:
                with encoding_on(device):  # frozen encoders run on the run's device
                    self.stream = setting.build_stream()
            except DataError as e:  # unusable input files: their report is all the run directory gets
                if self.run_dir.writer:
                    report = self.run_dir.path / "data_errors.txt"
                    atomic_write_text(report, e.report())
                    e.args = (f"{e}\nfull list: {report}",)
                raise
        dist.barrier()
        if not dist.is_main():
            with encoding_on(device):
                self.stream = setting.build_stream()
        if dist.is_main():  # work before the stream, cached (base model): rank 0 fills the cache, the others read it
            self.stages = setting.prepare(self.stream, self.progress)
        dist.barrier()
        if not dist.is_main():
            self.stages = setting.prepare(self.stream, False)
        seed_everything(cfg["seed"])  # model init does not depend on what data loading drew
        self.method = build_method(self.stream, cfg, setting)
        self.method.distribute()
        self.evaluator = setting.evaluator()
        self.notes: dict = {}  # the last evaluation's notes (EvalResult.notes)
        self.rows = {name: [] for name in setting.matrices}
        self.baseline: dict[str, list] | None = None
        self.pos = Position()
        self.opt_state = None
        self.opt = None
        self.scaler = grad_scaler(device, setting.precision)  # fp16 only: scaled losses, unscaled before the hooks
        self.amp = setting.autocast() if setting.precision != "fp32" else None  # entered around every training loss
        self.on_device = device.type != "cpu"  # batches are taken from CPU data
        self.timing = {"total_s": 0.0, "train_s": 0.0, "eval_s": 0.0, "train_samples": 0}
        events_bytes = None
        state = self.run_dir.load_checkpoint() if self.resume else None
        if self.resume and state is None:
            raise ConfigError(f"{self.run_dir.checkpoint_path} does not exist: nothing to resume")
        if state is not None:
            self.method.load_state_dict(state["method"])
            self.rows, self.baseline = state["rows"], state["baseline"]
            self.pos = Position(**state["position"])
            self.opt_state = state["optimizer"]
            if state.get("scaler"):
                self.scaler.load_state_dict(state["scaler"])
            self.timing = state["timing"]
            events_bytes = state["events_bytes"]
            set_rng_state(state["rng"])
        else:
            self.run_dir.clear()
            self.run_dir.write_config(cfg, versions())
            if self.stream.data_errors and self.run_dir.writer:  # data.on_error=skip: the files left out
                lines = "".join(f"{ln}\n" for ln in self.stream.data_errors)
                atomic_write_text(self.run_dir.path / "data_errors.txt", lines)
                n = len(self.stream.data_errors)
                print(f"mmcl: {n} input file{'s' if n != 1 else ''} left out (data.on_error=skip), first: "
                      f"{self.stream.data_errors[0]}; all: {self.run_dir.path / 'data_errors.txt'}", file=sys.stderr)
        self.events = EventLog(self.run_dir, cfg["logging"]["tensorboard"], truncate_to=events_bytes,
                               wandb_cfg=cfg if cfg["logging"]["wandb"] else None)
        if state is not None:
            self.events.log("resume", position=vars(self.pos), events_repaired=self.events.repaired)
        else:
            self.events.log("run_start", experiences=len(self.stream))
            for name, info in self.stages.items():
                self.events.log("stage", name=name, **info)

    def _checkpoint(self, opt) -> None:
        # every tensor on the CPU: the run resumes on any device (`map_location` needs no CUDA)
        self.run_dir.save_checkpoint(to_device({
            "version": 1,
            "position": vars(self.pos).copy(),
            "method": self.method.state_dict(),
            "optimizer": self.setting.optimizer_state(self.method.model, opt) if opt is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rows": self.rows,
            "baseline": self.baseline,
            "timing": dict(self.timing),
            "rng": rng_state(),
            "events_bytes": self.events.tell(),
        }, "cpu"))

    def _on_signal(self, signum, frame):
        self.stop_signal = signum

    # -- the loop -----------------------------------------------------------------------
    def run(self) -> dict:
        t_start = time.perf_counter()
        self.run_dir.claim()  # one run per directory at a time
        try:
            self._setup()  # Ctrl-C during set-up simply aborts: there is nothing to save yet
        except BaseException:
            self.run_dir.release()
            path = self.run_dir.path
            if self._made_dir and self.run_dir.writer and {f.name for f in path.iterdir()} <= {MARKER}:
                shutil.rmtree(path)  # a refused run leaves nothing behind
            raise
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.baseline is None:
                self.baseline = self._evaluate(-1)
            for i in range(self.pos.exp, len(self.stream)):
                self._experience(i, t_start)
                t_start = time.perf_counter()
            return self._finish(t_start)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.events.close()  # an interrupted run too: W&B's offline files are complete
            self.run_dir.release()

    def _experience(self, i: int, t_start: float) -> None:
        cfg, method, exp = self.cfg, self.method, self.stream[i]
        tcfg = cfg["train"]
        mid = self.pos.exp == i and (self.pos.epoch, self.pos.step) != (0, 0)
        method.begin_experience(exp, resumed=mid)  # mid-experience: before_experience already ran
        data = method.training_data(exp)
        fresh = tcfg["reset_optimizer"] and not mid
        if fresh or self.opt is None:
            self.opt = make_optimizer(method.param_groups(), tcfg)
            if not fresh and self.opt is not None and self.opt_state is not None:
                self.setting.load_optimizer_state(method.model, self.opt, self.opt_state)
        self.opt_state = None
        bs = tcfg["batch_size"]
        steps = math.ceil(len(data) / bs) if self.opt is not None else 0
        self.events.log("experience_start", exp=i, name=exp.name, train_samples=len(data))
        bar = tqdm(total=steps * tcfg["epochs"], initial=self.pos.epoch * steps + self.pos.step,
                   desc=f"exp {i + 1}/{len(self.stream)} {exp.name}", disable=None if self.progress else True)
        t0 = time.perf_counter()
        for epoch in range(self.pos.epoch, tcfg["epochs"] if steps else 0):
            g = seeds.generator(cfg["seed"], "batch_order", i, epoch)
            order = torch.randperm(len(data), generator=g)
            for s in range(self.pos.step if epoch == self.pos.epoch else 0, steps):
                n = min(bs, len(data) - s * bs)
                loss = self._step(dist.shard(data.take(order[s * bs:(s + 1) * bs])), n)
                self.timing["train_samples"] += n
                bar.update(1)
                gstep = epoch * steps + s
                if gstep % cfg["logging"]["log_every"] == 0:
                    self.events.log("train", step=gstep, exp=i, epoch=epoch, loss=round(loss.item(), 6))
                if dist.any_flag(self.stop_signal is not None):
                    self.pos = Position(i, epoch, s + 1)
                    self._stop(t0, t_start)
        bar.close()
        train_s = time.perf_counter() - t0
        self.timing["train_s"] += train_s
        method.after_experience(exp)  # consolidation in full precision (statistics, Fisher terms, re-training)
        digests = dist.check_replicated(method.extra_state())  # under torchrun only
        self.events.log("experience_end", exp=i, train_s=round(train_s, 4),
                        samples_per_s=round(len(data) * tcfg["epochs"] / train_s, 1) if train_s > 0 and steps else None,
                        **({"state_digests": digests} if digests else {}))
        row = self._evaluate(i)
        for name in self.rows:
            self.rows[name].append(row[name])
        self.pos = Position(i + 1, 0, 0)
        self.timing["total_s"] += time.perf_counter() - t_start
        self._checkpoint(self.opt)
        dist.barrier()
        if dist.any_flag(self.stop_signal is not None):
            raise Interrupted(self.stop_signal or signal.SIGTERM)

    def _step(self, batch: dict, n: int) -> torch.Tensor:
        """One optimiser step on `batch` (this rank's shard of a global batch of `n` samples); returns the loss.
        Written for small steps: nothing is done for a feature that is off (CPU, fp32, one process)."""
        method = self.method
        if self.on_device:
            batch = method.to_device(batch)
        if self.amp is None:
            loss = method.training_loss(batch)
        else:
            with self.amp:
                loss = method.training_loss(batch)
        scaled = loss
        if dist.active():
            # a shard's mean weighted by its share of the batch: averaged over the ranks, the gradient is the global
            # batch's mean even when the shards differ in size (terms every rank computes alike, such as penalties,
            # keep their weight: the shares average to 1)
            scaled = loss * (self.setting.batch_size(batch) * dist.world() / n)
        self.opt.zero_grad(set_to_none=True)
        scaler = self.scaler if self.scaler.is_enabled() else None
        (scaled if scaler is None else scaler.scale(scaled)).backward()
        if dist.active() and not self.setting.ddp:
            dist.average_gradients(method.trainable_parameters())
        if scaler is not None:
            scaler.unscale_(self.opt)  # the hooks see true gradients
        method.after_backward()
        if scaler is None:
            self.opt.step()
        else:
            scaler.step(self.opt)
            scaler.update()
        return loss

    def _stop(self, t0: float, t_start: float):
        self.timing["train_s"] += time.perf_counter() - t0
        self.timing["total_s"] += time.perf_counter() - t_start
        self._checkpoint(self.opt)
        self.events.log("interrupted", position=vars(self.pos), signal=self.stop_signal)
        dist.barrier()
        raise Interrupted(self.stop_signal or signal.SIGTERM)

    def _evaluate(self, after: int) -> dict[str, list]:
        """Evaluate on rank 0 only (the other ranks wait), or on every rank when the evaluator shards the
        test data (`Evaluator.sharded`: every rank then gets the gathered result); rank 0 records it."""
        row = None
        if dist.is_main() or self.evaluator.sharded:
            t0 = time.perf_counter()
            with self.setting.autocast():
                result = self.evaluator(self.method, self.stream, after, self.progress)
        if dist.is_main():
            row = result.rows
            dt = time.perf_counter() - t0
            self.timing["eval_s"] += dt
            if result.predictions is not None and after == len(self.stream) - 1 and self.cfg["eval"].get("predictions"):
                atomic_write_text(self.run_dir.path / "predictions.jsonl",
                                  "".join(json.dumps(r) + "\n" for r in result.predictions))
            self.events.log("eval", after=after, eval_s=round(dt, 4), **row, **result.notes)
            self.notes = result.notes  # of the last evaluation, into metrics.json
        return dist.broadcast_object(row)

    def _finish(self, t_start: float) -> dict:
        self.timing["total_s"] += time.perf_counter() - t_start
        cfg, stream = self.cfg, self.stream
        timing = {k: round(v, 4) for k, v in self.timing.items() if k != "train_samples"}
        timing["samples_per_s"] = round(self.timing["train_samples"] / self.timing["train_s"], 1) \
            if self.timing["train_samples"] and self.timing["train_s"] > 0 else None
        # a matrix with no score at all (no test sample of its kind, e.g. no grounding question) is left out
        rows = {n: A for n, A in self.rows.items() if any(v is not None for r in A for v in r)}
        unscored = [n for n in self.rows if n not in rows]
        metrics = {
            "setting": self.setting.name,
            "benchmark": cfg["benchmark"]["name"],
            "method": cfg["method"]["name"],
            "seed": cfg["seed"],
            "world_size": dist.world(),
            "device": str(self.setting.device),
            "precision": self.setting.precision,
            "experiences": [e.describe(stream.class_names) for e in stream],
            "matrices": rows,
            "baseline": {name: self.baseline[name] for name in rows},
            "summary": {name: summarize(A, self.baseline[name]) for name, A in rows.items()},
            "unscored": unscored,
            "eval_notes": self.notes,
            "timing": timing,
            "stream_info": stream.info,
            "stages": self.stages,
            **self.setting.extra_metrics(rows, stream),
        }
        self.run_dir.write_metrics(metrics, [e.name for e in stream])
        self.events.log("run_end", **timing)
        if dist.is_main() and cfg["report"]:
            from mmcl.report import render

            render(self.run_dir.path)
        self.events.close(metrics)  # after the report: W&B takes its images
        dist.barrier()
        return metrics


def run(cfg: dict, out: str, resume: bool = False) -> dict:
    """Run (or resume) `cfg` into directory `out`; returns metrics.json's content."""
    if resume:
        stored = RunDir(out, writer=False).read_config()
        try:  # keys added to mmcl since the run started take their defaults
            from mmcl.config import validate

            stored = validate(stored)
        except ConfigError:
            pass
        bad = diff_keys(stored, cfg)
        if bad:
            raise ConfigError(f"config differs from the run being resumed in {out} at key '{bad[0]}'")
    else:
        check_out_dir(Path(out))
    return Engine(cfg, out, resume).run()


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `mmcl run` or `python -m mmcl run`")
