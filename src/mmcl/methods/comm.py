"""`comm`: continual learning over multiple modalities, aligned to text (the seed paper's method).

Reference: "Continual Learning for Multiple Modalities" (arXiv, March 2025; seed 000 in
../shared/seeds/). Only the abstract was available, so most of what follows is our
reconstruction (../shared/DESIGN.md section 2).

What the abstract says, and what is taken from it:
- every modality (image, video, audio, depth, text) is aligned to a text embedding space
  (here: the frozen MiniLM anchors of the class names; the `modality` setting itself);
- knowledge is aggregated *within* a modality by "self-regularization" and *across* modalities
  by "prioritizing contributions from relevant modalities";
- embeddings of the modalities are "re-aligned" to resolve biased alignment between modalities;
- it works with or without the modality's identity (both protocols of this framework).

Our reconstruction (equations, architecture and every number here are ours, not the paper's):
1. Prompt-based. One set of `P = model.prompt_length` learnable prompt tokens per modality,
   prepended to the input of the frozen MiniLM block (`model.features(batch, prompts=...)`). The
   backbone stays frozen; trained are the prompts of the current experience's modality, the
   per-modality input projections and the shared head (the framework's trainable class), plus the
   relevance classifier R below, which has its own objective. The model's shared prompt tokens
   are removed (every sample gets per-modality prompts instead).
2. Intra-modal self-regularisation (`method.self_reg`).
   (a) Prompts of a modality that returns in a later experience start from its earlier prompts
       (the same parameters continue training) and, after the experience, are merged with the
       prompts it had before the experience: P_k <- merge * P_k_before + (1 - merge) * P_k_after.
   (b) From the second experience on, a penalty limits the shift of the representation of the
       current data relative to the frozen model of the end of the previous experience:
           shift = mean_x || e(x) - e_prev(x) ||^2        (= 2 (1 - cos), e unit-norm embeddings)
       loss = CE + shift_weight * shift. For a modality the previous model had learned (a returning
       one) e_prev is the previous model's full forward pass. For a modality it had not learned,
       the previous model has no trained entry parts for it (its prompts and input projection are
       untouched initial values), so its entry parts are taken to be the current ones; as the
       frozen backbone and the other modalities' prompts do not change during an experience, this
       makes e_prev(x) = normalize(head_prev(f(x)) + zs): the penalty then limits the drift of the
       shared head on the current data (with the current features f(x) held fixed in the target).
       With self_reg=false: no merge, no penalty (a returning modality's prompts simply continue).
3. Inter-modal relevance-weighted aggregation (`method.inter_modal`). R is a small MLP over
   frozen features only: the masked mean of the raw input tokens (common width across
   modalities), layer-normalised without parameters; no trainable projection in its path. Its
   softmax over the modalities seen so far scores how related a sample is to each of them. A
   sample whose own modality is k gets the prompts
       prompt(x) = (1 - blend) * P_k + blend * sum_{j in E(k)} r_j(x) P_j,
   r = softmax of R's logits over E(k), the modalities first seen before k (all seen ones if k is
   unseen), so the weights sum to 1; with E(k) empty (the first modality) prompt(x) = P_k. Only
   earlier modalities enter: their prompts are used frozen (no gradient) while k is trained, and
   later modalities never change an earlier modality's prompts. R's weights are treated as
   constants in the task loss (R is trained only as a modality classifier, below).
   R learns the modalities without stored samples: after every experience, the mean and
   covariance of R's input features of the current modality are stored (`ClassGaussians` keyed by
   modality index; a returning modality's statistics are pooled with its earlier ones) and R is
   re-trained on the current data plus as many samples drawn from every earlier modality's
   Gaussian (cross-entropy over the modalities seen so far).
   Own modality k: in training, the experience's modality; in the modality-aware protocol the
   true modality batch["m"] (`uses_known_modality`); in the modality-agnostic protocol R's argmax
   over the modalities seen so far (batch["m"] is then read only by the per-modality input
   projection, as the framework allows). With inter_modal=false a sample uses P_k alone (no
   blending); R is still trained and still supplies k in the agnostic protocol, which otherwise
   could not choose prompts at all.
4. Re-alignment (`method.realign`). After every experience, the per-class mean and covariance of
   the pre-head representation of the training data are stored: the concatenation [f(x), zs(x)]
   of the pooled transformer output and the training-free map, since the embedding is
   normalize(head(f) + zs) (`ClassGaussians`, computed after the prompt merge and R's update,
   i.e. as the model will see them at test time). Then only the head is re-trained
   (`realign_head`) on vectors sampled from the statistics of all classes seen so far, against the
   text anchors (cross-entropy over the seen classes). No input sample is ever stored.

5. Returning modalities (ours, added after measuring the failure below). When a modality returns
   with new classes, the stored statistics of its earlier classes describe features that then
   move: its prompts are trained on the new classes (the merge undoes half of that) and so would
   be its input projection. Measured on mm5 with `stream.experiences_per_modality=2` (seed 0,
   validation split): without any remedy COMM scores 0.51 last_acc; re-computing every class's
   statistics from the real training data (an oracle that stores samples, for diagnosis only)
   0.77, so stale statistics, not the representation, cost the earlier classes. Two remedies:
   (a) `freeze_returning`: a returning modality's input projection is not trained again (left
       out of the optimiser; its prompts still train and are merged), so most of the drift does
       not happen (0.71 alone);
   (b) `drift`: what drift remains is compensated, as in drift-compensation work (Yu et al.,
       "Semantic Drift Compensation", CVPR 2020; a learned linear map of old to new features as
       in Gomez-Villa et al., "Exemplar-free Continual Representation Learning via Learnable
       Drift Compensation", ECCV 2024): on the current experience's data an affine map A, b from
       the pooled features f of the model at the start of the experience to those of the model
       at its end (after the merge) is fitted by ridge regression towards the identity
           min ||F_new - [F_old 1] [A; b]||^2 + drift_ridge * n * ||[A; b] - [I; 0]||^2,
       and every earlier class of that modality gets mean A^T mu_f + b and covariance
       T Sigma T^T (T = A^T on the f block, identity on zs, which never drifts), with the
       shrinkage added again (0.69 alone; 0.81 with (a)).
   Classes of other modalities are left as stored: their projections do not change, and their
   prompts change only through the blended share of the returning modality's prompts. Neither
   remedy acts on a stream where every modality comes once (mm5's default).

Everything random (Gaussian draws, R's and the head's shuffles) uses `self.rng`; the previous
model, the prompts snapshot for the merge and both sets of statistics are in `extra_state`; the
per-modality prompts and R are model parameters. Every rank computes the statistics from the
full experience, so the state is identical on all ranks. Statistics are rounded to float32
precision when made and stored as float32 (exactly, see `_round32`): on mm5 they are 38
covariances of 768 x 768 ([f, zs]) and 5 of 1280 x 1280 (R's input), ~120 MB in a checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmcl.methods.base import Method, register
from mmcl.methods.gaussians import ClassGaussians, realign_head
from mmcl.stream import MODALITIES, TensorSet


def pooled_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """R's input: the masked mean of the raw (frozen-encoder) input tokens, (B, token width)."""
    x = batch["tokens"].float()
    mask = batch["mask"].to(x.dtype)
    return (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)


def _merge_stats(stats: ClassGaussians, key: int, feats: torch.Tensor) -> None:
    """Add `feats` to the Gaussian stored under `key`, pooling with what is there (exact pooled moments)."""
    if key not in stats.mean:
        stats.add(feats, torch.full((len(feats),), key, dtype=torch.long))
        return
    new = ClassGaussians(stats.shrinkage)
    new.add(feats, torch.full((len(feats),), key, dtype=torch.long))
    n1, n2 = stats.count[key], new.count[key]
    m1, m2 = stats.mean[key], new.mean[key]
    n = n1 + n2
    d = (m1 - m2)[:, None]
    cov = ((n1 - 1) * stats.cov[key] + (n2 - 1) * new.cov[key] + n1 * n2 / n * (d @ d.T)) / max(1, n - 1)
    # the between-group term adds variance: top the shrinkage up to the pooled covariance's own scale
    cov = stats.shrunk(cov)
    stats.mean[key], stats.cov[key], stats.count[key] = (n1 * m1 + n2 * m2) / n, cov, n


def _round32(stats: ClassGaussians) -> None:
    """Round every mean and covariance to float32 precision (kept as float64), so that the float32 copy in
    `extra_state` is exact: a resumed run samples exactly what an uninterrupted one does, from half the bytes.
    Safe for the Cholesky factorisation: the rounding error's norm (<= 2^-24 * trace) stays below the
    shrinkage ClassGaussians adds to the diagonal (1e-4 * mean variance) up to 1600 dimensions."""
    for k in stats.mean:
        stats.mean[k], stats.cov[k] = stats.mean[k].float().double(), stats.cov[k].float().double()


def _stats_state(stats: ClassGaussians) -> dict:
    st = stats.state_dict()
    return {**st, "mean": {k: v.float() for k, v in st["mean"].items()},
            "cov": {k: v.float() for k, v in st["cov"].items()}}


def _load_stats(stats: ClassGaussians, state: dict) -> None:
    stats.load_state_dict({**state, "mean": {k: v.double() for k, v in state["mean"].items()},
                           "cov": {k: v.double() for k, v in state["cov"].items()}})


@register("comm")
class COMM(Method):
    uses_known_modality = True  # aware protocol: the true modality chooses the prompts

    #: allowed ranges of the numeric hyper-parameters (checked when the config loads)
    ranges = {"shift_weight": ">=0", "merge": "[0,1]", "blend": "[0,1]", "relevance_hidden": ">=1", "relevance_epochs": ">=0",
              "relevance_samples": ">=0", "realign_per_class": ">=1", "realign_epochs": ">=0", "drift_ridge": ">0"}
    @dataclass
    class Hparams:
        self_reg: bool = True  # intra-modal self-regularisation: prompt merge + representation-shift penalty
        inter_modal: bool = True  # relevance-weighted blending of earlier modalities' prompts
        realign: bool = True  # re-train the head on features sampled from per-class Gaussians
        shift_weight: float = 1.0  # weight of the representation-shift penalty
        merge: float = 0.5  # weight of a returning modality's earlier prompts in the merge
        blend: float = 0.3  # share of the earlier modalities' (relevance-weighted) prompts in a sample's prompts
        relevance_hidden: int = 64  # hidden width of R
        relevance_epochs: int = 20  # epochs of R's re-training after every experience
        relevance_samples: int = 0  # draws per earlier modality when re-training R; 0 = size of the current experience
        realign_per_class: int = 256  # draws per class when re-aligning the head
        realign_epochs: int = 5  # epochs of the head's re-alignment
        freeze_returning: bool = True  # a returning modality's input projection is not trained again
        drift: bool = True  # carry a returning modality's earlier class statistics to its new features
        drift_ridge: float = 0.1  # ridge strength (per sample) of the drift map, towards the identity

    search_space = {"modality": {"shift_weight": [0.1, 1.0, 10.0], "merge": [0.25, 0.5, 0.75], "blend": [0.1, 0.3, 0.6],
                                 "relevance_epochs": [5, 20, 50], "drift_ridge": [0.03, 0.1, 0.3]}}

    def __init__(self, stream, cfg, hp, setting=None):
        if "tokens" not in stream.feature_keys:
            raise ValueError("comm needs a token benchmark (the prompted model), e.g. mm5")
        if cfg["model"]["prompt_length"] < 1:
            raise ValueError("comm needs model.prompt_length >= 1")
        if not 0 <= hp.merge <= 1 or not 0 <= hp.blend <= 1 or hp.shift_weight < 0:
            raise ValueError(f"comm needs 0 <= merge, blend <= 1 and shift_weight >= 0, got "
                             f"{hp.merge}, {hp.blend}, {hp.shift_weight}")
        super().__init__(stream, cfg, hp, setting)
        self._attach(self.model)
        self.teacher: nn.Module | None = None  # frozen model of the end of the previous experience (self_reg, drift)
        self.teacher_state: dict | None = None  # its trainable state (what is checkpointed)
        self.prev_prompt: torch.Tensor | None = None  # a returning modality's prompts before the experience
        self.modality_stats = ClassGaussians()  # R's input features, keyed by modality index
        self.class_stats = ClassGaussians()  # [f, zs] per class id

    # -- model --------------------------------------------------------------------------
    def _attach(self, model: nn.Module) -> None:
        """Per-modality prompts and R on the prompted model (model parameters: checkpointed, DDP-visible)."""
        P, W = self.cfg["model"]["prompt_length"], model.width
        model.prompts = None  # no shared prompts: every sample gets per-modality ones
        model.comm_prompts = nn.ParameterList([nn.Parameter(torch.randn(P, W) * 0.02) for _ in MODALITIES])
        in_dim = self.stream[0].train["tokens"].shape[-1]
        rel = nn.Sequential(nn.Linear(in_dim, self.hp.relevance_hidden), nn.ReLU(),
                            nn.Linear(self.hp.relevance_hidden, len(MODALITIES)))
        nn.init.zeros_(rel[2].weight)
        nn.init.zeros_(rel[2].bias)  # untrained R: uniform relevance
        model.comm_relevance = rel.requires_grad_(False)  # trained only in after_experience, by its own loss

    # -- modalities ---------------------------------------------------------------------
    def seen_modalities(self, upto: int | None = None) -> list[int]:
        """Modality indices in order of first appearance in experiences 0..upto (default: the current one)."""
        if upto is None:
            upto = self.experience.index if self.experience is not None else -1
        out: list[int] = []
        for e in self.stream.experiences[: upto + 1]:
            k = MODALITIES.index(e.modality)
            if k not in out:
                out.append(k)
        return out

    def _rank(self) -> torch.Tensor:
        """(M,) first-appearance rank of every modality; unseen ones get M."""
        rank = torch.full((len(MODALITIES),), len(MODALITIES), dtype=torch.long, device=self.device)
        for i, k in enumerate(self.seen_modalities()):
            rank[k] = i
        return rank

    @torch.no_grad()
    def relevance_logits(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = pooled_tokens(batch)
        return model.comm_relevance(F.layer_norm(x, x.shape[-1:]))

    @torch.no_grad()
    def relevance(self, batch: dict[str, torch.Tensor], candidates: list[int] | None = None) -> torch.Tensor:
        """(B, M) R's weights over `candidates` (default: the modalities seen so far); 0 elsewhere, rows sum to 1."""
        cand = self.seen_modalities() if candidates is None else candidates
        allowed = torch.zeros(len(MODALITIES), dtype=torch.bool, device=self.device)
        allowed[cand if cand else list(range(len(MODALITIES)))] = True
        return F.softmax(self.relevance_logits(self.model, batch).masked_fill(~allowed, float("-inf")), dim=1)

    def infer_modality(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) R's guess of every sample's modality among those seen so far (never reads batch['m'])."""
        return self.relevance(batch).argmax(1)

    def prompt_weights(self, model: nn.Module, batch: dict[str, torch.Tensor], own: torch.Tensor) -> torch.Tensor:
        """(B, M) weights of the per-modality prompts: (1 - blend) onehot(own) + blend * r over E(own)."""
        onehot = F.one_hot(own, len(MODALITIES)).float()
        if not self.hp.inter_modal or self.hp.blend == 0:
            return onehot
        rank = self._rank()
        earlier = rank[None, :] < rank[own][:, None]  # E(own): modalities first seen before own
        has = earlier.any(1)
        logits = self.relevance_logits(model, batch).masked_fill(~earlier, float("-inf"))
        r = torch.where(has[:, None], F.softmax(logits, dim=1).nan_to_num(0.0), torch.zeros_like(onehot))
        lam = self.hp.blend * has.float()[:, None]
        return (1 - lam) * onehot + lam * r

    @staticmethod
    def blend_prompts(model: nn.Module, weights: torch.Tensor, trainable: int | None = None) -> torch.Tensor:
        """(B, P, width): per-sample prompts; only modality `trainable`'s prompts receive gradients."""
        P = torch.stack([p if i == trainable else p.detach() for i, p in enumerate(model.comm_prompts)])
        return torch.einsum("bm,mpw->bpw", weights, P)

    def _own_prompts(self, model, batch, own, trainable=None):
        return self.blend_prompts(model, self.prompt_weights(model, batch, own), trainable)

    def _returning(self, exp) -> bool:
        return exp.modality in {e.modality for e in self.stream.experiences[: exp.index]}

    # -- hooks --------------------------------------------------------------------------
    def before_experience(self, exp):
        self.prev_prompt, self.teacher, self.teacher_state = None, None, None
        returning = self._returning(exp)
        if self.hp.self_reg and returning:  # starts from its earlier prompts (the same parameters); keep them for the merge
            self.prev_prompt = self.model.comm_prompts[MODALITIES.index(exp.modality)].detach().clone()
        if (self.hp.self_reg and exp.index > 0) or (self.hp.drift and returning):
            self._set_teacher(self.snapshot())

    def param_groups(self):
        """Everything trainable, except a returning modality's input projection with `freeze_returning`."""
        params = self.trainable_parameters()
        if self.hp.freeze_returning and self.experience is not None and self._returning(self.experience):
            frozen = {id(p) for p in self.model.input_proj[self.experience.modality].parameters()}
            params = [p for p in params if id(p) not in frozen]
        return params

    def _set_teacher(self, state: dict | None) -> None:
        self.teacher_state = state
        self.teacher = self.frozen_teacher(state)

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Unweighted terms: 'ce' and, with a previous model (self_reg, 2nd experience on), 'shift'."""
        k = MODALITIES.index(self.experience.modality)
        own = torch.full_like(batch["y"], k)  # training: the experience's modality is known
        prompts = self._own_prompts(self.model, batch, own, trainable=k)
        captured: list[torch.Tensor] = []
        hook = self.model.head.register_forward_hook(lambda mod, inp, out: captured.append(inp[0]))
        try:
            emb = self.net(batch, prompts=prompts)
        finally:
            hook.remove()
        terms = {"ce": F.cross_entropy(self.model.logits(emb, self.num_seen), batch["y"])}
        if self.hp.self_reg and self.teacher is not None:
            with torch.no_grad():
                if self._returning(self.experience):  # the previous model knows this modality: its full forward
                    prev = self.teacher(batch, prompts=self._own_prompts(self.teacher, batch, own))
                else:  # its entry parts for this modality are the current ones: only the shared head differs
                    prev = F.normalize(self.teacher.head(captured[0].detach()) + batch["zs"], dim=-1)
            terms["shift"] = (emb - prev).pow(2).sum(-1).mean()
        return terms

    def training_loss(self, batch):
        t = self.loss_terms(batch)
        if "shift" not in t:
            return t["ce"]
        return t["ce"] + self.hp.shift_weight * t["shift"]

    def after_experience(self, exp):
        k = MODALITIES.index(exp.modality)
        if self.hp.self_reg and self.prev_prompt is not None:
            with torch.no_grad():
                p = self.model.comm_prompts[k]
                p.copy_(self.hp.merge * self.prev_prompt + (1 - self.hp.merge) * p)
        self.prev_prompt = None
        self.train_relevance(exp)
        if self.hp.drift and self.teacher is not None and self._returning(exp):
            self.compensate_drift(exp)
        if self.hp.realign:
            self.realign_step(exp)
        self._set_teacher(None)  # the next experience takes a fresh copy

    # -- R: modality relevance from Gaussian statistics -------------------------------------
    def train_relevance(self, exp) -> float:
        """Store the current modality's statistics of R's input; re-train R on them plus the current data."""
        k = MODALITIES.index(exp.modality)
        x_cur = pooled_tokens(exp.train.tensors).double()
        _merge_stats(self.modality_stats, k, x_cur)
        _round32(self.modality_stats)
        seen = self.seen_modalities(exp.index)
        n = self.hp.relevance_samples or len(x_cur)
        xs, ys = [x_cur.float()], [torch.full((len(x_cur),), k, dtype=torch.long)]
        others = [j for j in seen if j != k]
        if others:
            x_old, y_old = self.modality_stats.sample(n, self.rng, others)
            xs.append(x_old)
            ys.append(y_old)
        X, Y = torch.cat(xs), torch.cat(ys)
        col = torch.full((len(MODALITIES),), -1, dtype=torch.long)
        col[torch.tensor(seen)] = torch.arange(len(seen))
        target = col[Y]
        R = self.model.comm_relevance
        R.requires_grad_(True)
        opt = torch.optim.Adam(R.parameters(), lr=self.cfg["train"]["lr"])
        bs = self.cfg["train"]["batch_size"]
        Xn, target = F.layer_norm(X, X.shape[-1:]).to(self.device), target.to(self.device)
        last = 0.0
        try:
            for _ in range(self.hp.relevance_epochs):
                perm = torch.randperm(len(X), generator=self.rng)
                total = 0.0
                for i in range(0, len(perm), bs):
                    idx = perm[i:i + bs]
                    loss = F.cross_entropy(R(Xn[idx])[:, seen], target[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += loss.item() * len(idx)
                last = total / len(perm)
        finally:
            R.requires_grad_(False)
        return last

    # -- re-alignment ------------------------------------------------------------------------
    @torch.no_grad()
    def pre_head(self, data: TensorSet, modality: int, model: nn.Module | None = None) -> torch.Tensor:
        """[f(x), zs(x)] for `data` of one modality, with the prompts `model` (default: the current one) uses for it."""
        model = self.model if model is None else model
        was = model.training
        model.eval()
        out = []
        for batch in self.batches(data, self.cfg["eval"]["batch_size"]):
            own = torch.full_like(batch["y"], modality)
            f = model.features(batch, prompts=self._own_prompts(model, batch, own))
            out.append(torch.cat([f, batch["zs"].float()], dim=1))
        model.train(was)
        return torch.cat(out).cpu()  # statistics live on the CPU (and in checkpoints)

    def drift_map(self, old: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, b) of the ridge-regressed affine map old -> new features (rows are samples), shrunk towards the identity."""
        n, W = old.shape
        X = torch.cat([old, old.new_ones(n, 1)], dim=1)
        eye = torch.eye(W + 1, dtype=old.dtype)
        lam = self.hp.drift_ridge * n
        Ab = torch.linalg.solve(X.T @ X + lam * eye, X.T @ new + lam * eye[:, :W])
        return Ab[:W], Ab[W]

    def compensate_drift(self, exp) -> list[int]:
        """Carry the stored statistics of the returning modality's earlier classes to the current features
        (the map is fitted on the current data, start-of-experience model -> current model); returns those classes."""
        k, W = MODALITIES.index(exp.modality), self.model.width
        old = self.pre_head(exp.train, k, self.teacher).double()[:, :W]
        new = self.pre_head(exp.train, k).double()[:, :W]
        A, b = self.drift_map(old, new)
        earlier = sorted({c for e in self.stream.experiences[: exp.index] if e.modality == exp.modality for c in e.classes})
        for c in earlier:
            if c not in self.class_stats.mean:
                continue
            mu, cov = self.class_stats.mean[c], self.class_stats.cov[c]
            T = torch.eye(len(mu), dtype=mu.dtype)
            T[:W, :W] = A.T
            self.class_stats.mean[c] = torch.cat([A.T @ mu[:W] + b, mu[W:]])
            self.class_stats.cov[c] = self.class_stats.shrunk(T @ cov @ T.T)
        _round32(self.class_stats)
        return earlier

    def realign_step(self, exp) -> float:
        """Store the current classes' [f, zs] statistics; re-train only the head on draws of all seen classes."""
        self.class_stats.add(self.pre_head(exp.train, MODALITIES.index(exp.modality)).double(), exp.train["y"])
        _round32(self.class_stats)
        n, W, model = self.stream.seen_after(exp.index), self.model.width, self.model

        def embed(v: torch.Tensor) -> torch.Tensor:
            return model.logits(F.normalize(model.head(v[:, :W]) + v[:, W:], dim=-1), n)

        return realign_head(model.head, embed, self.class_stats, n, self.rng, per_class=self.hp.realign_per_class,
                            epochs=self.hp.realign_epochs, lr=self.cfg["train"]["lr"],
                            batch_size=self.cfg["train"]["batch_size"])

    # -- prediction ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, batch, num_classes, known_modality=False):
        own = batch["m"] if known_modality else self.infer_modality(batch)
        emb = self.model(batch, prompts=self._own_prompts(self.model, batch, own))
        return self.model.logits(emb, num_classes)

    # -- state ---------------------------------------------------------------------------------
    def extra_state(self):
        return {"teacher": self.teacher_state, "prev_prompt": self.prev_prompt,
                "modality_stats": _stats_state(self.modality_stats), "class_stats": _stats_state(self.class_stats)}

    def load_extra_state(self, state):
        self._set_teacher(state["teacher"])
        self.prev_prompt = state["prev_prompt"]
        _load_stats(self.modality_stats, state["modality_stats"])
        _load_stats(self.class_stats, state["class_stats"])
