"""mmcl: multimodal continual learning (modality- and scenario-incremental)."""
import os

__version__ = "0.1.0"

# mmcl never downloads: real models come from installed packages or local paths.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bars in run output
