"""joint: trains on the union of everything seen so far (upper reference)."""
from mmcl.data import build_stream
from mmcl.engine import build_method, run
from tests.conftest import tiny_cfg


def test_training_data_is_the_union_so_far():
    cfg = tiny_cfg("joint")
    stream = build_stream(cfg)
    m = build_method(stream, cfg)
    sizes = [len(m.training_data(e)) for e in stream]
    assert sizes == [len(stream[0].train) * (i + 1) for i in range(3)]
    assert set(m.training_data(stream[2])["y"].tolist()) == set(range(6))


def test_joint_does_not_forget(tmp_path):
    j = run(tiny_cfg("joint"), tmp_path / "j")["summary"]["modality_agnostic"]
    ft = run(tiny_cfg("finetune"), tmp_path / "f")["summary"]["modality_agnostic"]
    assert j["last_acc"] > 0.9 and j["last_acc"] > ft["last_acc"] + 0.3
    assert j["forgetting"] < 0.1
