"""What a blind model scores on msvqa-mini: the answer priors, the bar zero-shot must clear.

For every test question of the stream's scenarios, two blind answers: the most frequent answer to
questions of its type among the base model's (ground) training questions, and the most frequent
answer to the *same question text* among the ground training questions (falling back to the type's).
Prints the VQA score (normalised exact match, grounding questions left out as in the `vqa` matrix)
per scenario and question type.

With `--run DIR` (a finished run of the same benchmark, e.g. `mmcl run msvqa-mini-zeroshot`), the
run's last answers (`DIR/predictions.jsonl`) are scored beside the priors and compared, question by
question, with the prior that scores higher overall (the stronger bar): how many the run gets right where the prior is wrong (m+p-)
and the reverse (p+m-), and the one-sided exact sign test of "the run beats the prior" on them.

    python benchmarks/msvqa_prior.py [--run DIR] [config overrides, e.g. benchmark.test_images=150]
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import sys
from pathlib import Path

from mmcl.config import load_config
from mmcl.data.msvqa import ensure_msvqa_mini_for
from mmcl.data.msvqa.llava_format import read_llava_json
from mmcl.data.msvqa.mini import PRETRAIN_SCENARIO, STREAM_SCENARIOS
from mmcl.scenario import normalize_answer


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(X >= wins) for X ~ Binomial(wins + losses, 1/2)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n if n else 1.0


def read_predictions(run: Path) -> dict[str, str]:
    path = run / "predictions.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        return {r["id"]: r["prediction"] for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"{path}: expected a run's predictions.jsonl (one JSON record with id and prediction "
                         f"per line): {e}") from None


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="a finished run directory to compare with the priors")
    args, overrides = ap.parse_known_args(argv)
    preds = read_predictions(args.run) if args.run else None
    b = load_config("msvqa-mini-finetune", overrides)["benchmark"]
    root, _ = ensure_msvqa_mini_for(b)
    train = [s for s in read_llava_json(root / "train.json", image_root=root) if s.scenario == PRETRAIN_SCENARIO]
    test = [s for s in read_llava_json(root / "test.json", image_root=root)
            if s.scenario in STREAM_SCENARIOS and s.qtype != "grounding"]
    by_type = collections.defaultdict(collections.Counter)
    by_text = collections.defaultdict(collections.Counter)
    for s in train:
        by_type[s.qtype][normalize_answer(s.answer)] += 1
        by_text[s.question][normalize_answer(s.answer)] += 1
    if preds is not None:
        missing = [s.id for s in test if s.id not in preds]
        if missing:
            raise SystemExit(f"{args.run / 'predictions.jsonl'}: no prediction for {len(missing)} test questions "
                             f"(e.g. {missing[0]}): not a run of this benchmark's data")
    typ_of = {s.id: by_type[s.qtype].most_common(1)[0][0] if by_type[s.qtype] else "" for s in test}
    txt_of = {s.id: by_text[s.question].most_common(1)[0][0] if by_text[s.question] else typ_of[s.id] for s in test}
    score = lambda prior: sum(prior[s.id] == normalize_answer(s.answer) for s in test)  # noqa: E731
    bar = typ_of if score(typ_of) >= score(txt_of) else txt_of
    rows = collections.defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    for s in test:
        typ, txt, y = typ_of[s.id], txt_of[s.id], normalize_answer(s.answer)
        m = preds is not None and normalize_answer(preds[s.id]) == y
        for key in ((s.scenario, s.qtype), (s.scenario, "all"), ("all", s.qtype), ("all", "all")):
            r = rows[key]
            r[0] += 1
            r[1] += typ == y
            r[2] += txt == y
            r[3] += m
            r[4] += m and bar[s.id] != y
            r[5] += bar[s.id] == y and not m
    if preds is not None:
        print(f"run {args.run}: compared with the {'type' if bar is typ_of else 'question'} prior (the higher overall)")
    head = f"{'scenario':14s} {'type':9s} {'n':>5s} {'type prior':>10s} {'question prior':>14s}"
    print(head + (f" {'run':>6s} {'m+p-':>5s} {'p+m-':>5s} {'sign p':>7s}" if preds is not None else ""))
    for (sc, t), (n, a, q, m, w, lo) in sorted(rows.items()):
        line = f"{sc:14s} {t:9s} {n:5d} {a / n:10.3f} {q / n:14.3f}"
        print(line + (f" {m / n:6.3f} {w:5d} {lo:5d} {sign_test(w, lo):7.4f}" if preds is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
