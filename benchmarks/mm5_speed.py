"""Speed of one mm5 run: data generation (cold), feature extraction (cold), training, warm total.

Uses a fresh temporary $MMCL_CACHE so the cold figures are really cold, then runs the same
config again with the cache warm.

    python benchmarks/mm5_speed.py [--method er] [key=value ...]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="er")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["MMCL_CACHE"] = cache
        from mmcl.config import load_config
        from mmcl.data import mm5
        from mmcl.engine import run

        cfg = load_config(f"mm5-{args.method}", ["logging.progress=false", *args.overrides])
        p = mm5.MM5Params(**{k: v for k, v in cfg["benchmark"].items() if k != "name"})
        rows = []
        for m in p.modalities:
            t0 = time.perf_counter()
            mm5.ensure_data(m, p, cfg)
            t1 = time.perf_counter()
            feats, _ = mm5.modality_features(m, p, cfg)
            t2 = time.perf_counter()
            rows.append((m, t1 - t0, t2 - t1, len(feats["y"])))
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            metrics = run(cfg, out)
            warm = time.perf_counter() - t0
    print(f"mm5 / {args.method}: {len(metrics['experiences'])} experiences")
    print(f"{'modality':10s}{'samples':>9s}{'generate s':>12s}{'features s':>12s}")
    for m, g, f, n in rows:
        print(f"{m:10s}{n:9d}{g:12.1f}{f:12.1f}")
    print(f"{'total':10s}{sum(r[3] for r in rows):9d}{sum(r[1] for r in rows):12.1f}{sum(r[2] for r in rows):12.1f}")
    t = metrics["timing"]
    print(f"warm run: {warm:.1f} s wall (train {t['train_s']:.1f} s, eval {t['eval_s']:.1f} s), "
          f"training {t['samples_per_s']:.0f} samples/s")
    s = metrics["summary"]
    print("last_acc: " + ", ".join(f"{k} {v['last_acc']:.3f}" for k, v in s.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
