"""`joint`: at each experience, train on the union of all experiences seen so far.

The upper reference: it stores every past sample (no memory limit), which continual
methods may not. Same epochs per experience as every other method. In the scenario setting
the union is of all steps' visual questions so far.
"""
from mmcl.methods.base import Method, register
from mmcl.stream import Experience, TensorSet


@register("joint")
class Joint(Method):
    settings = ("modality", "scenario")

    def training_data(self, exp: Experience) -> TensorSet:
        data = type(exp.train)  # TensorSet, or SampleSet in the scenario setting
        return data.cat([e.train for e in self.stream.experiences[: exp.index + 1]])
