"""`zeroshot`: no training at all; the model as built scores every experience.

What zero-shot means depends on the benchmark: on `animals` the untrained model maps an
image to text through the frozen encoder's ImageNet probabilities over MiniLM-embedded
ImageNet class names (the trainable residual starts at zero), so it is a genuine
training-free image-to-text classifier; on benchmarks without such a map it is chance. In
the scenario setting it is the base model (trained once on the pre-training scenario).
"""
from mmcl.methods.base import Method, register
from mmcl.stream import Experience, TensorSet


@register("zeroshot")
class ZeroShot(Method):
    settings = ("modality", "scenario")

    def training_data(self, exp: Experience) -> TensorSet:
        return type(exp.train).empty()
