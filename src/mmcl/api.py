"""The Python API, for notebooks and scripts: `mmcl.run`, `mmcl.load_run`, `mmcl.compare`.

    import mmcl
    er = mmcl.run("animals-er", {"seed": 1, "method.buffer_size": 500}, out="runs/er-500")
    er.summary["modality_agnostic"]["last_acc"]
    ft = mmcl.load_run("runs/ft")
    rows = mmcl.compare([ft, er])          # one dict per run and protocol

The command line (`mmcl run | compare`) is a thin layer over these functions: both write and read
the same run directory (DESIGN.md section 4), so a run made here is one `mmcl report` can render.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mmcl.config import DEFAULT_CONFIG, ConfigError, load_config, parse_override, set_dotted, validate
from mmcl.metrics import SUMMARY_KEYS
from mmcl.results import RunDir


@dataclass(frozen=True)
class Run:
    """A finished run: its directory, resolved config (config.yaml; {} where it is missing) and metrics.json."""

    path: Path
    config: dict
    metrics: dict

    @property
    def summary(self) -> dict[str, dict]:
        """Protocol (matrix name) -> {avg_acc, last_acc, avg_inc_acc, forgetting, bwt, fwt}."""
        return self.metrics["summary"]

    @property
    def matrices(self) -> dict[str, list[list]]:
        """Matrix name -> A[i][j] (after experience i, on experience j; None where not evaluated)."""
        return self.metrics["matrices"]

    @property
    def experiences(self) -> list[str]:
        return [e["name"] for e in self.metrics["experiences"]]

    @property
    def paths(self) -> dict[str, Path]:
        """The run directory's files that exist: config, metrics, events, report, matrix CSVs, checkpoint."""
        p = self.path
        files = {"config": p / "config.yaml", "metrics": p / "metrics.json", "events": p / "events.jsonl",
                 "report": p / "report.html", "checkpoint": RunDir(p, writer=False).checkpoint_path,
                 **{f"matrix_{n}": p / f"matrix_{n}.csv" for n in self.matrices}}
        return {k: v for k, v in files.items() if v.exists()}

    @property
    def label(self) -> str:
        return f"{self.path.name} ({self.metrics['benchmark']}/{self.metrics['method']})"

    def __repr__(self) -> str:
        last = ", ".join(f"{n} {s['last_acc']:.3f}" for n, s in self.summary.items() if s.get("last_acc") is not None)
        return f"Run({str(self.path)!r}, {self.metrics['benchmark']}/{self.metrics['method']}, seed " \
               f"{self.metrics['seed']}, last_acc: {last})"


def load_run(path: str | Path) -> Run:
    """Read a finished run directory (FileNotFoundError / ValueError name what is missing or damaged)."""
    d = RunDir(path, writer=False)
    metrics = d.read_metrics()  # first: "has not finished" says more than a missing config
    # a bare metrics.json (copied out of its run) still compares: its config is then unknown ({})
    return Run(Path(path), d.read_config() if (d.path / "config.yaml").exists() else {}, metrics)


def _free_dir(base: Path) -> Path:
    """`base`, or `base-2`, `base-3`, ... : the first that holds nothing yet."""
    cand, k = base, 1
    while cand.exists() and any(cand.iterdir()):
        k += 1
        cand = base.with_name(f"{base.name}-{k}")
    return cand


def default_out(config: str | Path | dict) -> Path:
    """runs/<config name>; for a config mapping runs/<benchmark>-<method>."""
    if isinstance(config, dict):
        return Path("runs") / f"{config['benchmark']['name']}-{config['method']['name']}"
    return Path("runs") / Path(str(config)).stem


def run(config: str | Path | dict | None = None, overrides: dict | list[str] | None = None,
        out: str | Path | None = None, *, resume: bool = False, force: bool = False) -> Run:
    """Run a config into a run directory and return the finished `Run`.

    `config`: a bundled config name, a YAML path, or a config mapping (None: the default config).
    `overrides`: a mapping of dotted keys (`{"train.lr": 3e-4}`) or `key=value` strings.
    `out`: the run directory; None: `runs/<config name>`, or `runs/<config name>-2`, ... if that holds a run.
    `force`: replace a finished run in `out`. `resume`: continue the unfinished run in `out`
    (overrides then apply to its stored config; only keys such as `threads` may differ).
    Raises `mmcl.errors.ConfigError` for a bad config or an `out` that cannot be used;
    `mmcl.engine.Interrupted` when SIGINT/SIGTERM stopped it (state saved; resume with `resume=True`).
    """
    from mmcl import distributed as dist
    from mmcl.engine import run as run_engine

    overrides = overrides if overrides is not None else []
    if resume:
        if out is None:
            raise ConfigError("resume needs the run directory (out=...)")
        if config is not None:
            cfg = load_config(config, overrides)
        else:
            cfg = validate(RunDir(out, writer=False).read_config())
            pairs = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
            for key, value in pairs:
                set_dotted(cfg, key, value)
            cfg = validate(cfg)
    else:
        cfg = load_config(config, overrides)
        out = Path(out) if out is not None else _free_dir(default_out(cfg if isinstance(config, dict) else
                                                                      config or DEFAULT_CONFIG))
        if not force:
            if (Path(out) / "metrics.json").exists():
                raise ConfigError(f"{out} already holds a finished run; pass --force (force=True) to overwrite or "
                                  f"--out (out=) to choose another")
            if RunDir(out, writer=False).checkpoint_path.exists():
                raise ConfigError(f"{out} holds an unfinished run; continue it with --resume {out} (resume=True), "
                                  f"or pass --force (force=True) to start over")
    metrics = run_engine(cfg, str(out), resume=resume)
    if not dist.is_main():  # under torchrun only rank 0 wrote the directory
        return Run(Path(out), cfg, metrics)
    return load_run(out)


def _as_run(r) -> Run:
    return r if isinstance(r, Run) else load_run(r)


def compare(runs: list) -> list[dict]:
    """One row per run and protocol: run, path, setting, benchmark, method, seed, protocol and the summary
    metrics (`avg_acc`, `last_acc`, ...). `runs` are `Run` objects or run directories. Every row names its
    setting and benchmark: runs of different ones sit in one list but are never folded together
    (`groups` splits them)."""
    rows = []
    for r in map(_as_run, runs):
        m = r.metrics
        for protocol, s in m["summary"].items():
            rows.append({"run": r.label, "path": str(r.path), "setting": m["setting"], "benchmark": m["benchmark"],
                         "method": m["method"], "seed": m["seed"], "protocol": protocol,
                         **{k: s.get(k) for k in SUMMARY_KEYS}})
    return rows


def groups(runs: list) -> dict[tuple[str, str], list[Run]]:
    """Runs by (setting, benchmark), in first-seen order: what may be compared with what."""
    out: dict[tuple[str, str], list[Run]] = {}
    for r in map(_as_run, runs):
        out.setdefault((r.metrics["setting"], r.metrics["benchmark"]), []).append(r)
    return out


#: config keys that do not make two runs different methods (seeds are averaged; the rest is how it ran)
_NOT_A_VARIANT = ("seed", "threads", "report", "logging.", "eval.batch_size")


def labels(runs: list) -> list[str]:
    """A label per run for charts: its method, plus the config keys that tell apart runs of one method
    (`er (method.buffer_size=500)`); runs that differ only in seed share a label (they are averaged)."""
    from mmcl.config import flatten

    runs = [_as_run(r) for r in runs]

    def key(r: Run) -> dict:
        return {k: v for k, v in flatten(r.config).items() if not k.startswith(_NOT_A_VARIANT)}

    out = []
    for r in runs:
        mine = key(r)
        name = r.metrics["method"]
        others = [key(o) for o in runs if o.metrics["method"] == name and key(o) != mine
                  and (o.metrics["setting"], o.metrics["benchmark"]) == (r.metrics["setting"], r.metrics["benchmark"])]
        diff = sorted({k for o in others for k in set(o) | set(mine) if o.get(k) != mine.get(k)})
        out.append(name + (f" ({', '.join(f'{k}={mine.get(k)}' for k in diff)})" if diff else ""))
    return out
