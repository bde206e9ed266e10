"""`mm5`: five modalities learned one after another, every class anchored in text.

Experiences (default order image, video, audio, depth, text; `stream.order=random` draws a
seeded order; `stream.experiences_per_modality=k` splits each modality's classes over k
experiences). Each modality's data comes from its generator module beside this file, is
written as real files (PNG, MP4, WAV, 16-bit PNG, UTF-8 text) under
$MMCL_CACHE/data/mm5/, decoded back by the module's reader, and turned into token features
by frozen pretrained encoders, cached under $MMCL_CACHE/features/ by the data's hash:

| modality | data | tokens (<= 8 per sample) | zero-shot map `zs` |
|---|---|---|---|
| image | Animal-MNIST silhouettes (real) | EfficientNet-Lite0 feature map, 2x2 pooled | ImageNet probs -> MiniLM names |
| video | pybullet renders, label = motion | 1 appearance token (EfficientNet-Lite0, mean over 8 frames) + 7 motion tokens (Farneback optical flow between frames on a 4x4 grid) | mean ImageNet map over frames (motion-blind: ~chance) |
| audio | espeak-ng spoken words | EfficientNet-Lite0 on the log-mel spectrogram, 2x3 pooled | none (zeros): no training-free speech map ships |
| depth | pybullet depth maps of objects | EfficientNet-Lite0 on the depth image, 2x2 pooled | ImageNet map on the depth image (weak) |
| text | Debian fortunes quotes by topic (real) | MiniLM token embeddings, 8 mean-pooled segments | MiniLM sentence embedding |

Class anchors embed a per-modality phrase ("the spoken word cat", "a quote about food"), so
concepts that recur across modalities (cat as a silhouette and as a spoken word) get related
but distinct anchors, and every experience brings classes not seen before.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmcl.errors import ConfigError
from mmcl.paths import cache_dir
from mmcl.data.registry import BuildContext, register_benchmark
from mmcl.data.anchors import text_anchors
from mmcl.data.cache import cached_tensors, digest
from mmcl.stream import MODALITIES, Experience, Stream, TensorSet

ANCHOR_TEMPLATES = {
    "image": "a silhouette of a {}",
    "video": "a video of an object {}",
    "audio": "the spoken word {}",
    "depth": "a depth map of a {}",
    "text": "a quote about {}",
}
FEATURE_VERSION = {"video": "2"}  # bump a modality's entry when its feature extraction changes
TOKENS = 8  # token slots per sample (shorter sequences are masked)
WIDTH = 1280  # token feature width (MiniLM's 384-d text tokens are zero-padded)


@dataclass
class MM5Params:
    ranges = {"train_per_class": ">=1", "test_per_class": ">=1", "data_seed": ">=0"}
    modalities: list = field(default_factory=lambda: list(MODALITIES))  # default order
    train_per_class: int = 100
    test_per_class: int = 50
    data_seed: int = 0  # seed of every generator (independent of the run seed)


def generator(modality: str):
    if modality not in MODALITIES:
        raise ConfigError(f"benchmark.modalities: unknown modality '{modality}'; available: {', '.join(MODALITIES)}")
    return importlib.import_module(f"mmcl.data.mm5.{modality}")


def data_root(modality: str, p: MM5Params) -> Path:
    gen = generator(modality)
    return cache_dir() / "data" / "mm5" / f"{modality}-v{gen.VERSION}-s{p.data_seed}-{p.train_per_class}x{p.test_per_class}"


def ensure_data(modality: str, p: MM5Params) -> tuple[Path, dict]:
    """Generate a modality's files once (cached); return their directory and manifest."""
    from mmcl.data.mm5.common import read_manifest

    root = data_root(modality, p)
    if not (root / "manifest.json").is_file():
        generator(modality).generate(root, seed=p.data_seed, train_per_class=p.train_per_class,
                                     test_per_class=p.test_per_class)
    return root, read_manifest(root)


def _pad(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, t, d) -> (N, TOKENS, max(WIDTH, d)) float16 and the (N, TOKENS) validity mask."""
    n, t, d = tokens.shape
    out = torch.zeros(n, TOKENS, max(WIDTH, d), dtype=torch.float16)
    out[:, :t, :d] = tokens[:, :TOKENS].to(torch.float16)
    mask = torch.zeros(n, TOKENS, dtype=torch.bool)
    mask[:, :t] = True
    return out, mask


def _grey_to_uint8(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return np.zeros(a.shape, np.uint8) if hi <= lo else ((a - lo) / (hi - lo) * 255).astype(np.uint8)


def encode_modality(modality: str, samples: list, progress: bool) -> dict[str, torch.Tensor]:
    """Frozen-encoder token features and zero-shot text embeddings for decoded samples."""
    from mmcl.models import encoders as enc

    n = len(samples)
    if modality == "text":
        tokens, sent = enc.text_tokens(samples, TOKENS)
        return {"tokens": tokens, "zs": sent}
    if modality == "video":
        frames = np.stack(samples)  # (N, T, H, W, 3)
        N, T = frames.shape[:2]
        maps, logits = enc.image_feature_maps(frames.reshape(N * T, *frames.shape[2:]), size=(64, 64), grid=(1, 1),
                                              desc="encoding video frames (once)", progress=progress)
        flow = enc.optical_flow_grid(frames, grid=4)  # (N, T-1, 32): where and which way things move
        tokens = torch.zeros(N, T, WIDTH)
        tokens[:, 0] = maps.reshape(N, T, -1).mean(1)
        tokens[:, 1:, : flow.shape[-1]] = flow
        zs = enc.zero_shot_text_embedding(logits.reshape(N, T, -1).mean(1), enc.imagenet_name_embeddings())
        return {"tokens": tokens, "zs": zs}
    if modality == "audio":
        imgs = np.stack([_grey_to_uint8(s) for s in samples])  # log-mel (mels, frames) as a grey image
        maps, _ = enc.image_feature_maps(imgs, size=(64, 96), grid=(2, 3), desc="encoding spectrograms (once)",
                                         progress=progress)
        return {"tokens": maps, "zs": torch.zeros(n, 384)}
    if modality == "depth":
        from mmcl.data.mm5.depth import depth_to_image

        imgs = np.stack([depth_to_image(s) for s in samples])
    else:
        imgs = np.stack(samples)
    maps, logits = enc.image_feature_maps(imgs, size=(96, 96), grid=(2, 2), desc=f"encoding {modality} (once)",
                                          progress=progress)
    return {"tokens": maps, "zs": enc.zero_shot_text_embedding(logits, enc.imagenet_name_embeddings())}


def modality_features(modality: str, p: MM5Params, progress: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Cached features of one modality: tokens, mask, zs, y (local label), split."""
    from mmcl.models import encoders as enc

    root, man = ensure_data(modality, p)
    key = digest(man["sha256"], enc.EFFNET_ID, enc.MINILM_ID, TOKENS, WIDTH, FEATURE_VERSION.get(modality, "1"))
    path = cache_dir() / "features" / f"mm5-{modality}-{key}.safetensors"

    def compute():
        samples, labels, split = generator(modality).load(root)
        f = encode_modality(modality, samples, progress)
        tokens, mask = _pad(f["tokens"])
        return {"tokens": tokens, "mask": mask, "zs": f["zs"].float(), "y": torch.from_numpy(labels),
                "split": torch.from_numpy(split.astype(np.int64))}

    return cached_tensors(path, compute), man


@register_benchmark("mm5", MM5Params)
def build(p: MM5Params, ctx: BuildContext) -> Stream:
    order = list(p.modalities)
    if len(set(order)) != len(order) or not order:
        raise ConfigError(f"benchmark.modalities must list distinct modalities, got {order}")
    for m in order:
        generator(m)
    if ctx.stream.get("order") == "random":
        rng = np.random.default_rng(ctx.order_seed)
        order = [order[i] for i in rng.permutation(len(order))]
    k = ctx.stream.get("experiences_per_modality", 1)
    exps, names, anchor_texts, class_mod, info = [], [], [], [], {"modality_order": order, "modalities": {}}
    for modality in order:
        feats, man = modality_features(modality, p, ctx.progress)
        classes = man["classes"]
        if not 1 <= k <= len(classes):
            raise ConfigError(f"stream.experiences_per_modality must be in 1..{len(classes)}, got {k}")
        info["modalities"][modality] = {key: man[key] for key in ("version", "seed", "counts", "bytes", "sha256", "notes")}
        for part in np.array_split(np.arange(len(classes)), k):
            first = len(names)
            local = [int(c) for c in part]
            ids = list(range(first, first + len(local)))
            for c in local:
                anchor_texts.append(ANCHOR_TEMPLATES[modality].format(classes[c]))
                names.append(anchor_texts[-1])
                class_mod.append(modality)

            def subset(split: int) -> TensorSet:
                sel = (feats["split"] == split) & torch.isin(feats["y"], torch.tensor(local))
                remap = torch.full((len(classes),), -1, dtype=torch.long)
                remap[torch.tensor(local)] = torch.tensor(ids)
                n = int(sel.sum())
                return TensorSet({"tokens": feats["tokens"][sel], "mask": feats["mask"][sel], "zs": feats["zs"][sel],
                                  "m": torch.full((n,), MODALITIES.index(modality), dtype=torch.long),
                                  "y": remap[feats["y"][sel]]})

            name = modality if k == 1 else f"{modality}-{len([e for e in exps if e.modality == modality]) + 1}"
            exps.append(Experience(len(exps), name, subset(0), subset(1), modality=modality, classes=ids))
    anchors = text_anchors(anchor_texts, ctx.anchor_template)
    return Stream("mm5", exps, names, class_mod, anchors, info)
