"""mm5 video modality: 8-frame clips of real 3-D objects, labelled by their MOTION.

What the data is
    Each sample is a short clip (exactly 8 frames, 64x64 RGB, 8 fps) of one 3-D object floating above a
    textured ground plane, rendered with pybullet's software TinyRenderer and stored as a real MP4 file
    (H.264 / libx264 when the PyAV wheel has it, else MPEG-4 part 2; yuv420p). The label is what the object
    DOES, not what it is: one of ``CLASSES`` (moving left/right/up/down in the image, coming closer /
    moving away from the camera, turning clockwise / counterclockwise in the image plane).

What is real and what is synthetic, and why
    The objects are real meshes and robot models that ship in ``pybullet_data`` (duck, teddy bear, soccer
    ball, R2-D2, Lego brick, racecar, Husky, Minitaur, mug, tables, bicycle, ... and procedurally made
    "random_urdfs" blobs), the ground textures are real image files from the same package, and the frames
    are a real perspective rendering with directional lighting and shading, encoded and decoded with a real
    video codec (so codec artefacts are real too). The motion is synthetic: it is drawn from a seeded
    random generator, because the machine has no network and no video data set may be downloaded; a
    generator is also the only way to control that the label is carried by motion alone. Object identity,
    colour, size (scale), start position, speed, lighting, ground texture/tint, camera pose (per clip)
    and camera shake (per frame) are all random per clip. Positions are chosen so that the centre of a
    trajectory is uniform over the frame and sizes vary independently of depth, so ONE FRAME DOES NOT
    REVEAL THE LABEL: left/right/up/down need two frames, closer/away need the change in size, and the
    turning direction needs the change in orientation.

How the split works
    Train and test use DISJOINT object sets (``TRAIN_OBJECTS`` / ``TEST_OBJECTS``): the test clips show
    objects never seen in training (teddy bear, soccer ball, mug, square table, Husky robot, Aliengo
    robot, KUKA arm and blobs 030-044), so a model must recognise the motion of unseen objects. Motion,
    camera and background distributions are the same for both splits. Each clip is seeded from
    (seed, split, class, index), so every file is reproducible on its own.

Decoded sample format
    ``load`` returns, per clip, a ``numpy.uint8`` array of shape (8, 64, 64, 3) (frames, height, width,
    RGB), values 0..255. Colour conversion (RGB <-> yuv420p, BT.601 limited range) is done in numpy with
    integer arithmetic on both sides, and x264 runs single-threaded with macroblock-tree rate control off
    (x264's mbtree made the bytes vary between processes on 8-frame clips), so the same seed gives
    byte-identical files for any number of worker processes.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import math
import multiprocessing
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

MODALITY = "video"
VERSION = "1"
CLASSES: list[str] = [
    "moving left",
    "moving right",
    "moving up",
    "moving down",
    "coming closer",
    "moving away",
    "turning clockwise",
    "turning counterclockwise",
]

FRAMES = 8
SIZE = 64
FPS = 8
EXT = "mp4"

# Held-out objects: the test split uses only TEST_OBJECTS, the train split only TRAIN_OBJECTS.
TRAIN_OBJECTS: list[str] = [
    "duck_vhacd.urdf",
    "r2d2.urdf",
    "lego/lego.urdf",
    "jenga/jenga.urdf",
    "cube.urdf",
    "table/table.urdf",
    "racecar/racecar.urdf",
    "quadruped/minitaur.urdf",
    "bicycle/bike.urdf",
    "tray/traybox.urdf",
    "xarm/xarm6_robot.urdf",
] + [f"random_urdfs/{i:03d}/{i:03d}.urdf" for i in range(0, 30)]
TEST_OBJECTS: list[str] = [
    "teddy_vhacd.urdf",
    "soccerball.urdf",
    "objects/mug.urdf",
    "table_square/table_square.urdf",
    "husky/husky.urdf",
    "aliengo/aliengo.urdf",
    "kuka_iiwa/model.urdf",
] + [f"random_urdfs/{i:03d}/{i:03d}.urdf" for i in range(30, 45)]

# (texture file in pybullet_data, how many times it repeats across the surface)
GROUND_TEXTURES: list[tuple[str, float]] = [
    ("checker_blue.png", 16.0),
    ("tex256.png", 10.0),
    ("table/table.png", 8.0),
    ("roboschool/models_outdoor/stadium/stadium_grass.jpg", 10.0),
    ("heightmaps/wm_height_out.png", 6.0),
    ("heightmaps/gimp_overlay_out.png", 8.0),
    ("jenga/jenga.png", 8.0),
    ("checker_grid.jpg", 12.0),
]
BACKDROP_TEXTURES: list[tuple[str, float]] = [
    ("heightmaps/wm_height_out.png", 2.0),
    ("uvmap.png", 3.0),
    ("tray/tray.jpg", 2.0),
    ("roboschool/models_outdoor/stadium/stadium_grass.jpg", 3.0),
    ("heightmaps/gimp_overlay_out.png", 3.0),
    ("table/table.png", 2.0),
    ("checker_blue.png", 6.0),
]

_FOV = 50.0  # vertical field of view, degrees (aspect 1)
_TAN = math.tan(math.radians(_FOV / 2))
_CAM_HEIGHT = 3.3  # high enough that no trajectory reaches the ground (see _sample_clip bounds)
_SPLITS = ("train", "test")
_PARKED = [0.0, 0.0, -5000.0]  # where unused ground/backdrop bodies wait (beyond the far plane)


def slug(name: str) -> str:
    return name.replace(" ", "_")


@contextlib.contextmanager
def _quiet():
    """Silence pybullet's C-level prints (build banner, URDF importer warnings) on fds 1 and 2."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = (os.dup(1), os.dup(2))
    except (OSError, ValueError):  # pragma: no cover - no real fds (unusual embedding)
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        try:
            ctypes.CDLL(None).fflush(None)  # push out C stdio buffers while they still go to /dev/null
        except Exception:  # pragma: no cover
            pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _codec() -> str:
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


# ----------------------------------------------------------------------------------------- rendering
class _Scene:
    """One pybullet DIRECT client with the ground plane and textures loaded once."""

    def __init__(self):
        with _quiet():
            import pybullet as p
            import pybullet_data

            self.p = p
            self.cid = p.connect(p.DIRECT)
        self.data = Path(pybullet_data.getDataPath())
        p.setAdditionalSearchPath(str(self.data), physicsClientId=self.cid)
        # one textured ground and one backdrop body per texture (the UV repeat is part of the mesh);
        # the ones not in use wait far out of view
        self.grounds = [self._surface(t, rep, ground=True) for t, rep in GROUND_TEXTURES]
        self.backdrops = [self._surface(t, rep, ground=False) for t, rep in BACKDROP_TEXTURES]
        for b in self.grounds + self.backdrops:
            p.resetBasePositionAndOrientation(b, _PARKED, [0, 0, 0, 1], physicsClientId=self.cid)
        self.proj = p.computeProjectionMatrixFOV(_FOV, 1.0, 0.05, 90.0, physicsClientId=self.cid)
        self._geom: dict[str, tuple[np.ndarray, float]] = {}

    def _surface(self, texture: str, repeat: float, ground: bool) -> int:
        """A square mesh (ground: 100 m x 100 m at z=0; backdrop: 160 m x 80 m vertical wall), subdivided
        so that the renderer's per-triangle texture interpolation stays close to perspective-correct."""
        p, n = self.p, 12
        verts, uvs, idx = [], [], []
        for i in range(n + 1):
            for j in range(n + 1):
                u, v = i / n, j / n
                if ground:
                    verts.append([(u - 0.5) * 100.0, (v - 0.5) * 100.0, 0.0])
                else:
                    verts.append([(u - 0.5) * 160.0, 0.0, (v - 0.25) * 80.0])
                uvs.append([u * repeat, v * repeat])
        for i in range(n):
            for j in range(n):
                a, b, c, d = i * (n + 1) + j, (i + 1) * (n + 1) + j, (i + 1) * (n + 1) + j + 1, i * (n + 1) + j + 1
                idx += [a, b, c, a, c, d]
        normal = [0.0, 0.0, 1.0] if ground else [0.0, -1.0, 0.0]
        vs = p.createVisualShape(p.GEOM_MESH, vertices=verts, indices=idx, uvs=uvs,
                                 normals=[normal] * len(verts), physicsClientId=self.cid)
        body = p.createMultiBody(baseMass=0, baseVisualShapeIndex=vs, physicsClientId=self.cid)
        tex = p.loadTexture(str(self.data / texture), physicsClientId=self.cid)
        p.changeVisualShape(body, -1, textureUniqueId=tex, physicsClientId=self.cid)
        return body

    def close(self):
        try:
            self.p.disconnect(physicsClientId=self.cid)
        except Exception:  # pragma: no cover - already gone
            pass

    def _aabb(self, body: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        n = p.getNumJoints(body, physicsClientId=self.cid)
        boxes = [p.getAABB(body, j, physicsClientId=self.cid) for j in range(-1, n)]
        lo = np.min([b[0] for b in boxes], axis=0)
        hi = np.max([b[1] for b in boxes], axis=0)
        return lo, hi

    def geometry(self, urdf: str) -> tuple[np.ndarray, float]:
        """(centre offset of the AABB from the base at scale 1, nominal size) of an object, cached."""
        if urdf not in self._geom:
            p = self.p
            with _quiet():
                b = p.loadURDF(urdf, [0, 0, 0], [0, 0, 0, 1], physicsClientId=self.cid)
            lo, hi = self._aabb(b)
            p.removeBody(b, physicsClientId=self.cid)
            ext = np.sort(hi - lo)
            # mean of the two largest extents: thin objects (domino-like) are not shrunk to a line
            self._geom[urdf] = ((lo + hi) / 2.0, float((ext[1] + ext[2]) / 2.0))
        return self._geom[urdf]

    def render_clip(self, urdf: str, params: dict) -> np.ndarray:
        p, cid = self.p, self.cid
        offset, nominal = self.geometry(urdf)
        g = params["size"] / nominal
        with _quiet():
            body = p.loadURDF(urdf, [0, 0, 10], [0, 0, 0, 1], globalScaling=g, physicsClientId=cid)
        try:
            for link in range(-1, p.getNumJoints(body, physicsClientId=cid)):
                p.changeVisualShape(body, link, rgbaColor=params["color"], physicsClientId=cid)
            ground = self.grounds[params["ground"]]
            backdrop = self.backdrops[params["backdrop"]]
            p.changeVisualShape(ground, -1, rgbaColor=params["ground_tint"], physicsClientId=cid)
            p.changeVisualShape(backdrop, -1, rgbaColor=params["backdrop_tint"], physicsClientId=cid)
            p.resetBasePositionAndOrientation(ground, params["ground_pose"][0], params["ground_pose"][1],
                                              physicsClientId=cid)
            p.resetBasePositionAndOrientation(backdrop, params["backdrop_pose"][0], params["backdrop_pose"][1],
                                              physicsClientId=cid)
            frames = np.empty((FRAMES, SIZE, SIZE, 3), np.uint8)
            for i in range(FRAMES):
                q = params["quats"][i]
                rot = np.array(p.getMatrixFromQuaternion(q)).reshape(3, 3)
                base = params["centres"][i] - rot @ (offset * g)
                p.resetBasePositionAndOrientation(body, base.tolist(), q, physicsClientId=cid)
                eye, fwd, up = params["eye"], params["fwd_shake"][i], params["up_shake"][i]
                view = p.computeViewMatrix(eye.tolist(), (eye + fwd).tolist(), up.tolist(), physicsClientId=cid)
                _, _, rgba, _, _ = p.getCameraImage(
                    SIZE, SIZE, view, self.proj, renderer=p.ER_TINY_RENDERER, shadow=0,
                    lightDirection=params["light"], lightAmbientCoeff=params["ambient"],
                    lightDiffuseCoeff=params["diffuse"], lightSpecularCoeff=0.1,
                    flags=p.ER_NO_SEGMENTATION_MASK, physicsClientId=cid)
                frames[i] = np.asarray(rgba, np.uint8).reshape(SIZE, SIZE, 4)[..., :3]
        finally:
            p.removeBody(body, physicsClientId=cid)
            for b in (self.grounds[params["ground"]], self.backdrops[params["backdrop"]]):
                p.resetBasePositionAndOrientation(b, _PARKED, [0, 0, 0, 1], physicsClientId=cid)
        return frames


# ------------------------------------------------------------------------------------- clip sampling
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _axis_angle_quat(axis: np.ndarray, angle: float) -> np.ndarray:
    a = _unit(axis) * math.sin(angle / 2)
    return np.array([a[0], a[1], a[2], math.cos(angle / 2)])


def _quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # pybullet order (x, y, z, w)
    ax, ay, az, aw = a
    bx, by, bz, bw = b
    return np.array([
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ])


def _camera(yaw: float, pitch: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    fwd = np.array([math.cos(pitch) * math.sin(yaw), math.cos(pitch) * math.cos(yaw), -math.sin(pitch)])
    right = np.array([math.cos(yaw), -math.sin(yaw), 0.0])
    up = np.cross(right, fwd)
    return fwd, right, up


def _sample_clip(rng: np.random.Generator, label: int) -> dict:
    """All random choices of one clip except the object: motion, camera, light, colours."""
    name = CLASSES[label]
    t = np.arange(FRAMES) / (FRAMES - 1) - 0.5  # -0.5 .. 0.5, symmetric about the clip's middle
    # camera pose, fixed per clip, plus a small per-frame shake
    yaw = rng.uniform(-0.35, 0.35)
    pitch = math.radians(rng.uniform(6.0, 16.0))
    eye = np.array([rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0), _CAM_HEIGHT])
    fwd, right, up = _camera(yaw, pitch)
    shake = rng.normal(0.0, math.radians(0.15), size=(FRAMES, 2))
    fwd_s, up_s = [], []
    for dy, dp in shake:
        f, _, u = _camera(yaw + dy, pitch + dp)
        fwd_s.append(f)
        up_s.append(u)
    # where the object is: image coordinates (x, y in [-1, 1], up = +y) and depth along the view axis.
    # The trajectory's centre is uniform over the frame and its centre depth log-uniform, for EVERY class.
    cx, cy = rng.uniform(-0.55, 0.55, size=2)
    cdepth = math.exp(rng.uniform(math.log(2.0), math.log(3.2)))
    xs = np.full(FRAMES, cx)
    ys = np.full(FRAMES, cy)
    depth = np.full(FRAMES, cdepth)
    angles = np.zeros(FRAMES)
    dist = rng.uniform(0.35, 0.6)  # total image displacement (in units of half the frame)
    ratio = rng.uniform(1.45, 1.8)  # total depth ratio for closer/away
    turn = math.radians(rng.uniform(75.0, 135.0))  # total turn for the turning classes
    if name == "moving left":
        xs = cx - dist * t
    elif name == "moving right":
        xs = cx + dist * t
    elif name == "moving up":
        ys = cy + dist * t
    elif name == "moving down":
        ys = cy - dist * t
    elif name == "coming closer":
        depth = cdepth * ratio ** (-t)
    elif name == "moving away":
        depth = cdepth * ratio ** t
    elif name == "turning clockwise":
        # a right-handed turn about the axis pointing AWAY from the viewer looks clockwise to the viewer
        angles = turn * t
    elif name == "turning counterclockwise":
        angles = -turn * t
    else:  # pragma: no cover
        raise AssertionError(name)
    centres = [eye + d * (fwd + x * _TAN * right + y * _TAN * up) for x, y, d in zip(xs, ys, depth)]
    q0 = rng.normal(size=4)
    q0 /= np.linalg.norm(q0)
    quats = [_quat_mul(_axis_angle_quat(fwd, a), q0).tolist() for a in angles]
    # appearance
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.25, 1.0), rng.uniform(0.55, 1.0)
    color = list(_hsv_to_rgb(hue, sat, val)) + [1.0]
    ground_tint = list(_hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.5), rng.uniform(0.6, 1.0))) + [1.0]
    backdrop_tint = list(_hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.6), rng.uniform(0.6, 1.0))) + [1.0]
    gyaw = rng.uniform(0, 2 * math.pi)
    ground_pose = ([rng.uniform(-5, 5), rng.uniform(-5, 5), 0.0], [0.0, 0.0, math.sin(gyaw / 2), math.cos(gyaw / 2)])
    backdrop_pose = ([rng.uniform(-20, 20), rng.uniform(28.0, 40.0), 0.0], [0.0, 0.0, 0.0, 1.0])
    la = rng.uniform(0, 2 * math.pi)
    return {
        "eye": eye,
        "fwd_shake": fwd_s,
        "up_shake": up_s,
        "centres": centres,
        "quats": quats,
        "size": math.exp(rng.uniform(math.log(0.5), math.log(1.1))),  # independent of depth
        "color": color,
        "ground": int(rng.integers(len(GROUND_TEXTURES))),
        "ground_tint": ground_tint,
        "ground_pose": ground_pose,
        "backdrop": int(rng.integers(len(BACKDROP_TEXTURES))),
        "backdrop_tint": backdrop_tint,
        "backdrop_pose": backdrop_pose,
        "light": [math.cos(la), math.sin(la), rng.uniform(1.0, 2.5)],
        "ambient": rng.uniform(0.45, 0.7),
        "diffuse": rng.uniform(0.35, 0.6),
    }


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, w = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    return [(v, w, p), (q, v, p), (p, v, w), (p, q, v), (w, p, v), (v, p, q)][i]


# ----------------------------------------------------------------------------------- encode / decode
def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (H*3/2, W) uint8 planar yuv420p (BT.601, limited range), integer arithmetic.

    Done here rather than by libswscale because swscale's SIMD paths give results that depend on the
    memory alignment of the input array, which would make the MP4 bytes differ from run to run.
    """
    h, w, _ = rgb.shape
    x = rgb.astype(np.int32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    s = x.reshape(h // 2, 2, w // 2, 2, 3).sum(axis=(1, 3))  # 2x2 sums for the chroma planes
    rs, gs, bs = s[..., 0], s[..., 1], s[..., 2]
    u = ((-38 * rs - 74 * gs + 112 * bs + 512) >> 10) + 128
    v = ((112 * rs - 94 * gs - 18 * bs + 512) >> 10) + 128
    out = np.empty((h * 3 // 2, w), np.uint8)
    out[:h] = np.clip(y, 0, 255)
    out[h:h + h // 4] = np.clip(u, 0, 255).reshape(h // 4, w)
    out[h + h // 4:] = np.clip(v, 0, 255).reshape(h // 4, w)
    return out


def yuv420p_to_rgb(yuv: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_yuv420p` (BT.601 limited range, chroma repeated 2x2), integer arithmetic."""
    h = yuv.shape[0] * 2 // 3
    w = yuv.shape[1]
    c = yuv[:h].astype(np.int32) - 16
    d = yuv[h:h + h // 4].reshape(h // 2, w // 2).astype(np.int32) - 128
    e = yuv[h + h // 4:].reshape(h // 2, w // 2).astype(np.int32) - 128
    d = d.repeat(2, 0).repeat(2, 1)
    e = e.repeat(2, 0).repeat(2, 1)
    rgb = np.empty((h, w, 3), np.uint8)
    rgb[..., 0] = np.clip((298 * c + 409 * e + 128) >> 8, 0, 255)
    rgb[..., 1] = np.clip((298 * c - 100 * d - 208 * e + 128) >> 8, 0, 255)
    rgb[..., 2] = np.clip((298 * c + 516 * d + 128) >> 8, 0, 255)
    return rgb


def encode_mp4(frames) -> bytes:
    """Encode 8 uint8 RGB frames (8, 64, 64, 3) as MP4 bytes (reproducible: single-threaded encoder, colour
    conversion in numpy)."""
    import av

    buf = io.BytesIO()
    codec = _codec()
    with av.open(buf, "w", format="mp4") as c:
        if codec == "libx264":
            opts = {"crf": "18", "preset": "medium", "threads": "1",
                    "x264-params": "threads=1:lookahead-threads=1:mbtree=0"}
        else:  # pragma: no cover - only when the wheel lacks libx264
            opts = {"qscale": "2", "threads": "1"}
        s = c.add_stream(codec, rate=FPS, options=opts)
        s.width, s.height, s.pix_fmt = SIZE, SIZE, "yuv420p"
        s.codec_context.thread_count = 1
        s.codec_context.time_base = Fraction(1, FPS)
        for i, f in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(np.asarray(f, np.uint8)), format="yuv420p")
            # explicit timestamps: left unset, x264 sees undefined pts and its rate control varies run to run
            frame.pts = i
            frame.time_base = Fraction(1, FPS)
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return buf.getvalue()


def decode_mp4(path: Path) -> np.ndarray:
    """Decode one clip to uint8 (8, 64, 64, 3); ValueError naming the file if it is not such a clip."""
    import av

    try:
        with av.open(str(path), "r") as c:
            if not c.streams.video:
                raise ValueError("no video stream")
            frames = []
            for f in c.decode(video=0):
                if f.format.name == "yuv420p" and f.width % 2 == 0 and f.height % 2 == 0:
                    frames.append(yuv420p_to_rgb(f.to_ndarray(format="yuv420p")))
                else:  # not written by this module; let libswscale convert it
                    frames.append(f.to_ndarray(format="rgb24"))
    except Exception as e:  # any container/codec failure means a corrupt or truncated file
        raise ValueError(f"{path}: cannot decode MP4 video ({type(e).__name__}: {e}); "
                         f"expected {FRAMES} frames of {SIZE}x{SIZE} RGB") from e
    if len(frames) != FRAMES:
        raise ValueError(f"{path}: expected {FRAMES} frames of {SIZE}x{SIZE} RGB, got {len(frames)} frames")
    for f in frames:
        if f.shape != (SIZE, SIZE, 3):
            raise ValueError(f"{path}: expected {SIZE}x{SIZE} RGB frames, got shape {f.shape}")
    return np.stack(frames).astype(np.uint8, copy=False)


# ------------------------------------------------------------------------------------- public API
def _clip_seed(seed: int, split: int, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, 7, split, label, index])


def _object_for(seed: int, split: int, label: int, index: int) -> str:
    pool = TRAIN_OBJECTS if split == 0 else TEST_OBJECTS
    # a seeded permutation per (split, class): every object appears in every class, as evenly as possible
    perm = np.random.default_rng([seed, 11, split, label]).permutation(len(pool))
    return pool[int(perm[index % len(pool)])]


def render(seed: int, split: int, label: int, index: int, scene: _Scene | None = None) -> np.ndarray:
    """Render one clip (before encoding) as uint8 (8, 64, 64, 3); deterministic in its arguments."""
    own = scene is None
    scene = scene or _Scene()
    try:
        params = _sample_clip(_clip_seed(seed, split, label, index), label)
        return scene.render_clip(_object_for(seed, split, label, index), params)
    finally:
        if own:
            scene.close()


NOTES = (
    "Real: the 3-D objects (meshes and robot models shipped in pybullet_data: duck, teddy bear, soccer "
    "ball, R2-D2, Lego brick, Jenga block, racecar, Husky, Minitaur, Aliengo, xArm, KUKA arm, mug, tables, "
    "bicycle, tray and procedural random_urdfs blobs), the ground textures (image files from the same "
    "package), the perspective rendering with lighting and shading (pybullet TinyRenderer) and the video "
    "codec (each clip is a real 8-frame 64x64 H.264/MPEG-4 MP4 at 8 fps). Synthetic: the motions, which "
    "are drawn from a seeded generator because nothing may be downloaded and because only a generator lets "
    "the label be carried by motion alone; the label is the motion (moving left/right/up/down, coming "
    "closer, moving away, turning clockwise/counterclockwise), while object, colour, size, trajectory "
    "centre (uniform over the frame), depth, speed, lighting, ground texture, camera pose and per-frame "
    "camera shake are random per clip, so a single frame does not reveal the label. Train and test share "
    "the motion, camera and background distributions but use disjoint objects: test holds out the teddy "
    "bear, soccer ball, mug, square table, Husky, Aliengo, KUKA arm and random_urdfs blobs 030-044; "
    "train uses the duck, R2-D2, Lego, Jenga, cube, table, racecar, Minitaur, bicycle, tray, xArm and "
    "blobs 000-029."
)


_WORKER_SCENE: _Scene | None = None


def _clip_bytes(task: tuple[int, int, int, int]) -> bytes:
    """Worker entry point: render and encode one clip (seed, split, label, index) -> MP4 bytes."""
    global _WORKER_SCENE
    if _WORKER_SCENE is None:
        _WORKER_SCENE = _Scene()
    return encode_mp4(render(*task, scene=_WORKER_SCENE))


def generate(root: Path, seed: int = 0, train_per_class: int = 100, test_per_class: int = 50,
             *, workers: int | None = None) -> dict:
    """Write all sample files under `root` plus `root/manifest.json`; return the manifest dict.

    `workers`: rendering processes (None = up to 2 when there are at least 100 clips, else 1). Every clip
    depends only on (seed, split, class, index), so the files are byte-identical for any worker count.
    """
    global _WORKER_SCENE
    t0 = time.time()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    if manifest_path.exists():  # never leave an old manifest next to half-rewritten files
        manifest_path.unlink()
    tasks, files = [], []
    for si, (split, n) in enumerate(zip(_SPLITS, (train_per_class, test_per_class))):
        for label, cname in enumerate(CLASSES):
            (root / split / slug(cname)).mkdir(parents=True, exist_ok=True)
            for index in range(n):
                tasks.append((seed, si, label, index))
                files.append({"path": f"{split}/{slug(cname)}/{index}.{EXT}", "label": label, "split": split})
    if workers is None:
        workers = min(2, os.cpu_count() or 1) if len(tasks) >= 100 else 1
    h = hashlib.sha256()
    total = 0

    def write_all(stream):
        nonlocal total
        for entry, data in zip(files, stream):
            rel = entry["path"]
            tmp = root / (rel + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, root / rel)
            h.update(rel.encode())
            h.update(data)
            total += len(data)

    if workers > 1:
        # spawn: safe even when the caller has torch/OpenMP threads running
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            write_all(pool.imap(_clip_bytes, tasks, chunksize=4))
    else:
        try:
            write_all(_clip_bytes(t) for t in tasks)
        finally:
            if _WORKER_SCENE is not None:
                _WORKER_SCENE.close()
                _WORKER_SCENE = None
    manifest = {
        "modality": MODALITY,
        "version": VERSION,
        "seed": seed,
        "classes": list(CLASSES),
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "files": files,
        "counts": {"train": train_per_class * len(CLASSES), "test": test_per_class * len(CLASSES)},
        "bytes": total,
        "sha256": h.hexdigest(),
        "seconds": round(time.time() - t0, 3),
        "codec": _codec(),
        "frames": FRAMES,
        "size": SIZE,
        "fps": FPS,
        "train_objects": list(TRAIN_OBJECTS),
        "test_objects": list(TEST_OBJECTS),
        "notes": NOTES,
    }
    tmp = root / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, manifest_path)
    return manifest


def load(root: Path) -> tuple[list, np.ndarray, np.ndarray]:
    """Decode every clip listed in root/manifest.json, in manifest order.

    Returns (samples: list of uint8 (8, 64, 64, 3) arrays, labels: int64, split: int8 with 0 = train, 1 = test).
    """
    root = Path(root)
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"{mpath}: manifest not found (run generate() first)")
    manifest = json.loads(mpath.read_text())
    samples, labels, split = [], [], []
    for entry in manifest["files"]:
        samples.append(decode_mp4(root / entry["path"]))
        labels.append(int(entry["label"]))
        split.append(0 if entry["split"] == "train" else 1)
    return samples, np.asarray(labels, np.int64), np.asarray(split, np.int8)
