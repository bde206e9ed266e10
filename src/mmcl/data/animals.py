"""`animals`: class-incremental learning over the 10 classes of Animal-MNIST.

Real data: 10,000 28x28 animal silhouettes (1,000 per class) shipped in the PyPI package
`animal-mnist` 0.4 (MIT), read directly from its gzip+pickle files (its own loader imports
tensorflow). Label index i is the i-th name in alphabetical order, as the package states
and as a look at the class means confirms.

Split: a fixed per-class split seeded by `split_seed` (default 0, independent of the run
seed): the first `test_per_class` of a seeded permutation are test, the next
`train_per_class` are train. The split and a hash of the selected pixels are recorded in
metrics.json (`stream_info`).

Features: the frozen ImageNet-trained EfficientNet-Lite0 at `image_size` px gives pooled
1280-d features `x` and ImageNet logits; `zs` is the zero-shot text embedding (ImageNet
probabilities over MiniLM embeddings of the ImageNet class names). Both are cached under
$MMCL_CACHE/features, keyed by the pixels' content hash, the encoder and the image size.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmcl.errors import ConfigError
from mmcl.paths import cache_dir
from mmcl.data.registry import BuildContext, class_order, register_benchmark
from mmcl.data.anchors import text_anchors
from mmcl.data.cache import cached_tensors, digest
from mmcl.stream import Experience, Stream, TensorSet

CLASS_NAMES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


@dataclass
class AnimalsParams:
    ranges = {"classes_per_experience": ">=1", "train_per_class": "[1,1000]", "test_per_class": "[1,1000]",
              "image_size": ">=8", "split_seed": ">=0"}
    classes_per_experience: int = 2  # 10 classes / 2 = 5 experiences
    train_per_class: int = 800  # of 1,000 images per class
    test_per_class: int = 200
    image_size: int = 96  # the silhouettes are upsampled to this size for the encoder
    split_seed: int = 0  # fixed split, independent of the run seed


def _package_dir() -> Path:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or spec.origin is None:
        raise ConfigError("benchmark 'animals' needs the package animal-mnist: pip install --no-deps animal-mnist==0.4")
    return Path(spec.origin).parent / "data" / "Animal_MNIST"


def load_animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 silhouettes (uint8, N x 28 x 28) and labels (int64, N)."""
    d = _package_dir()
    out = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        p = d / name
        try:
            with gzip.open(p, "rb") as f:
                out.append(np.asarray(pickle.load(f)))
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{p}: cannot read Animal-MNIST ({type(e).__name__}: {e})") from None
    x, y = out
    if x.shape[1:] != (28, 28) or len(x) != len(y):
        raise ValueError(f"{d}: expected N x 28 x 28 images with N labels, got {x.shape} and {y.shape}")
    return x.astype(np.uint8), y.astype(np.int64)


def split_indices(y: np.ndarray, train_per_class: int, test_per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        if train_per_class + test_per_class > len(idx):
            raise ConfigError(
                f"benchmark.train_per_class + benchmark.test_per_class = {train_per_class + test_per_class} "
                f"exceeds the {len(idx)} images of class {CLASS_NAMES[c]}"
            )
        test[int(c)] = idx[:test_per_class]
        train[int(c)] = idx[test_per_class : test_per_class + train_per_class]
    return train, test


def encode_images(images: np.ndarray, size: int, progress: bool = False) -> dict[str, torch.Tensor]:
    """Cached EfficientNet-Lite0 features + zero-shot text embeddings for `images`."""
    from mmcl.models import encoders as enc

    key = digest(images, enc.EFFNET_ID, size, enc.MINILM_ID, "zs-v1")
    path = cache_dir() / "features" / f"animals-{key}.safetensors"

    def compute():
        feats, logits = enc.images_to_features(images, size, progress=progress)
        return {"x": feats, "zs": enc.zero_shot_text_embedding(logits, enc.imagenet_name_embeddings())}

    return cached_tensors(path, compute)


@register_benchmark("animals", AnimalsParams)
def build(p: AnimalsParams, ctx: BuildContext) -> Stream:
    if p.classes_per_experience < 1 or len(CLASS_NAMES) % p.classes_per_experience:
        raise ConfigError(f"benchmark.classes_per_experience must divide 10, got {p.classes_per_experience}")
    x, y = load_animal_mnist()
    train_idx, test_idx = split_indices(y, p.train_per_class, p.test_per_class, p.split_seed)
    order = class_order(len(CLASS_NAMES), ctx)  # order[k] = original label of stream class k
    # encode in label order, so every class order (stream.order=random) shares one cache entry
    sel = np.concatenate([np.concatenate([train_idx[c], test_idx[c]]) for c in range(len(CLASS_NAMES))])
    feats = encode_images(x[sel], p.image_size, ctx.progress)
    # rows of `feats` follow `sel`; find each class's train/test rows in it
    pos = {int(i): r for r, i in enumerate(sel)}
    names = [CLASS_NAMES[c] for c in order]
    anchors = text_anchors(names, ctx.anchor_template)

    def tensor_set(k: int, idx: np.ndarray) -> dict[str, torch.Tensor]:
        rows = torch.tensor([pos[int(i)] for i in idx])
        return {"x": feats["x"][rows], "zs": feats["zs"][rows], "y": torch.full((len(idx),), k, dtype=torch.long)}

    exps = []
    k_per = p.classes_per_experience
    for e in range(len(CLASS_NAMES) // k_per):
        ks = list(range(e * k_per, (e + 1) * k_per))
        tr = [tensor_set(k, train_idx[order[k]]) for k in ks]
        te = [tensor_set(k, test_idx[order[k]]) for k in ks]
        cat = lambda parts: TensorSet({f: torch.cat([d[f] for d in parts]) for f in parts[0]})  # noqa: E731
        exps.append(Experience(e, "+".join(names[k] for k in ks), cat(tr), cat(te), modality="image", classes=ks))
    info = {
        "source": "animal-mnist 0.4 (PyPI), 28x28 silhouettes",
        "class_order": names,
        "split_seed": p.split_seed,
        "train_per_class": p.train_per_class,
        "test_per_class": p.test_per_class,
        "pixels_sha256_20": digest(x[sel]),
        "encoder": f"efficientnet-lite0 @ {p.image_size}px (frozen, ImageNet)",
        "text_encoder": "all-MiniLM-L6-v2 (frozen)",
        "zero_shot": "ImageNet-1k probabilities of the frozen encoder weighting MiniLM embeddings of the ImageNet class names",
    }
    return Stream("animals", exps, names, ["image"] * len(names), anchors, info)
