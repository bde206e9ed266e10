"""`mmcl sweep`: tuning on validation data only, runs x seeds, one table, reuse of finished runs."""
import json

import pytest
import yaml

from mmcl.config import ConfigError, load_config
from mmcl.methods.ewc import EWC
from mmcl.sweep import Sweep, markdown, read_spec, search_space
from tests.harness import run_cli

TINY = {"benchmark": {"name": "synthetic", "num_experiences": 2, "train_per_class": 30, "test_per_class": 10},
        "train": {"epochs": 1, "batch_size": 16, "lr": 0.01}, "model": {"hidden_dim": 16}}


def _spec(tmp_path):
    for m in ("finetune", "lwf"):
        (tmp_path / f"tiny-{m}.yaml").write_text(yaml.safe_dump({**TINY, "method": {"name": m}}))
    spec = {"seeds": [0, 1], "runs": [
        {"name": "finetune", "config": str(tmp_path / "tiny-finetune.yaml")},
        {"name": "lwf", "config": str(tmp_path / "tiny-lwf.yaml")},
        {"name": "lwf T=4", "config": str(tmp_path / "tiny-lwf.yaml"), "overrides": ["method.temperature=4"],
         "tune_as": "lwf"}],
        "tables": {"main": ["finetune", "lwf"], "ablation": ["lwf", "lwf T=4"]}}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def test_sweep_tunes_on_validation_and_aggregates_seeds(tmp_path):
    out = tmp_path / "sweep"
    res = Sweep(read_spec(str(_spec(tmp_path))), out, quiet=True, in_process=True).run()
    # lwf's three alpha candidates ran on the validation split at the first seed, nothing else was tuned
    tuned = sorted(p.name for p in (out / "tune" / "lwf").iterdir() if p.is_dir())
    assert tuned == ["alpha=0.5", "alpha=1.0", "alpha=2.0"]
    for d in (out / "tune" / "lwf").iterdir():
        if d.is_dir():
            m = json.loads((d / "metrics.json").read_text())
            assert m["stream_info"]["split"] == "validation" and m["seed"] == 0
    t = json.loads((out / "tuning.json").read_text())
    best = max(t["lwf"]["scores"]["alpha"], key=t["lwf"]["scores"]["alpha"].get)
    assert float(best) == t["lwf"]["hparams"]["alpha"] and t["lwf T=4"]["inherited_from"] == "lwf"
    assert "finetune" not in t  # no search space: no tuning runs
    # final runs: every run x seed on the test split, with the chosen value
    for name in ("finetune", "lwf", "lwf_T_4"):
        for s in (0, 1):
            m = json.loads((out / "runs" / name / f"seed{s}" / "metrics.json").read_text())
            assert m["seed"] == s and "split" not in m["stream_info"]
    cfg = yaml.safe_load((out / "runs" / "lwf_T_4" / "seed0" / "config.yaml").read_text())
    assert cfg["method"]["alpha"] == t["lwf"]["hparams"]["alpha"] and cfg["method"]["temperature"] == 4.0
    # the table's numbers are the mean and std of the per-seed metrics
    vals = [json.loads((out / "runs" / "lwf" / f"seed{s}" / "metrics.json").read_text())
            ["summary"]["modality_agnostic"]["last_acc"] for s in (0, 1)]
    agg = res["runs"]["lwf"]["modality_agnostic"]["last_acc"]
    assert agg["mean"] == pytest.approx(sum(vals) / 2)
    assert agg["std"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
    md = (out / "results.md").read_text()
    assert "### main" in md and "### ablation" in md and f"{agg['mean']:.3f} ± {agg['std']:.3f}" in md


def test_sweep_reuses_finished_runs_and_reruns_changed_ones(tmp_path, capsys):
    spec = _spec(tmp_path)
    out = tmp_path / "sweep"
    Sweep(read_spec(str(spec)), out, quiet=True, in_process=True).run()
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    Sweep(read_spec(str(spec)), out, in_process=True).run()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamp
    assert "seed0  " not in capsys.readouterr().out  # nothing re-ran
    # a changed config re-runs what it changes
    (tmp_path / "tiny-finetune.yaml").write_text(yaml.safe_dump({**TINY, "method": {"name": "finetune"}, "seed": 0,
                                                                 "train": {**TINY["train"], "lr": 0.02}}))
    Sweep(read_spec(str(spec)), out, quiet=True, in_process=True).run()
    assert (out / "runs" / "finetune" / "seed0" / "metrics.json").stat().st_mtime_ns != \
        stamp[out / "runs" / "finetune" / "seed0" / "metrics.json"]
    assert (out / "runs" / "lwf" / "seed0" / "metrics.json").stat().st_mtime_ns == \
        stamp[out / "runs" / "lwf" / "seed0" / "metrics.json"]


def test_finished_only_reports_a_sweep_under_way_without_running_anything(tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match="no such sweep directory"):
        Sweep(read_spec(str(spec)), out, quiet=True, finished_only=True).run()
    full = Sweep(read_spec(str(spec)), out, quiet=True, in_process=True).run()
    # the sweep stopped part-way: finetune's seed 1 and one of lwf's tuning runs never finished
    (out / "runs" / "finetune" / "seed1" / "metrics.json").unlink()
    (out / "tune" / "lwf" / "alpha=2.0" / "metrics.json").unlink()
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    res = Sweep(read_spec(str(spec)), out, quiet=True, in_process=True, finished_only=True).run()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == written  # nothing ran, nothing written
    assert not (out / "runs" / "finetune" / "seed1" / "metrics.json").exists()
    assert res["partial"] == {"finished": 1, "planned": 6}
    ft = res["runs"]["finetune"]
    assert ft["n"] == 1 and ft["seeds"] == [0]
    m0 = json.loads((out / "runs" / "finetune" / "seed0" / "metrics.json").read_text())
    assert ft["modality_agnostic"]["last_acc"]["mean"] == m0["summary"]["modality_agnostic"]["last_acc"]
    # lwf's final configs depend on its unfinished tuning: neither lwf nor the run tuned as it is reported
    assert res["tuning"]["lwf"] == {"unfinished": True} and res["runs"]["lwf T=4"]["missing"] == "tuning not finished"
    md = markdown(res)
    assert "**Partial**: 1 of 6 final runs" in md and "| finetune (seed 0) |" in md
    assert "| lwf (tuning not finished) |" in md and "- lwf: tuning not finished" in md
    header = next(r for r in md.splitlines() if r.startswith("| run | hparam"))
    rows = [r for r in md.splitlines() if r.startswith("| lwf")]
    assert len(rows) == 3 and all(r.count("|") == header.count("|") for r in rows)  # lwf in two tables, lwf T=4
    # the whole sweep again: the missing runs are made and the tables equal the uninterrupted sweep's
    again = Sweep(read_spec(str(spec)), out, quiet=True, in_process=True).run()
    assert "partial" not in again
    assert again["runs"]["finetune"]["seeds"] == [0, 1]
    assert again["tuning"]["lwf"]["hparams"] == full["tuning"]["lwf"]["hparams"]
    assert markdown(again) == markdown(full)
    # the command line: the doc's regenerate command says the tables are partial
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- sweep tables: begin (generated by mmcl sweep --doc) -->\n<!-- sweep tables: end -->\n")
    (out / "runs" / "lwf" / "seed0" / "metrics.json").unlink()
    r = run_cli("sweep", str(spec), "--out", str(out), "--finished-only", "--doc", str(doc))
    assert "5 of 6 final runs" in r.stdout and "results:" not in r.stdout
    assert f"mmcl sweep {spec} --out {out} --finished-only --doc {doc}" in doc.read_text()
    assert not (out / "runs" / "lwf" / "seed0" / "metrics.json").exists()


def test_bad_specs_are_one_line_errors(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"runs": [{"name": "a", "config": "mm5-finetune"}], "sedes": [0]}))
    with pytest.raises(ConfigError, match="unknown key 'sedes'"):
        read_spec(str(p))
    p.write_text(yaml.safe_dump({"runs": [{"name": "a", "config": "mm5-finetune", "overrides": ["train.lrr=1"]}]}))
    with pytest.raises(ConfigError, match="train.lrr"):
        read_spec(str(p))
    p.write_text(yaml.safe_dump({"runs": [{"name": "a", "config": "mm5-finetune"}], "tables": {"t": ["b"]}}))
    with pytest.raises(ConfigError, match="unknown run 'b'"):
        read_spec(str(p))
    r = run_cli("sweep", "no-such-sweep", "--out", str(tmp_path / "o"), check=False)
    assert r.returncode == 2 and "no-such-sweep" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bundled_mm5_sweep_spec_is_valid():
    spec = read_spec("mm5")
    assert spec.seeds == [0, 1, 2]
    names = {r.name for r in spec.runs}
    assert {"finetune", "joint", "zeroshot", "er", "ewc", "lwf", "derpp"} <= names


def test_cli_sweep_runs_processes_in_parallel_and_prints_the_table(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "method": {"name": "finetune"}}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"seeds": [0, 1], "runs": [{"name": "ft", "config": str(tmp_path / "tiny.yaml")}]}))
    doc = tmp_path / "doc.md"
    doc.write_text("# mine\n\nprose before\n\n<!-- sweep tables: begin (generated by mmcl sweep --doc) -->\nold"
                   "\n<!-- sweep tables: end -->\n\nprose after\n")
    r = run_cli("sweep", str(spec), "--out", str(tmp_path / "o"), "--jobs", "2", "--doc", str(doc))
    assert "| ft |" in r.stdout and (tmp_path / "o" / "results.md").exists()
    text = doc.read_text()
    assert "prose before" in text and "prose after" in text and "old" not in text
    assert "| ft |" in text and f"mmcl sweep {spec} --out" in text
    a, b = (json.loads((tmp_path / "o" / "runs" / "ft" / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1))
    assert (a["seed"], b["seed"]) == (0, 1)


def test_scenario_tables_show_vqa_f1_and_per_scenario_scores():
    """Scenario runs: protocols come from the runs' metrics (VQA, F1), and the last step per scenario."""
    from mmcl.sweep import aggregate, markdown

    def metrics(v, f):
        s = {"last_acc": v, "avg_inc_acc": v, "forgetting": 0.1, "bwt": -0.1, "avg_acc": v, "fwt": 0.0}
        return {"timing": {"total_s": 10.0}, "summary": {"vqa": s, "grounding_f1": {**s, "last_acc": f}},
                "last_by_scenario": {"vqa": {"indoor": v, "underwater": v / 2}, "grounding_f1": {"indoor": f, "underwater": f}}}

    agg = aggregate([metrics(0.4, 0.1), metrics(0.6, 0.3)])
    assert agg["protocols"] == ["vqa", "grounding_f1"]
    assert agg["vqa"]["last_acc"]["mean"] == pytest.approx(0.5)
    assert agg["by_scenario"]["vqa"]["underwater"]["mean"] == pytest.approx(0.25)
    res = {"seeds": [0, 1], "runs": {"ft": {**agg, "hparam": {}}}, "tuning": {}, "tables": {"main": ["ft"]}}
    md = markdown(res)
    assert "last_acc (VQA)" in md and "bwt (F1)" in md and "indoor (VQA)" in md and "underwater (F1)" in md
    assert "0.500 ± 0.141" in md and "0.250 ± 0.071" in md and "grounding F1" in md and "aware" not in md
    assert Sweep.score({"summary": {"vqa": {"last_acc": 0.4}, "grounding_f1": {"last_acc": 0.2}}}) == pytest.approx(0.3)
    # a spec's `metrics` choose the columns; a metric the runs do not have is '–' ...
    md = markdown({**res, "metrics": ["last_acc", "plasticity"]})
    assert "plasticity (VQA)" in md and "bwt (VQA)" not in md and "| – |" in md
    # ... unless their matrices and baseline give it (a run made before the metric existed)
    old = {**metrics(0.4, 0.1), "matrices": {"vqa": [[0.5, None], [0.3, 0.6]], "grounding_f1": [[0.1, None], [0.1, 0.1]]},
           "baseline": {"vqa": [0.2, 0.2], "grounding_f1": [0.0, 0.0]}}
    assert aggregate([old])["vqa"]["plasticity"]["mean"] == pytest.approx(((0.5 - 0.2) + (0.6 - 0.2)) / 2)
    # the per-step learning by scenario: the diagonal minus the baseline of each scenario's steps, over the seeds
    exps = {"experiences": [{"name": "indoor", "scenario": "indoor"}, {"name": "underwater", "scenario": "underwater"}]}
    runs = [{**old, **exps}, {**old, **exps, "baseline": {"vqa": [0.4, 0.0], "grounding_f1": [0.0, 0.0]}}]
    gain = aggregate(runs)["gain_by_scenario"]
    assert gain["vqa"]["indoor"]["mean"] == pytest.approx(((0.5 - 0.2) + (0.5 - 0.4)) / 2)
    assert gain["vqa"]["underwater"]["mean"] == pytest.approx(((0.6 - 0.2) + 0.6) / 2)
    md = markdown({**res, "runs": {"ft": {**aggregate(runs), "hparam": {}}}})
    assert "Learning per step, per scenario (main)" in md and "| ft | 0.200 ± 0.141 | 0.500 ± 0.141 |" in md
    assert "gain_by_scenario" not in aggregate([old])  # without the experiences' scenarios: no such table


def test_spec_metrics_are_summary_metrics_and_the_grounded_spec_is_valid(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({"runs": [{"name": "a", "config": "mm5-finetune"}], "metrics": ["last_acc", "plastic"]}))
    with pytest.raises(ConfigError, match="'metrics' must be a non-empty list of summary metrics"):
        read_spec(str(p))
    spec = read_spec("msvqa-mini-grounded")
    assert spec.metrics[:2] == ("last_acc", "plasticity") and not spec.tune
    cfg = load_config("msvqa-mini-finetune", spec.overrides)
    assert cfg["train"]["region_weight"] == 1.0 and cfg["vlm"]["train_embeddings"] is True


def test_sweep_without_tuning_keeps_config_values(tmp_path):
    spec = yaml.safe_load(_spec(tmp_path).read_text())
    spec["tune"], spec["seeds"] = False, [0]
    p = tmp_path / "untuned.yaml"
    p.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    res = Sweep(read_spec(str(p)), out, quiet=True, in_process=True).run()
    assert not (out / "tune").exists() and res["tuning"] == {}
    cfg = yaml.safe_load((out / "runs" / "lwf" / "seed0" / "config.yaml").read_text())
    assert cfg["method"]["alpha"] == yaml.safe_load((tmp_path / "tiny-lwf.yaml").read_text()).get("method", {}).get(
        "alpha", cfg["method"]["alpha"])
    spec["tune"] = "no"
    p.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="'tune' must be true or false"):
        read_spec(str(p))


def test_a_run_may_name_its_own_seeds(tmp_path):
    spec = yaml.safe_load(_spec(tmp_path).read_text())
    spec["tune"] = False
    spec["runs"][1]["seeds"] = [1]
    p = tmp_path / "own-seeds.yaml"
    p.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    res = Sweep(read_spec(str(p)), out, quiet=True, in_process=True).run()
    assert sorted(d.name for d in (out / "runs" / "lwf").iterdir()) == ["seed1"]
    assert sorted(d.name for d in (out / "runs" / "finetune").iterdir()) == ["seed0", "seed1"]
    assert res["runs"]["lwf"]["n"] == 1 and res["runs"]["lwf"]["seeds"] == [1]
    assert "| lwf (seed 1) |" in (out / "results.md").read_text()
    spec["runs"][1]["seeds"] = []
    p.write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match=r"runs\[1\].seeds"):
        read_spec(str(p))


# -- bundled scenario configs and their search spaces ----------------------------------------
@pytest.mark.usefixtures("one_thread")
def test_bundled_configs_and_scenario_search_spaces():
    ft = load_config("msvqa-mini-finetune")
    for name in ("er", "ewc", "lwf"):
        cfg = load_config(f"msvqa-mini-{name}")
        assert cfg["method"]["name"] == name
        assert all(cfg[k] == ft[k] for k in ("setting", "benchmark", "train", "vlm", "base", "eval", "stream"))
    assert search_space("msvqa-mini-ewc", []) == {"ewc_lambda": EWC.search_space["scenario"]["ewc_lambda"]}
    assert search_space("msvqa-mini-lwf", []) == {"alpha": [0.1, 1.0, 10.0]}
    assert search_space("mm5-ewc", []) == {"ewc_lambda": [1e4, 1e5, 1e6]}  # modality: unchanged
    assert search_space("mm5-lwf", []) == {"alpha": [0.5, 1.0, 2.0]}
    assert load_config("mm5-er")["method"]["replay_batch_size"] == 0  # modality default unchanged


def test_several_hyper_parameters_are_tuned_one_at_a_time(tmp_path, monkeypatch):
    """Coordinate-wise: the second hyper-parameter's candidates run with the first's chosen value; the final
    runs get every chosen value."""
    from mmcl.methods.lwf import LwF

    monkeypatch.setattr(LwF, "search_space", {"modality": {"alpha": [0.5, 2.0], "temperature": [1.0, 4.0]}})
    (tmp_path / "tiny-lwf.yaml").write_text(yaml.safe_dump({**TINY, "method": {"name": "lwf"}}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"seeds": [0], "runs": [{"name": "lwf", "config": str(tmp_path / "tiny-lwf.yaml")}]}))
    out = tmp_path / "sweep"
    res = Sweep(read_spec(str(spec)), out, quiet=True, in_process=True).run()
    t = json.loads((out / "tuning.json").read_text())["lwf"]
    assert list(t["scores"]) == ["alpha", "temperature"] and all(len(v) == 2 for v in t["scores"].values())
    alpha = t["hparams"]["alpha"]
    assert float(max(t["scores"]["alpha"], key=t["scores"]["alpha"].get)) == alpha
    for T in ("1.0", "4.0"):  # the second round ran with the first round's choice
        cfg = yaml.safe_load((out / "tune" / "lwf" / f"temperature={T}" / "config.yaml").read_text())
        assert cfg["method"]["alpha"] == alpha and cfg["method"]["temperature"] == float(T)
    for a in ("0.5", "2.0"):  # the first round kept the default temperature
        cfg = yaml.safe_load((out / "tune" / "lwf" / f"alpha={a}" / "config.yaml").read_text())
        assert cfg["method"]["temperature"] == LwF.Hparams().temperature
    final = yaml.safe_load((out / "runs" / "lwf" / "seed0" / "config.yaml").read_text())
    assert final["method"]["alpha"] == alpha and final["method"]["temperature"] == t["hparams"]["temperature"]
    assert res["runs"]["lwf"]["hparam"] == t["hparams"]
    md = (out / "results.md").read_text()
    assert "- lwf: alpha in {" in md and "; then temperature in {" in md


def test_a_tie_keeps_the_configured_value(tmp_path, monkeypatch):
    """A hyper-parameter that does not act on the stream scores the same for every candidate: the configured
    value is kept, not the first candidate."""
    from mmcl.methods.lwf import LwF

    monkeypatch.setattr(LwF, "search_space", {"modality": {"temperature": [1.0, 2.0, 4.0]}})
    (tmp_path / "tiny-lwf.yaml").write_text(yaml.safe_dump({**TINY, "method": {"name": "lwf", "alpha": 0.0}}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"seeds": [0], "runs": [{"name": "lwf", "config": str(tmp_path / "tiny-lwf.yaml")}]}))
    out = tmp_path / "sweep"
    Sweep(read_spec(str(spec)), out, quiet=True, in_process=True).run()
    t = json.loads((out / "tuning.json").read_text())["lwf"]
    assert len(set(t["scores"]["temperature"].values())) == 1  # alpha = 0: the temperature does nothing
    assert t["hparams"]["temperature"] == LwF.Hparams().temperature == 2.0


def test_bundled_returning_spec_is_valid_and_writes_its_own_doc_section(tmp_path):
    """mm5-returning's tables go between markers named after the spec; the unnamed section is left alone."""
    from mmcl.sweep import markers, write_doc

    spec = read_spec("mm5-returning")
    assert "stream.experiences_per_modality=2" in spec.overrides and spec.seeds == [0, 1, 2]
    assert {"finetune", "er", "derpp", "slca", "comm", "comm -both"} <= {r.name for r in spec.runs}
    doc = tmp_path / "r.md"
    b0, e0 = markers()
    b1, e1 = markers("mm5-returning")
    doc.write_text(f"intro\n{b0}\nold main\n{e0}\nmiddle\n{b1}\nold returning\n{e1}\nend\n")
    write_doc(doc, "NEW", "mmcl sweep mm5-returning", name="mm5-returning")
    text = doc.read_text()
    assert "old main" in text and "old returning" not in text and "NEW" in text
    assert text.index("NEW") > text.index("middle") and text.endswith("end\n")
    write_doc(doc, "MAIN", "mmcl sweep mm5", name="mm5")  # no markers of its own: the unnamed ones
    assert "old main" not in doc.read_text() and "NEW" in doc.read_text()
    (tmp_path / "bare.md").write_text("no markers\n")
    with pytest.raises(ConfigError, match="expected the markers"):
        write_doc(tmp_path / "bare.md", "x", "cmd", name="mm5-returning")


def test_a_metric_the_stream_leaves_undefined_is_a_dash_not_a_crash(tmp_path):
    """One experience: forgetting and bwt are undefined (None); the sweep aggregates and prints '–'."""
    one = {**TINY, "benchmark": {**TINY["benchmark"], "num_experiences": 1}, "method": {"name": "finetune"}}
    (tmp_path / "one.yaml").write_text(yaml.safe_dump(one))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"seeds": [0, 1], "runs": [{"name": "ft", "config": str(tmp_path / "one.yaml")}]}))
    res = Sweep(read_spec(str(spec)), tmp_path / "sweep", quiet=True, in_process=True).run()
    agg = res["runs"]["ft"]["modality_agnostic"]
    assert agg["forgetting"] == {"mean": None, "std": None} and agg["last_acc"]["mean"] is not None
    assert "| – |" in (tmp_path / "sweep" / "results.md").read_text()


def test_a_runs_search_replaces_its_methods_candidates(tmp_path):
    """`search` in a spec's run: those candidates (in that order) instead of the method's search_space, for
    that run only; `search: {}` tunes nothing; bad candidates fail when the spec is read, named."""
    (tmp_path / "tiny-lwf.yaml").write_text(yaml.safe_dump({**TINY, "method": {"name": "lwf"}}))
    cfg = str(tmp_path / "tiny-lwf.yaml")
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"seeds": [0], "runs": [
        {"name": "lwf", "config": cfg, "search": {"temperature": [1.0, 4.0]}},
        {"name": "lwf default", "config": cfg},
        {"name": "lwf untuned", "config": cfg, "search": {}}]}))
    out = tmp_path / "sweep"
    Sweep(read_spec(str(spec)), out, quiet=True, in_process=True).run()
    t = json.loads((out / "tuning.json").read_text())
    assert list(t["lwf"]["scores"]) == ["temperature"] and list(t["lwf"]["scores"]["temperature"]) == ["1.0", "4.0"]
    assert list(t["lwf default"]["scores"]["alpha"]) == ["0.5", "1.0", "2.0"]  # the method's own candidates
    assert "lwf untuned" not in t and not (out / "tune" / "lwf_untuned").exists()
    final = yaml.safe_load((out / "runs" / "lwf" / "seed0" / "config.yaml").read_text())
    assert final["method"]["temperature"] == t["lwf"]["hparams"]["temperature"]
    for bad, match in (({"alpha": [1.0, -1.0]}, "search candidate alpha=-1.0"),
                       ({"alpah": [1.0]}, "search candidate alpah=1.0"),
                       ({"alpha": []}, "non-empty lists")):
        spec.write_text(yaml.safe_dump({"runs": [{"name": "lwf", "config": cfg, "search": bad}]}))
        with pytest.raises(ConfigError, match=match):
            read_spec(str(spec))
    spec.write_text(yaml.safe_dump({"runs": [{"name": "a", "config": cfg},
                                             {"name": "b", "config": cfg, "search": {"alpha": [1.0]}, "tune_as": "a"}]}))
    with pytest.raises(ConfigError, match="both 'search' and 'tune_as'"):
        read_spec(str(spec))


def test_every_bundled_spec_reads():
    """Every bundled sweep spec is valid: its configs, overrides and `search` candidates load."""
    from pathlib import Path

    import mmcl.sweep

    specs = sorted(p.stem for p in (Path(mmcl.sweep.__file__).parent / "configs" / "sweeps").glob("*.yaml"))
    assert "msvqa-mini" in specs and "mm5" in specs
    for name in specs:
        assert read_spec(name).runs  # read_spec raises on a bad config, override, table or candidate
    searched = {r.name: r.search for r in read_spec("msvqa-mini").runs if r.search}
    assert set(searched) == {"olora", "quad", "unifier"}
