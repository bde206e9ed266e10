"""The README's pictures: a run report and a comparison page, rendered by headless Chromium.

    python docs/screenshots.py                 # runs into runs/screenshots (reused), PNGs into docs/img/

Runs mm5 with zeroshot, finetune and er over two seeds through the Python API (finished runs are reused),
writes the comparison page with `mmcl compare --html`'s code, and photographs ER's report.html and the
page with `chromium --headless --screenshot` (Debian package `chromium`).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import mmcl
from mmcl.api import labels
from mmcl.report import compare_page, render

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("zeroshot", "finetune", "er")
SEEDS = (0, 1)


def screenshot(page: Path, png: Path, width: int, height: int) -> None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        sys.exit("chromium not found: apt-get install chromium")
    png.parent.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={png}",
           f"--window-size={width},{height}", page.resolve().as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0 or not png.is_file():
        sys.exit(f"chromium failed ({p.returncode}): {p.stderr[-500:]}")
    print(f"{png}  ({page})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/screenshots", help="where the runs go (finished ones are reused)")
    ap.add_argument("--img", default=str(ROOT / "docs" / "img"), help="where the PNGs go")
    ap.add_argument("--width", type=int, default=1200)
    ap.add_argument("--height", type=int, default=1600)
    args = ap.parse_args()
    runs = []
    for m in METHODS:
        for s in SEEDS:
            out = Path(args.runs) / f"mm5-{m}-seed{s}"
            if (out / "metrics.json").exists():
                runs.append(mmcl.load_run(out))
            else:
                runs.append(mmcl.run(f"mm5-{m}", {"seed": s, "logging.progress": False}, out=out, force=True))
            print(runs[-1])
    img = Path(args.img)
    er = next(r for r in runs if r.metrics["method"] == "er")
    screenshot(render(er.path), img / "run-report.png", args.width, args.height)  # rendered by this mmcl
    page = compare_page(list(zip(labels(runs), (r.metrics for r in runs))), Path(args.runs) / "compare.html",
                        title="mmcl compare: mm5, zeroshot / finetune / er, seeds 0 and 1")
    screenshot(page, img / "compare-page.png", args.width, args.height)
    return 0


if __name__ == "__main__":
    sys.exit(main())
