"""Your own LLaVA-format data: works the first time, fails clearly (no grounding, typos, no base scenario)."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmcl import cli
from mmcl.config import load_config
from mmcl.engine import run
from mmcl.errors import ConfigError
from mmcl.settings import build_stream
from tests.harness import scenario_cfg


def make_data(root: Path, scenarios=("day", "night", "ground"), test_scenarios=None, grounding=True,
              typo: str | None = None, n_train=4, n_test=2) -> tuple[Path, Path]:
    """A small LLaVA-format data set built here: coloured squares on a plain background, a colour question,
    a yes/no question and (with `grounding`) a box question per image; `typo` renames one test entry's scenario."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True, exist_ok=True)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    files = {}
    for split, n, scs in (("train", n_train, scenarios), ("test", n_test, test_scenarios or scenarios)):
        entries = []
        for sc in scs:
            for i in range(n):
                name = list(colours)[i % 2]
                img = np.full((32, 32, 3), 40 if sc == "night" else 200, dtype=np.uint8)
                x = int(rng.integers(0, 16))
                img[8:24, x:x + 16] = colours[name]
                path = f"img/{sc}-{split}-{i}.png"
                Image.fromarray(img).save(root / path)
                conv = [{"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": name},
                        {"from": "human", "value": "Is there a square?"}, {"from": "gpt", "value": "yes"}]
                if grounding:
                    box = f"[{x * 100 // 32},25,{(x + 16) * 100 // 32},75]"
                    conv += [{"from": "human", "value": "Where is the square?"}, {"from": "gpt", "value": box}]
                entries.append({"id": f"{sc}-{split}-{i}", "image": path, "scenario": sc, "conversations": conv})
        if split == "test" and typo:
            entries[-1]["scenario"] = typo
        files[split] = root / f"{split}.json"
        files[split].write_text(json.dumps(entries))
    return files["train"], files["test"]


def bench(train, test, **kw) -> dict:
    return {"name": "llava-json", "train": str(train), "test": str(test), **kw}


def test_plain_vqa_data_without_grounding_runs_and_reports(tmp_path, capsys):
    train, test = make_data(tmp_path / "d", grounding=False)
    cfg = scenario_cfg("finetune", benchmark=bench(train, test, base_scenario="ground"), report=True)
    m = run(cfg, str(tmp_path / "run"))
    assert set(m["matrices"]) == {"vqa"} and m["unscored"] == ["grounding_f1"]
    assert set(m["summary"]) == {"vqa"} and set(m["baseline"]) == {"vqa"}
    assert set(m["last_by_scenario"]) == {"vqa"}
    assert (tmp_path / "run" / "report.html").is_file() and not (tmp_path / "run" / "matrix_grounding_f1.csv").exists()
    assert "No <b>grounding_f1</b> matrix" in (tmp_path / "run" / "report.html").read_text()
    assert cli.main(["report", str(tmp_path / "run")]) == 0
    assert cli.main(["compare", str(tmp_path / "run"), str(tmp_path / "run")]) == 0
    assert "grounding_f1" not in capsys.readouterr().out


def test_the_base_model_is_named_and_an_untrained_start_is_warned(tmp_path, capsys):
    train, test = make_data(tmp_path / "d")
    m = run(scenario_cfg("zeroshot", benchmark=bench(train, test, base_scenario="ground")), str(tmp_path / "a"))
    base = m["stages"]["base_model"]
    assert base["trained_on"] == "ground" and base["questions"] == 12
    capsys.readouterr()
    m = run(scenario_cfg("zeroshot", benchmark=bench(train, test)), str(tmp_path / "b"))
    err = capsys.readouterr().err
    assert "untrained" in err and "benchmark.base_scenario=" in err  # loud, with the fix
    assert m["stages"]["base_model"]["trained_on"] is None and "warning" in m["stages"]["base_model"]


def test_a_scenario_without_test_questions_names_the_right_fix(tmp_path):
    train, test = make_data(tmp_path / "d", test_scenarios=("day", "night"))
    with pytest.raises(ConfigError, match=r"'ground' has training questions.*none in .*test.json.*base_scenario=ground"):
        build_stream(scenario_cfg(benchmark=bench(train, test)))
    assert len(build_stream(scenario_cfg(benchmark=bench(train, test, base_scenario="ground")))) == 2


def test_a_test_entry_of_an_unknown_scenario_is_refused_not_dropped(tmp_path):
    train, test = make_data(tmp_path / "d", typo="nigth")
    with pytest.raises(ConfigError, match=r"test.json.*'ground-test-1'.*scenario 'nigth'.*did you mean 'night'"):
        build_stream(scenario_cfg(benchmark=bench(train, test, base_scenario="ground")))


def test_entries_left_out_on_purpose_are_counted(tmp_path):
    train, test = make_data(tmp_path / "d")
    s = build_stream(scenario_cfg(benchmark=bench(train, test, base_scenario="ground", scenarios=["night"])))
    assert [e.scenario for e in s] == ["night"]
    left = s.info["left_out"]
    assert left == {"train": {"day": 12}, "test": {"day": 6, "ground": 6}}  # reported, not silently dropped


def test_switching_the_benchmark_by_a_dotted_key_drops_the_files_keys(tmp_path):
    train, test = make_data(tmp_path / "d")
    cfg = load_config("msvqa-mini-finetune", ["benchmark.name=llava-json", f"benchmark.train={train}",
                                              f"benchmark.test={test}", "benchmark.base_scenario=ground"])
    assert cfg["benchmark"]["name"] == "llava-json" and "base_images" not in cfg["benchmark"]
    # the bundled file's vocabulary is cut to msvqa-mini's words: another benchmark gets the whole one back
    assert load_config("msvqa-mini-finetune")["vlm"]["vocab"] == "msvqa-mini" and cfg["vlm"]["vocab"] == "bert"
    mine = load_config("msvqa-mini-finetune", ["benchmark.name=llava-json", f"benchmark.train={train}",
                                               f"benchmark.test={test}", "vlm.vocab=msvqa-mini"])
    assert mine["vlm"]["vocab"] == "msvqa-mini"  # unless the overrides say so


def test_mmcl_data_summarises_scenario_data(tmp_path, capsys):
    train, test = make_data(tmp_path / "d", grounding=False)
    args = ["data", "msvqa-mini-finetune", "benchmark.name=llava-json", f"benchmark.train={train}",
            f"benchmark.test={test}", "benchmark.base_scenario=ground"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "day" in out and "night" in out and "grounding" in out and "anchors" not in out
    assert cli.main(args + ["--json"]) == 0
    summary = json.loads(capsys.readouterr().out)  # pure JSON
    steps = {s["name"]: s for s in summary["steps"]}
    assert steps["day"]["train"]["questions"] == 8 and steps["day"]["train"]["grounding"] == 0
    assert summary["base"]["scenario"] == "ground" and summary["base"]["questions"] == 8


def test_malformed_box_answers_are_counted():
    from mmcl.scenario.metrics import ScenarioScorer

    s = ScenarioScorer().update(["[, 61, 61, 33 ]", "[10,10,50,50]", ""], ["[10,10,50,50]"] * 3, [True] * 3)
    assert s.unparsed == 1  # an empty answer is no box, not a malformed one
    assert s.result()["grounding_f1"] == pytest.approx(0.5)  # 1 of 3 reference boxes found, 1 box predicted


def test_a_refused_run_leaves_no_directory_behind(tmp_path, capsys):
    train, test = make_data(tmp_path / "d", typo="nigth")
    out = tmp_path / "never"
    assert cli.main(["run", "msvqa-mini-finetune", "benchmark.name=llava-json", f"benchmark.train={train}",
                     f"benchmark.test={test}", "benchmark.base_scenario=ground", "--out", str(out)]) == 2
    assert "did you mean 'night'" in capsys.readouterr().err and not out.exists()


def test_protocols_named_by_what_they_are(tmp_path):
    train, test = make_data(tmp_path / "d", n_train=5, n_test=5)
    b = bench(train, test, base_scenario="ground")
    s = build_stream(scenario_cfg(benchmark=b, stream={"protocol": "per-scenario"}))
    assert [e.name for e in s] == ["day", "night"] and s.info["steps"] == 2
    assert [e.name for e in build_stream(scenario_cfg(benchmark=b))] == ["day", "night"]  # 4-step: MSVQA's name
    s = build_stream(scenario_cfg(benchmark=b, stream={"protocol": "per-subtask"}))
    assert s.info["steps"] == 10 and [e.name for e in s][:3] == ["day/1", "night/1", "day/2"]
