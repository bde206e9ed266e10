"""`codaprompt`: CODA-Prompt, a per-sample prompt assembled from attention-weighted components.

Reference: Smith, Karlinsky, Gutta, Cascante-Bonilla, Kim, Arbelle, Panda, Feris, Kira,
"CODA-Prompt: COntinual Decomposed Attention-based Prompting for Rehearsal-Free Continual
Learning", CVPR 2023 (code: GT-RIPL/CODA-Prompt).

As published:
- M prompt components P_m (L tokens each), each with a key K_m and an attention vector A_m. For a
  query q(x) (a frozen, prompt-free function of the input) the weights are
      alpha_m = cos(q(x) * A_m, K_m)       (* elementwise; plain cosines, no softmax)
  and the prompt is the weighted sum  p(x) = sum_m alpha_m P_m, different for every sample. The
  whole thing is differentiable: P, K and A are trained end to end by the task loss (no
  key-matching surrogate).
- The pool is split evenly over the experiences (M / T components each). Experience t trains its
  own components; those of earlier experiences are used but frozen (detached), those of later
  ones are not used yet (training and test use components 0 .. (t+1) M/T - 1).
- Orthogonality: new components (P, K and A) are initialised orthonormal to each other and to the
  earlier experiences' components by Gram-Schmidt (the released code's re-initialisation of the
  new components at every task; the paper's first version initialised all M at the start, which
  we also do before the first experience), and an optional regulariser
      ortho_mu * (||K K^T - I||^2 + ||A A^T - I||^2 + ||P P^T - I||^2)     (means over entries,
  over the components in use, P flattened per component) adds to the loss. ortho_mu = 0 is the
  released configs' value ("with updated code, now can be 0"), i.e. the initialisation alone.
- M = 100, L = 8 (the paper's defaults); CE over the current experience's classes only, earlier
  classes masked out as in the released code (`train_mask`, see `prompting`).

Adapted here:
- Placement. The paper prefix-tunes blocks 1-5 (each component's L tokens split into keys and
  values of the self-attention). Our backbone is a single block: the assembled L-token prompt is
  prepended to its input tokens (prompt tuning). The model's masked mean pooling covers prompt and
  input tokens (the paper reads [CLS]).
- The query is not a pre-trained ViT's [CLS] but the frozen block's pooled output on a fixed random
  projection of the raw tokens (see `prompting`); it never reads batch["m"].
- Freezing. Components of finished experiences are copied to a snapshot and read from it
  afterwards, so no later optimiser state or weight decay can touch them (the paper detaches them).
- Gram-Schmidt is done against the span of the earlier components (QR) in float64, with random
  directions drawn from the method's checkpointed generator.
- `uses_known_modality` is False: components are shared by all later experiences through their
  attention (that reuse is the point of the method), so no component belongs to one modality and
  both protocols assemble the prompt from all components in use.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmcl.methods.base import register
from mmcl.methods.prompting import PromptPoolMethod, gram_schmidt_rows, ortho_penalty


class CodaPool(nn.Module):
    def __init__(self, pool_size: int, length: int, width: int, generator: torch.Generator):
        super().__init__()
        # orthonormal at the start (all M components), as in the paper's first version
        self.P = nn.Parameter(gram_schmidt_rows(torch.zeros(pool_size, length, width), 0, pool_size, generator))
        self.K = nn.Parameter(gram_schmidt_rows(torch.zeros(pool_size, width), 0, pool_size, generator))
        self.A = nn.Parameter(gram_schmidt_rows(torch.zeros(pool_size, width), 0, pool_size, generator))


@register("codaprompt")
class CodaPrompt(PromptPoolMethod):
    #: allowed ranges of the numeric hyper-parameters (checked when the config loads)
    ranges = {"pool_size": ">=1", "length": ">=1", "ortho_mu": ">=0"}
    @dataclass
    class Hparams:
        pool_size: int = 100  # M components in total, split evenly over the experiences
        length: int = 8  # L tokens of every component (and of the assembled prompt)
        ortho_mu: float = 0.0  # weight of the orthogonality regulariser (0: initialisation only)
        train_mask: bool = True  # CE over the current experience's classes only (released code; see `prompting`)

    #: the prompt length: how many tokens the assembled prompt adds in front of <= 8 input tokens
    search_space = {"modality": {"length": [4, 8, 16]}}

    def __init__(self, stream, cfg, hp, setting=None):
        per = hp.pool_size // len(stream) if hp.pool_size > 0 else 0
        if per < 1 or hp.length < 1 or hp.ortho_mu < 0:
            raise ValueError(f"codaprompt needs pool_size >= the number of experiences ({len(stream)}), length >= 1 "
                             f"and ortho_mu >= 0, got {hp.pool_size}, {hp.length}, {hp.ortho_mu}")
        self.per_exp = per
        super().__init__(stream, cfg, hp, setting)
        if hp.pool_size > self.width:
            raise ValueError(f"codaprompt pool_size must be <= the transformer width {self.width} (orthogonal keys)")
        self.num_trained = 0  # experiences finished: their components are frozen
        self.frozen = {n: p.detach().clone() for n, p in self.pool.named_parameters()}

    def build_pool(self):
        return CodaPool(self.hp.pool_size, self.hp.length, self.width, self.rng)

    # -- the components in use ---------------------------------------------------------------
    def components(self, count: int) -> dict[str, torch.Tensor]:
        """The first `count` components {"P", "K", "A"}; those of finished experiences from the snapshot."""
        out = {}
        for n, p in self.pool.named_parameters():
            frozen = torch.arange(count, device=p.device) < self.num_trained * self.per_exp
            f = frozen.reshape(-1, *[1] * (p.dim() - 1))
            out[n] = torch.where(f, self.frozen[n][:count].to(p.device), p[:count])
        return out

    def in_use(self, train: bool) -> int:
        """Components used: those of experiences 0..t in training, of all trained ones at test."""
        upto = self.experience.index + 1 if train else max(self.num_trained, 1)
        return min(upto, len(self.stream)) * self.per_exp

    @staticmethod
    def weights(q: torch.Tensor, K: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """alpha (B, count): cos(q * A_m, K_m)."""
        qa = F.normalize(q[:, None, :] * A[None], dim=-1)
        return (qa * F.normalize(K, dim=-1)[None]).sum(-1)

    def prompts(self, batch, q, train, known_modality=False):
        c = self.components(self.in_use(train))
        alpha = self.weights(q, c["K"], c["A"])
        prompts = torch.einsum("bm,mld->bld", alpha, c["P"])
        aux = None
        if train and self.hp.ortho_mu > 0:
            aux = {"ortho": self.hp.ortho_mu * (ortho_penalty(c["K"]) + ortho_penalty(c["A"]) + ortho_penalty(c["P"]))}
        return prompts, aux

    @torch.no_grad()
    def attention(self, batch) -> torch.Tensor:
        """The component weights alpha (B, count) of `batch` at test."""
        c = self.components(self.in_use(False))
        return self.weights(self.query(batch), c["K"], c["A"])

    # -- experience boundaries ----------------------------------------------------------------
    @torch.no_grad()
    def before_experience(self, exp):
        s, f = exp.index * self.per_exp, (exp.index + 1) * self.per_exp
        if s == 0:
            return  # the first experience's components were made orthonormal at construction
        current = self.components(self.hp.pool_size)
        for n, p in self.pool.named_parameters():  # new components orthogonal to the earlier ones
            p.copy_(gram_schmidt_rows(current[n], s, f, self.rng))

    @torch.no_grad()
    def after_experience(self, exp):
        s, f = exp.index * self.per_exp, (exp.index + 1) * self.per_exp
        for n, p in self.pool.named_parameters():
            self.frozen[n][s:f] = p[s:f].detach()
        self.num_trained = exp.index + 1

    # -- state ------------------------------------------------------------------------------
    def extra_state(self):
        return {**super().extra_state(), "num_trained": self.num_trained, "frozen": self.frozen}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.num_trained = state["num_trained"]
        self.frozen = {n: t.clone() for n, t in state["frozen"].items()}
