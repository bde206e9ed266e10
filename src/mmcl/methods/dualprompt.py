"""`dualprompt`: a shared general prompt plus one key-matched expert prompt per experience.

Reference: Wang, Zhang, Ebrahimi, Sun, Zhang, Lee, Ren, Su, Perot, Dy, Pfister, "DualPrompt:
Complementary Prompting for Rehearsal-free Continual Learning", ECCV 2022 (code:
google-research/l2p; PyTorch port JH-LEE-KR/dualprompt-pytorch).

As published:
- A G(eneral)-prompt g shared by all experiences and trained throughout, and an E(xpert)-prompt
  pool {e_t} with keys {k_t}, one per experience (the pool size is the number of experiences).
- Training on experience t uses e_t for every sample (the task identity is known in training) and
  adds lambda * gamma(q(x), k_t), gamma = 1 - cosine, which pulls k_t towards the queries of its
  experience's samples (lambda = 1, the released configs' `pull_constraint_coeff`). e_t and k_t
  are trained only during experience t.
- Test: the E-prompt is that of the key closest to the sample's query, argmin_t gamma(q(x), k_t),
  over the experiences trained so far; the task identity is not used.
- CE over the current experience's classes only, earlier classes masked out as in the released
  code (`train_mask`, see `prompting`).

Adapted here:
- Placement. The paper attaches g to blocks 1-2 and e to blocks 3-5 by prefix tuning (prompts
  split into extra keys and values of the self-attention). Our backbone is a single transformer
  block, so the two positions coincide: both are prepended to the input tokens of that block
  (prompt tuning), as [g; e_t; x]; the lengths count prepended tokens. The model's masked mean
  pooling runs over all of them (the paper reads [CLS]).
- Lengths L_g = 1 and L_e = 4 prepended tokens (the released configs' prefixes have length 5
  each, at 2 and 3 blocks), so 5 tokens go in front of at most 8 input tokens (see "Prompt
  budget" in `prompting`); `search_space` tries L_e = 2, 4, 8.
- No batch-wise expert selection at test (the released PyTorch config's `batchwise_prompt` gives
  a whole test batch its most frequent choice, which leaks that a test batch holds one task; cf.
  google-research/l2p issue #28). Every sample chooses its own expert.
- The query is not a pre-trained ViT's [CLS] but the frozen block's pooled output on a fixed random
  projection of the raw tokens (see `prompting`); it never reads batch["m"].
- Freezing. e_t and k_t are copied to a snapshot when experience t ends and read from it
  afterwards, so later training (Adam state carried over, weight decay) cannot touch them; in the
  paper they simply receive no further gradient.
- Initial scales: keys U(-1, 1) as released but scaled to norm ~1, prompt tokens N(0, 0.02^2)
  instead of U(-1, 1) (reasons in `prompting`).
- Before any experience is trained (the baseline evaluation) the untrained e_0 is used.
- Two protocols (`uses_known_modality` = True). The E-prompts are task-specific, so the
  modality-aware protocol restricts the key match to the E-prompts of trained experiences of the
  sample's modality (with one experience per modality, as in mm5, that is the oracle expert; with
  several it is still a key-query match among them); a sample whose modality has no trained
  experience yet falls back to all of them. The modality-agnostic protocol matches all trained
  keys and never reads batch["m"] for the choice.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmcl.methods.base import register
from mmcl.methods.prompting import PromptPoolMethod, key_init, prompt_init


class DualPromptPool(nn.Module):
    def __init__(self, num_experts: int, g_length: int, e_length: int, width: int, generator: torch.Generator):
        super().__init__()
        self.g = nn.Parameter(prompt_init((g_length, width), generator))
        self.e = nn.Parameter(prompt_init((num_experts, e_length, width), generator))
        self.keys = nn.Parameter(key_init((num_experts, width), generator))


@register("dualprompt")
class DualPrompt(PromptPoolMethod):
    uses_known_modality = True

    #: allowed ranges of the numeric hyper-parameters (checked when the config loads)
    ranges = {"g_length": ">=0", "e_length": ">=1", "pull_coeff": ">=0"}
    @dataclass
    class Hparams:
        g_length: int = 1  # L_g tokens of the shared G-prompt (0: none; paper: 5, see the module doc)
        e_length: int = 4  # L_e tokens of each E-prompt (paper: 20)
        pull_coeff: float = 1.0  # lambda of the key-query matching loss
        train_mask: bool = True  # CE over the current experience's classes only (released code; see `prompting`)

    #: the expert-prompt length: how strongly the chosen expert steers the single frozen block
    search_space = {"modality": {"e_length": [2, 4, 8]}}

    def __init__(self, stream, cfg, hp, setting=None):
        if hp.g_length < 0 or hp.e_length < 1 or hp.pull_coeff < 0:
            raise ValueError("dualprompt needs g_length >= 0, e_length >= 1 and pull_coeff >= 0, got "
                             f"{hp.g_length}, {hp.e_length}, {hp.pull_coeff}")
        super().__init__(stream, cfg, hp, setting)
        self.num_trained = 0  # experiences finished: their E-prompts and keys are frozen
        self.frozen_e = self.pool.e.detach().clone()
        self.frozen_keys = self.pool.keys.detach().clone()
        self.exp_modality = self.modality_ids()

    def build_pool(self):
        return DualPromptPool(len(self.stream), self.hp.g_length, self.hp.e_length, self.width, self.rng)

    # -- the pool as used: rows of finished experiences from the snapshot -----------------------
    def experts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(E-prompts (T, L_e, width), keys (T, width)); frozen rows come from the snapshot."""
        dev = self.pool.e.device
        frozen = torch.arange(len(self.stream), device=dev) < self.num_trained
        e = torch.where(frozen[:, None, None], self.frozen_e.to(dev), self.pool.e)
        k = torch.where(frozen[:, None], self.frozen_keys.to(dev), self.pool.keys)
        return e, k

    def candidates(self, batch, known_modality: bool) -> torch.Tensor:
        """(B, T) bool: the experts each sample may choose from at test."""
        T = len(self.stream)
        dev = self.device
        trained = torch.arange(T, device=dev) < max(self.num_trained, 1)
        allowed = trained.expand(self.setting.batch_size(batch), T)
        if known_modality:
            same = allowed & (self.exp_modality.to(dev)[None, :] == batch["m"][:, None])
            allowed = torch.where(same.any(1, keepdim=True), same, allowed)
        return allowed

    @torch.no_grad()
    def choose(self, q, batch, known_modality: bool = False) -> torch.Tensor:
        """The expert (experience index) of each sample at test: its closest allowed key (B,)."""
        _, keys = self.experts()
        sim = F.normalize(q, dim=-1) @ F.normalize(keys, dim=-1).T
        return sim.masked_fill(~self.candidates(batch, known_modality), float("-inf")).argmax(1)

    def chosen(self, batch, known_modality: bool = False) -> torch.Tensor:
        """The expert each sample of `batch` uses at test (B,)."""
        return self.choose(self.query(batch), batch, known_modality)

    def prompts(self, batch, q, train, known_modality=False):
        e, keys = self.experts()
        B = len(q)
        aux = None
        if train:
            t = self.experience.index
            e_sel = e[t].expand(B, -1, -1)
            cos = F.normalize(q, dim=-1) @ F.normalize(keys[t], dim=-1)
            aux = {"pull": self.hp.pull_coeff * (1.0 - cos).mean()}
        else:
            e_sel = e[self.choose(q, batch, known_modality)]
        parts = [self.pool.g.expand(B, -1, -1), e_sel] if self.hp.g_length else [e_sel]
        return torch.cat(parts, dim=1), aux

    # -- consolidation ------------------------------------------------------------------------
    @torch.no_grad()
    def after_experience(self, exp):
        t = exp.index
        self.frozen_e[t] = self.pool.e[t].detach()
        self.frozen_keys[t] = self.pool.keys[t].detach()
        self.num_trained = t + 1

    # -- state ------------------------------------------------------------------------------
    def extra_state(self):
        return {**super().extra_state(), "num_trained": self.num_trained, "frozen_e": self.frozen_e,
                "frozen_keys": self.frozen_keys}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.num_trained = state["num_trained"]
        self.frozen_e, self.frozen_keys = state["frozen_e"].clone(), state["frozen_keys"].clone()
