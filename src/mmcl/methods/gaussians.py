"""Per-class Gaussian statistics of embeddings, and re-training a head on samples drawn from them.

Used by the methods that re-align a classifier without stored samples (SLCA's classifier
alignment, COMM's re-alignment): after an experience, the mean and covariance of every new
class's features are stored; later, features of all seen classes are sampled from these
Gaussians and only the head is trained on them. No input sample is ever kept.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassGaussians:
    """Mean and covariance per class id of D-dimensional features (float64 accumulation)."""

    def __init__(self, shrinkage: float = 1e-4):
        self.shrinkage = shrinkage  # added to the covariance diagonal (relative to its mean variance)
        self.mean: dict[int, torch.Tensor] = {}
        self.cov: dict[int, torch.Tensor] = {}
        self.count: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.mean)

    @property
    def classes(self) -> list[int]:
        return sorted(self.mean)

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Store the statistics of every class present in `labels` (replacing earlier ones)."""
        features = features.detach().double()
        for c in torch.unique(labels).tolist():
            f = features[labels == c]
            mu = f.mean(0)
            d = f - mu
            cov = d.T @ d / max(1, len(f) - 1)
            cov = self.shrunk(cov)
            self.mean[int(c)], self.cov[int(c)], self.count[int(c)] = mu, cov, len(f)

    def shrunk(self, cov: torch.Tensor) -> torch.Tensor:
        """`cov` with the shrinkage added to its diagonal (relative to its mean variance): positive definite."""
        eye = torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
        return cov + eye * self.shrinkage * max(cov.diagonal().mean().item(), 1e-12)

    def sample(self, per_class: int, generator: torch.Generator, classes: list[int] | None = None):
        """(features, labels): `per_class` draws from every stored class (float32)."""
        xs, ys = [], []
        for c in classes if classes is not None else self.classes:
            L = torch.linalg.cholesky(self.cov[c])
            z = torch.randn(per_class, len(self.mean[c]), generator=generator, dtype=torch.float64)  # CPU generator
            xs.append(self.mean[c] + z.to(L.device) @ L.T)
            ys.append(torch.full((per_class,), c, dtype=torch.long, device=L.device))
        return torch.cat(xs).float(), torch.cat(ys)

    def state_dict(self) -> dict:
        return {"mean": dict(self.mean), "cov": dict(self.cov), "count": dict(self.count), "shrinkage": self.shrinkage}

    def load_state_dict(self, state: dict) -> None:
        self.mean, self.cov, self.count = dict(state["mean"]), dict(state["cov"]), dict(state["count"])
        self.shrinkage = state["shrinkage"]


def realign_head(head: nn.Module, embed, stats: ClassGaussians, num_classes: int, generator: torch.Generator,
                 per_class: int = 256, epochs: int = 5, lr: float = 1e-3, batch_size: int = 64) -> float:
    """Re-train `head` on features sampled from `stats` for classes 0..num_classes-1.

    `embed(features) -> logits over num_classes` runs the head (and whatever fixed maps follow
    it); only `head`'s parameters are optimised. Returns the last epoch's mean loss.
    """
    feats, labels = stats.sample(per_class, generator, [c for c in stats.classes if c < num_classes])
    dev = next(head.parameters()).device
    feats, labels = feats.to(dev), labels.to(dev)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    last = 0.0
    for _ in range(epochs):
        perm = torch.randperm(len(feats), generator=generator)
        total = 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(embed(feats[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        last = total / len(perm)
    return last
