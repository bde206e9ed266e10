"""The accuracy matrix and every summary metric derived from it (DESIGN.md section 4).

A[i][j] is the score on experience j after training experience i; b[j] is the score of the
untrained model on j (the model the stream starts from). Cells with j > i ("future" experiences) are only needed for fwt and
may be None when they were not evaluated. Metrics whose defining set is empty (forgetting
and bwt of a 1-experience stream, fwt without future cells) are None, never a made-up 0.
"""
from __future__ import annotations

from statistics import mean
from typing import Optional, Sequence

Matrix = Sequence[Sequence[Optional[float]]]

SUMMARY_KEYS = ("avg_acc", "last_acc", "avg_inc_acc", "forgetting", "bwt", "fwt", "plasticity")


def _mean(xs: list[float]) -> float | None:
    return float(mean(xs)) if xs else None


def _check(A: Matrix) -> int:
    T = len(A)
    if T == 0 or any(len(row) != T for row in A):
        raise ValueError(f"accuracy matrix must be square and non-empty, got {T} rows of lengths {[len(r) for r in A]}")
    for i in range(T):
        for j in range(i + 1):
            if A[i][j] is None:
                raise ValueError(f"A[{i}][{j}] (a trained experience) is missing")
    return T


def last_acc(A: Matrix) -> float:
    T = _check(A)
    return float(mean(A[T - 1][j] for j in range(T)))


def avg_inc_acc(A: Matrix) -> float:
    T = _check(A)
    return float(mean(mean(A[i][j] for j in range(i + 1)) for i in range(T)))


def forgetting(A: Matrix) -> float | None:
    T = _check(A)
    # max over every evaluated row i < T-1, as DESIGN.md and Chaudhry et al. (2018) define it;
    # rows i < j are future (not yet trained) scores and count only when they were evaluated.
    return _mean(
        [max(A[i][j] for i in range(T - 1) if A[i][j] is not None) - A[T - 1][j] for j in range(T - 1)]
    )


def bwt(A: Matrix) -> float | None:
    T = _check(A)
    return _mean([A[T - 1][j] - A[j][j] for j in range(T - 1)])


def fwt(A: Matrix, b: Sequence[Optional[float]] | None) -> float | None:
    T = _check(A)
    if b is None:
        return None
    vals = [A[j - 1][j] - b[j] for j in range(1, T) if A[j - 1][j] is not None and b[j] is not None]
    return _mean(vals) if len(vals) == T - 1 else None


def plasticity(A: Matrix, b: Sequence[Optional[float]] | None) -> float | None:
    """Mean over experiences j of A[j][j] - b[j]: how much training on an experience raised its own score
    above the starting model's (the diagonal minus the baseline row). None without a complete baseline."""
    T = _check(A)
    if b is None or len(b) != T or any(x is None for x in b):
        return None
    return float(mean(A[j][j] - b[j] for j in range(T)))


def gain_by_group(A: Matrix, b: Sequence[Optional[float]] | None, groups: Sequence[str]) -> dict[str, float] | None:
    """Plasticity per group of experiences (e.g. per scenario): for each group, the mean over its experiences j
    of A[j][j] - b[j], in the order the groups first appear. None without a complete baseline."""
    T = _check(A)
    if len(groups) != T:
        raise ValueError(f"need one group per experience ({T}), got {len(groups)}")
    if b is None or len(b) != T or any(x is None for x in b):
        return None
    by: dict[str, list[float]] = {}
    for j, g in enumerate(groups):
        by.setdefault(g, []).append(A[j][j] - b[j])
    return {g: float(mean(v)) for g, v in by.items()}


def summary(A: Matrix, b: Sequence[Optional[float]] | None = None) -> dict[str, float | None]:
    la = last_acc(A)
    return {
        "avg_acc": la,
        "last_acc": la,
        "avg_inc_acc": avg_inc_acc(A),
        "forgetting": forgetting(A),
        "bwt": bwt(A),
        "fwt": fwt(A, b),
        "plasticity": plasticity(A, b),
    }


def accuracy(pred, target) -> float:
    """Fraction of equal entries of two 1-D tensors (0.0 for empty input)."""
    n = len(target)
    return float((pred == target).sum().item()) / n if n else 0.0
