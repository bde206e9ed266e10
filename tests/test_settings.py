"""Settings are objects: a new one plugs in without touching the engine or any method."""
import torch

from mmcl.engine import run
from mmcl.metrics import accuracy
from mmcl.settings import SETTINGS, EvalResult, Evaluator, make_setting
from mmcl.settings.modality import ModalitySetting
from tests.harness import tiny_cfg


class TaskEvaluator(Evaluator):
    """Task-incremental scoring: the test sample's experience (task id) is known, so prediction is
    restricted to that experience's own classes."""

    @torch.no_grad()
    def __call__(self, method, stream, after, progress=False):
        row = []
        for j, exp in enumerate(stream):
            n = stream.seen_after(max(after, j))
            other = torch.ones(n, dtype=torch.bool)
            other[exp.classes] = False
            preds = [method.predict(b, n).masked_fill(other, float("-inf")).argmax(1) for b in exp.test.batches(256)]
            row.append(accuracy(torch.cat(preds), exp.test["y"]))
        return EvalResult({"task_aware": row})


class TaskIncremental(ModalitySetting):
    """The modality setting's streams, models and methods, scored task-incrementally."""

    matrices = ("task_aware",)
    variant_of = "modality"

    def evaluator(self):
        return TaskEvaluator(self)


def test_a_third_setting_runs_through_the_unchanged_engine(tmp_path, monkeypatch):
    monkeypatch.setitem(SETTINGS, "task", TaskIncremental)
    TaskIncremental.name = "task"
    cfg = tiny_cfg("finetune", setting="task")
    assert isinstance(make_setting(cfg), TaskIncremental) and cfg["setting"] == "task"
    task = run(cfg, str(tmp_path / "task"))
    plain = run(tiny_cfg("finetune"), str(tmp_path / "plain"))
    assert task["setting"] == "task" and set(task["matrices"]) == {"task_aware"}
    assert set(task["summary"]) == {"task_aware"} and (tmp_path / "task" / "matrix_task_aware.csv").is_file()
    # the same training (same seed, data, model); knowing the task can only help: the true class is in the mask
    A, B = task["matrices"]["task_aware"], plain["matrices"]["modality_agnostic"]
    assert all(a >= b for ra, rb in zip(A, B) for a, b in zip(ra, rb))
    assert sum(map(sum, A)) > sum(map(sum, B))  # finetune forgets across tasks, far less within one


def test_settings_own_their_schema_and_choices():
    from mmcl.config import load_config
    from mmcl.errors import ConfigError
    import pytest

    mod, sc = load_config("mm5-er"), load_config("msvqa-mini-er")
    assert "model" in mod and "encoder" in mod and "vlm" not in mod
    assert "vlm" in sc and "base" in sc and "model" not in sc and "encoder" not in sc
    with pytest.raises(ConfigError, match="stream.protocol"):
        load_config("msvqa-mini-er", ["stream.protocol=3-step"])
    with pytest.raises(ConfigError, match="unknown config key 'stream.protocol'"):
        load_config("mm5-er", ["stream.protocol=4-step"])
    with pytest.raises(ConfigError, match="'setting' must be one of modality, scenario"):
        load_config("mm5-er", ["setting=scenaro"])


def test_predict_never_sees_the_labels_in_either_setting(tmp_path, monkeypatch):
    """A method that peeks at the test labels (y) or answers in `predict` fails loudly."""
    import pytest

    from mmcl.methods.finetune import Finetune
    from tests.harness import TWO_STEPS, scenario_cfg

    seen = []

    def peeking(self, batch, num_classes, known_modality=False):
        seen.append(sorted(batch))
        return batch[self._label]  # reads the label: must fail

    monkeypatch.setattr(Finetune, "predict", peeking)
    for label, cfg in (("y", tiny_cfg("finetune")),
                       ("answers", scenario_cfg("finetune", benchmark=TWO_STEPS))):
        monkeypatch.setattr(Finetune, "_label", label, raising=False)
        with pytest.raises(KeyError, match=label):
            run(cfg, str(tmp_path / label))
    assert "y" not in seen[0] and "x" in seen[0]  # the inputs are there, the labels not
    assert "answers" not in seen[-1] and "questions" in seen[-1] and "images" in seen[-1]


def test_metrics_record_what_each_protocol_gave_the_model(tmp_path):
    m = run(tiny_cfg("finetune"), str(tmp_path / "r"))
    assert set(m["protocols"]) == {"modality_aware", "modality_agnostic"}
    assert "never its label" in m["protocols"]["modality_agnostic"]
    assert "restricted to the classes of that modality" in m["protocols"]["modality_aware"]
    assert "nor its modality" in m["protocols"]["modality_agnostic"]


def test_the_agnostic_protocol_hides_the_modality_from_the_method(tmp_path, monkeypatch):
    """Under the modality-agnostic protocol a method that reads the true modality fails loudly; with the
    modality known it may read it. Only the model's input projection gets the input format."""
    import pytest

    from mmcl.methods.comm import COMM
    from tests.harness import tiny_token_cfg

    def peeking(self, batch, num_classes, known_modality=False):
        own = batch["m"]  # the true modality: allowed only when known
        return self.model.logits(self.model(batch, prompts=self._own_prompts(self.model, batch, own)), num_classes)

    monkeypatch.setattr(COMM, "predict", peeking)
    cfg = tiny_token_cfg("comm", method={"name": "comm", "realign_per_class": 8, "relevance_epochs": 1})
    with pytest.raises(KeyError, match="'m'"):
        run(cfg, str(tmp_path / "r"))

    from mmcl.settings.modality import agnostic_inputs
    batch = {"tokens": torch.zeros(2, 3, 4), "mask": torch.ones(2, 3), "m": torch.tensor([0, 2])}
    shown = agnostic_inputs(batch)
    assert "m" not in shown and shown["format"].tolist() == [0, 2]


def test_no_method_reads_the_input_format():
    """'format' is the input projection's alone: no method file may read it (scanned)."""
    import re
    from pathlib import Path

    import mmcl.methods

    for f in Path(mmcl.methods.__file__).parent.glob("*.py"):
        assert not re.search(r"""["']format["']""", f.read_text()), f"{f.name} reads the input format"


def test_seen_after_counts_the_classes_of_experiences_up_to_i():
    from mmcl.settings import build_stream

    stream = build_stream(tiny_cfg("finetune"))
    counts = [len(set().union(*(e.classes for e in stream.experiences[: i + 1]))) for i in range(len(stream))]
    assert [stream.seen_after(i) for i in range(len(stream))] == counts
    assert stream.seen_after(-1) == 0 and stream.seen_after(len(stream)) == counts[-1]
