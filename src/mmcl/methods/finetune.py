"""`finetune`: train on each experience in turn with no protection against forgetting.

The lower bound of every protocol: cross-entropy over the anchors of all classes seen so
far, on the current experience's data only; in the scenario setting, LoRA (and projector /
tower per `vlm.*`) trained on each step's questions in turn.
"""
from mmcl.methods.base import Method, register


@register("finetune")
class Finetune(Method):
    settings = ("modality", "scenario")
