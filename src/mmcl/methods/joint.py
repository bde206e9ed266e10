"""`joint`: at each experience, train on the union of all experiences seen so far.

The upper reference: it stores every past sample (no memory limit), which continual
methods may not. Same epochs per experience as every other method.
"""
from mmcl.methods.base import Method, register
from mmcl.stream import Experience, TensorSet


@register("joint")
class Joint(Method):
    def training_data(self, exp: Experience) -> TensorSet:
        return TensorSet.cat([e.train for e in self.stream.experiences[: exp.index + 1]])
