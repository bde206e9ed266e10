"""mmcl against Avalanche on the same continual-learning workload: wall time and final accuracy.

Both sides learn the same stream with the same `nn.Module` (mmcl's TextAlignedClassifier, loaded on
the Avalanche side from its source file, which imports only torch), the same initial weights, the
same experience replay (a class-balanced memory of `--buffer` samples; every batch of 64 current
samples joined by 64 drawn from the memory), the same batch size, epochs, optimiser (Adam, its state
kept across experiences as Avalanche does: mmcl's `train.reset_optimizer=false`) and seed, one
torch thread each. Both sides run torch's default Adam kernel, Avalanche's optimiser built as its
examples build it (`--fused`: torch's fused kernel on both sides, mmcl's `train.fused=true`).
mmcl runs `mmcl run ... method=er` (its run directory, events and a checkpoint after every
experience included); Avalanche runs experience replay as its docs build a class-balanced one:
the `ReplayPlugin` with a `ClassBalancedBuffer` on the `Naive` strategy (its `Replay` strategy is
that plugin with an experience-balanced buffer), with an accuracy-only evaluator and no loggers.
Each side is evaluated on the test stream before training and after every experience (the
`synthetic` stream: on the experiences seen so far). Avalanche lives in its own virtual environment (`--venv`,
created on first use with the same torch wheel, installed first so pip keeps it; checked before every use, and
rebuilt when Avalanche does not import in it or its torch is not mmcl's); mmcl never imports it. PyPI's torchvision
is a CUDA build whose C++ ops do not load with the CPU torch wheel, and then `import avalanche` fails ("operator
torchvision::nms does not exist"): the Avalanche side imports it through `torchvision_without_ops`, which skips
those ops' fake-kernel registrations (the workload calls no torchvision op).

Data: the cached `animals` features (5 experiences) and a `synthetic` stream of 50 experiences.
Sides alternate, `--repeats` times; medians are printed. Per side, in wall and in CPU seconds (the
processes' own, which other work on a shared machine disturbs far less; the closing line uses
`--clock`, CPU by default): the whole process (a fresh interpreter, imports included), the
training loop (every experience's training and memory update; mmcl: from its events, which carry
both clocks), evaluation, the last experience's training time over the second one's (the memory is
full from the second experience on; on the 50-experience stream each is the median of 5 neighbouring
experiences) and the final accuracy (`last_acc`).

    python benchmarks/vs_avalanche.py [--repeats 3] [--data animals synthetic]     (or: make bench-avalanche)

This file is also the Avalanche side (`--side avalanche`, run by the venv's interpreter): at module
level it imports nothing but the standard library and torch.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AVALANCHE = "avalanche-lib==0.6.0"
BATCH = 64  # both sides' batch size (and replayed samples per batch)
CLOCKS = ("wall", "cpu")
#: the mmcl config of each workload (overrides on top of animals-er)
WORKLOADS = {
    "animals": [],
    "synthetic": ["benchmark.name=synthetic", "benchmark.num_experiences=50", "benchmark.classes_per_experience=2",
                  "benchmark.dim=256", "benchmark.train_per_class=500", "benchmark.test_per_class=50",
                  "train.epochs=2", "eval.future=false"],
}


# -- the Avalanche side (runs in the Avalanche venv: no mmcl) -----------------------------------------------
@contextlib.contextmanager
def torchvision_without_ops():
    """Imports of Avalanche (which imports torchvision) with a torchvision whose C++ ops did not load.

    PyPI has torchvision only as a CUDA build (a CPU build is on PyTorch's own index only), and with the CPU torch
    wheel its `_C` extension does not load. torchvision then skips the fake (meta) kernels of its ops, except two
    registered unconditionally (`torchvision::nms`, `torchvision::qnms`), whose registration raises "operator
    torchvision::nms does not exist" and fails `import torchvision`, so `import avalanche`. Within this block such a
    registration is skipped. Avalanche imports torchvision for its transforms and datasets; this workload calls no
    torchvision op."""
    import torch

    register_fake = torch.library.register_fake

    def lenient(op, func=None, /, **kw):
        def deco(f):
            try:
                return register_fake(op, f, **kw)
            except RuntimeError:  # the op does not exist: its C++ library did not load
                return f
        return deco if func is None else deco(func)

    torch.library.register_fake = lenient
    try:
        yield
    finally:
        torch.library.register_fake = register_fake


def check_side() -> dict:
    """What the driver checks in the Avalanche environment before using it (`--side check`)."""
    import importlib.metadata as md

    import torch

    with torchvision_without_ops():
        import avalanche.training  # noqa: F401
    return {"torch": torch.__version__, "avalanche": md.version("avalanche-lib"), "torchvision": md.version("torchvision")}


def avalanche_side(data_file: str) -> dict:
    import importlib.util

    import torch

    torch.set_num_threads(1)
    d = torch.load(data_file, weights_only=False)
    with torchvision_without_ops():
        from avalanche.benchmarks import tensors_benchmark
        from avalanche.core import SupervisedPlugin
        from avalanche.evaluation.metrics import accuracy_metrics
        from avalanche.training import Naive
        from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
        from avalanche.training.storage_policy import ClassBalancedBuffer

    spec = importlib.util.spec_from_file_location("text_aligned", d["model_source"])
    text_aligned = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(text_aligned)

    class SeenClassLogits(torch.nn.Module):
        """Avalanche's view of the module: one input tensor (features | zero-shot estimate), logits over the classes
        seen so far (mmcl's class-incremental scoring)."""

        def __init__(self, net, x_dim: int):
            super().__init__()
            self.net, self.x_dim, self.num_classes = net, x_dim, 1

        def forward(self, inp):
            batch = {"x": inp[:, :self.x_dim]}
            if inp.shape[1] > self.x_dim:
                batch["zs"] = inp[:, self.x_dim:]
            return self.net.logits(self.net(batch), self.num_classes)

    class SeenClasses(SupervisedPlugin):
        """mmcl's scoring: training on experience i over the classes of experiences 0..i; evaluating experience j
        after training i over those of 0..max(i, j)."""

        def __init__(self, seen_after):
            super().__init__()
            self.seen_after, self.after = seen_after, -1

        def before_training_exp(self, strategy, **kw):
            self.after = strategy.experience.current_experience
            strategy.model.num_classes = self.seen_after[self.after]

        def before_eval_exp(self, strategy, **kw):
            strategy.model.num_classes = self.seen_after[max(self.after, strategy.experience.current_experience)]

    torch.manual_seed(d["seed"])
    exps = d["experiences"]
    bench = tensors_benchmark(train_tensors=[(e["train_x"], e["train_y"]) for e in exps],
                              test_tensors=[(e["test_x"], e["test_y"]) for e in exps], task_labels=[0] * len(exps))
    net = text_aligned.TextAlignedClassifier(**d["model_args"])
    net.load_state_dict(d["init_state"])
    model = SeenClassLogits(net, d["x_dim"])
    t = d["train"]
    opt = torch.optim.Adam(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"], fused=d["fused"] or None)
    seen_classes = SeenClasses(d["seen_after"])
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[])
    replay = ReplayPlugin(mem_size=d["buffer"], batch_size=t["batch_size"], batch_size_mem=t["batch_size"],
                          storage_policy=ClassBalancedBuffer(max_size=d["buffer"], adaptive_size=True))
    strategy = Naive(model=model, optimizer=opt, criterion=torch.nn.CrossEntropyLoss(), train_mb_size=t["batch_size"],
                     train_epochs=t["epochs"], eval_mb_size=d["eval_batch_size"],
                     plugins=[replay, seen_classes], evaluator=evaluator)

    def clocks():
        return time.perf_counter(), time.process_time()

    def evaluate(after: int) -> tuple[tuple[float, float], dict]:
        seen = bench.test_stream if d["future"] or after < 0 else bench.test_stream[:after + 1]
        t0 = clocks()
        res = strategy.eval(seen)
        return tuple(b - a for a, b in zip(t0, clocks())), res

    evals, exps_t = [evaluate(-1)[0]], []
    for i, exp in enumerate(bench.train_stream):
        t0 = clocks()
        strategy.train(exp)
        exps_t.append(tuple(b - a for a, b in zip(t0, clocks())))
        dt, res = evaluate(i)
        evals.append(dt)
    accs = [res[f"Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{j:03d}"] for j in range(len(exps))]
    return {"wall": {"train": sum(w for w, _ in exps_t), "eval": sum(w for w, _ in evals),
                     "exp": [w for w, _ in exps_t]},
            "cpu": {"train": sum(c for _, c in exps_t), "eval": sum(c for _, c in evals), "exp": [c for _, c in exps_t]},
            "last_acc": sum(accs) / len(accs)}


# -- the mmcl side and the driver --------------------------------------------------------------------------
def mmcl_overrides(workload: str, buffer: int, fused: bool = False) -> list[str]:
    # Avalanche keeps the optimiser's state from one experience to the next (mmcl's default resets it)
    return ["method=er", f"method.buffer_size={buffer}", f"train.batch_size={BATCH}", "train.reset_optimizer=false",
            f"train.fused={str(fused).lower()}", "threads=1", *WORKLOADS[workload]]


def export(workload: str, buffer: int, path: Path, fused: bool) -> None:
    """The stream, the model's constructor arguments and initial weights, as mmcl's engine builds them."""
    import torch

    from mmcl.config import load_config
    from mmcl.engine import build_method, seed_everything
    from mmcl.settings import build_stream

    cfg = load_config("animals-er", mmcl_overrides(workload, buffer, fused))
    seed_everything(cfg["seed"])
    stream = build_stream(cfg)
    seed_everything(cfg["seed"])
    model = build_method(stream, cfg).model

    def inputs(ts):
        return torch.cat([ts["x"], ts["zs"]], 1) if "zs" in ts.keys() else ts["x"]

    exps = [{"train_x": inputs(e.train), "train_y": e.train["y"], "test_x": inputs(e.test), "test_y": e.test["y"]}
            for e in stream]
    torch.save({"experiences": exps, "seen_after": [stream.seen_after(i) for i in range(len(stream))],
                "model_source": str(Path(sys.modules[type(model).__module__].__file__)),
                "model_args": {"in_dim": stream[0].train["x"].shape[1], "anchors": model.anchors.clone(),
                               "hidden_dim": cfg["model"]["hidden_dim"], "logit_scale": model.logit_scale,
                               "residual": model.residual},
                "init_state": model.state_dict(), "x_dim": stream[0].train["x"].shape[1], "seed": cfg["seed"],
                "train": cfg["train"], "buffer": buffer, "eval_batch_size": cfg["eval"]["batch_size"],
                "future": cfg["eval"]["future"], "fused": fused}, path)


def mmcl_side(workload: str, buffer: int, out: Path, fused: bool = False) -> dict:
    cmd = [sys.executable, "-m", "mmcl", "run", "animals-er", *mmcl_overrides(workload, buffer, fused),
           "logging.progress=false", "report=false", "--out", str(out), "--force"]
    process, _ = measured(subprocess.run, cmd, check=True, stdout=subprocess.DEVNULL)
    m = json.loads((out / "metrics.json").read_text())
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    res = {"last_acc": m["summary"]["modality_agnostic"]["last_acc"]}
    for clock, key in (("wall", "time"), ("cpu", "cpu")):  # every event carries both clocks
        start = {e["exp"]: e[key] for e in events if e["event"] == "experience_start"}
        exp = [e[key] - start[e["exp"]] for e in events if e["event"] == "experience_end"]  # training + memory
        evals = [e[key] - prev[key] for prev, e in zip(events, events[1:]) if e["event"] == "eval"]
        res[clock] = {"train": sum(exp), "eval": sum(evals), "exp": exp, "process": process[clock == "cpu"]}
    return res


def measured(fn, *args, **kw) -> tuple[tuple[float, float], object]:
    """`fn(*args, **kw)` (which runs a child process) with its child's wall and CPU (user + system) seconds."""
    import resource

    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    out = fn(*args, **kw)
    r1, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter() - t0
    return (wall, r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime), out


def avalanche_run(python: Path, data_file: Path) -> dict:
    process, p = measured(subprocess.run, [str(python), __file__, "--side", "avalanche", "--exchange",
                                           str(data_file)], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"the Avalanche side failed (exit status {p.returncode}):\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall"]["process"], res["cpu"]["process"] = process
    return res


def ensure_venv(venv: Path) -> Path:
    """The Avalanche environment, checked before use (`--side check`: Avalanche imports, on the torch mmcl runs) and
    made or rebuilt when that fails: the torch wheel mmcl uses, installed first and pinned, then avalanche-lib (which
    brings the torchvision release of that torch: see `torchvision_without_ops`)."""
    import torch

    python = venv / "bin" / "python"
    problem = venv_problem(python, torch.__version__)
    if problem is None:
        return python
    if venv.exists() and not (venv / "pyvenv.cfg").exists():
        raise SystemExit(f"--venv {venv}: exists and is not a virtual environment (not touched)")
    torch_req = f"torch=={torch.__version__.split('+')[0]}"
    print(f"{'rebuilding' if venv.exists() else 'creating'} {venv} ({problem}): {torch_req}, then {AVALANCHE} "
          f"(a few minutes, once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, torch_req], check=True)
    pin = venv / "torch-pin.txt"  # keeps pip from replacing the CPU wheel by a CUDA build for avalanche's deps
    pin.write_text(torch_req + "\n")
    subprocess.run([*pip, "-c", str(pin), AVALANCHE], check=True)
    problem = venv_problem(python, torch.__version__)
    if problem is not None:
        raise SystemExit(f"--venv {venv}: Avalanche's environment does not work after installing it: {problem}")
    return python


def venv_problem(python: Path, torch_version: str) -> str | None:
    """Why the environment of `python` cannot run the Avalanche side (one line), or None."""
    if not python.exists():
        return "no environment"
    p = subprocess.run([str(python), __file__, "--side", "check"], capture_output=True, text=True)
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        return f"Avalanche does not import: {lines[-1] if lines else f'exit status {p.returncode}'}"
    found = json.loads(p.stdout.strip().splitlines()[-1])
    if found["torch"] != torch_version:
        return f"torch {found['torch']}, not mmcl's {torch_version}"
    return None


def growth(exp_s: list[float]) -> float:
    """The last experience's training time over the second one's (the memory is full from the second on); on a
    stream of 10 or more experiences each is the median of 5 neighbours (a single one is too noisy to compare)."""
    if len(exp_s) < 10:
        return exp_s[-1] / exp_s[1]
    return statistics.median(exp_s[-5:]) / statistics.median(exp_s[1:6])


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", nargs="+", choices=sorted(WORKLOADS), default=["animals", "synthetic"])
    ap.add_argument("--buffer", type=int, default=200, help="replay memory size (samples, class-balanced)")
    ap.add_argument("--fused", action="store_true",
                    help="torch's fused Adam kernel on both sides (mmcl: train.fused=true)")
    ap.add_argument("--clock", choices=CLOCKS, default="cpu",
                    help="the closing line's time: the processes' CPU seconds (default: robust on a shared machine) "
                         "or wall seconds (both are printed per workload)")
    ap.add_argument("--venv", type=Path, default=ROOT / ".venv-avalanche", help="Avalanche's virtual environment")
    ap.add_argument("--side", choices=("avalanche", "check"), help=argparse.SUPPRESS)
    ap.add_argument("--exchange", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        print(json.dumps(avalanche_side(args.exchange) if args.side == "avalanche" else check_side()))
        return 0
    python = ensure_venv(args.venv)
    import torch

    torch.set_num_threads(1)
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workload in args.data:
            data_file = Path(tmp) / f"{workload}.pt"
            export(workload, args.buffer, data_file, args.fused)  # warms mmcl's cache outside the timings
            runs = {"mmcl": [], "avalanche": []}
            loads = [load_average()]
            for r in range(args.repeats):  # alternate the sides; the first side alternates too
                for side in (("mmcl", "avalanche") if r % 2 == 0 else ("avalanche", "mmcl")):
                    runs[side].append(mmcl_side(workload, args.buffer, Path(tmp) / "run", args.fused) if side == "mmcl"
                                      else avalanche_run(python, data_file))
                loads.append(load_average())
            med = {side: {clock: {k: statistics.median(x[clock][k] for x in rs) for k in ("process", "train", "eval")}
                          for clock in CLOCKS} for side, rs in runs.items()}
            for side, rs in runs.items():
                for clock in CLOCKS:
                    med[side][clock]["growth"] = statistics.median(growth(x[clock]["exp"]) for x in rs)
                med[side]["acc"] = statistics.median(x["last_acc"] for x in rs)
            n_exp = len(runs["mmcl"][0]["wall"]["exp"])
            print(f"\n{workload}: {n_exp} experiences, replay of {args.buffer} samples (class-balanced), batch {BATCH}"
                  f"+{BATCH}, one torch thread, median of {args.repeats} alternating runs; load average "
                  f"(1/5/15 min) {' -> '.join(loads)}")
            print(f"{'':10s}{'':6s}{'process s':>10s}{'train s':>9s}{'eval s':>8s}{'last/2nd':>9s}{'last_acc':>9s}"
                  f"   process s of each run")
            for side in ("mmcl", "avalanche"):
                for clock in CLOCKS:
                    m, each = med[side][clock], ", ".join(f"{x[clock]['process']:.2f}" for x in runs[side])
                    acc = f"{med[side]['acc']:.3f}" if clock == "wall" else ""
                    print(f"{side if clock == 'wall' else '':10s}{clock:6s}{m['process']:10.2f}{m['train']:9.2f}"
                          f"{m['eval']:8.2f}{m['growth']:9.2f}{acc:>9}   {each}")
            a, b = med["mmcl"], med["avalanche"]
            for clock in CLOCKS:
                print(f"mmcl/avalanche ({clock}): process {a[clock]['process'] / b[clock]['process']:.2f}, training "
                      f"{a[clock]['train'] / b[clock]['train']:.2f}, evaluation {a[clock]['eval'] / b[clock]['eval']:.2f}")
            print(f"accuracy difference (mmcl - avalanche): {a['acc'] - b['acc']:+.3f}")
            summary[workload] = med
    # the closing line (scripts read it): whole process and training summed over the workloads, growth on the
    # longest stream, accuracy on the first; in `--clock` time
    c = args.clock
    tot = {side: {k: sum(summary[w][side][c][k] for w in summary) for k in ("process", "train")} for side in runs}
    longest = "synthetic" if "synthetic" in summary else next(iter(summary))
    first = next(iter(summary))
    print(f"\n({c} time, {' + '.join(summary)})")
    print(f"mmcl/avalanche: whole process {tot['mmcl']['process'] / tot['avalanche']['process']:.2f}, training loop "
          f"{tot['mmcl']['train'] / tot['avalanche']['train']:.2f}, last/second experience mmcl "
          f"{summary[longest]['mmcl'][c]['growth']:.2f} avalanche {summary[longest]['avalanche'][c]['growth']:.2f}, "
          f"accuracy mmcl {summary[first]['mmcl']['acc']:.3f} avalanche {summary[first]['avalanche']['acc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
