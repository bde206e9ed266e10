"""How fast does the scenario model learn one step? The sample-efficiency probe of docs/results/msvqa-mini.md.

Starts from a config's cached base model (trained once if missing, as `mmcl run` does), switches to
the config's stream regime (`vlm.lm_train`, LoRA, tower, projector), trains on one step's training
questions (Adam, the step's questions in a seeded order every epoch) and after each listed epoch
prints the mean training loss of that epoch and the step's test VQA (non-grounding questions,
normalised exact match) overall and per question type, and the grounding F1 of its grounding
questions (`--no-f1` skips them). No continual stream: one step in isolation.

    python benchmarks/scenario_probe.py --step 3 --epochs 2,4,8 --lr 5e-3
    python benchmarks/scenario_probe.py --step 3 --lr 1e-3 vlm.lm_train=full
    python benchmarks/scenario_probe.py --step 3 benchmark.train_images=600 benchmark.test_images=150
    python benchmarks/scenario_probe.py --step 3 --lr 2e-3 train.region_weight=1 vlm.train_embeddings=true
    python benchmarks/scenario_probe.py --step 3 --grounding-only --train-f1 200 --epochs 4,8,16

Any further argument is a config override (`key=value`); `--config` names the config
(default msvqa-mini-finetune: the bundled tiny model, 4-step stream).
"""
from __future__ import annotations

import argparse
import collections
import time

import torch

from mmcl.config import load_config
from mmcl.settings import build_stream
from mmcl.engine import seed_everything
from mmcl.scenario import normalize_answer
from mmcl.scenario.metrics import ScenarioScorer
from mmcl.settings import make_setting

PREFIXES = (("how many", "count"), ("is there", "exist"), ("what color", "color"), ("what", "category"))


def question_type(q: str) -> str:
    q = q.lower()
    return next((t for p, t in PREFIXES if q.startswith(p)), "other")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="msvqa-mini-finetune")
    ap.add_argument("--step", type=int, default=3, help="index of the stream step to learn (4-step: 3 = indoor)")
    ap.add_argument("--epochs", default="2,4,8", help="comma-separated epochs after which to evaluate")
    ap.add_argument("--lr", type=float, default=None, help="default: the config's train.lr")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's train.batch_size")
    ap.add_argument("--train-eval", type=int, default=0, help="also score the first N training questions (non-grounding)")
    ap.add_argument("--no-f1", dest="f1", action="store_false", help="skip the grounding questions (faster)")
    ap.add_argument("--train-f1", type=int, default=0, help="also score grounding F1 on the first N training grounding "
                    "questions (does the model fit the boxes it is trained on?)")
    ap.add_argument("--grounding-only", action="store_true", help="train on the step's grounding questions only")
    args, overrides = ap.parse_known_args()
    cfg = load_config(args.config, overrides)
    torch.set_num_threads(int(cfg["threads"]) or torch.get_num_threads())
    seed_everything(cfg["seed"])
    stream = build_stream(cfg)
    vlm = make_setting(cfg).build_model(stream)
    exp = stream[args.step]
    train, test = exp.train, exp.test
    seen_boxes = train.subset(torch.nonzero(train.grounding).flatten()[:args.train_f1])
    if args.grounding_only:
        train = train.subset(torch.nonzero(train.grounding).flatten())
    grounding = test.subset(torch.nonzero(test.grounding).flatten())
    test = test.subset(torch.nonzero(~test.grounding).flatten())
    lr, bs = args.lr or cfg["train"]["lr"], args.batch_size or cfg["train"]["batch_size"]
    params = [p for p in vlm.parameters() if p.requires_grad]
    print(f"step {args.step} ({exp.name}): {len(train)} training questions, {len(test)} test questions "
          f"(non-grounding); lm_train={cfg['vlm']['lm_train']}, {sum(p.numel() for p in params):,} trained "
          f"parameters, lr {lr}, batch {bs}")

    seen = train.subset(torch.nonzero(~train.grounding).flatten()[:args.train_eval])

    def vqa(data) -> str:
        answers = vlm.generate(data.images[data.image_index], data.questions, max_new_tokens=8,
                               batch_size=cfg["eval"]["batch_size"])
        by = collections.defaultdict(list)
        for q, a, y in zip(data.questions, answers, data.answers):
            ok = normalize_answer(a) == normalize_answer(y)
            by["all"].append(ok)
            by[question_type(q)].append(ok)
        return "  ".join(f"{k} {sum(v) / len(v):.3f}" for k, v in sorted(by.items()))

    def evaluate() -> str:
        text = vqa(test)
        if len(seen):
            text += f"  | training questions: {vqa(seen).split('  ')[0]}"
        if args.f1 and len(grounding):
            text += f"  | F1 {f1(grounding):.3f}"
        if len(seen_boxes):
            text += f"  | training F1 {f1(seen_boxes):.3f}"
        return text

    def f1(data) -> float:
        boxes = vlm.generate(data.images[data.image_index], data.questions,
                             max_new_tokens=cfg["eval"]["max_new_tokens"], batch_size=cfg["eval"]["batch_size"])
        return ScenarioScorer().update(boxes, data.answers, [True] * len(boxes)).result()["grounding_f1"]

    print(f"epoch  0  loss    -   VQA {evaluate()}", flush=True)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(int(cfg["seed"]))
    done, t0 = 0, time.perf_counter()
    for target in sorted({int(e) for e in args.epochs.split(",")}):
        while done < target:
            order, total, batches = torch.randperm(len(train), generator=g), 0.0, 0
            for s in range(0, len(train), bs):
                loss = vlm.loss(train.take(order[s:s + bs]))  # with train.region_weight: the region term too
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, batches = total + loss.item(), batches + 1
            done += 1
        print(f"epoch {done:2d}  loss {total / batches:.3f}  VQA {evaluate()}  ({time.perf_counter() - t0:.0f}s)",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
