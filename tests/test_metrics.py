"""The accuracy-matrix metrics against matrices computed by hand."""
import pytest

from mmcl import metrics as M

# 3 experiences; row i = after training i, column j = evaluated on j
A = [
    [0.9, 0.2, 0.1],
    [0.6, 0.8, 0.3],
    [0.5, 0.7, 0.95],
]
b = [0.1, 0.1, 0.2]


def test_three_experiences_by_hand():
    s = M.summary(A, b)
    assert s["last_acc"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert s["avg_acc"] == s["last_acc"]
    assert s["avg_inc_acc"] == pytest.approx((0.9 + (0.6 + 0.8) / 2 + (0.5 + 0.7 + 0.95) / 3) / 3)
    # forgetting: j=0: max(0.9, 0.6) - 0.5 = 0.4 ; j=1: max(0.2, 0.8) - 0.7 = 0.1
    assert s["forgetting"] == pytest.approx((0.4 + 0.1) / 2)
    # bwt: (0.5 - 0.9 + 0.7 - 0.8) / 2
    assert s["bwt"] == pytest.approx((-0.4 - 0.1) / 2)
    # fwt: (A[0][1] - b1 + A[1][2] - b2) / 2 = (0.1 + 0.1) / 2
    assert s["fwt"] == pytest.approx(0.1)
    # plasticity: the diagonal minus the baseline, (0.9 - b0 + 0.8 - b1 + 0.95 - b2) / 3
    assert s["plasticity"] == pytest.approx(((0.9 - b[0]) + (0.8 - b[1]) + (0.95 - b[2])) / 3)


def test_plasticity_needs_every_baseline_cell():
    assert M.summary([[0.9, None], [0.4, 0.8]], None)["plasticity"] is None
    assert M.summary([[0.9, None], [0.4, 0.8]], [0.5, None])["plasticity"] is None
    assert M.summary([[0.9, None], [0.4, 0.8]], [0.5, 0.2])["plasticity"] == pytest.approx((0.4 + 0.6) / 2)


def test_gain_by_group_is_plasticity_per_scenario():
    g = M.gain_by_group(A, b, ["indoor", "underwater", "indoor"])
    assert list(g) == ["indoor", "underwater"]  # in the order the groups first appear
    assert g["indoor"] == pytest.approx(((0.9 - b[0]) + (0.95 - b[2])) / 2)
    assert g["underwater"] == pytest.approx(0.8 - b[1])
    # one group of every experience is the plasticity
    assert M.gain_by_group(A, b, ["all"] * 3)["all"] == pytest.approx(M.summary(A, b)["plasticity"])
    assert M.gain_by_group(A, [0.1, None, 0.2], ["a", "b", "c"]) is None
    with pytest.raises(ValueError, match="one group per experience"):
        M.gain_by_group(A, b, ["a", "b"])


def test_one_experience_stream():
    s = M.summary([[0.7]], [0.3])
    assert s["last_acc"] == pytest.approx(0.7) and s["avg_inc_acc"] == pytest.approx(0.7)
    # nothing to forget or transfer: undefined, not 0
    assert s["forgetting"] is None and s["bwt"] is None and s["fwt"] is None


def test_ties_in_max_and_no_change():
    T = [
        [0.5, 0.0],
        [0.5, 0.5],
    ]
    s = M.summary(T, [0.0, 0.0])
    assert s["forgetting"] == 0.0 and s["bwt"] == 0.0
    assert s["fwt"] == 0.0
    # ties in the max over earlier rows: the max is the same whichever row is taken
    T3 = [[0.8, 0.1, 0.0], [0.8, 0.6, 0.0], [0.3, 0.6, 0.9]]
    s3 = M.summary(T3)
    assert s3["forgetting"] == pytest.approx(((0.8 - 0.3) + (0.6 - 0.6)) / 2)
    assert s3["bwt"] == pytest.approx(((0.3 - 0.8) + (0.6 - 0.6)) / 2)
    assert s3["fwt"] is None  # no baseline given


def test_future_cells_may_be_missing():
    T = [[0.9, None], [0.4, 0.8]]
    s = M.summary(T, [0.5, 0.5])
    assert s["fwt"] is None
    assert s["forgetting"] == pytest.approx(0.5)


def test_forgetting_counts_evaluated_future_rows():
    # DESIGN.md: max over every row i < T-1, so a future score above the trained one counts
    T = [[0.2, 0.9, 0.0], [0.1, 0.5, 0.0], [0.1, 0.4, 0.7]]
    assert M.forgetting(T) == pytest.approx(((0.2 - 0.1) + (0.9 - 0.4)) / 2)


def test_rejects_malformed_matrices():
    with pytest.raises(ValueError):
        M.summary([[0.5, 0.1]])
    with pytest.raises(ValueError):
        M.summary([[None]])
    with pytest.raises(ValueError):
        M.summary([])


def test_accuracy():
    import torch

    assert M.accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])) == pytest.approx(2 / 3)
    assert M.accuracy(torch.tensor([]), torch.tensor([])) == 0.0
