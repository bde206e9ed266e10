"""finetune: the lower bound forgets old classes in the class-incremental protocol."""
from mmcl.engine import run
from tests.conftest import tiny_cfg


def test_finetune_learns_current_and_forgets_old(tmp_path):
    m = run(tiny_cfg("finetune"), tmp_path / "r")
    A = m["matrices"]["modality_agnostic"]
    assert all(A[i][i] > 0.9 for i in range(3))  # each experience is learned
    assert A[2][0] < 0.3 and m["summary"]["modality_agnostic"]["bwt"] < -0.5
