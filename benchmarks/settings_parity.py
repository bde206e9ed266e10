"""Numbers unchanged by a refactor: run a fixed set of configs and compare their matrices.

`--record DIR` runs every config below (seed 0, one thread, no report) into DIR/<config>, using
whatever `mmcl` the interpreter imports (point PYTHONPATH at another checkout's `src` to record
that one). `--compare A B` compares the matrices and baselines of the runs in A and B cell by
cell and exits 1 on any difference.

    PYTHONPATH=/path/to/old/src python benchmarks/settings_parity.py --record runs/parity-before
    python benchmarks/settings_parity.py --record runs/parity-after
    python benchmarks/settings_parity.py --compare runs/parity-before runs/parity-after

`--pin-lora` runs the msvqa-mini configs in the LoRA regime the bundled configs had before
2026-12-03 (the overrides of sweeps/msvqa-mini-lora.yaml), to compare with runs recorded then.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = ["animals-er", "mm5-er", "mm5-comm", "mm5-l2p",
           "msvqa-mini-finetune", "msvqa-mini-quad", "msvqa-mini-unifier"]
OVERRIDES = ["seed=0", "threads=1", "report=false", "logging.progress=false"]


def lora_regime() -> list[str]:
    """The msvqa-mini configs' regime before the grounded defaults: the overrides sweeps/msvqa-mini-lora.yaml pins."""
    from mmcl.sweep import read_spec

    return [o for o in read_spec("msvqa-mini-lora").overrides if not o.startswith("threads=")]


def record(out: Path, configs: list[str], pin_lora: bool = False) -> None:
    for name in configs:
        d = out / name
        if (d / "metrics.json").exists():
            print(f"{name}: already recorded")
            continue
        t0 = time.perf_counter()
        pinned = lora_regime() if pin_lora and name.startswith("msvqa-mini") else []
        cmd = [sys.executable, "-m", "mmcl", "run", name, *OVERRIDES, *pinned, "--out", str(d), "--force"]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)


def compare(a: Path, b: Path, configs: list[str]) -> int:
    bad = 0
    for name in configs:
        ma = json.loads((a / name / "metrics.json").read_text())
        mb = json.loads((b / name / "metrics.json").read_text())
        diffs = []
        for key in ("matrices", "baseline"):
            for mat in sorted(set(ma[key]) | set(mb[key])):
                x, y = ma[key].get(mat), mb[key].get(mat)
                if x != y:
                    diffs.append(f"{key}.{mat}: {x} != {y}")
        if [e for e in ma["experiences"]] != [e for e in mb["experiences"]]:
            diffs.append("experiences differ")
        print(f"{name}: {'identical' if not diffs else 'DIFFERENT'}")
        for d in diffs:
            print(f"    {d}")
        bad += bool(diffs)
    return 1 if bad else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--record", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path)
    ap.add_argument("--configs", nargs="*", default=CONFIGS)
    ap.add_argument("--pin-lora", action="store_true", help="msvqa-mini configs in the LoRA regime of before 2026-12-03")
    args = ap.parse_args()
    if args.record:
        record(args.record, args.configs, args.pin_lora)
    if args.compare:
        return compare(*args.compare, args.configs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
