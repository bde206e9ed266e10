"""mm5 image modality: real Animal-MNIST silhouettes written as PNG files.

Real data, nothing synthetic: 28x28 grey silhouettes from the PyPI package `animal-mnist`
0.4 (MIT). Six of its ten animals are used — the ones that recur as spoken words in the
audio modality (cat, dog, cow, horse, sheep, bird) — so relevance between modalities is
real. A seeded draw picks `train_per_class` + `test_per_class` distinct images per class
(train and test never share an image). Each is written as an 8-bit PNG, the standard image
format, and decoded back with Pillow. Decoded sample: uint8 array (28, 28).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from mmcl.data.mm5.common import begin, decode_error, finish_manifest, read_manifest, sample_path

MODALITY = "image"
VERSION = "1"
CLASSES = ["cat", "dog", "cow", "horse", "sheep", "bird"]


def generate(root: Path, seed: int = 0, train_per_class: int = 100, test_per_class: int = 50) -> dict:
    from mmcl.data.animals import CLASS_NAMES, load_animal_mnist

    t0 = time.perf_counter()
    root = begin(root)
    x, y = load_animal_mnist()
    rng = np.random.default_rng(seed)
    files = []
    picks = {}
    for label, name in enumerate(CLASSES):
        idx = rng.permutation(np.flatnonzero(y == CLASS_NAMES.index(name)))
        picks[label] = {"train": idx[:train_per_class], "test": idx[train_per_class:train_per_class + test_per_class]}
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES):
            for i, src in enumerate(picks[label][split]):
                rel = sample_path(split, name, i, "png")
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(x[src], mode="L").save(root / rel, format="PNG")
                files.append({"path": rel, "label": label, "split": split, "source_index": int(src)})
    notes = ("Real Animal-MNIST silhouettes (PyPI animal-mnist 0.4, MIT), six classes that recur as spoken words "
             "in the audio modality; a seeded draw of distinct images per class, train and test disjoint; "
             "written as 8-bit PNG.")
    return finish_manifest(root, MODALITY, VERSION, seed, CLASSES, train_per_class, test_per_class, files,
                           time.perf_counter() - t0, notes)


def load(root: Path):
    root = Path(root)
    man = read_manifest(root, MODALITY)
    samples, labels, split = [], [], []
    for f in man["files"]:
        p = root / f["path"]
        try:
            with Image.open(p) as im:
                im.load()
                if im.mode != "L" or im.size != (28, 28):
                    raise decode_error(p, f"expected an 8-bit grey 28x28 PNG, got mode {im.mode} size {im.size}")
                arr = np.asarray(im, dtype=np.uint8)
        except ValueError:
            raise
        except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
            raise decode_error(p, f"cannot decode PNG ({type(e).__name__}: {e})") from None
        samples.append(arr)
        labels.append(f["label"])
        split.append(0 if f["split"] == "train" else 1)
    return samples, np.asarray(labels, dtype=np.int64), np.asarray(split, dtype=np.int8)
