"""Text anchors: frozen MiniLM embeddings of class names, cached by content."""
from __future__ import annotations

import torch

from mmcl.paths import cache_dir
from mmcl.data.cache import cached_tensors, digest


def text_anchors(names: list[str], template: str) -> torch.Tensor:
    """Unit-norm MiniLM embeddings of `template.format(name)` for every class name."""
    from mmcl.models.encoders import MINILM_ID, embed_text

    texts = [template.format(n) for n in names]
    path = cache_dir() / "anchors" / f"{MINILM_ID}-{digest(*texts)}.safetensors"
    return cached_tensors(path, lambda: {"anchors": embed_text(texts)})["anchors"]
