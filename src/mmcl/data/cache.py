"""Content-addressed on-disk cache of computed tensors (features, anchors) as safetensors."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from mmcl.results import atomic_write_bytes


def digest(*parts) -> str:
    """A short stable hash of bytes / strings / numpy arrays / tensors."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            p = p.contiguous().numpy()
        if hasattr(p, "tobytes"):
            h.update(str(p.shape).encode() + str(p.dtype).encode())
            p = p.tobytes()
        elif isinstance(p, str):
            p = p.encode()
        elif not isinstance(p, bytes):
            p = repr(p).encode()
        h.update(p)
        h.update(b"\x00")
    return h.hexdigest()[:20]


def cached_tensors(path: Path, compute) -> dict[str, torch.Tensor]:
    """Load `path` if present and readable, otherwise compute, store atomically, return."""
    if path.is_file():
        try:
            return load_file(str(path))
        except Exception:  # noqa: BLE001 - a corrupt cache entry is recomputed, not fatal
            path.unlink(missing_ok=True)
    tensors = {k: v.contiguous() for k, v in compute().items()}
    atomic_write_bytes(path, save(tensors))
    return tensors
