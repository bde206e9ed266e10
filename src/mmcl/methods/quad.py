"""`quad`: question-only replay with attention distillation (scenario setting).

Reference: Marouf, Tartaglione, Lathuilière, van de Weijer, "No Images, No Problem: Retaining
Knowledge in Continual VQA with Questions-Only Memory" (arXiv 2502.04469; v2 titled "Ask and
Remember: A Questions-Only Replay Strategy for Continual Visual Question Answering"). Follows its
abstract: only past *questions* are stored (no images), they are replayed to keep the model from
overfitting to the current step's answers, and attention maps are distilled for intra-modal and
inter-modal consistency with the previous model. Our reconstruction (the paper's losses were not
available to us): how questions are chosen and paired with images, the previous model's greedy
answer as the replay target, which attention blocks, and the row-renormalised KL below.

1. Question-only replay. After each step, questions of that step (text only: no image, no answer)
   go into a memory of fixed size `memory`, split equally over the steps seen so far (a seeded
   random choice per step). At the start of a later step, every stored question is paired with an
   image of the *current* step (a seeded draw), and the frozen previous model answers these pairs
   once by greedy decoding. Those answers are the replay targets: while training, every batch adds
   `replay_batch_size` replayed pairs whose answer tokens get a cross-entropy towards the previous
   model's answer (sequence-level distillation; the stored questions have no valid answer for a
   current image, and the previous model's answer is what "keep answering like before" means).
2. Attention distillation. The previous model's attention maps in every language-model layer
   are the targets for the current model's, on the whole batch (current samples and replayed
   pairs, same tokens for both models). Each map (heads kept apart) is cut into three blocks:
   intra-modal image->image (image-token queries over image-token keys), intra-modal
   text->text, and inter-modal text->image (text queries over image keys; in a causal model with
   the image before the question, image queries see no later text, so that direction carries
   nothing). Every query row of a block is renormalised over the block's keys and compared by
   KL(previous || current); the term is the mean over rows, heads and layers, summed over the
   three blocks. The maps come from the HF model with `output_attentions=True`, which needs the
   eager attention implementation: the language model is switched to it (same maths as sdpa).

Loss from the second step on: CE(current answers) + replay_weight * CE(replayed pairs, previous
model's answers) + attn_weight * attention KD. At the first step: CE only.

The previous model is a frozen deep copy of the model taken at the start of every step after the
first; the method state holds its trainable weights (the rest is the cached base model), the
question memory and the step's replay pairs with their targets, so a resumed run replays exactly
what an uninterrupted one does.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmcl.buffers import ReplayBuffer
from mmcl.methods.base import Method, register
from mmcl.models.llava import IGNORE, per_question_mean

BLOCKS = ("image_image", "text_text", "text_image")



def attention_blocks(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int):
    """Boolean (B, L) masks of image tokens and of (non-padding) text tokens."""
    valid = attention_mask.bool()
    image = (input_ids == image_token_id) & valid
    return image, valid & ~image


def block_kl(student: torch.Tensor, teacher: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor,
             eps: float = 1e-8) -> torch.Tensor:
    """Mean over (query row, head) of KL(teacher || student), rows renormalised over `keys`.

    `student`, `teacher`: (B, H, L, L) attention maps; `queries`, `keys`: (B, L) masks. Rows
    whose teacher attention on the block is zero (no key there) are left out.
    """
    km = keys[:, None, None, :].to(student.dtype)
    t = teacher * km
    s = student * km
    tsum, ssum = t.sum(-1, keepdim=True), s.sum(-1, keepdim=True)
    pt, ps = t / tsum.clamp_min(eps), s / ssum.clamp_min(eps)
    kl = (pt * (torch.log(pt + eps) - torch.log(ps + eps))).sum(-1)  # (B, H, L)
    rows = queries[:, None, :] & (tsum[..., 0] > eps)
    return (kl * rows).sum() / rows.sum().clamp_min(1)


def attention_kd(student: tuple, teacher: tuple, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three block KLs, each the mean over language-model layers."""
    pairs = {"image_image": (image, image), "text_text": (text, text), "text_image": (text, image)}
    return {name: torch.stack([block_kl(s, t.detach(), q, k) for s, t in zip(student, teacher)]).mean()
            for name, (q, k) in pairs.items()}


@register("quad")
class Quad(Method):
    settings = ("scenario",)
    #: candidates tried on validation data by `mmcl sweep` (the same budget for every method)
    search_space = {"scenario": {"attn_weight": [0.1, 1.0, 10.0]}}

    #: allowed ranges of the numeric hyper-parameters (checked when the config loads)
    ranges = {"memory": ">=0", "replay_batch_size": ">=0", "replay_weight": ">=0", "attn_weight": ">=0"}
    @dataclass
    class Hparams:
        memory: int = 200  # questions stored in total (text only), split equally over the steps seen
        replay_batch_size: int = 8  # replayed (stored question, current image) pairs added to every batch
        replay_weight: float = 1.0  # weight of the cross-entropy towards the previous model's answers
        attn_weight: float = 1.0  # weight of the attention distillation (sum of three blocks)

    def __init__(self, stream, cfg, hp, setting=None):
        if hp.memory < 0 or hp.replay_batch_size < 0 or hp.replay_weight < 0 or hp.attn_weight < 0:
            raise ValueError(f"quad needs non-negative hyper-parameters, got {hp}")
        super().__init__(stream, cfg, hp, setting)
        self.model.language_model.set_attn_implementation("eager")  # attention maps need eager attention
        # per step, questions and their grounding flags only (no images, no answers)
        self.memory = ReplayBuffer(hp.memory, group_by="step", columns=("questions", "grounding"))
        self.replay: dict | None = None  # this step's pairs: questions, image_index (current images), answers
        self.teacher = None  # the frozen previous model
        self.teacher_state: dict | None = None

    # -- steps ---------------------------------------------------------------------------
    def before_experience(self, exp):
        if exp.index == 0:
            return
        self._set_teacher(self.snapshot())
        self.replay = self._replay_pairs(exp)

    def after_experience(self, exp):
        """Store this step's questions (text only) and cut every step's share to the budget."""
        self.memory.add(exp.train, [exp.name] * len(exp.train), self.rng)

    def stored_questions(self) -> tuple[list[str], list[bool]]:
        if not len(self.memory):
            return [], []
        d = self.memory.data
        return list(d["questions"]), [bool(g) for g in d["grounding"]]

    def _replay_pairs(self, exp) -> dict | None:
        """Every stored question with a current image, answered once by the previous model."""
        questions, grounding = self.stored_questions()
        if not questions or self.hp.replay_batch_size == 0:
            return None
        data = exp.train
        pick = torch.randint(len(data), (len(questions),), generator=self.rng)
        image_index = data.image_index[pick]
        answers = self.teacher.generate(data.images[image_index], questions,
                                        max_new_tokens=self.cfg["eval"]["max_new_tokens"],
                                        batch_size=self.cfg["eval"]["batch_size"])
        return {"questions": questions, "grounding": grounding, "image_index": image_index, "answers": answers}

    def _set_teacher(self, state: dict | None) -> None:
        self.teacher_state = state
        self.teacher = self.frozen_teacher(state)

    # -- loss ----------------------------------------------------------------------------
    def _with_replay(self, batch: dict) -> tuple[dict, int]:
        """The batch plus replayed pairs (drawn with the checkpointed generator); returns it and the current size."""
        n = len(batch["questions"])
        if self.replay is None:
            return batch, n
        r = torch.randint(len(self.replay["questions"]), (self.hp.replay_batch_size,), generator=self.rng).tolist()
        images = self.experience.train.images[self.replay["image_index"][r]]
        return {"images": torch.cat([batch["images"], images]),
                "questions": list(batch["questions"]) + [self.replay["questions"][i] for i in r],
                "answers": list(batch["answers"]) + [self.replay["answers"][i] for i in r]}, n

    def _forward(self, model, tokens: dict, attentions: bool):
        inputs = {k: v for k, v in tokens.items() if k != "labels"}
        out = model.hf.model(**inputs, output_attentions=attentions)
        return out[0], (out.attentions if attentions else None)

    def loss_terms(self, batch: dict) -> dict[str, torch.Tensor]:
        """Unweighted terms: 'task'; from the second step on 'replay' and the three attention blocks."""
        if self.teacher is None:
            return {"task": self.model.loss(batch)}
        full, n = self._with_replay(batch)
        tokens = self.model.batch(full["images"], full["questions"], full["answers"])
        hidden, s_att = self._forward(self.model, tokens, True)
        with torch.no_grad():
            _, t_att = self._forward(self.teacher, tokens, True)
        target = tokens["labels"][:, 1:]
        keep = target != IGNORE
        ce = F.cross_entropy(self.model.hf.lm_head(hidden[:, :-1][keep]).float(), target[keep], reduction="none")
        rows = torch.arange(target.shape[0], device=target.device)[:, None].expand_as(target)[keep]
        is_replay = rows >= n
        terms = {"task": per_question_mean(ce[~is_replay], rows[~is_replay])}
        if self.model.region_weight and batch.get("boxes") is not None:  # the run's grounded objective, current rows
            terms["task"] = terms["task"] + self.model.region_weight * self.model.region_loss(
                hidden[:n], {"input_ids": tokens["input_ids"][:n]}, batch["boxes"])
        terms["replay"] = per_question_mean(ce[is_replay], rows[is_replay]) if is_replay.any() else ce.new_zeros(())
        image, text = attention_blocks(tokens["input_ids"], tokens["attention_mask"], self.model.image_token_id)
        terms.update(attention_kd(s_att, t_att, image, text))
        return terms

    def training_loss(self, batch):
        t = self.loss_terms(batch)
        if "replay" not in t:
            return t["task"]
        return t["task"] + self.hp.replay_weight * t["replay"] + self.hp.attn_weight * sum(t[b] for b in BLOCKS)

    # -- state ---------------------------------------------------------------------------
    def extra_state(self):
        return {"memory": self.memory.state_dict(), "replay": copy.deepcopy(self.replay),
                "teacher": self.teacher_state}

    def load_extra_state(self, state):
        self.memory.load_state_dict(copy.deepcopy(state["memory"]))
        self.replay = copy.deepcopy(state["replay"])
        self._set_teacher(state["teacher"])
