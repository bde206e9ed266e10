"""UNIFIER's model surgery: Vision Representation Expansion (VRE) and the Vision Consistency Constraint (VCC).

VRE adds, in every block of an HF vision tower, a module beside the block's MLP:

    x  = the MLP's input (the normalised hidden states)
    h_k = up_k(act(down_k(x)))                   one bottleneck branch per scenario, k = 0..K-1
    v   = P [h_0; ...; h_{K-1}] = sum_k P_k h_k   the shared projector over the concatenated branches
    MLP(x) + scale * v                           what the block now adds to its residual stream

`VRE.add_branch()` appends a branch and the projector's columns for it, initialised to zero,
so the model's output is unchanged (bitwise: the projector is evaluated as a sum of
per-branch blocks, and a zero block adds exact zeros). `VRE.set_trainable(k)` freezes the
whole tower except branch k and the projector. At test time every branch runs in the same
forward pass: there is no router and no scenario id, and the tower's forward signature is
unchanged.

VCC (`vcc_loss`), per vision block, on the activations of the last training forward:
- branch consistency: the prototype is the mean of the branch outputs; for every branch, its
  token-averaged activations (a distribution over channels) and its channel-averaged
  activations (a distribution over tokens) are pulled towards the prototype's by a
  temperature-softened KL divergence, tau^2 * KL(softmax(proto / tau) || softmax(h_k / tau));
- previous-model consistency: the same two KL terms between the VRE output v and the
  previous model's VRE output for the same block input.
VCC is the mean over blocks of the sum of these terms; total loss = task loss + lam * VCC.

What follows the published description (the UNIFIER paper's abstract and secondary sources,
as summarised in DESIGN.md section 3): one branch per scenario beside the MLP of every
vision block; concatenation + a shared projector back to the block width; added to the MLP
output; only the current branch and the projector trained; all branches at test time
without a router; a prototype from the mean of the branches; token- and channel-averaged,
temperature-softened KL to it; a KL keeping the projector output close to the previous
model's; total loss = task + lambda * VCC.

What is our reconstruction (the paper's equations were not available):
- branch shape: Linear(d, bottleneck) -> activation -> Linear(bottleneck, branch_dim), default
  branch_dim = d; branches get PyTorch's default Linear initialisation (random, so that a new
  branch's VCC is informative at once); the projector has no bias;
- zero-initialised projector columns as the mechanism that keeps outputs unchanged;
- the prototype is a detached target (teacher-like); KL(target || student), `batchmean`,
  scaled by tau^2 as in knowledge distillation; frozen branches' terms are kept (they still
  send gradients to earlier blocks' trainable parts through the block input);
- "projector output" is the VRE output v of each block (not the vision-language projector).
  The previous model's v for the same block input is exactly P_prev applied to the old
  branches (frozen, hence identical in both models), where P_prev is the projector
  snapshotted by `VRE.snapshot()` at the start of the experience (a branch the previous
  model did not have contributes zero). This needs no copy of the previous model and no
  second forward pass. The alternative - KL on the vision-language projector's output -
  would need a full forward of a stored previous tower on every batch;
- for towers that concatenate all images into one 2-D token sequence (Qwen2-VL), images are
  separated with the block's `cu_seqlens` when it is passed to the block (Qwen2.5-VL's windowed
  blocks pass window boundaries: there the groups are windows, not images).

Adding a tower type. The blocks of a tower are found generically: the largest `nn.ModuleList`
whose elements all have an MLP child, looked up by attribute name in `MLP_ATTRS` (`mlp`,
`ffn`, `feed_forward`, ...), or split into `intermediate` + `output` (BEiT / Data2Vec-vision,
transformers-4 ViT). This covers CLIP, SigLIP, ViT, DINOv2, Idefics3 and Qwen2-VL /
Qwen2.5-VL vision blocks (the Qwen merger and SigLIP's pooling head are not in a ModuleList
and are left alone). If a tower names its MLP differently, add the block class to
`MLP_SITES` (`{"MyBlock": "my_mlp"}` or `{"MyBlock": ("fc_in", "fc_out")}` for a split MLP)
or pass `VREParams(mlp_attr="my_mlp")`. The MLP module must map (..., d) -> (..., d) on its
first positional (or only keyword) argument and contain nn.Linear layers (their first
in_features / last out_features give d).

Modules are added with forward hooks (the tower's code and its base parameter names are
untouched, as with peft); each block also receives a child module `vre`, so the branches move
with `.to()`, appear in `parameters()` and survive `copy.deepcopy`. A resumed run calls
`VRE.load_state_dict`, which rebuilds the stored number of branches before loading.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

MLP_ATTRS = ("mlp", "ffn", "feed_forward", "mlp_block", "feedforward")
SPLIT_MLP = ("intermediate", "output")
# block class name -> MLP attribute, or (input module, output module) of a split MLP
MLP_SITES: dict[str, Union[str, tuple[str, str]]] = {}


@dataclass
class VREParams:
    """Hyper-parameters of VRE + VCC; one line each."""

    bottleneck: int = 16          # width of each branch's down projection
    branch_dim: int = 0           # output width of each branch's up projection (0 = the block width; projector: d * branch_dim per branch and block)
    activation: str = "gelu"      # branch activation (a transformers ACT2FN name)
    scale: float = 1.0            # multiplier of the VRE output added to the MLP output
    temperature: float = 2.0      # VCC softmax temperature tau
    lam: float = 1.0              # weight of VCC in the total loss: task + lam * VCC
    vcc_branches: bool = True     # VCC term: each branch against the branches' prototype
    vcc_previous: bool = True     # VCC term: VRE output against the previous model's
    mlp_attr: str = ""            # override: the attribute of a block that holds its MLP


# ----------------------------------------------------------------------------- modules


class Bottleneck(nn.Module):
    """One scenario's branch: down -> activation -> up."""

    def __init__(self, dim: int, bottleneck: int, out_dim: int, activation: str):
        super().__init__()
        from transformers.activations import ACT2FN

        self.down = nn.Linear(dim, bottleneck)
        self.act = ACT2FN[activation]
        self.up = nn.Linear(bottleneck, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class VREAdapter(nn.Module):
    """The module beside one block's MLP: K branches and the shared projector (one column block per branch)."""

    def __init__(self, dim: int, params: VREParams):
        super().__init__()
        self.dim = dim
        self.params = params
        self.branch_dim = params.branch_dim or dim
        self.branches = nn.ModuleList()
        self.proj = nn.ParameterList()  # proj[k]: (dim, branch_dim), the columns of P for branch k
        # the previous model's projector columns (dim, n_prev * branch_dim); not persistent: VRE saves it
        self.register_buffer("prev_proj", torch.zeros(dim, 0), persistent=False)
        self.record = True
        self._x: Optional[torch.Tensor] = None          # split MLPs: the input seen by the first half
        self._cu: Optional[torch.Tensor] = None         # the block's cu_seqlens (image boundaries of a 2-D sequence)
        self._hs: Optional[list[torch.Tensor]] = None   # last training forward: branch outputs
        self._v: Optional[torch.Tensor] = None          # last training forward: VRE output (before scale)

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    def add_branch(self, like: torch.Tensor) -> None:
        p = self.params
        b = Bottleneck(self.dim, p.bottleneck, self.branch_dim, p.activation).to(like.device, like.dtype)
        self.branches.append(b)
        self.proj.append(nn.Parameter(torch.zeros(self.dim, self.branch_dim, device=like.device, dtype=like.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hs = [b(x) for b in self.branches]
        v = None
        for h, w in zip(hs, self.proj):  # sum of per-branch blocks == P @ concat(h); a zero block adds exact zeros
            t = F.linear(h, w)
            v = t if v is None else v + t
        if self.training and self.record:
            self._hs, self._v = hs, v
        return v * self.params.scale if self.params.scale != 1.0 else v

    # hooks
    def _after_mlp(self, module, args, kwargs, output):
        x = args[0] if args else next(iter(kwargs.values()))
        if not self.branches:
            return output
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"VRE expects the MLP {type(module).__name__} to return a tensor, got {type(output)}")
        return output + self(x)

    def _before_split_mlp(self, module, args, kwargs):
        self._x = args[0] if args else next(iter(kwargs.values()))

    def _after_split_mlp(self, module, args, kwargs, output):
        x, self._x = self._x, None
        if not self.branches or x is None:
            return output
        return output + self(x)

    def _before_block(self, module, args, kwargs):
        cu = kwargs.get("cu_seqlens")
        self._cu = cu if isinstance(cu, torch.Tensor) and cu.ndim == 1 else None

    @property
    def lengths(self) -> Optional[list[int]]:
        """Token counts of the images in the last 2-D sequence (read only by VCC: no device sync per block)."""
        return None if self._cu is None else (self._cu[1:] - self._cu[:-1]).tolist()


# ----------------------------------------------------------------------------- surgery


def _linears(m: nn.Module) -> list[nn.Linear]:
    return [x for x in m.modules() if isinstance(x, nn.Linear)]


def _block_site(block: nn.Module, mlp_attr: str = "") -> Optional[Union[str, tuple[str, str]]]:
    """Where a block's MLP is: an attribute name, or a pair for a split MLP, or None."""
    site = mlp_attr or MLP_SITES.get(type(block).__name__)
    if site:
        return site
    for name in MLP_ATTRS:
        if isinstance(getattr(block, name, None), nn.Module) and _linears(getattr(block, name)):
            return name
    a, b = SPLIT_MLP
    if all(isinstance(getattr(block, n, None), nn.Module) for n in (a, b)) and _linears(getattr(block, a)):
        return (a, b)
    return None


def find_blocks(tower: nn.Module, mlp_attr: str = "") -> list[tuple[str, nn.Module, Union[str, tuple[str, str]]]]:
    """The vision blocks of `tower` with their MLP site: the largest ModuleList whose elements all have an MLP."""
    best: list = []
    for name, mod in tower.named_modules():
        if not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        sites = [_block_site(b, mlp_attr) for b in mod]
        if all(s is not None for s in sites) and len(mod) > len(best):
            best = [(f"{name}.{i}", b, s) for i, (b, s) in enumerate(zip(mod, sites))]
    if not best:
        raise ValueError(f"no vision blocks with an MLP found in {type(tower).__name__}: add the block class to "
                         "mmcl.models.vre.MLP_SITES or pass VREParams(mlp_attr=...)")
    return best


def _site_dim(block: nn.Module, site) -> int:
    first = getattr(block, site if isinstance(site, str) else site[0])
    last = getattr(block, site if isinstance(site, str) else site[1])
    d_in, d_out = _linears(first)[0].in_features, _linears(last)[-1].out_features
    if d_in != d_out:
        raise ValueError(f"VRE needs an MLP of equal input and output width; {type(block).__name__} has "
                         f"{d_in} -> {d_out}")
    return d_in


class VRE:
    """Vision Representation Expansion on an HF vision tower (or a VLM, via its `vision_tower`).

    A handle, not a module: the per-block `VREAdapter`s are children of the blocks (`<block>.vre`).
    """

    def __init__(self, model: nn.Module, params: Optional[VREParams] = None):
        self.params = params or VREParams()
        self.tower = getattr(model, "vision_tower", model)
        self.blocks = find_blocks(self.tower, self.params.mlp_attr)
        self.adapters: list[VREAdapter] = []
        self._handles = []
        for _, block, site in self.blocks:
            if hasattr(block, "vre"):
                raise ValueError("this tower already has VRE modules")
            ref = next(block.parameters())
            ad = VREAdapter(_site_dim(block, site), self.params).to(ref.device)
            block.add_module("vre", ad)
            if isinstance(site, str):
                h = [getattr(block, site).register_forward_hook(ad._after_mlp, with_kwargs=True)]
            else:
                h = [getattr(block, site[0]).register_forward_pre_hook(ad._before_split_mlp, with_kwargs=True),
                     getattr(block, site[1]).register_forward_hook(ad._after_split_mlp, with_kwargs=True)]
            h.append(block.register_forward_pre_hook(ad._before_block, with_kwargs=True))
            self._handles += h
            self.adapters.append(ad)

    # -- branches
    @property
    def num_branches(self) -> int:
        return self.adapters[0].num_branches

    @property
    def num_previous(self) -> int:
        """Branches of the previous model (the projector snapshot)."""
        a = self.adapters[0]
        return a.prev_proj.shape[1] // a.branch_dim

    def add_branch(self, seed: Optional[int] = None) -> int:
        """Add one branch to every block (zero projector columns: outputs unchanged); returns its index."""
        with torch.random.fork_rng() if seed is not None else contextlib.nullcontext():
            if seed is not None:
                torch.manual_seed(seed)
            for ad, (_, block, _) in zip(self.adapters, self.blocks):
                ad.add_branch(next(p for p in block.parameters() if p.is_floating_point()))
        return self.num_branches - 1

    def set_trainable(self, current: int) -> None:
        """Freeze the whole tower except branch `current` and the projector.

        For Qwen2-VL the vision-language merger lives inside the tower and is frozen too;
        a method that trains it re-enables it afterwards.
        """
        if not 0 <= current < self.num_branches:
            raise IndexError(f"branch {current} does not exist ({self.num_branches} branches)")
        self.tower.requires_grad_(False)
        for p in self.branch_parameters(current):
            p.requires_grad_(True)
        for p in self.projector_parameters():
            p.requires_grad_(True)

    def snapshot(self) -> None:
        """Remember the projector as the previous model's (call at the start of an experience)."""
        for ad in self.adapters:
            ad.prev_proj = (torch.cat([w.detach() for w in ad.proj], dim=1).clone() if ad.num_branches
                            else ad.prev_proj[:, :0])

    def branch_parameters(self, k: int) -> list[nn.Parameter]:
        return [p for ad in self.adapters for p in ad.branches[k].parameters()]

    def projector_parameters(self) -> list[nn.Parameter]:
        return [p for ad in self.adapters for p in ad.proj]

    def parameters(self) -> Iterator[nn.Parameter]:
        for ad in self.adapters:
            yield from ad.parameters()

    def params_per_branch(self) -> int:
        """Parameters one branch adds to the tower (its bottlenecks and its projector columns)."""
        n = 0
        for ad in self.adapters:
            p = self.params
            n += ad.dim * p.bottleneck + p.bottleneck + p.bottleneck * ad.branch_dim + ad.branch_dim
            n += ad.dim * ad.branch_dim
        return n

    def clear(self) -> None:
        for ad in self.adapters:
            ad._hs = ad._v = ad._x = None

    def remove(self) -> None:
        """Undo the surgery: hooks and modules removed, the tower as it was."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for _, block, _ in self.blocks:
            if hasattr(block, "vre"):
                del block.vre
        self.adapters = []

    # -- loss
    def vcc_loss(self) -> torch.Tensor:
        return vcc_loss(self)

    # -- state
    def state_dict(self) -> dict:
        """Branch count, previous-branch count and every VRE tensor (branches, projector, snapshot)."""
        tensors = {}
        for i, ad in enumerate(self.adapters):
            for k, v in ad.state_dict().items():
                tensors[f"{i}.{k}"] = v.detach().clone()
            tensors[f"{i}.prev_proj"] = ad.prev_proj.detach().clone()
        return {"num_branches": self.num_branches, "num_previous": self.num_previous,
                "num_blocks": len(self.adapters), "params": dict(vars(self.params)), "tensors": tensors}

    def load_state_dict(self, state: dict) -> None:
        """Rebuild the stored number of branches, then load all VRE tensors (strict)."""
        if state["num_blocks"] != len(self.adapters):
            raise ValueError(f"VRE state is for {state['num_blocks']} blocks, this tower has {len(self.adapters)}")
        if state["num_branches"] < self.num_branches:
            raise ValueError(f"VRE state has {state['num_branches']} branches, this model already has "
                             f"{self.num_branches}")
        while self.num_branches < state["num_branches"]:
            self.add_branch()
        t = state["tensors"]
        for i, ad in enumerate(self.adapters):
            ad.load_state_dict({k[len(f"{i}."):]: v for k, v in t.items()
                                if k.startswith(f"{i}.") and not k.endswith(".prev_proj")}, strict=True)
            ad.prev_proj = t[f"{i}.prev_proj"].to(ad.prev_proj.device, ad.prev_proj.dtype).clone()


def attach_vre(model: nn.Module, params: Optional[VREParams] = None, branches: int = 0) -> VRE:
    """VRE surgery on `model` (a VLM or an HF vision tower), with `branches` branches added."""
    vre = VRE(model, params)
    for _ in range(branches):
        vre.add_branch()
    return vre


# ----------------------------------------------------------------------------- VCC


def _samples(h: torch.Tensor, lengths: Optional[Sequence[int]]) -> list[torch.Tensor]:
    """Per-image (B, T, d) groups: one tensor for 3-D hidden states or equal-length images, else one per image."""
    if h.dim() >= 3:
        return [h.reshape(-1, h.shape[-2], h.shape[-1])]
    if not lengths or sum(lengths) != h.shape[0]:
        return [h[None]]
    if len(set(lengths)) == 1:
        return [h.reshape(len(lengths), lengths[0], h.shape[-1])]
    return [s[None] for s in h.split(list(lengths))]


def _kl(student: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(target / tau) || softmax(student / tau)) over the last dim, mean over rows."""
    return F.kl_div(F.log_softmax(student / tau, -1), F.log_softmax(target.detach() / tau, -1),
                    log_target=True, reduction="batchmean") * tau ** 2


def _two_view_kl(student: torch.Tensor, target: torch.Tensor, lengths, tau: float) -> torch.Tensor:
    """KL of token-averaged (over channels) plus channel-averaged (over tokens) activations."""
    total = student.new_zeros(())
    groups = list(zip(_samples(student, lengths), _samples(target, lengths)))
    for s, t in groups:
        total = total + _kl(s.mean(-2), t.mean(-2), tau) + _kl(s.mean(-1), t.mean(-1), tau)
    return total / len(groups)


def vcc_loss(vre: VRE, temperature: Optional[float] = None) -> torch.Tensor:
    """The Vision Consistency Constraint on the last training forward (0 when nothing applies).

    Mean over blocks of: mean over branches of KL(branch, prototype) [if >= 2 branches and
    `vcc_branches`] + KL(VRE output, previous model's VRE output) [if a snapshot exists and
    `vcc_previous`]; each KL on token-averaged and on channel-averaged activations.
    """
    p = vre.params
    tau = float(temperature or p.temperature)
    terms = []
    for ad in vre.adapters:
        hs, v = ad._hs, ad._v
        if hs is None:
            continue
        lengths = ad.lengths if hs[0].dim() == 2 else None
        term = None
        if p.vcc_branches and len(hs) >= 2:
            proto = torch.stack(hs).mean(0).detach()
            term = sum(_two_view_kl(h, proto, lengths, tau) for h in hs) / len(hs)
        n_prev = ad.prev_proj.shape[1] // ad.branch_dim
        if p.vcc_previous and n_prev >= 1:
            with torch.no_grad():
                v_prev = F.linear(torch.cat(hs[:n_prev], dim=-1), ad.prev_proj)
            t = _two_view_kl(v, v_prev, lengths, tau)
            term = t if term is None else term + t
        if term is not None:
            terms.append(term)
    vre.clear()
    if not terms:
        ref = vre.adapters[0].prev_proj
        return torch.zeros((), device=ref.device, dtype=ref.dtype)
    return torch.stack(terms).mean()
