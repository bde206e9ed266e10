"""Manifest writing and reading shared by the mm5 generators."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from mmcl.results import atomic_write_text


def begin(root: Path) -> Path:
    """Create `root` and delete an existing root/manifest.json before any sample file is (re)written,
    so a crash mid-regeneration never leaves an old manifest describing half-rewritten files."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").unlink(missing_ok=True)
    return root


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


def read_manifest(root: Path, modality: str | None = None) -> dict:
    """root/manifest.json, checked to be a mm5 manifest (of `modality`, if given).

    FileNotFoundError when it is missing, ValueError naming the file when it is not valid JSON,
    lacks "files" or "classes", or describes another modality.
    """
    p = Path(root) / "manifest.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: manifest not found (run generate() first)")
    try:
        man = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(man, dict):
        raise ValueError(f"{p}: expected a mm5 manifest (a JSON object), got {type(man).__name__}")
    for key in ("files", "classes"):
        if not isinstance(man.get(key), list):
            raise ValueError(f"{p}: expected a mm5 manifest with a {key!r} list, got {man.get(key)!r:.80}")
    if modality is not None and man.get("modality") != modality:
        raise ValueError(f"{p}: expected modality {modality!r}, got {man.get('modality')!r}")
    return man
