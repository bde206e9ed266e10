"""`mmcl sweep SPEC`: methods x seeds, hyper-parameters chosen on validation data, one table.

A sweep spec (YAML; bundled ones live in `mmcl/configs/sweeps/`) names the runs:

    seeds: [0, 1, 2]                  # a run may name its own: {name: ..., config: ..., seeds: [0]}
    overrides: [threads=1]            # applied to every run (optional)
    runs:
      - {name: finetune, config: mm5-finetune}
      - {name: comm, config: mm5-comm}
      - {name: comm -realign, config: mm5-comm, overrides: [method.realign=false], tune_as: comm}
    tune: true                        # optional: false = no tuning runs, the configs' values
    tables:                           # optional: several tables, each a list of run names
      main: [finetune, comm]
      ablation: [comm, comm -realign]

Tuning (the same budget for every method): a method class may declare candidates per setting,
`search_space = {"<setting>": {"<hparam>": [v1, v2, v3]}}`. For each run whose method has some
for the run's setting, every candidate
is run once with `eval.split=validation` (a seeded per-class hold-out of the *training* data;
the test split is never read) at the first seed, and the value with the best score (mean of
`last_acc` over both protocols) is used for all seeds. `tune_as: NAME` reuses the choice of
another run (ablations keep the full method's value). Choices and their validation scores are
written to `tuning.json`.

Everything lands in `--out`: one run directory per (run, seed) under `runs/`, the tuning runs
under `tune/`, and `results.md` / `results.json` / `results.html` (charts) with mean ± std over seeds of `last_acc`,
`avg_inc_acc`, `forgetting` and `bwt` for both protocols. A finished run whose saved config
equals the one the spec asks for is reused, so an interrupted sweep continues where it stopped.
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
from mmcl.results import RunDir, atomic_write_text

METRICS = ("last_acc", "avg_inc_acc", "forgetting", "bwt")
PROTOCOLS = ("modality_aware", "modality_agnostic")  # the modality setting's; a run's own come from its metrics
#: column labels of the protocols (modality setting) and score matrices (scenario setting)
LABELS = {"modality_aware": "aware", "modality_agnostic": "agnostic", "vqa": "VQA", "grounding_f1": "F1"}
_SPEC_KEYS = {"seeds", "overrides", "runs", "tables", "tune"}
_RUN_KEYS = {"name", "config", "overrides", "tune_as", "seeds"}


@dataclass
class RunSpec:
    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    tune_as: str | None = None
    seeds: list[int] | None = None  # this run's seeds (default: the spec's)


@dataclass
class Spec:
    seeds: list[int]
    overrides: list[str]
    runs: list[RunSpec]
    tables: dict[str, list[str]]
    tune: bool = True  # False: every method keeps its config's hyper-parameters (no tuning runs)


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
        runs.append(RunSpec(str(r["name"]), str(r["config"]), [str(o) for o in r.get("overrides", [])], r.get("tune_as"),
                            rs))
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
    spec = Spec(seeds, [str(o) for o in raw.get("overrides", [])], runs, tables, raw.get("tune", True))
    for r in runs:  # validate every config and override before anything runs
        find_config(r.config)
        load_config(r.config, spec.overrides + r.overrides)
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


class Sweep:
    def __init__(self, spec: Spec, out: str | Path, jobs: int = 1, quiet: bool = False, in_process: bool = False):
        """`jobs` runs at a time, each in its own `python -m mmcl run` process (or, with
        `in_process`, one after another in this process: for tests and debugging)."""
        self.spec, self.out, self.jobs, self.quiet, self.in_process = spec, Path(out), max(1, jobs), quiet, in_process

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

    def _run(self, job: tuple[Path, str, list[str]]) -> dict:
        run_dir, config, overrides = job
        if not self._done(run_dir, config, overrides):
            t = time.time()
            if self.in_process:
                from mmcl.engine import run

                run(load_config(config, [*overrides, "logging.progress=false", "report=false"]), run_dir)
                self.log(f"  {run_dir.relative_to(self.out)}  {time.time() - t:.0f}s")
                return RunDir(run_dir, writer=False).read_metrics()
            cmd = [sys.executable, "-m", "mmcl", "run", config, *overrides, "logging.progress=false", "report=false",
                   "--out", str(run_dir), "--force"]
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            log = run_dir.parent / f"{run_dir.name}.log"
            with open(log, "w") as f:
                p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            if p.returncode != 0:
                raise RuntimeError(f"run {run_dir} failed with exit status {p.returncode}; see {log}")
            self.log(f"  {run_dir.relative_to(self.out)}  {time.time() - t:.0f}s")
        return RunDir(run_dir, writer=False).read_metrics()

    def _map(self, jobs: list) -> list[dict]:
        if self.jobs == 1 or self.in_process:
            return [self._run(j) for j in jobs]
        with ThreadPoolExecutor(self.jobs) as ex:
            return list(ex.map(self._run, jobs))

    # -- tuning ----------------------------------------------------------------------------
    @staticmethod
    def score(metrics: dict) -> float:
        """Mean `last_acc` over the run's protocols (modality: aware and agnostic; scenario: VQA and F1)."""
        return statistics.fmean(metrics["summary"][p]["last_acc"] for p in metrics["summary"])

    def tune(self) -> dict[str, dict]:
        if not self.spec.tune:
            return {}
        seed = self.spec.seeds[0]
        base = self.spec.overrides + [f"seed={seed}", "eval.split=validation"]
        jobs, where = [], []
        for r in self.spec.runs:
            if r.tune_as is not None:
                continue
            for key, values in search_space(r.config, self.spec.overrides + r.overrides).items():
                for v in values:
                    d = self.out / "tune" / _slug(r.name) / f"{key}={_fmt_value(v)}"
                    jobs.append((d, r.config, base + r.overrides + [f"method.{key}={_fmt_value(v)}"]))
                    where.append((r.name, key, v))
        if jobs:
            self.log(f"tuning on validation data: {len(jobs)} runs")
        results = self._map(jobs)
        chosen: dict[str, dict] = {}
        for (name, key, v), m in zip(where, results):
            c = chosen.setdefault(name, {"key": key, "scores": {}, "value": None})
            c["scores"][_fmt_value(v)] = round(self.score(m), 4)
            if c["value"] is None or self.score(m) > c["best"]:
                c["value"], c["best"] = v, self.score(m)
        for r in self.spec.runs:
            if r.tune_as is not None and r.tune_as in chosen:
                chosen[r.name] = dict(chosen[r.tune_as], inherited_from=r.tune_as)
        atomic_write_text(self.out / "tuning.json", json.dumps(chosen, indent=1, default=str))
        return chosen

    # -- final runs ------------------------------------------------------------------------
    def run(self) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        chosen = self.tune()
        jobs, where = [], []
        for r in self.spec.runs:
            extra = []
            if r.name in chosen:
                extra = [f"method.{chosen[r.name]['key']}={_fmt_value(chosen[r.name]['value'])}"]
            for s in (r.seeds or self.spec.seeds):
                jobs.append((self.out / "runs" / _slug(r.name) / f"seed{s}", r.config,
                             self.spec.overrides + r.overrides + extra + [f"seed={s}"]))
                where.append(r.name)
        self.log(f"final runs: {len(jobs)} ({len(self.spec.runs)} runs, seeds {self.spec.seeds} unless a run names its own)")
        results = self._map(jobs)
        per_run: dict[str, list[dict]] = {}
        for name, m in zip(where, results):
            per_run.setdefault(name, []).append(m)
        summary = {name: aggregate(ms) for name, ms in per_run.items()}
        for name, s in summary.items():
            s["hparam"] = ({chosen[name]["key"]: chosen[name]["value"]} if name in chosen else {})
        for r in self.spec.runs:
            summary[r.name]["seeds"] = list(r.seeds or self.spec.seeds)
        out = {"seeds": self.spec.seeds, "runs": summary, "tuning": chosen, "tables": self.spec.tables}
        atomic_write_text(self.out / "results.json", json.dumps(out, indent=1, default=str))
        md = markdown(out)
        atomic_write_text(self.out / "results.md", md)
        from mmcl.report import compare_page

        compare_page(list(zip(where, results)), self.out / "results.html", title=f"mmcl sweep: {self.out.name}",
                     note=f"{len(results)} runs; hyper-parameters and the Markdown tables: results.md")
        return out


BEGIN, END = "<!-- sweep tables: begin (generated by mmcl sweep --doc) -->", "<!-- sweep tables: end -->"


def write_doc(path: str | Path, md: str, command: str) -> None:
    """Put the generated tables between the markers of `path` (created if missing), keeping the prose."""
    path = Path(path)
    block = f"{BEGIN}\n\nRegenerate with:\n\n    {command}\n\n{md}\n{END}"
    text = path.read_text() if path.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise ConfigError(f"{path}: expected the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, head + block + tail)


def aggregate(ms: list[dict]) -> dict:
    """mean and (sample) std over seeds of every summary metric, per protocol (and per scenario of the last
    step, where the runs have `last_by_scenario`); mean wall time."""
    ms_ = lambda vals: {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}  # noqa: E731
    protocols = list(ms[0]["summary"])
    agg: dict = {"n": len(ms), "seconds": statistics.fmean(m["timing"]["total_s"] for m in ms), "protocols": protocols}
    for p in protocols:
        agg[p] = {k: ms_([m["summary"][p][k] for m in ms]) for k in METRICS}
    if all("last_by_scenario" in m for m in ms):
        agg["by_scenario"] = {p: {sc: ms_([m["last_by_scenario"][p][sc] for m in ms])
                                  for sc in ms[0]["last_by_scenario"][p]} for p in ms[0]["last_by_scenario"]}
    return agg


def markdown(res: dict) -> str:
    n = len(res["seeds"])
    lines = []
    scenario = False
    for title, members in res["tables"].items():
        protocols = res["runs"][members[0]].get("protocols", list(PROTOCOLS))
        scenario = scenario or "vqa" in protocols
        lines += [f"### {title}", "",
                  "| run | hparam | " + " | ".join(f"{k} ({LABELS.get(p, p)})" for p in protocols for k in METRICS)
                  + " | time/run |",
                  "|---|---|" + "---|" * (len(protocols) * len(METRICS)) + "---|"]
        for name in members:
            s = res["runs"][name]
            hp = ", ".join(f"{k}={_fmt_value(v)}" for k, v in s["hparam"].items()) or "–"
            cells = [f"{s[p][k]['mean']:.3f} ± {s[p][k]['std']:.3f}" for p in protocols for k in METRICS]
            seeds = s.get("seeds", res["seeds"])
            label = name if seeds == res["seeds"] else f"{name} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
            lines.append(f"| {label} | {hp} | " + " | ".join(cells) + f" | {s['seconds']:.0f}s |")
        lines.append("")
        with_sc = [m for m in members if "by_scenario" in res["runs"][m]]
        if with_sc:
            by = res["runs"][with_sc[0]]["by_scenario"]
            cols = [(p, sc) for p in by for sc in by[p]]
            lines += [f"Last step, per scenario ({title}):", "",
                      "| run | " + " | ".join(f"{sc} ({LABELS.get(p, p)})" for p, sc in cols) + " |",
                      "|---|" + "---|" * len(cols)]
            for name in with_sc:
                b = res["runs"][name]["by_scenario"]
                lines.append(f"| {name} | " + " | ".join(f"{b[p][sc]['mean']:.3f} ± {b[p][sc]['std']:.3f}"
                                                       for p, sc in cols) + " |")
            lines.append("")
    legend = ("VQA = normalised exact match over non-grounding questions, F1 = grounding F1 at IoU >= 0.5"
              if scenario else "aware = modality-aware protocol, agnostic = modality-agnostic")
    lines.append(f"mean ± std over {n} seed{'s' if n != 1 else ''} ({', '.join(map(str, res['seeds']))}); {legend}.")
    if res["tuning"]:
        what = "VQA and F1" if scenario else "both protocols"
        lines += ["", f"Hyper-parameters chosen on validation data (score = mean last_acc of {what}):", ""]
        for name, c in res["tuning"].items():
            if "inherited_from" in c:
                continue
            scores = ", ".join(f"{v}: {s:.3f}" for v, s in c["scores"].items())
            lines.append(f"- {name}: {c['key']} in {{{scores}}} -> {_fmt_value(c['value'])}")
    return "\n".join(lines) + "\n"
