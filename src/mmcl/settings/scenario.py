"""`scenario`: continual instruction tuning of a LLaVA-style model across visual scenarios (DESIGN.md section 3).

Experiences are steps of visual questions (`SampleSet`s); the model is a `VLM` (`vlm.*`) that
starts from a base model trained once on the benchmark's pre-training scenario (a stage run
before the stream, cached: `mmcl.scenario.base_model`). Training is the answer-token
cross-entropy; a prediction is a generated answer string; two matrices, `vqa` (normalised
exact match over short-answer questions) and `grounding_f1` (boxes at IoU >= 0.5).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import sys

import torch
from torch import nn
from tqdm.auto import tqdm

from mmcl.data.registry import BuildContext
from mmcl.settings.base import EvalResult, Evaluator, Setting, register_setting, without
from mmcl.stream import Stream


def state_digest(model: nn.Module) -> str:
    """Hash of every weight and buffer: whatever a method changes, a changed model gets new answers. Of a sharded
    model (`vlm.fsdp`), every rank hashes its shards and the digest is that of all ranks' hashes."""
    from torch.distributed.tensor import DTensor

    from mmcl import distributed as dist

    h, local = hashlib.sha256(), False
    for name, t in model.state_dict().items():
        if isinstance(t, DTensor):
            t, local = t.to_local(), True
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    if local and dist.active():
        return hashlib.sha256("".join(dist.gather_objects(h.hexdigest())).encode()).hexdigest()
    return h.hexdigest()


class ScenarioEvaluator(Evaluator):
    """Generates answers for every step's test questions and scores them (`ScenarioScorer`).

    Questions are answered in batches of `eval.batch_size`, short-answer questions first and
    grounding questions last: a batch stops decoding when all its answers ended, so short answers
    do not wait for box lists (batched greedy decoding equals one-by-one decoding). Answers are
    deterministic given the weights, so a step is not answered again while the model is unchanged
    (`zeroshot`: one evaluation, not T + 1): the evaluator keeps the last model's answers.
    """

    hidden = ("answers", "boxes")  # the boxes are every grounding answer
    sharded = True  # under torchrun every rank answers its share of the questions (generation is the slow part)

    def __init__(self, setting):
        super().__init__(setting)
        self._answers: tuple[str, dict[int, list[str]]] | None = None  # (model digest, step -> answers)

    @torch.no_grad()
    def __call__(self, method, stream: Stream, after: int, progress: bool = False) -> EvalResult:
        from mmcl import distributed as dist
        from mmcl.scenario.metrics import ScenarioScorer

        method.model.eval()
        digest = state_digest(method.model)
        if self._answers is None or self._answers[0] != digest:
            self._answers = (digest, {})
        cache = self._answers[1]
        rows: dict[str, list] = {"vqa": [], "grounding_f1": []}
        records, unparsed = [], 0
        bs = self.cfg["eval"]["batch_size"]
        for j, exp in enumerate(tqdm(stream, desc="evaluating", leave=False, disable=None if progress else True)):
            if j > after >= 0 and not self.cfg["eval"]["future"]:
                rows["vqa"].append(None)
                rows["grounding_f1"].append(None)
                continue
            test = exp.test
            if j not in cache:
                # this rank's share: every world-th question, short answers still first
                order = torch.argsort(test.grounding.long(), stable=True)[dist.rank()::dist.world()]
                mine: dict[int, str] = {}
                k = 0
                for batch in test.subset(order).batches(bs):
                    for a in method.predict(without(batch, self.hidden), None):  # never the answers
                        mine[int(order[k])] = a
                        k += 1
                if self.setting.fsdp:  # every rank makes as many (collective) calls as the one with most to answer
                    from mmcl.fsdp import lockstep_batches

                    extra = lockstep_batches(len(test), bs) - math.ceil(len(order) / bs)
                    if extra:
                        dummy = without(next(test.subset(torch.zeros(1, dtype=torch.long)).batches(1)), self.hidden)
                        for _ in range(extra):
                            method.predict(dummy, None)
                answers: list[str] = [""] * len(test)
                for part in dist.gather_objects(mine):
                    for i, a in part.items():
                        answers[i] = a
                cache[j] = answers
            answers = cache[j]
            scorer = ScenarioScorer().update(answers, test.answers, test.grounding.tolist())
            for name, v in scorer.result().items():
                rows[name].append(v)
            unparsed += scorer.unparsed
            records += [{"step": exp.name, "id": i, "scenario": sc, "question": q, "answer": a, "prediction": p}
                        for i, sc, q, a, p in zip(test.ids, test.scenarios, test.questions, test.answers, answers)]
        method.model.train()
        return EvalResult(rows, records, {"unparsed_box_answers": unparsed})


def last_row_by_scenario(rows: dict[str, list], stream: Stream) -> dict[str, dict[str, float | None]]:
    """Per matrix, the final row averaged over each scenario's steps (the 20-step protocol has 5 per scenario)."""
    out = {}
    for name, A in rows.items():
        per: dict[str, list] = {}
        for e, v in zip(stream, A[-1]):
            per.setdefault(e.scenario, []).append(v)
        out[name] = {sc: (sum(vs) / len(vs) if None not in vs else None) for sc, vs in per.items()}
    return out


@register_setting("scenario")
class ScenarioSetting(Setting):
    matrices = ("vqa", "grounding_f1")
    schema = {
        "stream": {
            # 4-step / per-scenario: one step per scenario | 20-step / per-subtask: each scenario in 5 disjoint
            # sub-tasks, interleaved (MSVQA's names count its four scenarios; the others fit any number)
            "protocol": "4-step",
        },
        "base": {  # the base model: trained once (lm_train=full) on the benchmark's pre-training scenario, cached
            "epochs": 12,
            "lr": 2e-3,
            "batch_size": 32,
            "region_weight": 0.0,  # > 0: also name the object at every image token (needs the data's boxes)
        },
        "train": {
            # > 0: every method's training loss adds the region-naming term times this (the base model's
            # `base.region_weight` objective on each step's annotated boxes: grounded instruction tuning)
            "region_weight": 0.0,
        },
        "eval": {
            "max_new_tokens": 48,  # greedy generation budget per answer (a box is about 9 tokens)
            "predictions": True,  # write predictions.jsonl (every answer of the last evaluation)
        },
    }
    choices = {"stream.protocol": ("4-step", "20-step", "per-scenario", "per-subtask")}
    ranges = {"base.epochs": ">=0", "base.lr": ">0", "base.batch_size": ">=1", "base.region_weight": ">=0",
              "train.region_weight": ">=0",
              "eval.max_new_tokens": ">=1", "vlm.lora_r": ">=1", "vlm.lora_alpha": ">0", "vlm.lora_dropout": "[0,1)",
              "vlm.image_size": ">=8", "vlm.patch_size": ">=1", "vlm.vision_dim": ">=0", "vlm.vision_layers": ">=0",
              "vlm.lm_dim": ">=32", "vlm.lm_layers": ">=1", "vlm.seed": ">=0"}
    ddp = False  # methods call the model several times per step: the engine averages gradients instead
    replay_group = "step"

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        self._base: tuple[int, dict, dict] | None = None  # (id of the pre-training data, weights, meta)
        #: `vlm.fsdp`: the language model is sharded under torchrun (`mmcl.fsdp`), and model and optimiser states
        #: go through torch.distributed.checkpoint's full state dicts (one process too: the same checkpoints)
        self.fsdp = bool(cfg["vlm"].get("fsdp", False))
        self._fsdp_units = 0  # fully_shard units of the model (decoder layers + the language model): metrics.json

    # -- config ---------------------------------------------------------------------------
    @classmethod
    def extra_schema(cls, cfg: dict) -> dict:
        from mmcl.models.llava import VLMParams

        out = {}
        for f in dataclasses.fields(VLMParams):
            d = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out[f"vlm.{f.name}"] = list(d) if isinstance(d, tuple) else d
        return out

    @classmethod
    def check(cls, cfg: dict) -> None:
        from mmcl.errors import ConfigError

        for key in ("base.region_weight", "train.region_weight"):  # >= 0: `ranges`, checked before this
            section, name = key.split(".")
            if cfg[section][name] and str(cfg["vlm"]["preset"]).startswith("hf:"):
                raise ConfigError(f"config key '{key}': region naming needs a preset whose image tokens are a "
                                  f"fixed grid (tiny, smollm2), not an hf:<dir> checkpoint; set {key}=0")

    @classmethod
    def check_method(cls, cfg: dict, methods: dict) -> None:
        """`vlm.fsdp` with a method that cannot run sharded (`Method.fsdp`) is refused."""
        from mmcl.errors import ConfigError

        name = cfg["method"]["name"]
        if cfg["vlm"]["fsdp"] and not methods[name].fsdp:
            ok = ", ".join(n for n, c in sorted(methods.items()) if c.fsdp and "scenario" in c.settings)
            raise ConfigError(f"config key 'vlm.fsdp': method '{name}' keeps state per parameter of the language "
                              f"model or adds modules to it, which a sharded model does not support; use "
                              f"vlm.fsdp=false or one of: {ok}")

    # -- data -----------------------------------------------------------------------------
    def context(self) -> BuildContext:
        cfg, v = self.cfg, self.cfg["vlm"]
        size = None if str(v["preset"]).startswith("hf:") else int(v["image_size"])
        return BuildContext(seed=int(cfg["seed"]), stream=dict(cfg["stream"]), progress=bool(cfg["logging"]["progress"]),
                            image_size=size)

    # -- stages ---------------------------------------------------------------------------
    def prepare(self, stream: Stream, progress: bool = False) -> dict:
        """The base model: trained once on the stream's pre-training data (`stream.pretrain`) and cached.

        Without pre-training data the model starts as built; for the `tiny` preset (a random language
        model) that is an untrained model, which is said loudly, with the fix."""
        preset = str(self.cfg["vlm"]["preset"])
        if stream.pretrain is None or not len(stream.pretrain):
            info = {"trained_on": None, "preset": preset}
            if preset == "tiny":
                info["warning"] = ("vlm.preset=tiny starts from a random language model and the benchmark has no base "
                                   "scenario, so the stream trains an untrained model (expect empty answers and scores "
                                   "near 0); set benchmark.base_scenario=<a scenario of the training data> to train the "
                                   "base model on it first, or use a pretrained model (vlm.preset=hf:<dir>)")
                print(f"warning: {info['warning']}", file=sys.stderr, flush=True)
            return {"base_model": info}
        from mmcl.scenario.base_model import base_info

        meta = self._base_weights(stream, progress)[1]
        return {"base_model": {"trained_on": stream.info.get("base_scenario"), "preset": preset, **base_info(meta)}}

    def _base_weights(self, stream: Stream, progress: bool) -> tuple[dict, dict] | tuple[None, None]:
        """(weights, meta) of the base model of `stream`'s pre-training data, loaded or trained once per setting
        object; (None, None) without pre-training data."""
        if stream.pretrain is None or not len(stream.pretrain):
            return None, None
        if self._base is None or self._base[0] != id(stream.pretrain):
            from mmcl.scenario.base_model import base_weights

            self._base = (id(stream.pretrain), *base_weights(self.cfg, stream, progress=progress))
        return self._base[1], self._base[2]

    # -- model ----------------------------------------------------------------------------
    def build_model(self, stream: Stream) -> nn.Module:
        from mmcl.scenario.base_model import build_scenario_model

        weights, _ = self._base_weights(stream, progress=bool(self.cfg["logging"]["progress"]))
        model = build_scenario_model(self.cfg, weights)
        model.region_weight = float(self.cfg["train"]["region_weight"])
        return model

    def model_state(self, model, checkpoint: bool = False):
        """LoRA, projector, trainable tower: the base model is rebuilt from its cache. With `vlm.fsdp`, full
        tensors gathered by torch.distributed.checkpoint (for a checkpoint: into rank 0's CPU memory only)."""
        if not self.fsdp:
            return model.trainable_state_dict()
        from mmcl.fsdp import trainable_state

        return trainable_state(model, {n for n, p in model.named_parameters() if p.requires_grad}, checkpoint)

    def load_model_state(self, model, state):
        if not self.fsdp:
            return super().load_model_state(model, state)
        from mmcl.fsdp import load_state

        return load_state(model, state)

    def optimizer_state(self, model, opt):
        if not self.fsdp:
            return super().optimizer_state(model, opt)
        from mmcl.fsdp import optimizer_state

        return optimizer_state(model, opt)

    def load_optimizer_state(self, model, opt, state):
        if not self.fsdp:
            return super().load_optimizer_state(model, opt, state)
        from mmcl.fsdp import load_optimizer_state

        load_optimizer_state(model, opt, state)

    def shard(self, model):
        """`vlm.fsdp` under torchrun: FSDP over the language model (`mmcl.fsdp`), once."""
        from mmcl import distributed as dist

        if not (self.fsdp and dist.active()):
            return
        from torch.distributed.fsdp import FSDPModule

        from mmcl.fsdp import shard_language_model, sharded

        if not sharded(model):
            lm = model.language_model
            head = model.hf.get_output_embeddings()
            tied = {p for p in lm.parameters() if head is not None and p is head.weight}  # tiny, smollm2 tie them
            shard_language_model(lm, lm.layers, tied)
            self._fsdp_units = sum(isinstance(m, FSDPModule) for m in model.modules())

    def copy_model(self, model, stream):
        """A sharded model cannot be deep-copied (FSDP refuses): a second one is built as the first was, with the
        attention implementation a method chose (`quad` reads attention maps: eager), sharded; the caller loads
        the state it needs (a method's teacher: its previous trainable state)."""
        from mmcl.fsdp import sharded

        if not sharded(model):
            return super().copy_model(model, stream)
        twin = self.build_model(stream)
        impl = getattr(model.language_model.config, "_attn_implementation", None)
        if impl and impl != getattr(twin.language_model.config, "_attn_implementation", None):
            twin.language_model.set_attn_implementation(impl)
        twin.to(self.device)
        self.shard(twin)
        return twin

    def check_loaded(self, model, missing, unexpected):
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        return [k for k in missing if k in trained] + list(unexpected)

    # -- training -------------------------------------------------------------------------
    def loss_and_outputs(self, model, batch, num_classes, net=None):
        """Answer-token cross-entropy (each question weighted equally) and the answer-token logits (N, vocab)."""
        return model.loss_and_logits(batch)

    def loss(self, model, batch, num_classes, net=None):
        return model.loss(batch)

    def outputs(self, model, batch, num_classes):
        """The answer-token logits (N, vocab) of `batch`'s ground-truth answers, teacher-forced."""
        return model.answer_logits(batch)[0]

    @staticmethod
    def batch_size(batch: dict) -> int:
        return len(batch["questions"])

    # -- evaluation -----------------------------------------------------------------------
    def predict(self, model, batch, num_classes):
        """The answer strings (batched greedy decoding with a KV cache)."""
        return model.generate(batch["images"], batch["questions"], max_new_tokens=self.cfg["eval"]["max_new_tokens"])

    def evaluator(self) -> Evaluator:
        return ScenarioEvaluator(self)

    def extra_metrics(self, rows, stream):
        from mmcl import distributed as dist

        given = "the image and the question; never the answer, the step or the scenario"
        out = {"last_by_scenario": last_row_by_scenario(rows, stream), "protocols": {name: given for name in rows}}
        if self.fsdp:  # how the language model was spread: fully_shard units over how many ranks (0: not sharded)
            out["fsdp"] = {"ranks": dist.world(), "sharded_units": self._fsdp_units}
        return out
