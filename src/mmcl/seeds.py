"""Named seeds derived from a run's seed: every random stream of a run in one table.

Each purpose has its own formula, so two purposes never share a generator and a resumed run
redraws exactly what an uninterrupted one did. The formulas are the ones mmcl has always used
(changing one changes every result that depends on it). One pair coincides: `batch_order` of
experience 0 and `base_batch_order` give the same seed per epoch; they shuffle different data (a
step, the pre-training set), and changing either would retrain every cached base model.
"""
from __future__ import annotations

import torch

#: purpose -> seed as a function of the run seed and the purpose's indices
_FORMULAS = {
    "method": lambda s: s + 7919,  # a method's own generator (`Method.rng`: replay draws, memories)
    "batch_order": lambda s, exp, epoch: s * 1_000_003 + exp * 1_009 + epoch,  # the engine's batch order
    "base_batch_order": lambda s, epoch: s * 1_000_003 + epoch,  # base-model training's batch order
    "joint_budget": lambda s, exp: s * 1_000_003 + 7_331 * (exp + 1),  # joint's draw from the union (budget=step)
    "module": lambda s, k: s * 1009 + k,  # initial weights of the k-th module a method adds (adapters, branches)
    "validation": lambda s: s + 104729,  # the held-out part of the training data (eval.split=validation)
}


def derive_seed(seed: int, purpose: str, *index: int) -> int:
    """The seed of `purpose` (see `_FORMULAS`) for run seed `seed` and the purpose's indices."""
    if purpose not in _FORMULAS:
        raise KeyError(f"unknown seed purpose '{purpose}'; known: {', '.join(_FORMULAS)}")
    return int(_FORMULAS[purpose](int(seed), *(int(i) for i in index)))


def generator(seed: int, purpose: str, *index: int) -> torch.Generator:
    """A CPU torch generator seeded with `derive_seed(seed, purpose, *index)`."""
    return torch.Generator().manual_seed(derive_seed(seed, purpose, *index))
