"""`ewc`: Elastic Weight Consolidation, online variant.

References: Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017;
the online variant of Schwarz et al., "Progress & Compress: A scalable framework for continual
learning", ICML 2018 (section 4).

After each experience the diagonal empirical Fisher of the trainable parameters is computed on that
experience's training data and merged into one running Fisher, and the parameters are stored:
    F     <- gamma * F + F_new,    F_new = mean over samples of (d log p(y | x; theta) / d theta)^2
    theta* <- theta
Training on every later experience adds a quadratic pull towards the stored parameters:
    loss = task loss + lambda / 2 * sum_i F_i * (theta_i - theta*_i)^2
One Fisher and one anchor however many experiences were seen (the "online" part); with gamma = 1
the running Fisher is the sum of the per-experience Fishers.

Adapted to mmcl:
- log p(y | x) is minus the setting's training loss of one sample (`Setting.loss`): the softmax of
  the scaled cosine logits over the classes seen so far (modality), or the mean log-likelihood of
  the answer's tokens (scenario); y is the true label / answer (empirical Fisher).
- The Fisher is computed once per experience over all its training samples, in stored order, in
  eval mode, `fisher_batch_size` samples per gradient (1 = exact; see `compute_fisher`); every rank
  computes it from the full experience, so the state is identical on all ranks.
- Only trainable parameters are consolidated (a frozen backbone is not).
- Fisher and anchor are method state, so a resumed run applies the same penalty.

lambda: the scaled-cosine models fit an experience to a loss of ~1e-3, so their Fisher is tiny and
the usual range (10^2 - 10^4) gives fine-tuning's results; the defaults were chosen on held-out
training data (the sweep's validation protocol). The scenario setting defaults to lambda = 1e4
(`setting_defaults`). How each default was chosen, with the figures: docs/results/ewc-lambda.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from mmcl.methods.base import Method, register


@register("ewc")
class EWC(Method):
    settings = ("modality", "scenario")
    fsdp = False  # Fisher terms per parameter: of a sharded language model each rank would hold other shards
    #: candidates tried on validation data by `mmcl sweep` (the same budget for every method)
    search_space = {"modality": {"ewc_lambda": [1e4, 1e5, 1e6]}, "scenario": {"ewc_lambda": [1e3, 1e4, 1e5]}}
    setting_defaults = {"scenario": {"ewc_lambda": 1e4, "fisher_batch_size": 1}}

    #: allowed ranges of the numeric hyper-parameters (checked when the config loads)
    ranges = {"ewc_lambda": ">=0", "gamma": "[0,1]", "fisher_batch_size": ">=1"}
    @dataclass
    class Hparams:
        ewc_lambda: float = 1e5  # weight lambda of the quadratic penalty lambda/2 * sum F (theta - theta*)^2
        gamma: float = 1.0  # decay of the running Fisher: F = gamma * F_old + F_new (1 = sum over experiences)
        fisher_batch_size: int = 1  # samples per gradient when computing the Fisher (1 = exact per-sample Fisher)

    def __init__(self, stream, cfg, hp, setting=None):
        if hp.ewc_lambda < 0 or not 0 <= hp.gamma <= 1 or hp.fisher_batch_size < 1:
            raise ValueError("ewc needs ewc_lambda >= 0, 0 <= gamma <= 1 and fisher_batch_size >= 1, got "
                             f"{hp.ewc_lambda}, {hp.gamma}, {hp.fisher_batch_size}")
        super().__init__(stream, cfg, hp, setting)
        self.fisher: dict[str, torch.Tensor] | None = None  # running diagonal Fisher, by parameter name
        self.anchor: dict[str, torch.Tensor] | None = None  # parameters at the end of the last experience

    def _named_trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    # -- loss ---------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """sum_i F_i * (theta_i - theta*_i)^2 over the trainable parameters (0 before any consolidation)."""
        if self.fisher is None:
            return torch.zeros(())
        params = self._named_trainable()
        return sum(((params[n] - self.anchor[n].to(params[n].device)) ** 2 * f.to(params[n].device)).sum()
                   for n, f in self.fisher.items())

    def training_loss(self, batch):
        loss = self.setting.loss(self.model, batch, self.num_seen, self.net)
        if self.fisher is not None and self.hp.ewc_lambda > 0:
            loss = loss + self.hp.ewc_lambda / 2 * self.penalty()
        return loss

    # -- consolidation ------------------------------------------------------------------
    def after_experience(self, exp):
        new = self.compute_fisher(exp.train, self.stream.seen_after(exp.index))
        if self.fisher is None:
            self.fisher = new
        else:
            self.fisher = {n: self.hp.gamma * self.fisher[n] + new[n] for n in new}
        self.anchor = {n: p.detach().clone() for n, p in self._named_trainable().items()}

    def compute_fisher(self, data, num_classes: int) -> dict[str, torch.Tensor]:
        """Diagonal empirical Fisher on `data`: mean over samples of the squared gradient of log p(y | x).

        Samples go through the model `fisher_batch_size` at a time, in stored order, in eval mode. With
        batches of one (the default) this is the exact empirical Fisher. A batch b of |b| > 1 samples
        contributes |b| * (its mean gradient)^2, whose expectation is the per-sample E[g^2] plus
        (|b| - 1) * E[g]^2: a cheaper estimate, unbiased where the mean training gradient vanishes.
        """
        def log_lik(batch):  # the model itself, not the DDP wrapper
            return -self.setting.loss(self.model, batch, num_classes), self.setting.batch_size(batch)
        return self._fisher(data, log_lik)

    def _fisher(self, data, log_lik) -> dict[str, torch.Tensor]:
        """mean over samples of squared gradients: batch by batch, `log_lik(batch)` gives (mean log-likelihood,
        batch size); parameters a batch does not use (other modalities' input projections) add zero."""
        params = self._named_trainable()
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in self.batches(data, self.hp.fisher_batch_size):
                value, size = log_lik(batch)
                grads = torch.autograd.grad(value, list(params.values()), allow_unused=True)
                for n, g in zip(params, grads):
                    if g is not None:
                        total[n] += size * g.detach() ** 2
        finally:
            self.model.train(was_training)
        return {n: t / max(len(data), 1) for n, t in total.items()}

    # -- state --------------------------------------------------------------------------
    def extra_state(self):
        return {"fisher": self.fisher, "anchor": self.anchor}

    def load_extra_state(self, state):
        state = self.to_device(state)  # checkpoints hold CPU tensors; the penalty compares with the parameters
        self.fisher, self.anchor = state["fisher"], state["anchor"]
