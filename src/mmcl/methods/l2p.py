"""`l2p`: Learning to Prompt, a pool of key-matched prompts on a frozen transformer.

Reference: Wang, Zhang, Lee, Zhang, Sun, Ren, Su, Perot, Dy, Pfister, "Learning to Prompt for
Continual Learning", CVPR 2022 (code: google-research/l2p; PyTorch port JH-LEE-KR/l2p-pytorch).

As published:
- A pool of M prompts P_j (L tokens each) with learnable keys k_j. The query q(x) of a sample is a
  frozen, prompt-free function of the input (see `prompting`). The N prompts whose keys are
  closest in cosine distance gamma(q, k) = 1 - cos(q, k) are selected and prepended to the
  input tokens of the frozen transformer:  x_p = [P_s1; ...; P_sN; x_e].
- Loss: CE + lambda * sum over the selected prompts of gamma(q(x), k_si) (the surrogate that pulls
  the selected keys towards the queries; it only trains the keys, as q is frozen), averaged over
  the batch. lambda = 0.1 (the released configs' `pull_constraint_coeff`); M = 10, N = 5.
- The paper's optional "diversifying prompt-selection" (meant for known task boundaries, which
  we have): during training the distance is multiplied by the normalised frequency h_j with which
  prompt j was selected in earlier experiences, so a new experience prefers prompts that earlier
  ones used little:  argmin over sets of sum gamma(q, k_si) * h_si. Plain top-N at test.
- Pool, keys and head trained together; the transformer frozen; CE over the current experience's
  classes only, earlier classes masked out as in the released code (`train_mask`, see `prompting`).

Adapted here:
- The query is not a pre-trained ViT's [CLS] but the frozen block's pooled output on a fixed random
  projection of the raw tokens (reasons and details in `prompting`); it never reads batch["m"].
- No batch-wise prompt selection at test (the released code's `batchwise_prompt` picks the prompts
  most frequent in the test batch, which leaks that a test batch holds one task; cf.
  google-research/l2p issue #28). Every sample selects its own prompts.
- The selected indices are sorted before prepending, so a sample's prompt depends on which prompts
  were selected, not on their similarity ranking (the paper treats the selection as a set).
- h_j counts the selections, over all training samples of each finished experience, made with the
  final keys of that experience under the training rule (the papers count during training; a
  count after the experience is identical on every rank, which a count of this rank's shards is not).
  Ties at h = 0 (prompts never selected) are broken by distance.
- Prompt length L = 1 instead of the paper's 5, so N * L = 5 tokens are prepended to at most 8
  input tokens rather than 25 (see "Prompt budget" in `prompting`); `search_space` tries 1, 2, 4.
- Initial scales: keys U(-1, 1) as released but scaled to norm ~1, prompt tokens N(0, 0.02^2)
  instead of U(-1, 1) (reasons in `prompting`).
- Ours has one block and prepends (see `prompting`); the pooled output averages prompt and input
  tokens; the model's shared prompt is replaced by the pool.
- `uses_known_modality` is False: the pool is shared by all experiences and nothing in it belongs to
  a modality, so both protocols select prompts by key-query matching alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmcl.methods.base import register
from mmcl.methods.prompting import PromptPoolMethod, key_init, prompt_init


class L2PPool(nn.Module):
    def __init__(self, pool_size: int, length: int, width: int, generator: torch.Generator):
        super().__init__()
        self.prompts = nn.Parameter(prompt_init((pool_size, length, width), generator))
        self.keys = nn.Parameter(key_init((pool_size, width), generator))


@register("l2p")
class L2P(PromptPoolMethod):
    #: allowed ranges of the numeric hyper-parameters (checked when the config loads)
    ranges = {"pool_size": ">=1", "length": ">=1", "top_n": ">=1", "pull_coeff": ">=0"}
    @dataclass
    class Hparams:
        pool_size: int = 10  # M prompts in the pool
        length: int = 1  # L tokens per prompt (paper: 5; see the module doc)
        top_n: int = 5  # N prompts selected per sample (N * L tokens prepended)
        pull_coeff: float = 0.1  # lambda of the surrogate key-query loss
        diversify: bool = True  # frequency-penalised selection in training (paper's optional strategy)
        train_mask: bool = True  # CE over the current experience's classes only (released code; see `prompting`)

    #: the prompt length: how many tokens the selected prompts add in front of <= 8 input tokens
    search_space = {"modality": {"length": [1, 2, 4]}}

    def __init__(self, stream, cfg, hp, setting=None):
        if hp.pool_size < 1 or hp.length < 1 or not 1 <= hp.top_n <= hp.pool_size or hp.pull_coeff < 0:
            raise ValueError("l2p needs pool_size >= 1, length >= 1, 1 <= top_n <= pool_size and pull_coeff >= 0, got "
                             f"{hp.pool_size}, {hp.length}, {hp.top_n}, {hp.pull_coeff}")
        super().__init__(stream, cfg, hp, setting)
        self.freq = torch.zeros(hp.pool_size)  # selections per prompt in finished experiences

    def build_pool(self):
        return L2PPool(self.hp.pool_size, self.hp.length, self.width, self.rng)

    # -- selection --------------------------------------------------------------------------
    def similarity(self, q: torch.Tensor) -> torch.Tensor:
        """cos(q(x), k_j) for every sample and prompt (B, M); differentiable in the keys."""
        return F.normalize(q, dim=-1) @ F.normalize(self.pool.keys, dim=-1).T

    def select(self, sim: torch.Tensor, train: bool) -> torch.Tensor:
        """Indices (B, N), ascending, of the prompts each sample uses."""
        dist = 1.0 - sim.detach()
        if train and self.hp.diversify and self.freq.sum() > 0:
            h = (self.freq / self.freq.sum()).to(dist.device)
            dist = dist * h + 1e-6 * dist  # the paper's gamma * h; distance breaks ties among h = 0
        return dist.topk(self.hp.top_n, dim=1, largest=False).indices.sort(dim=1).values

    def prompts(self, batch, q, train, known_modality=False):
        sim = self.similarity(q)
        idx = self.select(sim, train)
        B = len(idx)
        prompts = self.pool.prompts[idx].reshape(B, -1, self.width)  # (B, N * L, width)
        if not train:
            return prompts, None
        pull = (1.0 - sim.gather(1, idx)).sum(1).mean()  # sum over the selected keys, mean over samples
        return prompts, {"pull": self.hp.pull_coeff * pull}

    @torch.no_grad()
    def selected(self, batch, train: bool = False) -> torch.Tensor:
        """The prompt indices (B, N) each sample of `batch` uses (test rule unless `train`)."""
        return self.select(self.similarity(self.query(batch)), train)

    # -- consolidation ------------------------------------------------------------------------
    @torch.no_grad()
    def after_experience(self, exp):
        counts = torch.zeros_like(self.freq)
        for batch in self.batches(exp.train, self.cfg["eval"]["batch_size"]):
            idx = self.selected(batch, train=True)
            counts += torch.bincount(idx.flatten(), minlength=self.hp.pool_size).to(counts)
        self.freq = self.freq + counts

    # -- state ------------------------------------------------------------------------------
    def extra_state(self):
        return {**super().extra_state(), "freq": self.freq}

    def load_extra_state(self, state):
        super().load_extra_state(state)
        self.freq = state["freq"].clone()
