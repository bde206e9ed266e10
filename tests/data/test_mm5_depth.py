"""mm5 depth modality: pybullet-rendered depth maps of real 3-D models, as 16-bit PNG in millimetres."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmcl.data.mm5 import depth as D

TRAIN, TEST = 4, 2


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth_small")
    man = D.generate(root, seed=0, train_per_class=TRAIN, test_per_class=TEST)
    return root, man


@pytest.fixture()
def copy_of_small(small, tmp_path):
    root, _ = small
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def test_interface_constants():
    assert D.MODALITY == "depth"
    assert isinstance(D.VERSION, str) and D.VERSION
    assert len(D.CLASSES) >= 6 and len(set(D.CLASSES)) == len(D.CLASSES)
    for name in D.CLASSES:                       # plain words a person would use
        assert name == name.lower() and all(w.isalpha() for w in name.split())
    assert D.NEAR_M < D.FAR_M and D.FAR_M * 1000 < 65535


def test_manifest_fields_balance_and_sha(small):
    root, man = small
    on_disk = json.loads((root / "manifest.json").read_text())
    assert on_disk == man
    for key in ("modality", "version", "seed", "classes", "train_per_class", "test_per_class", "files",
                "counts", "bytes", "sha256", "seconds", "notes"):
        assert key in man, key
    assert man["modality"] == "depth" and man["version"] == D.VERSION and man["seed"] == 0
    assert man["classes"] == D.CLASSES
    assert man["train_per_class"] == TRAIN and man["test_per_class"] == TEST
    k = len(D.CLASSES)
    assert man["counts"] == {"train": TRAIN * k, "test": TEST * k}
    assert len(man["files"]) == (TRAIN + TEST) * k
    assert isinstance(man["seconds"], float) and man["seconds"] > 0
    assert "train" in man["notes"] and "test" in man["notes"] and "elevation" in man["notes"]

    # order: by split, then class, then index; path = <split>/<class_slug>/<index>.png
    expected = [(s, c, i) for s, n in (("train", TRAIN), ("test", TEST)) for c in range(k) for i in range(n)]
    got = [(f["split"], f["label"], int(Path(f["path"]).stem)) for f in man["files"]]
    assert got == expected
    for f in man["files"]:
        parts = Path(f["path"]).parts
        assert parts[0] == f["split"] and parts[1] == D.CLASSES[f["label"]].replace(" ", "_")
        assert f["path"].endswith(".png")

    # bytes and sha256 recomputed from the files
    h = hashlib.sha256()
    total = 0
    for f in man["files"]:
        data = (root / f["path"]).read_bytes()
        h.update(f["path"].encode())
        h.update(data)
        total += len(data)
    assert man["bytes"] == total and man["sha256"] == h.hexdigest()
    assert not list(root.rglob("*.tmp"))

    _, labels, split = D.load(root)
    assert labels.dtype == np.int64 and split.dtype == np.int8
    assert np.bincount(labels[split == 0], minlength=k).tolist() == [TRAIN] * k
    assert np.bincount(labels[split == 1], minlength=k).tolist() == [TEST] * k


def test_files_are_16bit_png_in_mm(small):
    root, man = small
    samples, _, _ = D.load(root)
    for f, s in zip(man["files"][:5], samples[:5]):
        with Image.open(root / f["path"]) as im:
            assert im.format == "PNG" and im.mode == "I;16" and im.size == (64, 64)
            raw = np.array(im)
        assert raw.dtype == np.uint16
        np.testing.assert_array_equal(s, raw.astype(np.float32) / 1000)


def test_decoded_samples_shapes_and_ranges(small):
    root, man = small
    samples, _, _ = D.load(root)
    assert len(samples) == len(man["files"])
    for s in samples:
        assert isinstance(s, np.ndarray) and s.dtype == np.float32 and s.shape == (64, 64)
        assert np.isfinite(s).all()
        obj = s > 0
        # the object is there, and it is surrounded by background
        assert 0.02 < obj.mean() < 0.8
        assert not obj[0, :].all() and not obj[-1, :].all()
        # object pixels lie between the near and far planes; background is exactly 0
        assert s[obj].min() >= D.NEAR_M and s[obj].max() <= D.FAR_M
        assert set(np.unique(s[~obj]).tolist()) == {0.0}
        # a real 3-D surface: depth varies over the object, by less than the object could be deep
        assert 0.005 < float(np.ptp(s[obj])) < 1.0


def test_determinism_same_and_other_seed(small, tmp_path):
    root, man = small
    again = D.generate(tmp_path / "again", seed=0, train_per_class=TRAIN, test_per_class=TEST)
    assert again["sha256"] == man["sha256"] and again["bytes"] == man["bytes"]
    for f in man["files"]:
        assert (root / f["path"]).read_bytes() == (tmp_path / "again" / f["path"]).read_bytes()
    a, la, sa = D.load(root)
    b, lb, sb = D.load(tmp_path / "again")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(la, lb) and np.array_equal(sa, sb)

    other = D.generate(tmp_path / "other", seed=1, train_per_class=TRAIN, test_per_class=TEST)
    assert other["sha256"] != man["sha256"]
    c, _, _ = D.load(tmp_path / "other")
    assert sum(not np.array_equal(x, y) for x, y in zip(a, c)) > len(a) // 2


def test_regenerate_over_existing_root(tmp_path):
    D.generate(tmp_path, seed=0, train_per_class=2, test_per_class=1)
    man = D.generate(tmp_path, seed=3, train_per_class=1, test_per_class=1)
    samples, labels, split = D.load(tmp_path)
    assert len(samples) == len(man["files"]) == 2 * len(D.CLASSES)
    assert json.loads((tmp_path / "manifest.json").read_text())["seed"] == 3


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        D.load(tmp_path)


def _victim(root: Path) -> tuple[Path, str]:
    rel = json.loads((root / "manifest.json").read_text())["files"][3]["path"]
    return root / rel, rel


def test_garbage_file_raises_naming_it(copy_of_small):
    path, rel = _victim(copy_of_small)
    path.write_bytes(b"this is not a png at all" * 10)
    with pytest.raises(ValueError, match=rel.split("/")[-1]) as ei:
        D.load(copy_of_small)
    assert str(path) in str(ei.value) and "PNG" in str(ei.value)


def test_truncated_file_raises_naming_it(copy_of_small):
    path, _ = _victim(copy_of_small)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as ei:
        D.load(copy_of_small)
    assert str(path) in str(ei.value)


def test_empty_file_raises_naming_it(copy_of_small):
    path, _ = _victim(copy_of_small)
    path.write_bytes(b"")
    with pytest.raises(ValueError) as ei:
        D.load(copy_of_small)
    assert str(path) in str(ei.value)


def test_8bit_png_raises_naming_it(copy_of_small):
    path, _ = _victim(copy_of_small)
    Image.fromarray(np.full((64, 64), 100, np.uint8), mode="L").save(path, format="PNG")
    with pytest.raises(ValueError, match="16-bit") as ei:
        D.load(copy_of_small)
    assert str(path) in str(ei.value)


def test_1d_png_raises_naming_it(copy_of_small):
    path, _ = _victim(copy_of_small)
    Image.fromarray(np.full((1, 4096), 700, np.uint16)).save(path, format="PNG")  # one row, 16-bit
    with pytest.raises(ValueError, match=r"expected shape \(64, 64\)") as ei:
        D.load(copy_of_small)
    assert str(path) in str(ei.value)


def test_wrong_size_16bit_png_raises_naming_it(copy_of_small):
    path, _ = _victim(copy_of_small)
    Image.fromarray(np.full((32, 32), 700, np.uint16)).save(path, format="PNG")
    with pytest.raises(ValueError, match=r"got \(32, 32\)") as ei:
        D.load(copy_of_small)
    assert str(path) in str(ei.value)


def test_out_of_range_depth_raises_naming_it(copy_of_small):
    path, _ = _victim(copy_of_small)
    arr = np.zeros((64, 64), np.uint16)
    arr[10:20, 10:20] = 60000                     # 60 m: beyond the far plane
    Image.fromarray(arr).save(path, format="PNG")
    with pytest.raises(ValueError, match="within") as ei:
        D.load(copy_of_small)
    assert str(path) in str(ei.value)


def test_missing_sample_file_names_it(copy_of_small):
    path, _ = _victim(copy_of_small)
    path.unlink()
    with pytest.raises(FileNotFoundError) as ei:
        D.load(copy_of_small)
    assert str(path) in str(ei.value)


def test_depth_to_image():
    d = np.zeros((64, 64), np.float32)
    d[10:20, 10:30] = np.linspace(0.5, 1.5, 20, dtype=np.float32)[None, :]
    img = D.depth_to_image(d)
    assert img.dtype == np.uint8 and img.shape == (64, 64)
    assert (img[d == 0] == 0).all()
    obj = img[10:20, 10:30]
    assert obj[:, 0].tolist() == [255] * 10 and obj[:, -1].tolist() == [48] * 10   # near bright, far dim
    assert (np.diff(obj[0].astype(int)) < 0).all()
    # per-sample normalisation: a shifted/scaled copy gives the same picture
    np.testing.assert_array_equal(D.depth_to_image(np.where(d > 0, 2 * d + 1, 0)), img)
    # flat object -> all 255; empty map -> all 0; non-finite counts as background
    flat = np.where(d > 0, 1.0, 0.0)
    assert (D.depth_to_image(flat)[d > 0] == 255).all()
    assert (D.depth_to_image(np.zeros((64, 64))) == 0).all()
    nan = d.copy()
    nan[0, 0] = np.nan
    assert D.depth_to_image(nan)[0, 0] == 0
    # batches are normalised per map
    batch = D.depth_to_image(np.stack([d, 3 * d]))
    assert batch.shape == (2, 64, 64) and np.array_equal(batch[0], img) and np.array_equal(batch[1], img)
    with pytest.raises(ValueError):
        D.depth_to_image(np.zeros(5))


def test_classes_differ_in_depth_silhouettes(tmp_path):
    """A nearest-class-mean classifier on 16x16 depth_to_image pictures beats chance clearly."""
    D.generate(tmp_path, seed=5, train_per_class=10, test_per_class=10)
    samples, labels, split = D.load(tmp_path)
    x = np.stack([D.depth_to_image(s) for s in samples]).astype(np.float32)
    x = x.reshape(len(x), 16, 4, 16, 4).mean(axis=(2, 4)).reshape(len(x), -1)
    k = len(D.CLASSES)
    tr, te = split == 0, split == 1
    means = np.stack([x[tr & (labels == c)].mean(0) for c in range(k)])
    # every pair of class-mean silhouettes differs
    dists = ((means[:, None] - means[None]) ** 2).sum(-1)
    assert (dists[~np.eye(k, dtype=bool)] > 0).all()
    pred = ((x[te][:, None] - means[None]) ** 2).sum(-1).argmin(1)
    acc = float((pred == labels[te]).mean())
    assert acc > 3.0 / k, acc                     # chance is 1/k
