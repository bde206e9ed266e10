"""Frozen encoders, text anchors and the trainable parts that align modalities to text."""
from mmcl.models.text_aligned import TextAlignedClassifier

__all__ = ["TextAlignedClassifier"]
