"""The command line: list, run, report, compare."""
import json

from mmcl.cli import main
from tests.harness import run_cli, tiny_cfg, write_cfg


def test_list(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ["methods:", "finetune", "joint", "er", "zeroshot", "benchmarks:", "animals", "configs:", "animals-er"]:
        assert word in out


def test_run_report_compare(tmp_path, capsys):
    a = write_cfg(tmp_path / "a.yaml", tiny_cfg("finetune", report=True))
    b = write_cfg(tmp_path / "b.yaml", tiny_cfg("er", report=True))
    assert main(["run", str(a), "--out", str(tmp_path / "A")]) == 0
    out = capsys.readouterr().out
    assert "modality_agnostic" in out and "last_acc" in out and "report:" in out
    assert main(["run", str(b), "seed=1", "--out", str(tmp_path / "B")]) == 0
    capsys.readouterr()
    html = (tmp_path / "A" / "report.html")
    html.unlink()
    assert main(["report", str(tmp_path / "A")]) == 0
    assert capsys.readouterr().out.strip().endswith("report.html")
    page = html.read_text()
    assert page.count("data:image/png;base64,") == 3 and "<table>" in page and "last_acc" in page
    assert main(["compare", str(tmp_path / "A"), str(tmp_path / "B")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert "last_acc" in table[0] and "bwt" in table[0]
    rows = [r for r in table[2:] if r.strip()]
    assert len(rows) == 4  # 2 runs x 2 protocols
    ma = json.loads((tmp_path / "A" / "metrics.json").read_text())
    assert f"{ma['summary']['modality_aware']['last_acc']:.3f}" in rows[0]
    assert rows[2].startswith("B (synthetic/er)")  # run, benchmark and method


def test_compare_missing_run_is_one_line_error(tmp_path):
    p = run_cli("compare", str(tmp_path / "nope"), check=False)
    assert p.returncode == 2 and "metrics.json does not exist" in p.stderr and p.stderr.strip().count("\n") == 0


def test_existing_run_directory_is_protected_and_force_starts_over(tmp_path, capsys):
    cfg = write_cfg(tmp_path / "c.yaml", tiny_cfg("finetune"))
    out = str(tmp_path / "R")
    assert main(["run", str(cfg), "--out", out]) == 0
    n_events = len((tmp_path / "R" / "events.jsonl").read_text().splitlines())
    assert main(["run", str(cfg), "--out", out]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    (tmp_path / "R" / "metrics.json").unlink()  # looks like an unfinished run now
    assert main(["run", str(cfg), "--out", out]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["run", str(cfg), "--out", out, "--force"]) == 0
    # the earlier run's events were removed, not appended to
    assert len((tmp_path / "R" / "events.jsonl").read_text().splitlines()) == n_events
