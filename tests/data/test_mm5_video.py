"""mm5 video generator: real MP4 clips of pybullet-rendered objects whose label is their motion."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
if importlib.util.find_spec("pybullet") is None:  # find_spec: importing here would print pybullet's banner
    pytest.skip("pybullet is not installed", allow_module_level=True)

from mmcl.data.mm5 import video as V  # noqa: E402

TRAIN, TEST = 4, 2


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_small")
    manifest = V.generate(root, seed=0, train_per_class=TRAIN, test_per_class=TEST, workers=1)
    return root, manifest


@pytest.fixture(scope="module")
def small_loaded(small):
    root, _ = small
    return V.load(root)


def test_interface_constants():
    assert V.MODALITY == "video"
    assert isinstance(V.VERSION, str) and V.VERSION
    assert len(V.CLASSES) >= 6 and len(set(V.CLASSES)) == len(V.CLASSES)
    for c in V.CLASSES:  # plain English words, embedded by a sentence encoder
        assert re.fullmatch(r"[a-z]+( [a-z]+)*", c), c
    assert "turning clockwise" in V.CLASSES and "turning counterclockwise" in V.CLASSES
    assert not set(V.TRAIN_OBJECTS) & set(V.TEST_OBJECTS)
    import pybullet_data

    data = Path(pybullet_data.getDataPath())
    for rel in V.TRAIN_OBJECTS + V.TEST_OBJECTS:
        assert (data / rel).is_file(), rel
    for rel, _ in V.GROUND_TEXTURES + V.BACKDROP_TEXTURES:
        assert (data / rel).is_file(), rel


def test_manifest_fields_and_files(small):
    root, m = small
    on_disk = json.loads((root / "manifest.json").read_text())
    assert on_disk == m
    for key in ("modality", "version", "seed", "classes", "train_per_class", "test_per_class", "files",
                "counts", "bytes", "sha256", "seconds", "notes"):
        assert key in m, key
    assert m["modality"] == "video" and m["version"] == V.VERSION and m["seed"] == 0
    assert m["classes"] == V.CLASSES
    assert m["train_per_class"] == TRAIN and m["test_per_class"] == TEST
    n_cls = len(V.CLASSES)
    assert m["counts"] == {"train": TRAIN * n_cls, "test": TEST * n_cls}
    assert len(m["files"]) == (TRAIN + TEST) * n_cls
    assert isinstance(m["notes"], str) and "holds out" in m["notes"] and "Real" in m["notes"]
    assert m["seconds"] > 0
    # order: split, then class, then index; paths root/<split>/<class_slug>/<index>.mp4
    expected = [(s, c, i) for s, n in (("train", TRAIN), ("test", TEST)) for c in range(n_cls) for i in range(n)]
    got = [(f["split"], f["label"], int(Path(f["path"]).stem)) for f in m["files"]]
    assert got == expected
    for f in m["files"]:
        assert f["path"] == f"{f['split']}/{V.CLASSES[f['label']].replace(' ', '_')}/{Path(f['path']).stem}.mp4"
    # bytes and sha256 recomputed from the files
    h = hashlib.sha256()
    total = 0
    for f in m["files"]:
        data = (root / f["path"]).read_bytes()
        h.update(f["path"].encode())
        h.update(data)
        total += len(data)
    assert m["bytes"] == total and m["sha256"] == h.hexdigest()
    assert not list(root.rglob("*.tmp"))


def test_files_are_real_mp4(small):
    root, m = small
    path = root / m["files"][0]["path"]
    head = path.read_bytes()[:12]
    assert head[4:8] == b"ftyp"
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name in ("h264", "mpeg4")
        assert (s.codec_context.width, s.codec_context.height) == (64, 64)
        assert s.average_rate == 8
        assert sum(1 for _ in c.decode(video=0)) == 8


def test_decoded_shapes_dtypes_ranges(small_loaded):
    samples, labels, split = small_loaded
    n = (TRAIN + TEST) * len(V.CLASSES)
    assert len(samples) == n and labels.shape == (n,) and split.shape == (n,)
    assert labels.dtype == np.int64 and split.dtype == np.int8
    for x in samples:
        assert isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.shape == (8, 64, 64, 3)
        assert int(x.max()) - int(x.min()) > 40  # a real scene, not a blank frame
        # something moves between the first and last frame
        assert np.abs(x[-1].astype(int) - x[0].astype(int)).mean() > 0.5
    assert set(np.unique(split)) == {0, 1}


def test_class_balance_and_split_counts(small_loaded):
    _, labels, split = small_loaded
    n_cls = len(V.CLASSES)
    assert (split == 0).sum() == TRAIN * n_cls and (split == 1).sum() == TEST * n_cls
    assert np.bincount(labels[split == 0], minlength=n_cls).tolist() == [TRAIN] * n_cls
    assert np.bincount(labels[split == 1], minlength=n_cls).tolist() == [TEST] * n_cls


def test_train_and_test_objects_are_disjoint(small):
    _, m = small
    objs = {"train": set(), "test": set()}
    for f in m["files"]:
        si = 0 if f["split"] == "train" else 1
        objs[f["split"]].add(V._object_for(0, si, f["label"], int(Path(f["path"]).stem)))
    assert objs["train"] <= set(V.TRAIN_OBJECTS) and objs["test"] <= set(V.TEST_OBJECTS)
    assert not objs["train"] & objs["test"]


def test_determinism_same_seed_parallel_and_other_seed(small, small_loaded, tmp_path):
    root, m = small
    # same seed, rendered by 2 worker processes instead of in-process: byte-identical files
    m2 = V.generate(tmp_path / "again", seed=0, train_per_class=TRAIN, test_per_class=TEST, workers=2)
    assert m2["sha256"] == m["sha256"] and m2["bytes"] == m["bytes"]
    s2, l2, sp2 = V.load(tmp_path / "again")
    s1, l1, sp1 = small_loaded
    assert all(np.array_equal(a, b) for a, b in zip(s1, s2))
    assert np.array_equal(l1, l2) and np.array_equal(sp1, sp2)
    m3 = V.generate(tmp_path / "other", seed=1, train_per_class=TRAIN, test_per_class=TEST, workers=1)
    assert m3["sha256"] != m["sha256"]


def test_encoding_ignores_input_memory_layout():
    """libswscale/x264 paths can depend on buffer alignment; the MP4 bytes must not."""
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, size=(8, 64, 64, 3), dtype=np.uint8)
    outs = set()
    for off in range(4):
        frames = []
        for f in clip:
            buf = np.empty(f.size + 16, np.uint8)[off:off + f.size].reshape(f.shape)
            buf[...] = f
            frames.append(buf)
        outs.add(V.encode_mp4(frames))
    assert len(outs) == 1


def test_colour_conversion_roundtrip():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    rgb = rgb.reshape(32, 2, 32, 2, 3)[:, :1, :, :1].repeat(2, 1).repeat(2, 3).reshape(64, 64, 3)  # flat 2x2
    back = V.yuv420p_to_rgb(V.rgb_to_yuv420p(rgb))
    assert back.dtype == np.uint8 and back.shape == rgb.shape
    assert np.abs(back.astype(int) - rgb.astype(int)).mean() < 3.0


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_corrupt_truncated_and_wrong_length_files_raise(small, tmp_path):
    root, m = small
    files = [f["path"] for f in m["files"]]
    # garbage bytes
    r1 = _copy(root, tmp_path / "garbage")
    (r1 / files[3]).write_bytes(b"this is not an mp4 file" * 50)
    with pytest.raises(ValueError, match=re.escape(str(r1 / files[3]))):
        V.load(r1)
    # truncated
    r2 = _copy(root, tmp_path / "trunc")
    data = (r2 / files[-1]).read_bytes()
    (r2 / files[-1]).write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=re.escape(str(r2 / files[-1]))):
        V.load(r2)
    # empty file
    r3 = _copy(root, tmp_path / "empty")
    (r3 / files[0]).write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(str(r3 / files[0]))):
        V.load(r3)
    # a valid MP4 with the wrong number of frames
    r4 = _copy(root, tmp_path / "short")
    five = V.encode_mp4(np.zeros((5, 64, 64, 3), np.uint8))
    (r4 / files[1]).write_bytes(five)
    with pytest.raises(ValueError, match=re.escape(str(r4 / files[1])) + ".*expected 8 frames"):
        V.load(r4)


def test_missing_manifest(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        V.load(tmp_path)


def test_crash_leaves_no_manifest(small, tmp_path, monkeypatch):
    root, _ = small
    r = _copy(root, tmp_path / "crash")
    assert (r / "manifest.json").exists()
    calls = {"n": 0}
    real = V.encode_mp4

    def failing(frames):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("simulated crash")
        return real(frames)

    monkeypatch.setattr(V, "encode_mp4", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        V.generate(r, seed=5, train_per_class=TRAIN, test_per_class=TEST, workers=1)
    assert not (r / "manifest.json").exists()
    with pytest.raises(FileNotFoundError):
        V.load(r)


# ------------------------------------------------------------------ the label needs more than one frame
def _affine_flow_features(clip: np.ndarray) -> np.ndarray:
    """Global affine optical flow (Lucas-Kanade over the whole image) between consecutive frames:
    per pair (translation x, translation y, divergence, curl, two shears), plus their sum over the clip."""
    from scipy.ndimage import gaussian_filter

    g = clip.astype(np.float64).mean(-1) / 255.0
    g = np.stack([gaussian_filter(f, 1.0) for f in g])
    n = g.shape[-1]
    c = (np.arange(n) - (n - 1) / 2) / (n / 2)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    out = []
    for a, b in zip(g[:-1], g[1:]):
        gy, gx = np.gradient((a + b) / 2)
        A = np.stack([gx, gx * xx, gx * yy, gy, gy * xx, gy * yy], -1).reshape(-1, 6)
        a0, a1, a2, b0, b1, b2 = np.linalg.solve(A.T @ A + 1e-6 * np.eye(6), -A.T @ (b - a).ravel())
        out.append([a0, b0, a1 + b2, b1 - a2, a1 - b2, a2 + b1])
    out = np.asarray(out)
    return np.concatenate([out.ravel(), out.sum(0)])


def _accuracy(features: np.ndarray, labels: np.ndarray, split: np.ndarray, C: float) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f = features.reshape(len(features), -1)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=C))
    model.fit(f[split == 0], labels[split == 0])
    return float(model.score(f[split == 1], labels[split == 1]))


def test_label_cannot_be_read_from_one_frame_but_from_motion(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("scipy")
    V.generate(tmp_path / "cls", seed=0, train_per_class=30, test_per_class=15)
    samples, labels, split = V.load(tmp_path / "cls")
    x = np.stack(samples)
    chance = 1.0 / len(V.CLASSES)

    def pixels(frames):  # downsampled 16x16 RGB pixels of one frame
        return frames.astype(np.float32).reshape(len(frames), 16, 4, 16, 4, 3).mean((2, 4)) / 255.0

    acc_first = _accuracy(pixels(x[:, 0]), labels, split, C=0.1)
    acc_middle = _accuracy(pixels(x[:, 3]), labels, split, C=0.1)
    acc_motion = _accuracy(np.stack([_affine_flow_features(c) for c in x]), labels, split, C=1.0)
    print(f"one frame (first) {acc_first:.3f}, one frame (middle) {acc_middle:.3f}, motion {acc_motion:.3f}")
    assert acc_first < chance + 0.15
    assert acc_middle < chance + 0.15
    assert acc_motion > chance + 0.25
