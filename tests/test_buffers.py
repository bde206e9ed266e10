"""ReplayBuffer: one memory with equal quotas per group (classes or steps), for er, quad and others."""
import torch

from mmcl.buffers import ReplayBuffer
from mmcl.stream import TensorSet


def _set(classes, per_class, offset=0):
    y = torch.tensor([c for c in classes for _ in range(per_class)])
    return TensorSet({"x": torch.arange(len(y)).float()[:, None] + offset, "y": y})


class Questions:
    """A stand-in for a step's SampleSet: columns of lists and tensors, `take` by index."""

    def __init__(self, n, tag):
        self.q = [f"{tag}{i}" for i in range(n)]
        self.g = torch.arange(n) % 2 == 0

    def __len__(self):
        return len(self.q)

    def take(self, idx):
        return {"questions": [self.q[i] for i in idx.tolist()], "grounding": self.g[idx], "ids": idx.tolist()}


def test_label_groups_are_class_balanced_and_fixed_size():
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(10)
    new = _set([0, 1], 50)
    buf.add(new, new["y"], g)
    assert len(buf) == 10 and torch.bincount(buf.data["y"]).tolist() == [5, 5]
    kept_0 = buf.data["x"][buf.data["y"] == 0][:3].clone()
    new = _set([2, 3], 50, offset=1000)
    buf.add(new, new["y"], g)
    assert len(buf) == 10 and torch.bincount(buf.data["y"]).tolist() == [3, 3, 2, 2]  # the remainder spread
    # old classes shrink by dropping samples, never by replacing them
    assert torch.equal(buf.data["x"][buf.data["y"] == 0], kept_0)
    assert (buf.data["x"][buf.data["y"] >= 2] >= 1000).all()
    empty = ReplayBuffer(0)
    empty.add(_set([0], 5), _set([0], 5)["y"], g)
    assert len(empty) == 0


def test_step_groups_get_equal_floor_quotas_and_keep_named_columns():
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(7, group_by="step", columns=("questions", "grounding"))
    a = Questions(20, "a")
    buf.add(a, ["s1"] * 20, g)
    first = list(buf.groups["s1"]["questions"])
    assert len(buf) == 7 and set(buf.groups["s1"]) == {"questions", "grounding"}  # ids not kept
    assert len(set(first)) == 7 and all(q.startswith("a") for q in first)
    buf.add(Questions(20, "b"), ["s2"] * 20, g)
    assert [len(v["questions"]) for v in buf.groups.values()] == [3, 3]  # 7 // 2 each: quad's rule
    assert buf.groups["s1"]["questions"] == first[:3]  # the first step shrinks from its end
    d = buf.data
    assert d["questions"][:3] == first[:3] and d["grounding"].dtype == torch.bool and len(d["grounding"]) == 6


def test_sampling_and_state_are_reproducible():
    def fill(seed):
        g = torch.Generator().manual_seed(seed)
        buf = ReplayBuffer(12)
        for k in range(3):
            s = _set([2 * k, 2 * k + 1], 10, offset=100 * k)
            buf.add(s, s["y"], g)
        return buf, g

    (a, ga), (b, gb) = fill(0), fill(0)
    assert torch.equal(a.data["x"], b.data["x"])
    assert torch.equal(a.sample(5, ga)["x"], b.sample(5, gb)["x"])
    assert len(a.sample(50, ga)["x"]) == 12  # never more than stored, without replacement
    c = ReplayBuffer(1)
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.data["x"], a.data["x"]) and c.capacity == 12
    assert not torch.equal(fill(1)[0].data["x"], a.data["x"])


def test_length_follows_every_change_of_the_memory():
    g = torch.Generator().manual_seed(0)
    buf = ReplayBuffer(10)
    few = _set([0], 3)
    buf.add(few, few["y"], g)
    assert len(buf) == 3 and len(buf.sample(8, g)["x"]) == 3
    more = _set([1], 50, offset=1000)
    buf.add(more, more["y"], g)
    assert len(buf) == 8 and len(buf.sample(20, g)["x"]) == 8  # 3 of class 0 (all it had) + its quota of 5
    buf.load_state_dict(ReplayBuffer(10).state_dict())
    assert len(buf) == 0
