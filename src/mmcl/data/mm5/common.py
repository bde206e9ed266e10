"""Manifest writing and reading shared by the mm5 generators."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from mmcl.results import atomic_write_text


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def sample_path(split: str, class_name: str, index: int, ext: str) -> str:
    return f"{split}/{slug(class_name)}/{index}.{ext}"


def decode_error(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: {what}")


def files_digest(root: Path, files: list[dict]) -> tuple[str, int]:
    h = hashlib.sha256()
    total = 0
    for f in files:
        data = (root / f["path"]).read_bytes()
        total += len(data)
        h.update(f["path"].encode())
        h.update(data)
    return h.hexdigest(), total


def finish_manifest(root: Path, modality: str, version: str, seed: int, classes: list[str], train_per_class: int,
                    test_per_class: int, files: list[dict], seconds: float, notes: str, **extra) -> dict:
    """Hash the written files and write manifest.json last, atomically."""
    sha, total = files_digest(root, files)
    man = {
        "modality": modality, "version": version, "seed": seed, "classes": classes,
        "train_per_class": train_per_class, "test_per_class": test_per_class, "files": files,
        "counts": {s: sum(f["split"] == s for f in files) for s in ("train", "test")},
        "bytes": total, "sha256": sha, "seconds": round(seconds, 3), "notes": notes, **extra,
    }
    atomic_write_text(Path(root) / "manifest.json", json.dumps(man, indent=1))
    return man


def read_manifest(root: Path) -> dict:
    p = Path(root) / "manifest.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
