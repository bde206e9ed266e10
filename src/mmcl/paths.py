"""Where computed-once artefacts live (generated data, features, anchors, base models)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$MMCL_CACHE, or ~/.cache/mmcl; created when missing."""
    p = Path(os.environ.get("MMCL_CACHE") or "~/.cache/mmcl").expanduser()
    p.mkdir(parents=True, exist_ok=True)
    return p
