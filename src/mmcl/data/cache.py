"""Content-addressed on-disk cache of computed tensors (features, anchors) as safetensors."""
from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import torch
from safetensors.torch import load, save

from mmcl.results import atomic_write_bytes, atomic_write_text


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
    """Load `path` if present and intact, otherwise compute, store atomically, return.

    Every entry is stored with the sha256 of its bytes beside it (`<name>.sha256`) and checked on load:
    an entry changed since it was written (or written before the check existed) is recomputed, with
    a line on stderr, never used as it is."""
    sidecar = path.with_name(path.name + ".sha256")
    if path.is_file():
        data = path.read_bytes()
        expected = sidecar.read_text().strip() if sidecar.is_file() else None
        if expected == hashlib.sha256(data).hexdigest():
            try:
                return load(data)
            except Exception:  # noqa: BLE001 - a corrupt cache entry is recomputed, not fatal
                pass
        why = "changed since it was written" if expected else "has no checksum"
        print(f"mmcl: cache entry {path} {why}: recomputing it", file=sys.stderr, flush=True)
        path.unlink(missing_ok=True)
    tensors = {k: v.contiguous() for k, v in compute().items()}
    data = save(tensors)
    atomic_write_bytes(path, data)
    atomic_write_text(sidecar, hashlib.sha256(data).hexdigest() + "\n")
    return tensors
