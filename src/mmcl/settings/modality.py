"""`modality`: class-incremental learning over text anchors, one modality per experience (DESIGN.md section 2).

The model maps every input into the text space of the class-name anchors (a projection MLP on
feature vectors, or prompts on a frozen transformer for token benchmarks); a prediction is the
scaled cosine similarity to the anchors of the classes seen so far. Two matrices, one per
protocol: `modality_aware` (the sample's modality is known: scoring over that modality's
classes, and a method may pick modality-specific parameters) and `modality_agnostic` (over all
seen classes; any modality-specific choice must be inferred from the sample).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from mmcl.data.registry import BuildContext
from mmcl.metrics import accuracy
from mmcl.settings.base import EvalResult, Evaluator, Setting, register_setting, without
from mmcl.stream import MODALITIES, Stream


def agnostic_inputs(batch: dict) -> dict:
    """A test batch as the modality-agnostic protocol hands it to `predict`: the modality 'm' is gone; its
    input format stays under 'format', which only the model's input projection reads (an audio file is not an
    image), never a method's choice of prompts, experts, heads or classes (a test scans the method files)."""
    out = without(batch, ("m",))
    if "m" in batch:
        out["format"] = batch["m"]
    return out


class ModalityEvaluator(Evaluator):
    """Accuracy under both protocols.

    Experience j is scored over the classes of experiences 0..max(after, j) (future experiences
    enter with their own classes, which is what fwt measures). Modality-aware scoring masks out
    classes of other modalities; modality-agnostic scoring does not. A method with
    modality-specific parameters (`uses_known_modality`) is asked twice: once without the
    modality (agnostic; it must infer whatever it needs from the sample) and once with it (aware).
    """

    hidden = ("y",)

    @torch.no_grad()
    def __call__(self, method, stream: Stream, after: int, progress: bool = False) -> EvalResult:
        from mmcl.device import to_device

        method.model.eval()
        aware, agnostic = [], []
        bs = self.cfg["eval"]["batch_size"]
        cls_mod = stream.class_modality
        for j, exp in enumerate(tqdm(stream, desc="evaluating", leave=False, disable=None if progress else True)):
            if j > after and after >= 0 and not self.cfg["eval"]["future"]:
                aware.append(None)
                agnostic.append(None)
                continue
            n = stream.seen_after(max(after, j))
            other = torch.tensor([cls_mod[c] != exp.modality for c in range(n)])
            preds_agn, preds_aw, ys = [], [], []
            for batch in exp.test.batches(bs):
                inputs = to_device(without(batch, self.hidden), method.device)  # predict never sees the labels
                logits = method.predict(agnostic_inputs(inputs), n).float().cpu()
                preds_agn.append(logits.argmax(1))
                if method.uses_known_modality:  # modality-specific parameters, allowed only when aware
                    logits = method.predict(inputs, n, known_modality=True).float().cpu()
                preds_aw.append(logits.masked_fill(other, float("-inf")).argmax(1))
                ys.append(batch["y"])
            y = torch.cat(ys)
            aware.append(accuracy(torch.cat(preds_aw), y))
            agnostic.append(accuracy(torch.cat(preds_agn), y))
        method.model.train()
        return EvalResult({"modality_aware": aware, "modality_agnostic": agnostic})


@register_setting("modality")
class ModalitySetting(Setting):
    matrices = ("modality_aware", "modality_agnostic")
    schema = {
        "stream": {
            "experiences_per_modality": 1,  # mm5: split each modality's classes over this many experiences
        },
        "model": {
            "hidden_dim": 512,  # projection MLP width (feature-vector benchmarks such as animals)
            "backbone_layers": 1,  # blocks of frozen MiniLM used as the prompted transformer (token benchmarks)
            "prompt_length": 4,  # learnable prompt tokens prepended to the input tokens
            "logit_scale": 20.0,  # inverse temperature of the cosine similarity to the anchors
            "anchor_template": "{}",  # text embedded as each class anchor
        },
        "encoder": {  # frozen encoder per modality: "default" (the bundled ones) or "hf:<local model directory>"
            "image": "default",
            "video": "default",
            "audio": "default",
            "depth": "default",
            "text": "default",
        },
        "data": {
            "on_error": "fail",  # fail | skip: input files that cannot be used stop the run (exit 2) or are left out
        },
    }
    choices = {"data.on_error": ("fail", "skip")}
    ranges = {"stream.experiences_per_modality": ">=1", "model.hidden_dim": ">=1", "model.backbone_layers": ">=1",
              "model.prompt_length": ">=0", "model.logit_scale": ">0"}

    @classmethod
    def check(cls, cfg: dict) -> None:
        from mmcl.data.registry import benchmark_params
        from mmcl.errors import ConfigError

        custom = sorted(k for k, v in cfg["encoder"].items() if v != "default")
        if custom:  # encoders from local checkpoints (mmcl.models.hf): format, directory, model kind
            if not getattr(benchmark_params(cfg["benchmark"]["name"]), "custom_encoders", False):
                raise ConfigError(f"config key 'encoder.{custom[0]}': benchmark '{cfg['benchmark']['name']}' uses its "
                                  f"bundled encoders; encoders from local checkpoints apply to benchmark 'user'")
            from mmcl.models import hf

            hf.check(cfg["encoder"])

    def context(self) -> BuildContext:
        cfg = self.cfg
        return BuildContext(seed=int(cfg["seed"]), stream=dict(cfg["stream"]), progress=bool(cfg["logging"]["progress"]),
                            anchor_template=cfg["model"]["anchor_template"], encoders=dict(cfg["encoder"]),
                            on_error=cfg["data"]["on_error"])

    def build_model(self, stream: Stream) -> nn.Module:
        from mmcl.models import TextAlignedClassifier

        keys, m = stream.feature_keys, self.cfg["model"]
        if "tokens" in keys:  # token features: prompts on the frozen transformer
            from mmcl.models.prompted import PromptedAligner, frozen_minilm

            return PromptedAligner(MODALITIES, stream[0].train["tokens"].shape[-1], stream.anchors,
                                   frozen_minilm(m["backbone_layers"]), m["prompt_length"], m["logit_scale"])
        return TextAlignedClassifier(in_dim=stream[0].train["x"].shape[1], anchors=stream.anchors,
                                     hidden_dim=m["hidden_dim"], logit_scale=m["logit_scale"], residual="zs" in keys)

    def loss_and_outputs(self, model, batch, num_classes, net=None):
        logits = model.logits((net or model)(batch), num_classes)
        return F.cross_entropy(logits, batch["y"].to(logits.device)), logits

    def outputs(self, model, batch, num_classes):
        return model.logits(model(batch), num_classes)

    def predict(self, model, batch, num_classes):
        """Logits over the first `num_classes` classes."""
        return model.logits(model(batch), num_classes)

    def evaluator(self) -> Evaluator:
        return ModalityEvaluator(self)

    def extra_metrics(self, rows, stream):
        """What each protocol handed the model at test time (recorded in metrics.json)."""
        given = "the sample's inputs (features or tokens); never its label"
        return {"protocols": {
            "modality_aware": given + ", and its modality 'm': the prediction is restricted to the classes of that "
                                      "modality, and a method may use modality-specific parameters (known_modality=True)",
            "modality_agnostic": given + " nor its modality: only its input format ('format'), read by the per-modality "
                                         "input projection alone; the prediction is over every class seen so far, and "
                                         "a method infers any modality-specific choice from the sample (known_modality=False)",
        }}
