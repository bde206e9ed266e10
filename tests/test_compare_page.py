"""The comparison page (`mmcl compare --html`, a sweep's results.html) and numbers formatted for reading."""
import base64
import io
import json
import shutil
from html.parser import HTMLParser

from PIL import Image

import mmcl
from mmcl.cli import main
from mmcl.report import seconds, timing_text
from tests.harness import tiny_cfg


class Page(HTMLParser):
    """The page's images (decoded PNGs), section headings and table cells."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.h2, self.cells, self._in = [], [], [], None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            assert a["src"].startswith("data:image/png;base64,"), "images are embedded, not linked"
            self.images.append(Image.open(io.BytesIO(base64.b64decode(a["src"].split(",", 1)[1]))))
        self._in = tag

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "h2":
            self.h2.append(data.strip())
        elif self._in == "td":
            self.cells.append(data.strip())


def test_compare_page_groups_benchmarks_and_averages_seeds(tmp_path, capsys):
    runs = [mmcl.run(tiny_cfg(m, seed=s, train={"epochs": 1}), out=tmp_path / f"{m}{s}")
            for m, s in (("er", 0), ("er", 1), ("finetune", 0))]
    other = tmp_path / "other"  # the same run filed under another benchmark: must not share its charts
    shutil.copytree(runs[2].path, other)
    m = json.loads((other / "metrics.json").read_text())
    (other / "metrics.json").write_text(json.dumps({**m, "benchmark": "elsewhere"}))
    out = tmp_path / "page" / "cmp.html"
    assert main(["compare", *(str(r.path) for r in runs), str(other), "--html", str(out)]) == 0
    err = capsys.readouterr().err
    assert "different benchmarks" in err and "own section" in err
    page = Page(out.read_text())
    assert [h.split()[0] for h in page.h2] == ["synthetic", "elsewhere"]
    # per section: bars, curves, one matrix figure per protocol
    assert len(page.images) == 2 * 4 and all(im.format == "PNG" and im.width > 200 for im in page.images)
    er = [r.summary["modality_aware"]["last_acc"] for r in runs[:2]]
    mean = sum(er) / 2
    std = abs(er[0] - er[1]) / 2 ** 0.5
    i = page.cells.index("er")
    assert page.cells[i + 1: i + 3] == ["modality-aware", "0, 1"]
    assert page.cells[i + 4] == f"{mean:.3f} ± {std:.3f}"  # last_acc: mean ± std over the two seeds


def test_sweep_writes_results_html(tmp_path):
    from mmcl.sweep import RunSpec, Spec, Sweep

    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps(tiny_cfg("finetune", train={"epochs": 1})))
    spec = Spec(seeds=[0, 1], overrides=[], runs=[RunSpec("ft", str(cfg)), RunSpec("er", str(cfg), ["method=er"])],
                tables={"main": ["ft", "er"]}, tune=False)
    Sweep(spec, tmp_path / "sw", quiet=True, in_process=True).run()
    page = Page((tmp_path / "sw" / "results.html").read_text())
    assert len(page.images) == 4 and page.cells.count("0, 1") == 4  # 2 runs x 2 protocols, both seeds


def test_numbers_are_formatted_for_reading(tmp_path):
    assert [seconds(v) for v in (0.4213, 110.8793, 1111.2, 7500.0)] == ["0.42 s", "110.9 s", "18 min 31 s",
                                                                       "2 h 05 min"]
    assert timing_text({"total_s": 110.8793, "train_s": 80.25, "eval_s": 3.123, "samples_per_s": 1204.4}) == \
        "total 110.9 s (training 80.2 s, evaluation 3.12 s), 1,204 training samples/s"
    r = mmcl.run(tiny_cfg("finetune", train={"epochs": 1}, report=True), out=tmp_path / "r")
    text = (r.path / "report.html").read_text()
    assert "total_s" not in text and f"total {seconds(r.metrics['timing']['total_s'])}" in text
