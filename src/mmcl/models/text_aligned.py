"""The trainable map from frozen features into the text space, scored against class anchors."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextAlignedClassifier(nn.Module):
    """Projects frozen features into the anchor (text) space; logits are scaled cosines.

    If the batch carries `zs` (a training-free estimate of the sample's text embedding, e.g.
    the frozen ImageNet classifier's probabilities over MiniLM-embedded ImageNet class names),
    the projection is a residual on top of it and starts at zero, so the untrained model is
    exactly the zero-shot model.
    """

    def __init__(self, in_dim: int, anchors: torch.Tensor, hidden_dim: int = 512,
                 logit_scale: float = 20.0, residual: bool = False):
        super().__init__()
        self.register_buffer("anchors", F.normalize(anchors.float(), dim=-1))
        self.logit_scale = logit_scale
        self.residual = residual
        d = anchors.shape[1]
        self.proj = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, d))
        if residual:
            nn.init.zeros_(self.proj[-1].weight)
            nn.init.zeros_(self.proj[-1].bias)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Unit-norm embeddings of a batch in the anchor space."""
        dev = self.anchors.device  # inputs may come from anywhere (a method's own pass over CPU data)
        z = self.proj(batch["x"].to(dev))
        if self.residual:
            z = z + batch["zs"].to(dev)
        return F.normalize(z, dim=-1)

    def logits(self, emb: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Scaled cosine similarity to the anchors of the first `num_classes` classes."""
        return self.logit_scale * emb @ self.anchors[:num_classes].T
