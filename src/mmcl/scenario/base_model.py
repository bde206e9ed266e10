"""The scenario setting's model: a VLM (`vlm.*`) that starts from a base model trained once, then fine-tunes.

A pretrained MLLM knows how to answer before the continual stream starts. The embedded presets
start from random weights, so the benchmark's pre-training scenario (msvqa-mini's `ground`:
plain ground-level scenes, never a step of the stream) first trains the whole model
(lm_train=full, vision tower and projector) for `base.epochs`. The result is cached under
`$MMCL_CACHE/models/scenario-base/<key>.pt`, the key a hash of everything that determines it:
the model parameters that shape the weights, `base.*` and a hash of the pre-training data itself
(its images as the model sees them, questions and answers), so changing the stream's scenarios or
sizes reuses the base model while any change to the pre-training data retrains it. Then the model
is switched to the stream's training regime (`vlm.lm_train`, by default LoRA on the language model,
plus projector / tower per config).

With `base.region_weight` > 0 base training adds a region-naming loss (`VLM.losses`): at every
image token the language-model head must name the object its cell shows (from the pre-training
data's object boxes), weighted by `region_weight`: dense supervision of what the image tokens
mean, in the words the answers use. Data without boxes labels no cell and adds nothing. It is off
by default; what it does on msvqa-mini is measured in docs/results/msvqa-mini.md.

Base training draws its randomness from its own generators inside `fork_rng`, so a run behaves
the same whether the base model came from the cache or was just trained. The scenario setting
runs it as a stage before the stream (`ScenarioSetting.prepare`), recorded in metrics.json.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import time

import torch

from mmcl import seeds
from mmcl.paths import cache_dir
from mmcl.models.llava import IGNORE, VLM, VLMParams, build_vlm
from mmcl.results import atomic_write_bytes, atomic_write_text
from mmcl.stream import SampleSet, Stream

VERSION = "3"  # 2: per-question answer loss; 3: keyed by the pre-training data's content
#: VLMParams fields that only say what the *stream* trains; they do not change the base weights
STREAM_ONLY = ("lm_train", "lora_r", "lora_alpha", "lora_dropout", "lora_targets", "train_embeddings", "train_vision",
               "train_projector", "gradient_checkpointing", "fsdp")


def vlm_params(cfg: dict) -> VLMParams:
    return VLMParams.from_dict(cfg["vlm"])


def pretrain_digest(data: SampleSet) -> str:
    """sha256 of what base training reads: the images (as decoded and resized), questions and answers."""
    h = hashlib.sha256()
    h.update(data.images[data.image_index].contiguous().numpy().tobytes())
    h.update(json.dumps([data.questions, data.answers]).encode())
    return h.hexdigest()


def base_key(cfg: dict, stream: Stream) -> dict:
    p = {k: v for k, v in dataclasses.asdict(vlm_params(cfg)).items() if k not in STREAM_ONLY}
    p["lora_targets"] = None
    if p.get("vocab") == "bert":  # the default: the key of before the option
        del p["vocab"]
    base = {k: v for k, v in cfg["base"].items() if k != "region_weight" or v}  # off: the key of before the option
    key = {"version": VERSION, "vlm": p, "base": base, "pretrain_sha256": pretrain_digest(stream.pretrain),
           "base_scenario": stream.info.get("base_scenario"), "questions": len(stream.pretrain)}
    if "region_weight" in base:  # the boxes are then training data too
        key["pretrain_boxes_sha256"] = hashlib.sha256(json.dumps(
            [[[str(lab), [float(x) for x in b]] for lab, b in objs] for objs in stream.pretrain.boxes]).encode()).hexdigest()
    return key


def train_base(vlm: VLM, data: SampleSet, bcfg: dict, seed: int, progress: bool = True) -> dict:
    """Train every trainable parameter of `vlm` on `data` (answer-token cross-entropy, plus the
    region-naming loss times `region_weight` when it is > 0; Adam)."""
    params = [p for p in vlm.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=bcfg["lr"])
    bs, losses, region_losses, t0 = int(bcfg["batch_size"]), [], [], time.perf_counter()
    weight = float(bcfg.get("region_weight") or 0.0)
    cells = vlm.region_targets(data.boxes) if weight else None
    vlm.train()
    for epoch in range(int(bcfg["epochs"])):
        g = seeds.generator(seed, "base_batch_order", epoch)
        order = torch.randperm(len(data), generator=g)
        total = region_total = 0.0
        for s in range(0, len(data), bs):
            idx = order[s:s + bs]
            if cells is None:
                loss = vlm.loss(data.take(idx))
            else:
                answer, region = vlm.losses(data.take(idx), cells[idx])
                loss = answer + weight * region
                region_total += region.item() * len(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(round(total / len(data), 4))
        region_losses.append(round(region_total / len(data), 4))
        if progress:
            extra = f" (region naming {region_losses[-1]:.4f})" if weight else ""
            print(f"base model: epoch {epoch + 1}/{bcfg['epochs']} loss {losses[-1]:.4f}{extra} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
    info = {"epoch_losses": losses, "train_s": round(time.perf_counter() - t0, 2), "questions": len(data)}
    if weight:
        info["region_losses"] = region_losses
        info["labelled_cells"] = round(float((cells != IGNORE).float().mean()), 4)
    return info


def base_weights(cfg: dict, stream: Stream, progress: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """The base model's weights (the HF model's state dict) and what is known of its training: loaded
    from the cache, or trained on `stream.pretrain` and cached. Needs pre-training data."""
    params = vlm_params(cfg)
    key = base_key(cfg, stream)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / "models" / "scenario-base" / f"{digest}.pt"
    meta_path = path.with_suffix(".json")
    if path.is_file() and meta_path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True), json.loads(meta_path.read_text())
    from mmcl.device import resolve_device

    with torch.random.fork_rng():
        vlm = build_vlm(dataclasses.replace(params, lm_train="full", train_vision=True, train_projector=True))
        vlm.to(resolve_device(cfg.get("device", "auto")))  # in fp32: the cache does not depend on `precision`
        info = train_base(vlm, stream.pretrain, cfg["base"], params.seed, progress=progress)
    state = {k: v.detach().cpu().contiguous() for k, v in vlm.hf.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())
    meta = {"key": key, **info, "path": str(path)}
    atomic_write_text(meta_path, json.dumps(meta, indent=1))  # written last: the pair is complete
    return state, meta


def base_info(meta: dict) -> dict:
    """What a run records of its base model."""
    return {k: meta[k] for k in ("path", "epoch_losses", "train_s", "questions", "region_losses", "labelled_cells")
            if k in meta}


def build_scenario_model(cfg: dict, base_state: dict[str, torch.Tensor] | None = None) -> VLM:
    """The VLM of `cfg["vlm"]` holding `base_state` (the base model's weights; None: as built), switched to
    the stream's training regime."""
    from mmcl.device import DTYPES, resolve_device, resolve_precision

    params = vlm_params(cfg)
    precision = resolve_precision(cfg.get("precision", "auto"), resolve_device(cfg.get("device", "auto")))
    vlm = build_vlm(dataclasses.replace(params, lm_train="full", train_vision=True, train_projector=True),
                    dtype=DTYPES[precision] if params.preset.startswith("hf:") else torch.float32)
    if base_state is not None:
        vlm.hf.load_state_dict(base_state)
    vlm.set_training(params)
    return vlm
