"""`mmcl sweep SPEC`: methods x seeds, hyper-parameters chosen on validation data, one table.

A sweep spec (YAML; bundled ones live in `mmcl/configs/sweeps/`) names the runs:

    seeds: [0, 1, 2]                  # a run may name its own: {name: ..., config: ..., seeds: [0]}
    overrides: [threads=1]            # applied to every run (optional)
    runs:
      - {name: finetune, config: mm5-finetune}
      - {name: comm, config: mm5-comm}
      - {name: comm -realign, config: mm5-comm, overrides: [method.realign=false], tune_as: comm}
      - {name: lwf, config: mm5-lwf, search: {alpha: [0.5, 1.0, 2.0, 4.0]}}  # candidates of this run
    tune: true                        # optional: false = no tuning runs, the configs' values
    tables:                           # optional: several tables, each a list of run names
      main: [finetune, comm]
      ablation: [comm, comm -realign]
    metrics: [last_acc, forgetting, plasticity]  # optional: the tables' columns (default: METRICS below)

Tuning (the same budget for every method): a method class may declare candidates per setting,
`search_space = {"<setting>": {"<hparam>": [v1, v2, v3]}}`. For each run whose method has some
for the run's setting, every candidate
is run once with `eval.split=validation` (a seeded per-class hold-out of the *training* data;
the test split is never read) at the first seed, and the value with the best score (mean of
`last_acc` over both protocols) is used for all seeds. A method with several hyper-parameters is
tuned one at a time, in the order it declares them (coordinate-wise): every candidate of the
second runs with the first's chosen value, and so on; the others keep their defaults until their
turn. Candidates that tie (a hyper-parameter that does not act on the stream) keep the configured value. `tune_as: NAME` reuses the choice of
another run (ablations keep the full method's value). A run's `search: {<hparam>: [v1, ...]}` replaces
its method's candidates for that run (tuned in the order given; `search: {}` tunes nothing), e.g. to
extend a grid whose best value sat at an edge. Choices and their validation scores are
written to `tuning.json`.

Everything lands in `--out`: one run directory per (run, seed) under `runs/`, the tuning runs
under `tune/`, and `results.md` / `results.json` / `results.html` (charts) with mean ± std over seeds of `last_acc`,
`avg_inc_acc`, `forgetting` and `bwt` for both protocols. A finished run whose saved config
equals the one the spec asks for is reused, so an interrupted sweep continues where it stopped.
A run that fails (or is killed) is reported with the tail of its log once the others have
finished; it does not stop them, and the next invocation runs it again. (A failed tuning run stops
the sweep before the final runs, which need every choice.)

`--finished-only` (`Sweep(finished_only=True)`) makes no run: it reports the runs finished so far
(those whose saved config equals the spec's), for a long sweep still under way or stopped. A row
averages the seeds it has and names them; a run with none is a row saying so, as is every run of a
method whose tuning has not finished (its final configs are not known yet). Nothing in `--out` is
written; the tables (printed, and with `--doc` put into the doc) say how many runs they hold.

Backends: `local` (the default) runs `--jobs` runs at a time on this machine, each in its own
`python -m mmcl run` process; `ray` (`pip install mmcl[ray]`) submits every run as a Ray task
of the same command, asking for the run's resources (`threads` CPUs, at least one; a GPU when
its config names a CUDA `device`, a key configs do not have yet), on a local Ray instance or an existing cluster (`--address`).
Tuning runs go first and the final runs follow with the chosen values, as locally.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmcl.config import ConfigError, find_config, load_config
from mmcl.metrics import SUMMARY_KEYS
from mmcl.results import RunDir, atomic_write_bytes, atomic_write_text

METRICS = ("last_acc", "avg_inc_acc", "forgetting", "bwt")
PROTOCOLS = ("modality_aware", "modality_agnostic")  # the modality setting's; a run's own come from its metrics
#: column labels of the protocols (modality setting) and score matrices (scenario setting)
LABELS = {"modality_aware": "aware", "modality_agnostic": "agnostic", "vqa": "VQA", "grounding_f1": "F1"}
_SPEC_KEYS = {"seeds", "overrides", "runs", "tables", "tune", "metrics"}
_RUN_KEYS = {"name", "config", "overrides", "tune_as", "seeds", "search"}
BACKENDS = ("local", "ray")


@dataclass
class RunSpec:
    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    tune_as: str | None = None
    seeds: list[int] | None = None  # this run's seeds (default: the spec's)
    search: dict[str, list] | None = None  # this run's tuning candidates (default: its method's search_space)


@dataclass
class Spec:
    seeds: list[int]
    overrides: list[str]
    runs: list[RunSpec]
    tables: dict[str, list[str]]
    tune: bool = True  # False: every method keeps its config's hyper-parameters (no tuning runs)
    metrics: tuple[str, ...] = METRICS  # the tables' columns (summary metrics)


def find_spec(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    bundled = Path(__file__).parent / "configs" / "sweeps" / f"{name_or_path}.yaml"
    if bundled.exists():
        return bundled
    have = sorted(q.stem for q in bundled.parent.glob("*.yaml"))
    raise ConfigError(f"sweep spec '{name_or_path}' is neither a YAML file nor a bundled sweep ({', '.join(have)})")


def read_spec(name_or_path: str) -> Spec:
    path = find_spec(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict) or "runs" not in raw:
        raise ConfigError(f"{path}: expected a mapping with a 'runs' list")
    bad = sorted(set(raw) - _SPEC_KEYS)
    if bad:
        raise ConfigError(f"{path}: unknown key '{bad[0]}' (expected {', '.join(sorted(_SPEC_KEYS))})")
    runs = []
    for i, r in enumerate(raw["runs"]):
        if not isinstance(r, dict) or "name" not in r or "config" not in r:
            raise ConfigError(f"{path}: runs[{i}] needs 'name' and 'config'")
        bad = sorted(set(r) - _RUN_KEYS)
        if bad:
            raise ConfigError(f"{path}: runs[{i}] has unknown key '{bad[0]}' (expected {', '.join(sorted(_RUN_KEYS))})")
        rs = r.get("seeds")
        if rs is not None and (not isinstance(rs, list) or not rs or not all(isinstance(x, int) for x in rs)):
            raise ConfigError(f"{path}: runs[{i}].seeds must be a non-empty list of integers")
        search = r.get("search")
        if search is not None:
            if not isinstance(search, dict) or not all(isinstance(k, str) and isinstance(v, list) and v
                                                       for k, v in search.items()):
                raise ConfigError(f"{path}: runs[{i}].search must map hyper-parameter names to non-empty lists of "
                                  f"candidates, got {search!r}")
            if r.get("tune_as") is not None:
                raise ConfigError(f"{path}: runs[{i}] has both 'search' and 'tune_as' (a tune_as run takes the "
                                  f"other run's choice)")
        runs.append(RunSpec(str(r["name"]), str(r["config"]), [str(o) for o in r.get("overrides", [])], r.get("tune_as"),
                            rs, search))
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names must be unique")
    tables = raw.get("tables") or {"main": names}
    for t, members in tables.items():
        unknown = [m for m in members if m not in names]
        if unknown:
            raise ConfigError(f"{path}: table '{t}' names unknown run '{unknown[0]}'")
    for r in runs:
        if r.tune_as is not None and r.tune_as not in names:
            raise ConfigError(f"{path}: run '{r.name}' has tune_as '{r.tune_as}', which is not a run")
    seeds = [int(s) for s in raw.get("seeds", [0])]
    if not isinstance(raw.get("tune", True), bool):
        raise ConfigError(f"{path}: 'tune' must be true or false, got {raw['tune']!r}")
    metrics = raw.get("metrics", list(METRICS))
    if not isinstance(metrics, list) or not metrics or any(m not in SUMMARY_KEYS for m in metrics):
        raise ConfigError(f"{path}: 'metrics' must be a non-empty list of summary metrics "
                          f"({', '.join(SUMMARY_KEYS)}), got {metrics!r}")
    spec = Spec(seeds, [str(o) for o in raw.get("overrides", [])], runs, tables, raw.get("tune", True), tuple(metrics))
    for r in runs:  # validate every config and override before anything runs
        find_config(r.config)
        load_config(r.config, spec.overrides + r.overrides)
        for key, values in (r.search or {}).items():
            for v in values:  # an unknown hyper-parameter or a value out of its range fails here, named
                try:
                    load_config(r.config, spec.overrides + r.overrides + [f"method.{key}={_fmt_value(v)}"])
                except ConfigError as e:
                    raise ConfigError(f"{path}: run '{r.name}' search candidate {key}={v!r}: {e}") from None
    return spec


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace(" ", "_"))


def search_space(config: str, overrides: list[str]) -> dict[str, list]:
    from mmcl.methods import METHODS

    cfg = load_config(config, overrides)
    from mmcl.settings import SETTINGS

    setting = SETTINGS[cfg["setting"]]
    return method_search_space(METHODS[cfg["method"]["name"]], setting.variant_of or setting.name)


def method_search_space(cls, setting: str) -> dict[str, list]:
    """The candidates the method declares for `setting` (`Method.search_space[setting]`; none: {})."""
    return dict(cls.search_space.get(setting) or {})


def _fmt_value(v) -> str:
    return repr(v) if isinstance(v, float) else str(v)


class SweepFailed(RuntimeError):
    """Some runs of a sweep failed; the others finished. The message names each with its log tail."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__(f"{len(failures)} run{'s' if len(failures) > 1 else ''} failed (the others finished; "
                         f"the next invocation runs {'them' if len(failures) > 1 else 'it'} again):\n"
                         + "\n".join(failures))


def run_command(config: str, overrides: list[str], run_dir: str | Path) -> list[str]:
    """The command that makes one run of a sweep (every backend runs exactly this)."""
    return [sys.executable, "-m", "mmcl", "run", config, *overrides, "logging.progress=false", "report=false",
            "--out", str(run_dir), "--force"]


def exit_status(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def log_tail(log: str | Path, lines: int = 15) -> str:
    try:
        tail = Path(log).read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return "    (no log)"
    return "\n".join(f"    | {line}" for line in tail) if tail else "    (empty log)"


def _execute(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Run `cmd` with its output in `log`; a KeyboardInterrupt (Ctrl-C, or a cancelled Ray task) stops the run
    with SIGTERM, so it saves its checkpoint, and is raised again."""
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                             env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"})
        try:
            return p.wait()
        except BaseException:
            p.terminate()
            p.wait()
            raise


class Sweep:
    def __init__(self, spec: Spec, out: str | Path, jobs: int = 1, quiet: bool = False, in_process: bool = False,
                 backend: str = "local", address: str | None = None, finished_only: bool = False):
        """`jobs` runs at a time, each in its own `python -m mmcl run` process (or, with
        `in_process`, one after another in this process: for tests and debugging); `backend="ray"`
        submits every run to Ray instead (`address`: an existing cluster; none: a local instance).
        `finished_only`: make no run; report the finished ones (module docstring)."""
        if backend not in BACKENDS:
            raise ConfigError(f"unknown sweep backend '{backend}' (expected {', '.join(BACKENDS)})")
        if address is not None and backend != "ray":
            raise ConfigError("--address names a Ray cluster: it needs --backend ray")
        self.spec, self.out, self.jobs, self.quiet, self.in_process = spec, Path(out), max(1, jobs), quiet, in_process
        self.backend, self.address = backend, address
        self.finished_only = finished_only
        self._ray: RayBackend | None = None

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    # -- one run ---------------------------------------------------------------------------
    def _done(self, run_dir: Path, config: str, overrides: list[str]) -> bool:
        from mmcl.config import diff_keys, validate

        if not (run_dir / "metrics.json").exists():
            return False
        try:
            saved = validate(RunDir(run_dir, writer=False).read_config())
        except (ConfigError, ValueError, FileNotFoundError):
            return False
        return not diff_keys(saved, load_config(config, overrides))

    def _run(self, job: tuple[Path, str, list[str]]) -> str | None:
        """Make one run (this machine); None, or why it failed."""
        run_dir, config, overrides = job
        t = time.time()
        if self.in_process:
            from mmcl.engine import run

            run(load_config(config, [*overrides, "logging.progress=false", "report=false"]), run_dir)
        else:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            log = run_dir.parent / f"{run_dir.name}.log"
            code = _execute(run_command(config, overrides, run_dir), log)
            if code != 0:
                return f"  {run_dir.relative_to(self.out)}: {exit_status(code)}; last lines of {log}:\n{log_tail(log)}"
        self.log(f"  {run_dir.relative_to(self.out)}  {time.time() - t:.0f}s")
        return None

    def _map(self, jobs: list) -> list[dict | None]:
        """Metrics of every job: finished runs are reused, the others run; failures are raised together
        (`SweepFailed`) after every other run has finished. With `finished_only`, None for a job not finished."""
        todo = [j for j in jobs if not self._done(*j)]
        if self.finished_only:
            return [None if j in todo else RunDir(j[0], writer=False).read_metrics() for j in jobs]
        if not todo:
            failures = []
        elif self.backend == "ray" and not self.in_process:
            failures = self._ray.map(todo)
        elif self.jobs == 1 or self.in_process:
            failures = [self._run(j) for j in todo]
        else:
            with ThreadPoolExecutor(self.jobs) as ex:
                failures = list(ex.map(self._run, todo))
        failures = [f for f in failures if f]
        if failures:
            raise SweepFailed(failures)
        return [RunDir(j[0], writer=False).read_metrics() for j in jobs]

    # -- tuning ----------------------------------------------------------------------------
    @staticmethod
    def score(metrics: dict) -> float:
        """Mean `last_acc` over the run's protocols (modality: aware and agnostic; scenario: VQA and F1)."""
        return statistics.fmean(metrics["summary"][p]["last_acc"] for p in metrics["summary"])

    def tune(self) -> dict[str, dict]:
        """{run name: {"hparams": {key: chosen value}, "scores": {key: {value: validation score}}}}, tuned
        coordinate-wise: round i tries every run's i-th hyper-parameter with the earlier ones fixed.
        With `finished_only`, a run whose tuning runs have not all finished is {"unfinished": True}."""
        if not self.spec.tune:
            return {}
        seed = self.spec.seeds[0]
        base = self.spec.overrides + [f"seed={seed}", "eval.split=validation"]
        spaces = {r.name: (r, list((r.search if r.search is not None
                                    else search_space(r.config, self.spec.overrides + r.overrides)).items()))
                  for r in self.spec.runs if r.tune_as is None}
        spaces = {name: rs for name, rs in spaces.items() if rs[1]}
        chosen = {name: {"hparams": {}, "scores": {}} for name in spaces}
        configured = {name: load_config(r.config, self.spec.overrides + r.overrides)["method"]
                      for name, (r, _) in spaces.items()}
        total = sum(len(vs) for _, items in spaces.values() for _, vs in items)
        if total and not self.finished_only:
            self.log(f"tuning on validation data: {total} runs")
        unfinished: set[str] = set()
        for rnd in range(max((len(items) for _, items in spaces.values()), default=0)):
            jobs, where = [], []
            for name, (r, items) in spaces.items():
                if rnd >= len(items) or name in unfinished:
                    continue
                key, values = items[rnd]
                fixed = [f"method.{k}={_fmt_value(v)}" for k, v in chosen[name]["hparams"].items()]
                for v in values:
                    d = self.out / "tune" / _slug(r.name) / f"{key}={_fmt_value(v)}"
                    jobs.append((d, r.config, base + r.overrides + fixed + [f"method.{key}={_fmt_value(v)}"]))
                    where.append((name, key, v))
            best: dict[str, tuple] = {}
            for (name, key, v), m in zip(where, self._map(jobs)):
                if m is None or name in unfinished:  # finished_only: a tuning run not made yet
                    unfinished.add(name)
                    continue
                c, score = chosen[name], self.score(m)
                c["scores"].setdefault(key, {})[_fmt_value(v)] = round(score, 4)
                # a tie (a hyper-parameter that does not act on this stream) keeps the configured value
                rank = (score, _fmt_value(v) == _fmt_value(configured[name].get(key)))
                if key not in c["hparams"] or rank > best[name]:
                    c["hparams"][key], best[name] = v, rank
        for name in unfinished:
            chosen[name] = {"unfinished": True}
        for r in self.spec.runs:
            if r.tune_as is not None and r.tune_as in chosen:
                chosen[r.name] = dict(chosen[r.tune_as], inherited_from=r.tune_as)
        if not self.finished_only:
            atomic_write_text(self.out / "tuning.json", json.dumps(chosen, indent=1, default=str))
        return chosen

    # -- final runs ------------------------------------------------------------------------
    def run(self) -> dict:
        if not self.finished_only:
            self.out.mkdir(parents=True, exist_ok=True)
        self._ray = RayBackend(self) if self.backend == "ray" and not (self.in_process or self.finished_only) else None
        try:
            return self._run_all()
        finally:
            if self._ray is not None:
                self._ray.close()

    def _run_all(self) -> dict:
        if self.finished_only and not self.out.is_dir():
            raise ConfigError(f"{self.out}: no such sweep directory (--finished-only reports runs already made)")
        chosen = self.tune()
        jobs, where, missing = [], [], {}
        for r in self.spec.runs:
            seeds = list(r.seeds or self.spec.seeds)
            if chosen.get(r.name, {}).get("unfinished"):  # finished_only: its final configs are not known yet
                missing[r.name] = "tuning not finished"
                continue
            extra = []
            if r.name in chosen:
                extra = [f"method.{k}={_fmt_value(v)}" for k, v in chosen[r.name]["hparams"].items()]
            for s in seeds:
                jobs.append((self.out / "runs" / _slug(r.name) / f"seed{s}", r.config,
                             self.spec.overrides + r.overrides + extra + [f"seed={s}"]))
                where.append((r.name, s))
        planned = sum(len(r.seeds or self.spec.seeds) for r in self.spec.runs)
        if not self.finished_only:
            self.log(f"final runs: {len(jobs)} ({len(self.spec.runs)} runs, seeds {self.spec.seeds} unless a run names its own)")
        results = self._map(jobs)
        per_run: dict[str, list[dict]] = {}
        finished: dict[str, list[int]] = {}
        for (name, s), m in zip(where, results):
            if m is not None:
                per_run.setdefault(name, []).append(m)
                finished.setdefault(name, []).append(s)
        summary = {name: aggregate(ms) for name, ms in per_run.items()}
        for r in self.spec.runs:
            if r.name not in summary:
                summary[r.name] = {"n": 0, "missing": missing.get(r.name, "no seed finished")}
            s = summary[r.name]
            s["hparam"] = dict(chosen[r.name].get("hparams", {})) if r.name in chosen else {}
            s["seeds"] = finished.get(r.name, []) if self.finished_only else list(r.seeds or self.spec.seeds)
        out = {"seeds": self.spec.seeds, "runs": summary, "tuning": chosen, "tables": self.spec.tables,
               "metrics": list(self.spec.metrics)}
        if self.finished_only:
            done = sum(len(v) for v in finished.values())
            out["partial"] = {"finished": done, "planned": planned}
            self.log(f"finished so far: {done} of {planned} final runs (nothing run, nothing written into {self.out})")
            return out
        atomic_write_text(self.out / "results.json", json.dumps(out, indent=1, default=str))
        md = markdown(out)
        atomic_write_text(self.out / "results.md", md)
        from mmcl.report import compare_page

        named = [(name, m) for (name, _), m in zip(where, results)]
        compare_page(named, self.out / "results.html", title=f"mmcl sweep: {self.out.name}",
                     note=f"{len(results)} runs; hyper-parameters and the Markdown tables: results.md")
        return out


#: written into a sweep's --out by the driver: a Ray task that reads the same token there sees the driver's storage
SHARED_MARKER = ".mmcl-sweep-token"
#: environment variables of the driver every run gets, wherever it runs (the cache, offline switches)
FORWARDED_ENV = ("MMCL_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM")


class RayBackend:
    """Every run of a sweep as a Ray task: `python -m mmcl run ...` on some node of a local Ray instance
    (started here, stopped when the sweep ends) or of the cluster at `address`.

    A task whose node sees the sweep's directory (it reads the driver's token in `--out`: shared storage)
    writes its run directory there; otherwise it runs into a temporary directory and returns it as an
    archive, which the driver unpacks in place. Tasks are not retried by Ray: a failed or killed run is
    reported with its log tail and made again by the next invocation, exactly as the local backend does."""

    def __init__(self, sweep: Sweep):
        try:
            import ray
        except ImportError:
            raise ConfigError("--backend ray needs Ray: pip install 'mmcl[ray]'") from None
        import uuid

        self.sweep, self.ray = sweep, ray
        self.started = not ray.is_initialized()
        if self.started:
            kw = {} if sweep.address else {"include_dashboard": False}
            ray.init(address=sweep.address, logging_level="warning", log_to_driver=False, **kw)
        self.token = uuid.uuid4().hex
        atomic_write_text(sweep.out / SHARED_MARKER, self.token)
        self.task = ray.remote(run_task)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()

    def map(self, jobs: list) -> list[str | None]:
        ray, out = self.ray, self.sweep.out.resolve()
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        submitted = {}
        for run_dir, config, overrides in jobs:
            cfg = load_config(config, overrides)
            cpus = max(1, int(cfg.get("threads") or 0))
            gpus = 1 if str(cfg.get("device", "cpu")).startswith("cuda") else 0
            text = Path(config).read_text() if Path(config).is_file() else None  # a node may not have the file
            run_dir = run_dir.resolve()
            ref = self.task.options(num_cpus=cpus, num_gpus=gpus, max_retries=0,
                                    name=f"mmcl {run_dir.relative_to(out)}").remote(
                config, text, overrides, str(run_dir), str(out), self.token, env)
            submitted[ref] = (run_dir, time.time())
        failures, pending = [], list(submitted)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                failures.append(self._finish(done[0], *submitted[done[0]], out))
        except BaseException:  # Ctrl-C: running tasks stop their runs with SIGTERM (each saves a checkpoint)
            for ref in pending:
                ray.cancel(ref)
            raise
        return failures

    def _finish(self, ref, run_dir: Path, t: float, out: Path) -> str | None:
        rel, log = run_dir.relative_to(out), run_dir.parent / f"{run_dir.name}.log"
        try:
            res = self.ray.get(ref)
        except self.ray.exceptions.RayError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            return f"  {rel}: the Ray task failed ({type(e).__name__}: {first}); the run's log, if any: {log}"
        if res["log"] is not None:  # the run's node does not see --out: its log and directory came back
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(log, res["log"])
            if res["archive"] is not None:
                unpack_run(res["archive"], run_dir)
        if res["code"] != 0:
            return (f"  {rel}: {exit_status(res['code'])} on {res['node']}; last lines of {log}:\n"
                    + res["log_tail"])
        self.sweep.log(f"  {rel}  {time.time() - t:.0f}s ({res['node']})")
        return None


def run_task(config: str, config_text: str | None, overrides: list[str], run_dir: str, out: str, token: str,
             env: dict[str, str]) -> dict:
    """One run of a sweep, where a Ray task executes: into `run_dir` if this node sees the sweep's `out` (its
    token file holds `token`), otherwise into a temporary directory returned as an archive with its log."""
    import platform
    import tempfile

    try:
        shared = (Path(out) / SHARED_MARKER).read_text() == token
    except OSError:
        shared = False
    with tempfile.TemporaryDirectory(prefix="mmcl-sweep-") as tmp:
        if config_text is not None:
            config = str(Path(tmp) / Path(config).name)
            Path(config).write_text(config_text)
        target = Path(run_dir) if shared else Path(tmp) / "run"
        target.parent.mkdir(parents=True, exist_ok=True)
        log = target.parent / f"{target.name}.log"
        code = _execute(run_command(config, overrides, target), log, env)
        res = {"code": code, "node": platform.node(), "log_tail": log_tail(log), "log": None, "archive": None}
        if not shared:
            res["log"] = log.read_bytes()
            if code == 0:
                res["archive"] = pack_run(target)
        return res


def pack_run(run_dir: Path) -> bytes:
    """A run directory as a gzipped tar (entries relative to it)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(run_dir, arcname=".")
    return buf.getvalue()


def unpack_run(archive: bytes, run_dir: Path) -> None:
    """Replace `run_dir` by the run directory in `archive` (unpacked beside it, then renamed into place)."""
    import io
    import shutil
    import tarfile

    incoming = run_dir.parent / f".{run_dir.name}.incoming"
    shutil.rmtree(incoming, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(incoming, **kw)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(incoming, run_dir)


BEGIN, END = "<!-- sweep tables: begin (generated by mmcl sweep --doc) -->", "<!-- sweep tables: end -->"


def markers(name: str | None = None) -> tuple[str, str]:
    """The markers of a doc's generated-tables section; `name` (a spec's name) for a doc holding several."""
    if name is None:
        return BEGIN, END
    return (f"<!-- sweep tables {name}: begin (generated by mmcl sweep --doc) -->", f"<!-- sweep tables {name}: end -->")


def write_doc(path: str | Path, md: str, command: str, name: str | None = None) -> None:
    """Put the generated tables between the markers of `path` (created if missing), keeping the prose: the
    markers named after the spec (`name`) where the doc has them, else the unnamed ones."""
    path = Path(path)
    text = path.read_text() if path.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    begin, end = markers(name)
    if begin not in text:
        begin, end = markers()
    if begin not in text or end not in text:
        named = f" (or {' ... '.join(markers(name))})" if name else ""
        raise ConfigError(f"{path}: expected the markers {BEGIN} ... {END}{named}")
    block = f"{begin}\n\nRegenerate with:\n\n    {command}\n\n{md}\n{end}"
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, head + block + tail)


def _pm(v: dict) -> str:
    """'mean ± std', or '–' for a metric the stream leaves undefined."""
    return "–" if v["mean"] is None else f"{v['mean']:.3f} ± {v['std']:.3f}"


def _summary(m: dict, protocol: str) -> dict:
    """A run's summary of `protocol`; a metric added to mmcl after the run was made is computed from its
    matrix and baseline (metrics.json keeps both)."""
    s = m["summary"][protocol]
    if all(k in s for k in SUMMARY_KEYS) or protocol not in m.get("matrices", {}):
        return s
    from mmcl.metrics import summary

    return {**summary(m["matrices"][protocol], (m.get("baseline") or {}).get(protocol)), **s}


def aggregate(ms: list[dict]) -> dict:
    """mean and (sample) std over seeds of every summary metric, per protocol (and per scenario of the last
    step, where the runs have `last_by_scenario`); mean wall time."""
    def ms_(vals: list) -> dict:  # a metric undefined for the stream (None, e.g. forgetting after one experience)
        vals = [v for v in vals if v is not None]
        if not vals:
            return {"mean": None, "std": None}
        return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}

    protocols = list(ms[0]["summary"])
    agg: dict = {"n": len(ms), "seconds": statistics.fmean(m["timing"]["total_s"] for m in ms), "protocols": protocols}
    for p in protocols:
        agg[p] = {k: ms_([_summary(m, p).get(k) for m in ms]) for k in SUMMARY_KEYS}
    def per_scenario(runs: list[dict]) -> dict:  # {protocol: {scenario: value}} per run -> mean ± std of each cell
        return {p: {sc: ms_([r[p][sc] for r in runs]) for sc in runs[0][p]} for p in runs[0]}

    if all("last_by_scenario" in m for m in ms):
        agg["by_scenario"] = per_scenario([m["last_by_scenario"] for m in ms])
    gains = [_gain_by_scenario(m) for m in ms]
    if gains and all(gains):
        agg["gain_by_scenario"] = per_scenario(gains)
    return agg


def _gain_by_scenario(m: dict) -> dict | None:
    """Per protocol and scenario, how much training on a step raised that step's score above the base model's
    (the diagonal minus the baseline row, averaged over the scenario's steps); None when the run's metrics
    lack the matrices, the baseline or the experiences' scenarios."""
    from mmcl.metrics import gain_by_group

    exps, matrices = m.get("experiences") or [], m.get("matrices") or {}
    if not exps or any("scenario" not in e for e in exps) or any(p not in matrices for p in m["summary"]):
        return None
    scenarios = [e["scenario"] for e in exps]
    out = {p: gain_by_group(matrices[p], (m.get("baseline") or {}).get(p), scenarios) for p in m["summary"]}
    return None if any(g is None for g in out.values()) else out


def _scenario_table(runs: dict, members: list[str], key: str, caption: str) -> list[str]:
    """Lines of a table of `runs[name][key]` ({protocol: {scenario: mean ± std}}), a column per protocol and
    scenario, for the members that have it (none: no lines)."""
    have = [m for m in members if key in runs[m]]
    if not have:
        return []
    cols = [(p, sc) for p, by in runs[have[0]][key].items() for sc in by]
    lines = [caption, "", "| run | " + " | ".join(f"{sc} ({LABELS.get(p, p)})" for p, sc in cols) + " |",
             "|---|" + "---|" * len(cols)]
    lines += [f"| {name} | " + " | ".join(_pm(runs[name][key][p][sc]) for p, sc in cols) + " |" for name in have]
    return lines + [""]


def markdown(res: dict) -> str:
    n = len(res["seeds"])
    lines = []
    scenario = False
    metrics = tuple(res.get("metrics", METRICS))  # the columns of every table
    if res.get("partial"):
        p = res["partial"]
        lines += [f"**Partial**: {p['finished']} of {p['planned']} final runs finished (`--finished-only`); "
                  "a row averages the seeds it names.", ""]
    for title, members in res["tables"].items():
        made = [m for m in members if res["runs"][m].get("n", 1)] or members
        protocols = res["runs"][made[0]].get("protocols", list(PROTOCOLS))
        scenario = scenario or "vqa" in protocols
        lines += [f"### {title}", "",
                  "| run | hparam | " + " | ".join(f"{k} ({LABELS.get(p, p)})" for p in protocols for k in metrics)
                  + " | time/run |",
                  "|---|---|" + "---|" * (len(protocols) * len(metrics)) + "---|"]
        for name in members:
            s = res["runs"][name]
            if s.get("missing"):
                lines.append(f"| {name} ({s['missing']}) | – | " + " | ".join([" "] * (len(protocols) * len(metrics)))
                             + " |   |")
                continue
            hp = ", ".join(f"{k}={_fmt_value(v)}" for k, v in s["hparam"].items()) or "–"
            cells = [_pm(s[p][k]) for p in protocols for k in metrics]
            seeds = s.get("seeds", res["seeds"])
            label = name if seeds == res["seeds"] else f"{name} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
            lines.append(f"| {label} | {hp} | " + " | ".join(cells) + f" | {s['seconds']:.0f}s |")
        lines.append("")
        lines += _scenario_table(res["runs"], members, "by_scenario", f"Last step, per scenario ({title}):")
        lines += _scenario_table(res["runs"], members, "gain_by_scenario",
                                 f"Learning per step, per scenario ({title}): a step's score right after training on "
                                 "it minus the base model's, averaged over the scenario's steps (their mean is the "
                                 "plasticity column):")
    legend = ("VQA = normalised exact match over non-grounding questions, F1 = grounding F1 at IoU >= 0.5"
              if scenario else "aware = modality-aware protocol, agnostic = modality-agnostic")
    lines.append(f"mean ± std over {n} seed{'s' if n != 1 else ''} ({', '.join(map(str, res['seeds']))}); {legend}.")
    if res["tuning"]:
        what = "VQA and F1" if scenario else "both protocols"
        lines += ["", f"Hyper-parameters chosen on validation data (score = mean last_acc of {what}):", ""]
        for name, c in res["tuning"].items():
            if "inherited_from" in c:
                continue
            if c.get("unfinished"):
                lines.append(f"- {name}: tuning not finished")
                continue
            steps = []
            for key, scores in c["scores"].items():
                tried = ", ".join(f"{v}: {s:.3f}" for v, s in scores.items())
                steps.append(f"{key} in {{{tried}}} -> {_fmt_value(c['hparams'][key])}")
            lines.append(f"- {name}: " + "; then ".join(steps))
    return "\n".join(lines) + "\n"
