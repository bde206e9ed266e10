"""Shared machinery of the prompt-pool methods (`l2p`, `dualprompt`, `codaprompt`).

The three methods keep the prompted model of `mmcl.models.prompted` (frozen MiniLM block,
per-modality trainable input projections, trainable head into the text space) but replace its
one shared prompt by prompts chosen or composed *per sample* from a pool, by matching a
*query* of the sample against learned keys. What lives here:

The query function q(x). The papers use the [CLS] output of the frozen pre-trained ViT run
without prompts: a fixed function of the input that no training changes, so keys learned in an
early task still match their task's samples later. Our model's only path from raw tokens into
the transformer, the per-modality input projection, is trained, so a query taken through it
would drift with every step (and would need batch["m"] to choose the projection). Here
instead:

    q(x) = masked mean over tokens of  MiniLM-block( c * LN(x R) )      (no prompts)

with R a fixed random Gaussian projection from the token width to the transformer width,
drawn once from the method's generator and shared by all modalities (the mm5 tokens are
zero-padded to one common width), LN a per-token layer normalisation without parameters, and
c the mean norm of MiniLM's word embeddings divided by sqrt(width), so the projected tokens are
shaped like MiniLM input embeddings whatever the scale of a modality's raw features. It is
frozen for the whole run (it does not depend on any trained parameter), reads only
batch["tokens"] and batch["mask"] (never batch["m"]), so key-query selection works in the
modality-agnostic protocol, and it costs one extra prompt-free pass through the frozen block.
R is part of the method state (`extra_state`), although it is also a function of the seed.

Training loss. The released code of all three papers trains with the logits of earlier tasks'
classes masked out: CE over the current task's classes only (`train_mask` in the L2P /
DualPrompt code, `logits[:, :last_valid_out_dim] = -inf` in CODA-Prompt's). It is kept
(`train_mask`, default on). With fixed text anchors there are no old classifier rows to
protect, but the mask still matters: CE over all seen classes rewards moving the *shared* head
(its bias, and its response to what all features have in common) towards the new classes'
anchors, which drags every old modality's samples there in the modality-agnostic protocol; with
the mask, a balanced batch's gradients on those shared parts nearly cancel. On mm5's validation
split (held-out training data; `l2p` defaults otherwise) the mask gave last_acc 0.788 / 0.480
(aware / agnostic) against 0.775 / 0.360 without it. Its failure mode is the opposite one: a
new experience's samples are never pushed away from old anchors (on the synthetic test stream,
with random anchors and no zero-shot prior, they landed on the first experience's classes).
`train_mask=false` gives the project's usual CE over all classes seen so far.

Prompt placement. Our backbone is a single transformer block, so the papers' layer choices
(L2P: input of block 1; DualPrompt: G at blocks 1-2, E at blocks 3-5; CODA: blocks 1-5) all
collapse onto that one block, and the selected / composed prompt tokens are prepended to the
input tokens (prompt tuning; prefix tuning would need changes inside the frozen block). The
model's masked mean pooling then runs over prompt and input tokens alike (L2P averages only the
prompt positions; DualPrompt and CODA read [CLS], which this backbone has not). The model's own
shared prompt (`model.prompt_length`) is removed: these methods have their own prompt lengths.

Prompt budget. L2P prepends 25 tokens (5 prompts of length 5) to the 197 tokens of a ViT-B/16,
13% more tokens; DualPrompt's G- and E-prompts (length 5 each in the released configs) and
CODA-Prompt's components (length 8) are prefixes of 2-5 blocks each. Our inputs are at most 8 tokens, the model's own prompt is 4, and the pooled output averages prompt and input positions
alike: 25 prompt tokens would outweigh the input three to one (the pooled feature becomes mostly
the prompts' own, largely input-independent outputs) and triple the cost of every step. L2P
and DualPrompt therefore default to 5 prompt tokens per sample (L2P: N = 5 prompts of length 1
from a pool of 10; DualPrompt: G 1 + E 4, most of it task-specific); CODA-Prompt keeps the
paper's length 8. The length is each method's `search_space`.

Initial scales. Only the direction of a key matters (cosine), but its scale sets how fast it
can turn: Adam's steps have a roughly fixed size (the learning rate) per coordinate. The
released L2P / DualPrompt keys are U(-1, 1) (norm ~11 in our 384 dimensions), which our ~50-80
steps per experience at lr 1e-3 could hardly turn towards the queries; here they are U(-1, 1)
scaled to norm ~1, like CODA-Prompt's unit-norm keys. Prompt tokens start as N(0, 0.02^2), like
the prompted model's own prompt: the released U(-1, 1) prompts would dwarf MiniLM's input
embeddings (mean norm 1.07 against 11), and with them L2P stayed at chance on the first
experience of the synthetic test stream for two of three initialisations.

Pool parameters are attached to the model as the submodule `prompt_pool`, so they are trained
by the engine's optimiser, averaged by DDP and saved with the model state. Every pool is one
tensor that is indexed, so all of it is in the graph of every step (rows not used get zero
gradients). Parameters that a method freezes after their experience (DualPrompt's E-prompts,
CODA's components) are read from snapshots kept in `extra_state`, so nothing the optimiser does
afterwards (Adam state carried over, weight decay) can change them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmcl.methods.base import Method
from mmcl.models.prompted import PromptedAligner

#: initial scale of prompt token values: that of the prompted model's own prompt (see module doc)
PROMPT_STD = 0.02


def masked_mean(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(out.dtype)
    return (out * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)


def key_init(shape: tuple, generator: torch.Generator) -> torch.Tensor:
    """Keys: U(-1, 1) as in the released L2P / DualPrompt code, scaled by sqrt(3 / width) to
    norm ~1 (see the module doc: only their direction matters, their scale sets how fast Adam's
    fixed-size steps can turn them)."""
    return (torch.rand(shape, generator=generator) * 2 - 1) * math.sqrt(3 / shape[-1])


def prompt_init(shape: tuple, generator: torch.Generator, std: float = PROMPT_STD) -> torch.Tensor:
    """N(0, std^2) prompt tokens drawn from `generator`, like the prompted model's own prompt."""
    return torch.randn(shape, generator=generator) * std


def gram_schmidt_rows(rows: torch.Tensor, start: int, stop: int, generator: torch.Generator) -> torch.Tensor:
    """`rows` (M, ...) with rows start..stop-1 replaced by random unit vectors orthogonal to each
    other and to the span of rows 0..start-1 (CODA-Prompt's initialisation of new components).

    The earlier rows need not be orthonormal (they were trained): their span is taken by QR.
    Random directions come from `generator`; float64 with re-orthogonalisation for stability.
    """
    shape = rows.shape
    flat = rows.detach().reshape(shape[0], -1).double()
    dim = flat.shape[1]
    if stop > dim:
        raise ValueError(f"cannot make {stop} orthogonal rows in dimension {dim}")
    basis = torch.linalg.qr(flat[:start].T).Q if start > 0 else flat.new_zeros(dim, 0)  # (dim, <=start)
    out = flat.clone()
    for k in range(start, stop):
        while True:
            v = torch.randn(dim, generator=generator, dtype=torch.float64)
            for _ in range(2):
                v = v - basis @ (basis.T @ v)
            if v.norm() > 1e-6:
                break
        v = v / v.norm()
        out[k] = v
        basis = torch.cat([basis, v[:, None]], dim=1)
    return out.reshape(shape).to(rows.dtype)


def ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """CODA-Prompt's orthogonality regulariser: mean of (B B^T - I)^2 over rows of B (flattened)."""
    b = t.reshape(t.shape[0], -1)
    return ((b @ b.T - torch.eye(b.shape[0], dtype=b.dtype)) ** 2).mean()


class PromptPoolMethod(Method):
    """Base of the prompt-pool methods: frozen query, per-sample prompts, masked CE.

    Subclasses build `self.pool` (an nn.Module of parameters) in `build_pool()` and implement
    `prompts(batch, q, train, known_modality)` -> (prompts (B, P, width), auxiliary loss or None).
    """

    def __init__(self, stream, cfg, hp, setting=None):
        super().__init__(stream, cfg, hp, setting)
        if not isinstance(self.model, PromptedAligner):
            raise ValueError(f"{self.name} needs a token benchmark (the prompted transformer), e.g. mm5")
        self.model.prompts = None  # replaced by the method's own per-sample prompts
        self.width = self.model.width
        in_dim = stream[0].train["tokens"].shape[-1]
        # the fixed query projection (see module doc); drawn before the pool so all ranks agree
        self.query_proj = torch.randn(in_dim, self.width, generator=self.rng) / math.sqrt(in_dim)
        words = self.model.backbone.embeddings.word_embeddings.weight
        self.query_scale = float(words.norm(dim=1).mean()) / math.sqrt(self.width)
        self.pool = self.build_pool()
        self.model.add_module("prompt_pool", self.pool)

    # -- to override --------------------------------------------------------------------
    def build_pool(self) -> nn.Module:
        raise NotImplementedError

    def prompts(self, batch, q, train: bool, known_modality: bool = False):
        raise NotImplementedError

    # -- query ----------------------------------------------------------------------------
    @torch.no_grad()
    def query(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """q(x): the frozen, prompt-free, modality-blind query of every sample (B, width)."""
        x = batch["tokens"].float() @ self.query_proj.to(batch["tokens"].device)
        x = F.layer_norm(x, (self.width,)) * self.query_scale
        mask = batch["mask"].float()
        out = self.model.backbone(inputs_embeds=x, attention_mask=mask).last_hidden_state
        return masked_mean(out, mask)

    # -- helpers --------------------------------------------------------------------------
    @property
    def num_old(self) -> int:
        """Classes introduced before the current experience."""
        return self.stream.seen_after(self.experience.index - 1)

    def modality_ids(self) -> torch.Tensor:
        """Modality id (index in MODALITIES, like batch["m"]) of every experience of the stream."""
        return torch.tensor([self.model.modalities.index(e.modality) for e in self.stream])

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """'ce' (over the current experience's classes if `train_mask`, else all seen) and the
        method's auxiliary terms (already weighted), e.g. 'pull' or 'ortho'."""
        q = self.query(batch)
        prompts, aux = self.prompts(batch, q, train=True)
        logits = self.model.logits(self.net(batch, prompts=prompts), self.num_seen)
        if self.hp.train_mask and self.num_old > 0:
            old = torch.arange(logits.shape[1], device=logits.device) < self.num_old
            logits = logits.masked_fill(old, float("-inf"))
        terms = {"ce": F.cross_entropy(logits, batch["y"])}
        terms.update(aux or {})
        return terms

    def training_loss(self, batch):
        return sum(self.loss_terms(batch).values())

    @torch.no_grad()
    def predict(self, batch, num_classes, known_modality=False):
        q = self.query(batch)
        prompts, _ = self.prompts(batch, q, train=False, known_modality=known_modality)
        return self.model.logits(self.model(batch, prompts=prompts), num_classes)

    # -- state ----------------------------------------------------------------------------
    def extra_state(self) -> dict:
        return {"query_proj": self.query_proj, "query_scale": self.query_scale}

    def load_extra_state(self, state: dict) -> None:
        self.query_proj, self.query_scale = state["query_proj"], state["query_scale"]
