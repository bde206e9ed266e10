"""Experience / Stream: what is learned, in which order.

In the scenario setting an experience is a step (one scenario or sub-task) whose data are
`SampleSet`s of visual questions; it has no classes, and the stream has no anchors.

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


class SampleSet:
    """Visual questions with their decoded images: the scenario setting's TensorSet.

    Images are held once, as a uint8 tensor (M, 3, H, W); each question points at its image.
    `take` gives the batch a method sees: {"images", "questions", "answers", "grounding", "ids", "boxes"}
    (evaluation hides the answers and the boxes from `predict`).
    `boxes` (optional) are the annotated objects of each question's image, `(label, (x1, y1, x2, y2))`
    in 0-100 coordinates (`ObjectBox`); base training reads them (`base.region_weight`).
    """

    def __init__(self, images: torch.Tensor, image_index: torch.Tensor, questions: list[str], answers: list[str],
                 grounding: torch.Tensor, ids: list[str], scenarios: list[str], boxes: list[tuple] | None = None):
        n = len(image_index)
        boxes = [()] * n if boxes is None else list(boxes)
        if not (len(questions) == len(answers) == len(grounding) == len(ids) == len(scenarios) == len(boxes) == n):
            raise ValueError("SampleSet fields differ in length")
        self.images, self.image_index = images, image_index.long()
        self.questions, self.answers, self.ids, self.scenarios = list(questions), list(answers), list(ids), list(scenarios)
        self.grounding = grounding.bool()
        self.boxes = boxes

    def __len__(self) -> int:
        return len(self.image_index)

    def take(self, idx: torch.Tensor) -> dict:
        idx = torch.as_tensor(idx, dtype=torch.long)
        ii = idx.tolist()
        return {"images": self.images[self.image_index[idx]], "questions": [self.questions[i] for i in ii],
                "answers": [self.answers[i] for i in ii], "grounding": self.grounding[idx],
                "ids": [self.ids[i] for i in ii], "boxes": [self.boxes[i] for i in ii]}

    def subset(self, idx: torch.Tensor) -> "SampleSet":
        idx = torch.as_tensor(idx, dtype=torch.long)
        ii = idx.tolist()
        pick = lambda xs: [xs[i] for i in ii]  # noqa: E731
        return SampleSet(self.images, self.image_index[idx], pick(self.questions), pick(self.answers),
                         self.grounding[idx], pick(self.ids), pick(self.scenarios), pick(self.boxes))

    @staticmethod
    def cat(sets: list["SampleSet"]) -> "SampleSet":
        sets = [s for s in sets if len(s)]
        if not sets:
            return SampleSet.empty()
        if all(s.images is sets[0].images for s in sets):  # subsets of one benchmark share its images
            images, index = sets[0].images, torch.cat([s.image_index for s in sets])
        else:
            offsets = torch.tensor([0] + [len(s.images) for s in sets[:-1]]).cumsum(0)
            images = torch.cat([s.images for s in sets])
            index = torch.cat([s.image_index + int(o) for s, o in zip(sets, offsets)])
        return SampleSet(images, index, sum((s.questions for s in sets), []), sum((s.answers for s in sets), []),
                         torch.cat([s.grounding for s in sets]), sum((s.ids for s in sets), []),
                         sum((s.scenarios for s in sets), []), sum((s.boxes for s in sets), []))

    @staticmethod
    def empty() -> "SampleSet":
        return SampleSet(torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, dtype=torch.long), [], [],
                         torch.zeros(0, dtype=torch.bool), [], [])

    def batches(self, batch_size: int):
        """Batches in stored order (evaluation)."""
        for start in range(0, len(self), batch_size):
            yield self.take(torch.arange(start, min(start + batch_size, len(self))))


@dataclass
class Experience:
    """One step of the stream: its training and test data and, in the modality setting, its modality
    and the classes it introduces (a scenario step has a scenario instead, and no classes)."""

    index: int
    name: str
    train: "TensorSet | SampleSet"
    test: "TensorSet | SampleSet"
    modality: str | None = None  # the modality of its inputs (modality setting)
    classes: list[int] = field(default_factory=list)  # global class ids it introduces (order of first appearance)
    scenario: str | None = None  # its visual scenario (scenario setting)
    info: dict = field(default_factory=dict)  # scenario steps: sub-task and sizes, shown in metrics.json

    def describe(self, class_names: list[str]) -> dict:
        d: dict = {"name": self.name}
        if self.modality is not None:
            d.update(modality=self.modality, classes=[class_names[c] for c in self.classes])
        if self.scenario is not None:
            d["scenario"] = self.scenario
        return {**d, **self.info}


@dataclass
class Stream:
    """An ordered list of experiences, over a shared label space with named classes where there are classes."""

    name: str
    experiences: list[Experience]
    class_names: list[str] = field(default_factory=list)
    class_modality: list[str] = field(default_factory=list)  # modality of each class (for the modality-aware protocol)
    anchors: torch.Tensor | None = None  # (num_classes, d) unit-norm text embeddings of the class names
    info: dict = field(default_factory=dict)  # provenance: split, sizes, hashes, encoders
    data_errors: list[str] = field(default_factory=list)  # input files left out (data.on_error=skip): "<path>: <reason>"
    pretrain: "SampleSet | None" = None  # scenario setting: what the base model is trained on (not a step)

    def __post_init__(self):
        seen: list[int] = []
        self._seen_after: list[int] = []  # classes introduced by experiences 0..i
        for i, e in enumerate(self.experiences):
            if e.index != i:
                raise ValueError(f"experience {e.name} has index {e.index}, expected {i}")
            seen.extend(e.classes)
            self._seen_after.append(len(seen))
        if seen != list(range(len(seen))):
            raise ValueError("class ids must be numbered in order of first appearance in the stream")
        n_anchors = 0 if self.anchors is None else len(self.anchors)
        if len(self.class_names) != len(seen) or n_anchors != len(seen):
            raise ValueError(
                f"stream has {len(seen)} classes but {len(self.class_names)} names and {n_anchors} anchors"
            )

    def __len__(self) -> int:
        return len(self.experiences)

    def __getitem__(self, i: int) -> Experience:
        return self.experiences[i]

    def __iter__(self):
        return iter(self.experiences)

    def seen_after(self, i: int) -> int:
        """Number of classes introduced by experiences 0..i (read at every training step: a look-up, not a sum
        over the experiences seen)."""
        if i < 0 or not self._seen_after:
            return 0
        return self._seen_after[min(i, len(self._seen_after) - 1)]

    @property
    def feature_keys(self) -> list[str]:
        return [k for k in self.experiences[0].train.keys() if k != "y"]
