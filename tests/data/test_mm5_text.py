"""Tests for the mm5 text modality (real topic-labelled quotes from the Debian `fortunes` package)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mmcl.data.mm5 import text as T

pytestmark = pytest.mark.skipif(
    not T.FORTUNES_DIR.is_dir(),
    reason=f"{T.FORTUNES_DIR} is absent: install the Debian package 'fortunes' (apt-get install fortunes)",
)

SMALL = dict(train_per_class=4, test_per_class=2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm5_text_small")
    manifest = T.generate(root, seed=0, **SMALL)
    return root, manifest


@pytest.fixture(scope="module")
def default(tmp_path_factory):
    root = tmp_path_factory.mktemp("mm5_text_default")
    manifest = T.generate(root, seed=0)
    return root, manifest


def test_interface_constants():
    assert T.MODALITY == "text"
    assert isinstance(T.VERSION, str) and T.VERSION
    assert len(T.CLASSES) >= 6 and len(set(T.CLASSES)) == len(T.CLASSES)
    for c in T.CLASSES:
        assert c.isalpha() and c.islower(), c


def test_determinism_same_seed(small, tmp_path):
    root, m0 = small
    m1 = T.generate(tmp_path / "again", seed=0, **SMALL)
    assert m1["sha256"] == m0["sha256"]
    assert m1["bytes"] == m0["bytes"]
    assert m1["files"] == m0["files"]
    x0, y0, s0 = T.load(root)
    x1, y1, s1 = T.load(tmp_path / "again")
    assert x0 == x1
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(s0, s1)
    for e in m0["files"]:
        assert (root / e["path"]).read_bytes() == (tmp_path / "again" / e["path"]).read_bytes()


def test_other_seed_differs(small, tmp_path):
    _, m0 = small
    m2 = T.generate(tmp_path, seed=1, **SMALL)
    assert m2["sha256"] != m0["sha256"]
    x0, _, _ = T.load(small[0])
    x2, _, _ = T.load(tmp_path)
    assert x0 != x2


def test_manifest_fields(small):
    root, m = small
    on_disk = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == m
    for k in ("modality", "version", "seed", "classes", "train_per_class", "test_per_class",
              "files", "counts", "bytes", "sha256", "seconds", "notes"):
        assert k in m, k
    assert m["modality"] == "text" and m["version"] == T.VERSION and m["seed"] == 0
    assert m["classes"] == T.CLASSES
    assert m["train_per_class"] == 4 and m["test_per_class"] == 2
    n = len(T.CLASSES)
    assert m["counts"] == {"train": 4 * n, "test": 2 * n}
    assert len(m["files"]) == 6 * n
    assert isinstance(m["seconds"], float) and m["seconds"] >= 0
    assert isinstance(m["notes"], str) and "real" in m["notes"].lower()
    assert len(m["sha256"]) == 64
    # bytes and sha256 match the files on disk
    h = hashlib.sha256()
    total = 0
    for e in m["files"]:
        data = (root / e["path"]).read_bytes()
        h.update(e["path"].encode())
        h.update(data)
        total += len(data)
    assert h.hexdigest() == m["sha256"] and total == m["bytes"]
    # ordering: split, then class, then index; path layout split/class/index.txt
    expected = [
        f"{split}/{cls}/{i}.txt"
        for split, k in (("train", 4), ("test", 2))
        for cls in T.CLASSES
        for i in range(k)
    ]
    assert [e["path"] for e in m["files"]] == expected
    for e in m["files"]:
        split, cls, _ = e["path"].split("/")
        assert e["split"] == split and T.CLASSES[e["label"]] == cls
    # source provenance
    src = m["source"]
    assert src["package"] == "fortunes"
    assert src["package_version"] is None or isinstance(src["package_version"], str)
    assert set(src["class_files"]) == set(T.CLASSES)
    for f in src["class_files"].values():
        assert Path(f).is_file()


def test_decoded_format_and_balance(small):
    root, _ = small
    x, y, s = T.load(root)
    n = len(T.CLASSES)
    assert isinstance(x, list) and len(x) == 6 * n
    assert y.dtype == np.int64 and s.dtype == np.int8
    assert y.shape == s.shape == (6 * n,)
    assert set(np.unique(s)) == {0, 1}
    assert y.min() == 0 and y.max() == n - 1
    assert np.bincount(y[s == 0], minlength=n).tolist() == [4] * n
    assert np.bincount(y[s == 1], minlength=n).tolist() == [2] * n
    for t in x:
        assert isinstance(t, str)
        assert T.MIN_CHARS <= len(t) <= T.MAX_CHARS
        assert t == t.strip() and "\n" not in t and "  " not in t


def test_texts_clean_and_disjoint(default):
    root, m = default
    x, y, s = T.load(root)
    assert len(x) == 150 * len(T.CLASSES)
    for t in x:
        assert t.strip()
        assert t != "%" and "\n%" not in t and not t.startswith("%\n")
        assert not t.lstrip().startswith("--")
        assert "\x08" not in t
    train = {t for t, sp in zip(x, s) if sp == 0}
    test = {t for t, sp in zip(x, s) if sp == 1}
    assert len(train) == int((s == 0).sum()) and len(test) == int((s == 1).sum())  # no duplicates
    assert train.isdisjoint(test)
    # a quote belongs to one class only
    assert len(set(x)) == len(x)


def test_clean_quote_strips_attribution_and_overstrike():
    raw = "Calm down, it's *____\b\b\b\bonly* ones\n   and   zeroes.\n\t\t-- Somebody, \"Some Book\"\n\tpage 3"
    assert T.clean_quote(raw) == "Calm down, it's *only* ones and zeroes."
    assert T.clean_quote("An interpretation _\bI satisfies") == "An interpretation I satisfies"
    # an inline dash inside the quote is kept
    assert T.clean_quote("Cheese -- milk's leap toward immortality.") == "Cheese -- milk's leap toward immortality."


@pytest.mark.parametrize("payload", [b"", b"\n  \n", b"\xff\xfe\x00garbage\x80\x81", b"ok\x00\x01\x02"])
def test_corrupt_file_raises(tmp_path, payload):
    m = T.generate(tmp_path, seed=3, train_per_class=2, test_per_class=1)
    bad = tmp_path / m["files"][3]["path"]
    bad.write_bytes(payload)
    with pytest.raises(ValueError, match=str(bad).replace("\\", "\\\\")):
        T.load(tmp_path)


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        T.load(tmp_path)


def test_missing_fortunes_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "FORTUNES_DIR", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        T.generate(tmp_path / "out", **SMALL)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_too_many_requested(tmp_path):
    with pytest.raises(ValueError, match="usable quotes"):
        T.generate(tmp_path, train_per_class=5000, test_per_class=50)
    assert not (tmp_path / "manifest.json").exists()


def test_bag_of_words_beats_chance(default):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    root, _ = default
    x, y, s = T.load(root)
    x = np.array(x, dtype=object)
    vec = TfidfVectorizer(sublinear_tf=True)
    a = vec.fit_transform(x[s == 0])
    b = vec.transform(x[s == 1])
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(a, y[s == 0])
    acc = float((clf.predict(b) == y[s == 1]).mean())
    chance = 1.0 / len(T.CLASSES)
    assert acc > 2.4 * chance, f"TF-IDF accuracy {acc:.3f} vs chance {chance:.3f}"
