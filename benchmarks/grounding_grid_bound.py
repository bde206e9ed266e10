"""How well can a model ground objects if its box edges can only fall on its grid of image tokens?

For every annotated object of msvqa-mini's test split, each box edge is snapped to the nearest line of a
`side` x `side` grid (the best a model that places edges at token boundaries can do); printed is the
fraction of objects whose snapped box still overlaps the true one at IoU >= 0.5 (the grounding F1's
threshold), per scenario and grid. The bundled tiny model sees a 6x6 grid (96 px, a stride-16 stem).

    python benchmarks/grounding_grid_bound.py [--grids 6 8 12 16 32]
"""
from __future__ import annotations

import argparse

from mmcl.data.msvqa import STREAM_SCENARIOS, ensure_msvqa_mini, load_msvqa_mini
from mmcl.scenario.metrics import IOU_THRESHOLD, box_iou


def snapped(box, side: int) -> tuple[float, float, float, float]:
    step = 100.0 / side
    x1, y1, x2, y2 = (round(v / step) * step for v in box)
    return x1, y1, max(x2, x1 + step), max(y2, y1 + step)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grids", type=int, nargs="+", default=[6, 8, 12, 16, 32])
    args = ap.parse_args()
    ensure_msvqa_mini(seed=0)
    images = {}
    for s in load_msvqa_mini("test", scenarios=list(STREAM_SCENARIOS)):
        images[s.image] = (s.scenario, s.boxes)  # every annotated object once per image
    print(f"{len(images)} test images; share of objects a grid-limited box matches at IoU >= {IOU_THRESHOLD}")
    print(f"{'grid':>6s}" + "".join(f"{sc:>15s}" for sc in STREAM_SCENARIOS) + f"{'all':>8s}")
    for side in args.grids:
        hits: dict[str, list[bool]] = {sc: [] for sc in STREAM_SCENARIOS}
        for scenario, boxes in images.values():
            hits[scenario] += [box_iou(b.box, snapped(b.box, side)) >= IOU_THRESHOLD for b in boxes]
        every = [h for v in hits.values() for h in v]
        print(f"{side:>4d}x{side:<2d}" + "".join(f"{sum(v) / len(v):15.3f}" for v in hits.values())
              + f"{sum(every) / len(every):8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
