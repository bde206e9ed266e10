"""Experience / Stream: what is learned, in which order.

Data reaches methods as `TensorSet`s: named tensors of equal length (features, labels, ...),
already decoded and validated by a reader. Class ids are assigned in order of first
appearance in the stream, so the classes seen after experience i are exactly
`range(stream.seen_after(i))` and logits can be sliced instead of masked.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch

#: the modalities of the modality setting; a sample's modality id `m` indexes this list
MODALITIES = ["image", "video", "audio", "depth", "text"]


class TensorSet:
    """A dataset held as a dict of tensors sharing their first dimension (always has 'y')."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"TensorSet fields differ in length: {lengths}")
        if "y" not in tensors:
            raise ValueError("TensorSet needs a 'y' (label) field")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["y"])

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def keys(self):
        return self.tensors.keys()

    def take(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v[idx] for k, v in self.tensors.items()}

    def subset(self, idx: torch.Tensor) -> "TensorSet":
        return TensorSet(self.take(idx))

    @staticmethod
    def cat(sets: list["TensorSet"]) -> "TensorSet":
        sets = [s for s in sets if len(s)]
        if not sets:
            return TensorSet.empty()
        keys = sets[0].keys()
        return TensorSet({k: torch.cat([s[k] for s in sets]) for k in keys})

    @staticmethod
    def empty() -> "TensorSet":
        return TensorSet({"y": torch.zeros(0, dtype=torch.long)})

    def batches(self, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches in stored order (evaluation)."""
        for start in range(0, len(self), batch_size):
            yield {k: v[start : start + batch_size] for k, v in self.tensors.items()}


@dataclass
class Experience:
    """One step of the stream: its training and test data and the classes it introduces."""

    index: int
    name: str
    modality: str
    classes: list[int]  # global class ids (order of first appearance)
    train: TensorSet
    test: TensorSet
    scenario: str | None = None

    def describe(self, class_names: list[str]) -> dict:
        d = {"name": self.name, "modality": self.modality, "classes": [class_names[c] for c in self.classes]}
        if self.scenario is not None:
            d["scenario"] = self.scenario
        return d


@dataclass
class Stream:
    """An ordered list of experiences over a shared label space with named classes."""

    name: str
    experiences: list[Experience]
    class_names: list[str]
    class_modality: list[str]  # modality of each class (for the modality-aware protocol)
    anchors: torch.Tensor  # (num_classes, d) unit-norm text embeddings of the class names
    info: dict = field(default_factory=dict)  # provenance: split, sizes, hashes, encoders
    data_errors: list[str] = field(default_factory=list)  # input files left out (data.on_error=skip): "<path>: <reason>"

    def __post_init__(self):
        seen: list[int] = []
        for i, e in enumerate(self.experiences):
            if e.index != i:
                raise ValueError(f"experience {e.name} has index {e.index}, expected {i}")
            seen.extend(e.classes)
        if seen != list(range(len(seen))):
            raise ValueError("class ids must be numbered in order of first appearance in the stream")
        if len(self.class_names) != len(seen) or len(self.anchors) != len(seen):
            raise ValueError(
                f"stream has {len(seen)} classes but {len(self.class_names)} names and {len(self.anchors)} anchors"
            )

    def __len__(self) -> int:
        return len(self.experiences)

    def __getitem__(self, i: int) -> Experience:
        return self.experiences[i]

    def __iter__(self):
        return iter(self.experiences)

    def seen_after(self, i: int) -> int:
        """Number of classes introduced by experiences 0..i."""
        return sum(len(e.classes) for e in self.experiences[: i + 1])

    @property
    def feature_keys(self) -> list[str]:
        return [k for k in self.experiences[0].train.keys() if k != "y"]
