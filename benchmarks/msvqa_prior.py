"""What a blind model scores on msvqa-mini: the answer priors, the bar zero-shot must clear.

For every test question of the stream's scenarios, two blind answers: the most frequent answer to
questions of its type among the base model's (ground) training questions, and the most frequent
answer to the *same question text* among the ground training questions (falling back to the type's).
Prints the VQA score (normalised exact match, grounding questions left out as in the `vqa` matrix)
per scenario and question type. Usage: `python benchmarks/msvqa_prior.py [benchmark.* overrides]`.
"""
from __future__ import annotations

import collections
import sys

from mmcl.config import load_config
from mmcl.data.msvqa import ensure_msvqa_mini
from mmcl.data.msvqa.llava_format import read_llava_json
from mmcl.data.msvqa.mini import PRETRAIN_SCENARIO, STREAM_SCENARIOS
from mmcl.scenario import normalize_answer


def main(argv: list[str]) -> int:
    b = load_config("msvqa-mini-finetune", argv)["benchmark"]
    root, _ = ensure_msvqa_mini(seed=b["data_seed"], train_images=b["train_images"], test_images=b["test_images"],
                                questions_per_image=b["questions_per_image"], base_images=b["base_images"])
    train = [s for s in read_llava_json(root / "train.json", image_root=root) if s.scenario == PRETRAIN_SCENARIO]
    test = [s for s in read_llava_json(root / "test.json", image_root=root)
            if s.scenario in STREAM_SCENARIOS and s.qtype != "grounding"]
    by_type = collections.defaultdict(collections.Counter)
    by_text = collections.defaultdict(collections.Counter)
    for s in train:
        by_type[s.qtype][normalize_answer(s.answer)] += 1
        by_text[s.question][normalize_answer(s.answer)] += 1
    rows = collections.defaultdict(lambda: [0, 0, 0])
    for s in test:
        typ = by_type[s.qtype].most_common(1)[0][0] if by_type[s.qtype] else ""
        txt = by_text[s.question].most_common(1)[0][0] if by_text[s.question] else typ
        y = normalize_answer(s.answer)
        for key in ((s.scenario, s.qtype), (s.scenario, "all"), ("all", s.qtype), ("all", "all")):
            rows[key][0] += 1
            rows[key][1] += typ == y
            rows[key][2] += txt == y
    print(f"{'scenario':14s} {'type':9s} {'n':>5s} {'type prior':>10s} {'question prior':>14s}")
    for (sc, t), (n, a, q) in sorted(rows.items()):
        print(f"{sc:14s} {t:9s} {n:5d} {a / n:10.3f} {q / n:14.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
