"""mm5 depth modality: metric depth maps of real 3-D object models, rendered with pybullet.

What the data is. Each sample is a 64x64 depth map (what a depth camera such as a Kinect or a
RealSense sees) of one object, taken from a random viewpoint. The objects are real (artist-made) 3-D
models shipped with the PyPI package `pybullet_data` (part of pybullet, zlib licence): a duck, a teddy
bear, a soccer ball, a cube, the R2-D2 robot, a table, a lego brick, a tray, a race car and a mug. The
label is the object. Nothing is downloaded: the meshes come with the installed package.

What is synthetic, and why. The depth maps are rendered, not captured: pybullet's CPU software
renderer (``ER_TINY_RENDERER``) draws the mesh with a pinhole camera (45 degree field of view, near
plane 0.1 m, far plane 4 m) and its z-buffer is converted to metric depth with
``depth = far * near / (far - (far - near) * z)``. Rendering gives exact labels, byte-identical files
for a seed and no capture hardware; the shapes themselves are real models. Per sample, a seeded draw
picks the object's size (longest side 0.2-0.5 m; every model is first normalised so that size is
not a class cue), its pose (any yaw, up to 8 degrees of tilt, a small offset from the optical axis)
and the viewpoint (any azimuth, an elevation band, a distance of 0.95-1.3 times the one at which the
object's bounding sphere just fills the view, so it is seldom cropped; up to 10 degrees of camera
roll). There is no ground plane or clutter: the object is alone.
A uniform scale of the scene by ``s`` with the camera distance multiplied by ``s`` gives exactly ``s``
times the depth, so object size is applied that way instead of reloading the mesh.

Train / test split. Train and test draw from independent random streams (derived seeds) and differ
in viewpoint: train views look down from an elevation of 5-40 degrees, test views from a held-out
band of 40-60 degrees (more top-down). Everything else (sizes, poses, roll, distance) follows the
same distributions.

File format and decoded sample. One 16-bit greyscale PNG per sample, values are depth in
millimetres (uint16); 0 means "no surface" (background: the ray hit nothing before the far plane),
as on real depth sensors. ``load`` decodes each file with Pillow into a float32 array of shape
(64, 64) in metres, 0.0 for background, object pixels in [NEAR_M, FAR_M].
``depth_to_image`` turns such a map into a uint8 picture for a frozen image encoder.
"""
from __future__ import annotations

import io
import math
import struct
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mmcl.data.mm5.common import begin, finish_manifest, read_manifest, sample_path
from mmcl.results import atomic_write_bytes

MODALITY = "depth"
VERSION = "1"
CLASSES = ["duck", "teddy bear", "soccer ball", "cube", "robot", "table", "lego brick", "tray",
           "race car", "mug"]

RESOLUTION = 64          # pixels, square
NEAR_M = 0.1             # camera near plane (m)
FAR_M = 4.0              # camera far plane (m)
FOV_DEG = 45.0           # vertical (= horizontal) field of view
BACKGROUND = 0           # stored / decoded value of pixels where no surface was hit

# pybullet_data model and the rotation (roll, pitch, yaw in radians) that stands it upright (z up)
_MODELS = {
    "duck": ("duck_vhacd.urdf", (math.pi / 2, 0.0, 0.0)),
    "teddy bear": ("teddy_vhacd.urdf", (math.pi / 2, 0.0, 0.0)),
    "soccer ball": ("soccerball.urdf", (0.0, 0.0, 0.0)),
    "cube": ("cube.urdf", (0.0, 0.0, 0.0)),
    "robot": ("r2d2.urdf", (0.0, 0.0, 0.0)),
    "table": ("table/table.urdf", (0.0, 0.0, 0.0)),
    "lego brick": ("lego/lego.urdf", (0.0, 0.0, 0.0)),
    "tray": ("tray/traybox.urdf", (0.0, 0.0, 0.0)),
    "race car": ("racecar/racecar.urdf", (0.0, 0.0, 0.0)),
    "mug": ("objects/mug.urdf", (0.0, 0.0, 0.0)),
}

# sampling ranges
_SIZE_M = (0.2, 0.5)                      # longest side of the object
_TILT_DEG = 8.0                           # max object tilt about x and y
_OFFSET = 0.08                            # max target offset, as a fraction of the object's size
_ELEV_DEG = {"train": (5.0, 40.0), "test": (40.0, 60.0)}
_MARGIN = (0.95, 1.3)                     # camera distance / distance at which the bounding sphere just fits
_ROLL_DEG = 10.0

_SPLITS = ("train", "test")
_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _rel_path(split: str, label: int, index: int) -> str:
    return sample_path(split, CLASSES[label], index, "png")


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------

class _Renderer:
    """One pybullet DIRECT client holding one object at a time."""

    def __init__(self):
        import pybullet as p
        import pybullet_data

        self.p = p
        self.cid = p.connect(p.DIRECT)
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=self.cid)
        self.body = None

    def close(self):
        if self.cid is not None:
            self.p.disconnect(physicsClientId=self.cid)
            self.cid = None

    def load(self, name: str):
        p = self.p
        if self.body is not None:
            p.removeBody(self.body, physicsClientId=self.cid)
        urdf, rpy = _MODELS[name]
        self.base_q = p.getQuaternionFromEuler(rpy)
        self.body = p.loadURDF(urdf, [0, 0, 0], self.base_q, useFixedBase=True, physicsClientId=self.cid)
        self.lo, self.hi = self._visual_bounds()
        # pybullet poses a body by its base's centre-of-mass frame: remember it in the calibration pose
        com_pos, com_q = p.getBasePositionAndOrientation(self.body, physicsClientId=self.cid)
        self.com_pos, self.com_q = np.asarray(com_pos, dtype=np.float64), com_q

    def _render(self, target, dist, yaw, pitch, roll, near, far, size=RESOLUTION):
        """Depth (in the simulation's units; 0 where no surface) and object mask."""
        p = self.p
        view = p.computeViewMatrixFromYawPitchRoll(list(map(float, target)), float(dist), float(yaw), float(pitch),
                                                   float(roll), 2, physicsClientId=self.cid)
        proj = p.computeProjectionMatrixFOV(FOV_DEG, 1.0, float(near), float(far), physicsClientId=self.cid)
        _, _, _, z, seg = p.getCameraImage(size, size, view, proj, renderer=p.ER_TINY_RENDERER,
                                           physicsClientId=self.cid)
        z = np.asarray(z, dtype=np.float64).reshape(size, size)
        seg = np.asarray(seg).reshape(size, size)
        mask = (seg == self.body) & (z < 1.0)
        depth = far * near / (far - (far - near) * z)
        depth[~mask] = 0.0
        return depth, mask, np.asarray(view, dtype=np.float64).reshape(4, 4).T

    def _visual_bounds(self):
        """Axis-aligned box of the visible mesh (collision shapes differ from the visuals), found by
        back-projecting object pixels of 24 views at a generous distance."""
        p = self.p
        lo = np.full(3, np.inf)
        hi = np.full(3, -np.inf)
        nb = p.getNumJoints(self.body, physicsClientId=self.cid)
        for link in range(-1, nb):
            a, b = p.getAABB(self.body, link, physicsClientId=self.cid)
            lo, hi = np.minimum(lo, a), np.maximum(hi, b)
        centre, radius = (lo + hi) / 2, float(np.linalg.norm(hi - lo)) / 2
        dist = 1.6 * radius / math.sin(math.radians(FOV_DEG / 2))
        n = 96
        t = math.tan(math.radians(FOV_DEG / 2))
        pts = []
        for yaw in range(0, 360, 60):
            for pitch in (-70, -25, 25, 70):
                d, m, view = self._render(centre, dist, yaw, pitch, 0, dist / 50, dist * 4, size=n)
                v, u = np.nonzero(m)
                dd = d[m]
                x = (2 * (u + 0.5) / n - 1) * dd * t
                y = (1 - 2 * (v + 0.5) / n) * dd * t
                eye = np.stack([x, y, -dd, np.ones_like(dd)])
                pts.append((np.linalg.inv(view) @ eye)[:3].T)
        pts = np.concatenate(pts)
        if len(pts) == 0:
            raise RuntimeError(f"pybullet rendered nothing for {self.body}")
        return pts.min(0), pts.max(0)

    def sample(self, rng: np.random.Generator, split: str) -> np.ndarray:
        """One depth map in metres, float64 (RESOLUTION, RESOLUTION), 0 = background."""
        p = self.p
        dims = self.hi - self.lo
        centre = (self.lo + self.hi) / 2
        size_sim = float(dims.max())
        size_m = rng.uniform(*_SIZE_M)
        f = size_m / size_sim                      # metres per simulation unit
        # object pose: yaw + small tilt, rotating about the centre of its visual box
        yaw = rng.uniform(0, 2 * math.pi)
        tilt = np.radians(rng.uniform(-_TILT_DEG, _TILT_DEG, size=2))
        q_pose = p.getQuaternionFromEuler([float(tilt[0]), float(tilt[1]), yaw])
        rot = np.asarray(p.getMatrixFromQuaternion(q_pose)).reshape(3, 3)
        # every point x of the upright (calibration) pose moves to rot @ (x - centre)
        pos = rot @ (self.com_pos - centre)
        q = p.multiplyTransforms([0, 0, 0], q_pose, [0, 0, 0], self.com_q)[1]
        p.resetBasePositionAndOrientation(self.body, pos.tolist(), q, physicsClientId=self.cid)
        # camera
        radius_sim = float(np.linalg.norm(dims)) / 2
        target = rng.uniform(-_OFFSET, _OFFSET, size=3) * size_sim
        azim = rng.uniform(0, 360)
        elev = rng.uniform(*_ELEV_DEG[split])
        roll = rng.uniform(-_ROLL_DEG, _ROLL_DEG)
        margin = rng.uniform(*_MARGIN)
        dist_sim = margin * radius_sim / math.sin(math.radians(FOV_DEG / 2))
        depth, _, _ = self._render(target, dist_sim, azim, -elev, roll, NEAR_M / f, FAR_M / f)
        return depth * f


def _rng(seed: int, split: str, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLITS.index(split), int(label), int(index)])


def _encode_png(depth_m: np.ndarray) -> bytes:
    mm = np.rint(depth_m * 1000.0)
    mm = np.clip(mm, 0, 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(mm).save(buf, format="PNG")  # uint16 -> mode 'I;16'
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------

def generate(root: Path, seed: int = 0, train_per_class: int = 100, test_per_class: int = 50) -> dict:
    """Write all sample files under `root` plus `root/manifest.json`; return the manifest dict."""
    t0 = time.perf_counter()
    root = Path(root)
    if train_per_class < 0 or test_per_class < 0:
        raise ValueError("train_per_class and test_per_class must be >= 0")
    begin(root)
    counts = {"train": train_per_class, "test": test_per_class}
    r = _Renderer()
    try:
        for label, name in enumerate(CLASSES):   # one mesh load per class
            r.load(name)
            for split in _SPLITS:
                for i in range(counts[split]):
                    depth = r.sample(_rng(seed, split, label, i), split)
                    atomic_write_bytes(root / _rel_path(split, label, i), _encode_png(depth))
    finally:
        r.close()
    files = [{"path": _rel_path(split, label, i), "label": label, "split": split}
             for split in _SPLITS for label in range(len(CLASSES)) for i in range(counts[split])]
    notes = (
        "Real 3-D object models shipped with pybullet_data (duck, teddy bear, soccer ball, cube, R2-D2 robot, "
        "table, lego brick, tray, race car, mug), labelled by object; the depth maps are synthetic: rendered with "
        f"pybullet's CPU TinyRenderer ({RESOLUTION}x{RESOLUTION}, {FOV_DEG:g} deg FOV, near {NEAR_M} m, far {FAR_M} m, "
        "z-buffer converted to metric depth) because rendering gives exact labels and reproducible files without "
        "capture hardware. Each sample has a seeded random object size (longest side 0.2-0.5 m after normalising "
        "every model, so size is no class cue), pose (any yaw, <=8 deg tilt) and viewpoint (any azimuth, distance "
        "0.95-1.3x the distance that just frames its bounding sphere, <=10 deg camera roll); no ground plane. Files are 16-bit PNG in "
        "millimetres with 0 = background (no surface before the far plane). Train and test use independent "
        "derived seeds and a held-out viewpoint band: train elevations 5-40 deg, test elevations 40-60 deg "
        "(more top-down views never seen in training)."
    )
    return finish_manifest(root, MODALITY, VERSION, int(seed), list(CLASSES), int(train_per_class),
                           int(test_per_class), files, time.perf_counter() - t0, notes)


def _decode(path: Path) -> np.ndarray:
    """16-bit PNG (millimetres) -> float32 metres, shape (RESOLUTION, RESOLUTION)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(26)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: sample file listed in the manifest is missing") from None
    if len(head) < 26 or head[:8] != _PNG_SIG or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: cannot decode PNG (not a PNG file or truncated header)")
    width, height = struct.unpack(">II", head[16:24])
    bit_depth, colour_type = head[24], head[25]
    if bit_depth != 16 or colour_type != 0:
        raise ValueError(f"{path}: expected a 16-bit greyscale PNG (depth in mm), "
                         f"got bit depth {bit_depth}, colour type {colour_type}")
    if (height, width) != (RESOLUTION, RESOLUTION):
        raise ValueError(f"{path}: expected shape ({RESOLUTION}, {RESOLUTION}), got ({height}, {width})")
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.array(im)
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt files
        raise ValueError(f"{path}: cannot decode PNG ({type(e).__name__}: {e})") from None
    if mode not in ("I;16", "I;16B", "I;16L", "I") or arr.shape != (RESOLUTION, RESOLUTION):
        raise ValueError(f"{path}: expected a 16-bit {RESOLUTION}x{RESOLUTION} depth PNG, "
                         f"got mode {mode} shape {arr.shape}")
    arr = arr.astype(np.int64)
    valid = arr != BACKGROUND
    if valid.any() and (arr[valid].min() < round(NEAR_M * 1000) or arr[valid].max() > round(FAR_M * 1000)):
        raise ValueError(f"{path}: expected depth 0 (background) or within {NEAR_M}-{FAR_M} m, "
                         f"got {arr[valid].min()}-{arr[valid].max()} mm")
    return (arr.astype(np.float32) / np.float32(1000.0))


def load(root: Path) -> tuple[list, np.ndarray, np.ndarray]:
    """Decode every file listed in root/manifest.json, in manifest order.
    Returns (samples, labels: int64 array, split: int8 array with 0 = train, 1 = test).
    Each sample is a float32 (64, 64) depth map in metres, 0.0 = background."""
    root = Path(root)
    man = read_manifest(root, MODALITY)
    samples, labels, split = [], [], []
    for f in man["files"]:
        samples.append(_decode(root / f["path"]))
        labels.append(int(f["label"]))
        split.append(0 if f["split"] == "train" else 1)
    return samples, np.asarray(labels, dtype=np.int64), np.asarray(split, dtype=np.int8)


def depth_to_image(depth: np.ndarray) -> np.ndarray:
    """Depth map(s) in metres -> uint8 picture(s) of the same shape for a frozen image encoder.

    Near = bright, background (0 / non-finite) = 0. Normalised per sample over that sample's valid
    pixels: the nearest object pixel maps to 255, the farthest to 48 (so the object never merges
    with the background). Accepts (H, W) or a batch (..., H, W); normalisation is per (H, W) map.
    """
    d = np.asarray(depth, dtype=np.float64)
    if d.ndim < 2:
        raise ValueError(f"depth_to_image expects (H, W) or (..., H, W), got shape {d.shape}")
    valid = np.isfinite(d) & (d > 0)
    big = np.where(valid, d, np.inf)
    small = np.where(valid, d, -np.inf)
    dmin = big.min(axis=(-2, -1), keepdims=True)
    dmax = small.max(axis=(-2, -1), keepdims=True)
    span = dmax - dmin
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(span > 0, (np.where(valid, d, 0.0) - dmin) / np.where(span > 0, span, 1.0), 0.0)
    img = 255.0 - t * (255.0 - 48.0)
    out = np.where(valid, np.rint(img), 0.0)
    return out.astype(np.uint8)
