"""`slca`: Slow Learner with Classifier Alignment.

Reference: Zhang, Wang, Kang, Chen, Wei, "SLCA: Slow Learner with Classifier Alignment for
Continual Learning on a Pre-trained Model", ICCV 2023 (authors' code: github.com/GengDavid/SLCA).

Two parts, as published:
1. *Slow learner*: the representation is trained with a learning rate `slow_factor` times the
   classifier's (the paper: 1e-4 for the ViT vs 1e-2 for the classifier, i.e. 0.01; the authors'
   code calls it `bcb_lrscale`), so that sequential training adapts the representation without
   overwriting it.
2. *Classifier alignment* (CA): after every experience the mean and covariance of the pre-classifier
   representation of each of its classes are stored (no samples); from the second experience on, the
   classifier alone is re-trained on features sampled from the Gaussians of *all* classes seen so far
   (256 per class, 5 epochs, the paper's values), with the logit normalisation of the authors' code
   (below). This removes the classifier's bias toward the most recent classes.

Mapped onto this framework's model (the pretrained transformer is frozen for every method):
- The slow learner is the trainable representation: the per-modality input projections and the
  shared prompts (for the feature-vector model of `animals`: every projection layer but the last).
  The classifier is the `head` into the text space (the last layer), trained at the full
  `train.lr`. The groups go to the engine's optimiser through `param_groups()`.
- The "classifier" output is not a linear layer's logits but normalize(head(f) + zs) scored by
  scaled cosine against fixed text anchors, where zs is a per-sample training-free text embedding
  (zero where none exists, e.g. audio). The CA statistics are therefore those of the concatenation
  v = [f, zs] (f the pooled transformer output that enters the head): a joint Gaussian per class, so
  sampled v can be pushed through exactly the map the model applies (head on the f part, add the zs
  part, normalise, cosine to the anchors), with the correlation between f and zs kept. Cost: a
  (width + text_dim)^2 float64 covariance per class (768^2 on mm5, 4.7 MB per class, ~180 MB for
  its 38 classes in memory and in every checkpoint).
- CA re-trains the head only (the anchors are fixed text embeddings); logits over the anchors of all
  seen classes, as in the model. The optimiser is Adam at `train.lr` (the paper: SGD at the
  classifier's lr with cosine decay); the samples are drawn once per alignment with `self.rng`
  (the paper redraws every CA epoch), via `gaussians.realign_head`. CA runs inside
  `after_experience`, so it completes before the checkpoint and a resumed run repeats nothing.
- Logit normalisation (`logit_norm` = tau, the authors' `ca_with_logit_norm` = 0.1; not in the
  paper's text): during CA the logits are divided by tau times the mean, over the experiences seen,
  of the L2 norm of that experience's block of logits; 0 disables it. It only rescales each sample's
  logits in the CA loss (predictions are unchanged), which fits the scaled-cosine logits cleanly:
  it replaces the fixed logit scale by a per-sample one that balances old and new blocks.
- `local_ce` (default on, from the authors' code `_run`, not stated in the paper): the training
  cross-entropy is over the current experience's classes only; the old classes are left to CA.
  Off: over all classes seen so far, like fine-tuning.
- Not adopted: the authors' code shrinks the sampled class means by a per-task factor in
  [0.9, 1.0] (a code-only heuristic, not in the paper); here the stored means are used as they are.
- Statistics are computed from the experience's full training split in eval mode at its end, on
  every rank (identical state under DDP without communication), and kept in `extra_state`.

The SLCA trade-off, here: the statistics of a class are frozen at the end of its experience, while
the slow learner keeps moving, so the true features of old classes drift away from their stored
Gaussians and CA aligns the head to stale features. The slow rate is what keeps this drift small.
In the modality stream the drift comes only from the shared prompts (an old modality's input
projection receives no gradient from other modalities' data), unless a modality returns
(`stream.experiences_per_modality` > 1), when its own projection moves too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmcl.methods.base import Method, register
from mmcl.methods.gaussians import ClassGaussians, realign_head
from mmcl.stream import Experience


@register("slca")
class SLCA(Method):
    #: the one hyper-parameter the sweep chooses (on a validation split of the training data)
    search_space = {"modality": {"slow_factor": [0.01, 0.1, 1.0]}}

    #: allowed ranges of the numeric hyper-parameters (checked when the config loads)
    ranges = {"slow_factor": ">=0", "ca_epochs": ">=0", "ca_per_class": ">=1", "ca_batch_size": ">=1", "logit_norm": ">=0"}
    @dataclass
    class Hparams:
        slow_factor: float = 0.1  # lr of the representation (input projections, prompts) / train.lr
        ca_epochs: int = 5  # epochs of classifier alignment after every experience but the first (0 = no CA)
        ca_per_class: int = 256  # features sampled per seen class for classifier alignment
        ca_batch_size: int = 64  # batch size of classifier alignment
        logit_norm: float = 0.1  # temperature tau of the logit normalisation during CA (0 = plain CE)
        local_ce: bool = True  # training CE over the current experience's classes only (authors' code)

    def __init__(self, stream, cfg, hp, setting=None):
        super().__init__(stream, cfg, hp, setting)
        if hp.slow_factor < 0 or hp.ca_epochs < 0 or hp.ca_per_class < 1 or hp.ca_batch_size < 1 \
                or hp.logit_norm < 0:
            raise ValueError("slca needs slow_factor >= 0, ca_epochs >= 0, ca_per_class >= 1, ca_batch_size >= 1 "
                             f"and logit_norm >= 0, got {hp}")
        self.stats = ClassGaussians()  # per-class Gaussians of the pre-head representation [f, zs]
        self.last_ca_loss: float | None = None

    # -- the model's split into slow representation and classifier ----------------------
    @property
    def head(self) -> nn.Linear:
        """The classifier: the last linear map into the text space."""
        return self.model.head if hasattr(self.model, "head") else self.model.proj[-1]

    def _uses_zs(self) -> bool:
        return hasattr(self.model, "head") or self.model.residual

    def param_groups(self) -> list:
        head = {id(p) for p in self.head.parameters()}
        slow = [p for p in self.trainable_parameters() if id(p) not in head]
        fast = [p for p in self.trainable_parameters() if id(p) in head]
        lr = self.cfg["train"]["lr"]
        groups = [{"params": slow, "lr": lr * self.hp.slow_factor}, {"params": fast, "lr": lr}]
        return [g for g in groups if g["params"]]

    def pre_head(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """v = [f, zs]: the representation entering the head and the residual added after it."""
        if hasattr(self.model, "head"):
            f = self.model.features(batch)
        else:
            f = self.model.proj[:-1](batch["x"].to(self.device))
        return torch.cat([f, batch["zs"].to(f.device, f.dtype)], dim=1) if self._uses_zs() else f

    def embed_pre_head(self, v: torch.Tensor) -> torch.Tensor:
        """The model's embedding from v: normalize(head(f) + zs), exactly as `model(batch)`."""
        if not self._uses_zs():
            return F.normalize(self.head(v), dim=-1)
        d = self.head.in_features
        return F.normalize(self.head(v[:, :d]) + v[:, d:], dim=-1)

    # -- training -----------------------------------------------------------------------
    def training_loss(self, batch):
        n = self.num_seen
        logits = self.model.logits(self.net(batch), n)
        if not self.hp.local_ce:
            return F.cross_entropy(logits, batch["y"])
        first = self.stream.seen_after(self.experience.index - 1)  # classes of this experience: first..n-1
        return F.cross_entropy(logits[:, first:], batch["y"] - first)

    # -- classifier alignment -----------------------------------------------------------
    @torch.no_grad()
    def collect_statistics(self, exp: Experience) -> None:
        """Store the Gaussian of v = [f, zs] of every class of `exp` (its full training split)."""
        was_training = self.model.training
        self.model.eval()
        try:
            bs = self.cfg["eval"]["batch_size"]
            v = torch.cat([self.pre_head(b) for b in self.batches(exp.train, bs)])
        finally:
            self.model.train(was_training)
        self.stats.add(v, exp.train["y"])

    def ca_logits(self, v: torch.Tensor, num_classes: int, num_experiences: int) -> torch.Tensor:
        """CA logits of pre-head samples: the model's scaled cosines, logit-normalised if tau > 0."""
        logits = self.model.logits(self.embed_pre_head(v), num_classes)
        if self.hp.logit_norm <= 0:
            return logits
        bounds = [0] + [self.stream.seen_after(i) for i in range(num_experiences)]
        norms = torch.stack([logits[:, a:b].norm(dim=1) for a, b in zip(bounds, bounds[1:]) if b > a], 1)
        return logits / (norms.mean(1, keepdim=True) + 1e-7) / self.hp.logit_norm

    def align(self, num_classes: int, num_experiences: int) -> float:
        """Re-train the head only on features sampled from the Gaussians of classes < num_classes."""
        loss = realign_head(self.head, lambda v: self.ca_logits(v, num_classes, num_experiences), self.stats,
                            num_classes, self.rng, per_class=self.hp.ca_per_class, epochs=self.hp.ca_epochs,
                            lr=self.cfg["train"]["lr"], batch_size=self.hp.ca_batch_size)
        for p in self.head.parameters():
            p.grad = None
        return loss

    def after_experience(self, exp):
        self.collect_statistics(exp)
        if exp.index > 0 and self.hp.ca_epochs > 0:
            self.last_ca_loss = self.align(self.stream.seen_after(exp.index), exp.index + 1)

    # -- state --------------------------------------------------------------------------
    def extra_state(self):
        return {"stats": self.stats.state_dict()}

    def load_extra_state(self, state):
        self.stats.load_state_dict(state["stats"])
