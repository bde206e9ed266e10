"""mmcl: multimodal continual learning (modality- and scenario-incremental)."""
import os

__version__ = "0.1.0"

# mmcl never downloads: real models come from installed packages or local paths.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars in run output

__all__ = ["run", "load_run", "compare"]


def __getattr__(name: str):
    """`mmcl.run`, `mmcl.load_run`, `mmcl.compare` (mmcl.api), imported on first use: `import mmcl` stays light."""
    if name in __all__:
        from mmcl import api

        return getattr(api, name)
    raise AttributeError(f"module 'mmcl' has no attribute {name!r}")
