"""Speed of mm5 runs: data generation and feature extraction, then one warm run per method, side by side.

    python benchmarks/mm5_speed.py                       # every registered mm5-<method> config, warm cache
    python benchmarks/mm5_speed.py --methods er,comm     # some of them
    python benchmarks/mm5_speed.py --cold --methods er   # fresh temporary $MMCL_CACHE: really cold data figures
    python benchmarks/mm5_speed.py --methods l2p threads=2 train.epochs=5

Data figures: time to generate each modality's files and to extract its features (near zero
when the cache is warm). Per method: wall seconds of the whole run (train + eval + checkpoints),
training seconds, evaluation seconds and training samples/s (from metrics.json `timing`), and
last_acc in both protocols. The issue target is a warm run under 5 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def bundled_methods() -> list[str]:
    import mmcl

    configs = Path(mmcl.__file__).parent / "configs"
    return sorted(p.stem[len("mm5-"):] for p in configs.glob("mm5-*.yaml"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="all", help="comma-separated method names, or 'all' (default)")
    ap.add_argument("--method", help="alias of --methods for one method")
    ap.add_argument("--cold", action="store_true", help="use a fresh temporary cache (cold generation and features)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    methods = bundled_methods() if (args.method or args.methods) == "all" else (args.method or args.methods).split(",")
    tmp = tempfile.TemporaryDirectory() if args.cold else None
    if tmp is not None:
        os.environ["MMCL_CACHE"] = tmp.name
    from mmcl.config import load_config
    from mmcl.data import mm5
    from mmcl.engine import run

    overrides = ["logging.progress=false", *args.overrides]
    cfg = load_config(f"mm5-{methods[0]}", overrides)
    p = mm5.MM5Params(**{k: v for k, v in cfg["benchmark"].items() if k != "name"})
    rows = []
    for m in p.modalities:
        t0 = time.perf_counter()
        mm5.ensure_data(m, p)
        t1 = time.perf_counter()
        feats, _ = mm5.modality_features(m, p)
        t2 = time.perf_counter()
        rows.append((m, t1 - t0, t2 - t1, len(feats["y"])))
    threads = cfg["threads"] or f"torch default, {__import__('torch').get_num_threads()}"
    print(f"mm5 data ({'cold' if args.cold else 'cache as found'}; threads: {threads})")
    print(f"{'modality':10s}{'samples':>9s}{'generate s':>12s}{'features s':>12s}")
    for m, g, f, n in rows:
        print(f"{m:10s}{n:9d}{g:12.1f}{f:12.1f}")
    print(f"{'total':10s}{sum(r[3] for r in rows):9d}{sum(r[1] for r in rows):12.1f}{sum(r[2] for r in rows):12.1f}\n")
    results = []
    for name in methods:
        cfg = load_config(f"mm5-{name}", overrides)
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            metrics = run(cfg, out)
            wall = time.perf_counter() - t0
        t, s = metrics["timing"], metrics["summary"]
        results.append((name, wall, t["train_s"], t["eval_s"], t["samples_per_s"],
                        s["modality_aware"]["last_acc"], s["modality_agnostic"]["last_acc"]))
        print(f"  {name}: {wall:.1f} s", file=sys.stderr, flush=True)
    print(f"warm runs (threads: {threads}; each method's default hyper-parameters; "
          f"{cfg['train']['epochs']} epochs per experience)")
    print(f"{'method':12s}{'wall s':>8s}{'train s':>9s}{'eval s':>8s}{'samples/s':>11s}{'aware':>8s}{'agnostic':>10s}")
    for name, wall, tr, ev, sps, aw, ag in results:
        sps = "–" if sps is None else f"{sps:.0f}"  # no training (zeroshot)
        print(f"{name:12s}{wall:8.1f}{tr:9.1f}{ev:8.1f}{sps:>11s}{aw:8.3f}{ag:10.3f}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
