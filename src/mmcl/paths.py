"""Where computed-once artefacts live (generated data, features, anchors, base models)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$MMCL_CACHE, or ~/.cache/mmcl; created when missing. A file there, or a folder mmcl cannot write,
    is a ConfigError naming the variable."""
    from mmcl.errors import ConfigError

    p = Path(os.environ.get("MMCL_CACHE") or "~/.cache/mmcl").expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"MMCL_CACHE={p}: a file is in the way; point MMCL_CACHE at a folder") from None
    except PermissionError:
        raise ConfigError(f"MMCL_CACHE={p}: cannot create the folder (permission denied)") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"MMCL_CACHE={p}: the folder is not writable; point MMCL_CACHE at one that is")
    return p
