"""The 3-D scenes of msvqa-mini: per-scenario cameras, objects, grounds and optics, rendered with pybullet.

One pybullet DIRECT client per scenario renders with the CPU TinyRenderer. Objects are meshes shipped
in ``pybullet_data`` (duck, teddy bear, soccer ball, mug, traffic cone, race car, procedurally made
blobs used as rocks and clutter) and compounds of primitives (airplanes, fish, people, buses, ...)
built with ``createVisualShapeArray``; each object is one body, so the renderer's segmentation mask
gives its exact visible pixels and box. ``render_scene`` draws one seeded scene and returns the
picture, the segmentation mask and the visible objects; everything random is drawn from the
``numpy.random.Generator`` it is given, so a scene is a pure function of its seed.

Why each scenario looks the way it does:

- ``high-altitude``: nadir camera 170-260 m up with a narrow field of view (almost orthographic);
  aircraft, vehicles and storage tanks of real-world size are a few to a few tens of pixels; ground
  textures look like terrain, fields or street grids; a thin atmospheric haze.
- ``underwater``: oblique camera 1.5-3.5 m over a sandy floor; the picture is then passed through
  the simplified image-formation model of Akkaynak & Treibitz (2018):
  ``I_c = J_c exp(-b_c d) + B_c (1 - exp(-b_c d))`` with per-channel attenuation ``b_c`` (red
  attenuates 4-10x faster than green and blue), range ``d`` from the depth buffer, a blue-green
  veiling light ``B``, sunlight already dimmed by the water column above (``exp(-K_c z)``),
  caustics (a projected interference pattern of surface waves, brighter on nearer surfaces),
  forward-scattering blur, auto exposure, marine snow and sensor noise. Open water (no surface
  hit) is the veiling light itself.
- ``low-altitude``: drone view 12-28 m up looking down 35-60 degrees with perspective; cars, buses,
  trucks, bicycles and people at real sizes.
- ``indoor``: first-person view 0.35-0.6 m over a wooden table looking down 40-70 degrees,
  household objects plus unlabelled clutter, warm light, a wall behind.
- ``ground``: neutral ground-level scenes (camera at eye height, looking slightly down) of a few
  everyday objects on plain ground under a sky; the base model's pre-training scenario.
  With ``ground_kinds="all"`` it shows every labelled kind of the stream (plus boxes and cones),
  each at a size that reads well from eye height (model aircraft, large toys), the way a
  pretrained MLLM has seen the objects before it meets them from above, underwater or on a
  table: what the stream then teaches is the scenario's view and appearance, not new names.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

SIZE = 128  # rendered image side in pixels
MIN_PIXELS = 6  # an object with fewer visible pixels is removed from the scene (it would be ambiguous)
PALETTE = {  # colour name -> material RGB
    "red": (0.85, 0.08, 0.06),
    "green": (0.08, 0.62, 0.12),
    "blue": (0.08, 0.22, 0.92),
    "yellow": (0.95, 0.85, 0.08),
    "white": (0.96, 0.96, 0.96),
    "black": (0.07, 0.07, 0.07),
}
COLOURS = list(PALETTE)
_PARKED = [0.0, 0.0, -1.0e5]


# ------------------------------------------------------------------------------------------ catalogue
@dataclass(frozen=True)
class Kind:
    """An object category: how to build it, how large it is, where it sits."""

    name: str
    plural: str
    build: tuple  # ("mesh", obj file in pybullet_data, upright rpy) | ("parts", ((geom, dims, pos, rpy), ...))
    size: tuple[float, float]  # longest extent in metres (log-uniform)
    lift: tuple[float, float] = (0.0, 0.0)  # height of the object's bottom above the ground
    tilt: float = 0.0  # maximum random tilt about x and y, degrees
    footprint: float = 0.5  # radius kept free around it, as a fraction of its size


_Z90 = (0.0, math.pi / 2, 0.0)  # turns a primitive's z axis onto x
_X90 = (math.pi / 2, 0.0, 0.0)  # turns a primitive's z axis onto y

# compounds are drawn with their longest extent ~1 along x, bottom at z=0
AIRPLANE = (("capsule", (0.055, 0.82), (0.0, 0.0, 0.07), _Z90),
            ("box", (0.09, 0.5, 0.012), (0.04, 0.0, 0.06), (0, 0, 0)),
            ("box", (0.05, 0.17, 0.01), (-0.42, 0.0, 0.08), (0, 0, 0)),
            ("box", (0.06, 0.01, 0.07), (-0.43, 0.0, 0.14), (0, 0, 0)))
HELICOPTER = (("ellipsoid", (0.2, 0.11, 0.1), (0.12, 0.0, 0.11), (0, 0, 0)),
              ("cyl", (0.025, 0.5), (-0.3, 0.0, 0.14), _Z90),
              ("box", (0.015, 0.08, 0.04), (-0.55, 0.0, 0.17), (0, 0, 0)),
              ("box", (0.5, 0.025, 0.006), (0.1, 0.0, 0.23), (0, 0, 0.5)),
              ("box", (0.5, 0.025, 0.006), (0.1, 0.0, 0.23), (0, 0, 2.07)))
CAR = (("box", (0.5, 0.21, 0.09), (0.0, 0.0, 0.14), (0, 0, 0)),
       ("box", (0.26, 0.19, 0.08), (-0.06, 0.0, 0.3), (0, 0, 0)),
       ("cyl", (0.09, 0.44), (0.3, 0.0, 0.09), _X90),
       ("cyl", (0.09, 0.44), (-0.3, 0.0, 0.09), _X90))
TRUCK = (("box", (0.12, 0.13, 0.13), (0.38, 0.0, 0.17), (0, 0, 0)),
         ("box", (0.35, 0.14, 0.16), (-0.13, 0.0, 0.2), (0, 0, 0)),
         ("cyl", (0.05, 0.28), (0.38, 0.0, 0.05), _X90),
         ("cyl", (0.05, 0.28), (-0.3, 0.0, 0.05), _X90))
BUS = (("box", (0.5, 0.1, 0.12), (0.0, 0.0, 0.15), (0, 0, 0)),
       ("box", (0.48, 0.102, 0.03), (0.0, 0.0, 0.22), (0, 0, 0)),
       ("cyl", (0.045, 0.21), (0.33, 0.0, 0.045), _X90),
       ("cyl", (0.045, 0.21), (-0.33, 0.0, 0.045), _X90))
TANK = (("cyl", (0.5, 0.35), (0.0, 0.0, 0.175), (0, 0, 0)),
        ("cyl", (0.44, 0.02), (0.0, 0.0, 0.36), (0, 0, 0)))
PERSON = (("capsule", (0.06, 0.34), (0.0, 0.07, 0.23), (0, 0, 0)),
          ("capsule", (0.06, 0.34), (0.0, -0.07, 0.23), (0, 0, 0)),
          ("box", (0.1, 0.15, 0.17), (0.0, 0.0, 0.6), (0, 0, 0)),
          ("capsule", (0.045, 0.3), (0.0, 0.2, 0.6), (0, 0, 0)),
          ("capsule", (0.045, 0.3), (0.0, -0.2, 0.6), (0, 0, 0)),
          ("sphere", (0.09,), (0.0, 0.0, 0.87), (0, 0, 0)))
BICYCLE = (("torus", (0.19, 0.19, 0.19), (0.3, 0.0, 0.19), _X90),
           ("torus", (0.19, 0.19, 0.19), (-0.3, 0.0, 0.19), _X90),
           ("cyl", (0.02, 0.62), (0.0, 0.0, 0.33), (0, 1.35, 0)),
           ("cyl", (0.02, 0.36), (0.12, 0.0, 0.3), (0, -0.5, 0)),
           ("box", (0.06, 0.025, 0.015), (-0.1, 0.0, 0.48), (0, 0, 0)),
           ("box", (0.015, 0.15, 0.015), (0.24, 0.0, 0.52), (0, 0, 0)))
FISH = (("ellipsoid", (0.36, 0.09, 0.16), (0.1, 0.0, 0.17), (0, 0, 0)),
        ("box", (0.1, 0.01, 0.14), (-0.33, 0.0, 0.17), (0, 0, 0)),
        ("box", (0.08, 0.008, 0.05), (0.08, 0.0, 0.33), (0, 0.4, 0)))
TURTLE = (("ellipsoid", (0.34, 0.26, 0.11), (0.0, 0.0, 0.1), (0, 0, 0)),
          ("ellipsoid", (0.09, 0.07, 0.06), (0.4, 0.0, 0.1), (0, 0, 0)),
          ("box", (0.07, 0.17, 0.015), (0.18, 0.3, 0.06), (0, 0, -0.5)),
          ("box", (0.07, 0.17, 0.015), (0.18, -0.3, 0.06), (0, 0, 0.5)),
          ("box", (0.05, 0.1, 0.015), (-0.25, 0.24, 0.06), (0, 0, 0.5)),
          ("box", (0.05, 0.1, 0.015), (-0.25, -0.24, 0.06), (0, 0, -0.5)))
STARFISH = tuple(("box", (0.25, 0.06, 0.025), (0.25 * math.cos(a), 0.25 * math.sin(a), 0.025), (0, 0, a))
                 for a in np.linspace(0, 2 * math.pi, 5, endpoint=False).tolist())
JELLYFISH = (("ellipsoid", (0.3, 0.3, 0.2), (0.0, 0.0, 0.55), (0, 0, 0)),
             *(("capsule", (0.018, 0.45), (0.15 * math.cos(a), 0.15 * math.sin(a), 0.3), (0, 0, 0))
               for a in np.linspace(0, 2 * math.pi, 6, endpoint=False).tolist()))
BOTTLE = (("cyl", (0.13, 0.62), (0.0, 0.0, 0.31), (0, 0, 0)),
          ("cyl", (0.05, 0.3), (0.0, 0.0, 0.75), (0, 0, 0)))
BOOK = (("box", (0.5, 0.37, 0.07), (0.0, 0.0, 0.07), (0, 0, 0)),)
BOX = (("box", (0.36, 0.36, 0.36), (0.0, 0.0, 0.36), (0, 0, 0)),)
TREE = (("cyl", (0.06, 0.5), (0.0, 0.0, 0.25), (0, 0, 0)),
        ("ellipsoid", (0.3, 0.3, 0.36), (0.0, 0.0, 0.64), (0, 0, 0)))
BUILDING = (("box", (0.5, 0.4, 0.3), (0.0, 0.0, 0.3), (0, 0, 0)),)

_UPRIGHT = (math.pi / 2, 0.0, 0.0)
KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("airplane", "airplanes", ("parts", AIRPLANE), (24.0, 40.0)),
    Kind("helicopter", "helicopters", ("parts", HELICOPTER), (12.0, 18.0)),
    Kind("car", "cars", ("parts", CAR), (4.0, 5.0)),
    Kind("truck", "trucks", ("parts", TRUCK), (7.0, 12.0)),
    Kind("storage tank", "storage tanks", ("parts", TANK), (10.0, 22.0)),
    Kind("bus", "buses", ("parts", BUS), (10.0, 12.5)),
    Kind("person", "people", ("parts", PERSON), (1.6, 1.9)),
    Kind("bicycle", "bicycles", ("parts", BICYCLE), (1.6, 1.9)),
    Kind("fish", "fish", ("parts", FISH), (0.3, 0.8), lift=(0.2, 1.2), tilt=15.0),
    Kind("turtle", "turtles", ("parts", TURTLE), (0.6, 1.0), lift=(0.0, 0.6), tilt=10.0),
    Kind("starfish", "starfish", ("parts", STARFISH), (0.25, 0.45)),
    Kind("jellyfish", "jellyfish", ("parts", JELLYFISH), (0.3, 0.55), lift=(0.4, 1.4), tilt=10.0),
    Kind("rock", "rocks", ("mesh", "random_urdfs/{:03d}/{:03d}.obj", (0.0, 0.0, 0.0)), (0.35, 0.9)),
    Kind("mug", "mugs", ("mesh", "objects/mug.obj", (0.0, 0.0, 0.0)), (0.09, 0.13)),
    Kind("teddy bear", "teddy bears", ("mesh", "teddy2_VHACD_CHs.obj", _UPRIGHT), (0.14, 0.24)),
    Kind("duck", "ducks", ("mesh", "duck.obj", _UPRIGHT), (0.08, 0.14)),
    Kind("ball", "balls", ("mesh", "soccerball.obj", (0.0, 0.0, 0.0)), (0.07, 0.14)),
    Kind("bottle", "bottles", ("parts", BOTTLE), (0.17, 0.26)),
    Kind("book", "books", ("parts", BOOK), (0.15, 0.24)),
    Kind("cone", "cones", ("mesh", "racecar/meshes/cone.obj", (0.0, 0.0, 0.0)), (0.45, 0.8)),
    Kind("box", "boxes", ("parts", BOX), (0.4, 0.8)),
    Kind("tree", "trees", ("parts", TREE), (3.0, 5.0)),
    # unlabelled clutter (never asked about)
    Kind("building", "buildings", ("parts", BUILDING), (14.0, 30.0)),
    Kind("blob", "blobs", ("mesh", "random_urdfs/{:03d}/{:03d}.obj", (0.0, 0.0, 0.0)), (0.05, 0.1)),
    Kind("coral", "corals", ("mesh", "random_urdfs/{:03d}/{:03d}.obj", (0.0, 0.0, 0.0)), (0.2, 0.5)),
]}
# scales for the ground-level versions of objects that are toys elsewhere
_GROUND_SIZES = {"duck": (0.4, 0.7), "ball": (0.3, 0.6), "car": (4.0, 4.8), "person": (1.6, 1.9)}
# ground_kinds="all": every labelled kind of the stream at a size seen well from eye height within
# the ground scenario's 15 m range (toys and household objects larger, aircraft, buses, tanks as models)
_GROUND_ALL_SIZES = {**_GROUND_SIZES, "mug": (0.3, 0.5), "teddy bear": (0.5, 0.8), "bottle": (0.4, 0.7),
                     "book": (0.4, 0.6), "fish": (0.5, 0.9), "turtle": (0.6, 1.0), "starfish": (0.4, 0.7),
                     "jellyfish": (0.4, 0.7), "rock": (0.5, 0.9), "airplane": (3.5, 4.8), "helicopter": (3.0, 4.5),
                     "truck": (3.5, 4.8), "bus": (3.8, 4.8), "storage tank": (2.0, 3.5), "bicycle": (1.6, 1.9)}
_GROUND_ALL_CATEGORIES = ("airplane", "helicopter", "car", "truck", "storage tank", "fish", "turtle", "starfish",
                          "jellyfish", "rock", "bus", "person", "bicycle", "mug", "teddy bear", "duck", "ball",
                          "bottle", "book", "box", "cone")


@dataclass(frozen=True)
class Scenario:
    """Camera, objects, ground and optics of one visual scenario."""

    name: str
    categories: tuple[str, ...]  # labelled categories (asked about)
    clutter: tuple[str, ...]  # unlabelled object kinds
    n_objects: tuple[int, int]  # labelled objects placed per image (before visibility culling)
    n_clutter: tuple[int, int]
    n_present: tuple[int, int]  # how many categories an image shows
    height: tuple[float, float]  # camera height above the ground (m)
    pitch: tuple[float, float]  # camera pitch below the horizon (degrees)
    fov: float  # vertical field of view (degrees)
    near: float
    far: float
    max_range: float  # objects are placed at most this far from the camera (m)
    grounds: tuple[tuple[str, float, tuple[float, float, float]], ...]  # (texture, repeats, base tint)
    ground_size: float
    sky: tuple[tuple[float, float, float], tuple[float, float, float]]  # background top / bottom colour
    light: tuple[float, float]  # ambient coefficient range
    sizes: dict = field(default_factory=dict)  # category -> size range overriding the kind's


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("high-altitude", ("airplane", "helicopter", "car", "truck", "storage tank"), ("building",),
             (8, 18), (0, 4), (2, 4), (220.0, 320.0), (80.0, 90.0), 30.0, 20.0, 800.0, 500.0,
             (("heightmaps/gimp_overlay_out.png", 2.0, (1.0, 1.0, 1.0)),
              ("heightmaps/wm_height_out.png", 3.0, (0.85, 0.72, 0.5)),
              ("heightmaps/Maze.png", 10.0, (0.55, 0.55, 0.55)),
              ("heightmaps/gimp_overlay_out.png", 4.0, (0.8, 0.75, 0.6))),
             1200.0, ((0.7, 0.75, 0.8), (0.7, 0.75, 0.8)), (0.55, 0.7)),
    Scenario("underwater", ("fish", "turtle", "starfish", "jellyfish", "rock"), ("coral",),
             (3, 8), (1, 4), (2, 3), (1.2, 2.5), (20.0, 50.0), 60.0, 0.05, 40.0, 6.0,
             (("heightmaps/wm_height_out.png", 6.0, (0.95, 0.85, 0.62)),
              ("heightmaps/gimp_overlay_out.png", 5.0, (1.0, 0.9, 0.65)),
              ("tex256.png", 0.0, (0.9, 0.8, 0.6))),
             120.0, ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)), (0.5, 0.65)),
    Scenario("low-altitude", ("car", "bus", "truck", "person", "bicycle"), ("tree",),
             (4, 10), (0, 3), (2, 4), (8.0, 18.0), (35.0, 60.0), 55.0, 0.5, 300.0, 45.0,
             (("heightmaps/wm_height_out.png", 8.0, (0.5, 0.5, 0.52)),
              ("roboschool/models_outdoor/stadium/stadium_grass.jpg", 8.0, (1.0, 1.0, 1.0)),
              ("heightmaps/gimp_overlay_out.png", 4.0, (0.9, 0.9, 0.9)),
              ("heightmaps/wm_height_out.png", 5.0, (0.62, 0.58, 0.5))),
             600.0, ((0.62, 0.76, 0.95), (0.85, 0.88, 0.92)), (0.5, 0.7)),
    Scenario("indoor", ("mug", "teddy bear", "duck", "ball", "bottle", "book"), ("blob",),
             (4, 9), (2, 6), (2, 4), (0.35, 0.6), (40.0, 70.0), 60.0, 0.03, 6.0, 1.3,
             (("table/table.png", 2.0, (1.0, 0.9, 0.75)),
              ("table/table.png", 2.0, (0.75, 0.6, 0.45)),
              ("tray/tray.jpg", 1.0, (0.9, 0.9, 0.85))),
             2.6, ((0.85, 0.8, 0.7), (0.72, 0.66, 0.58)), (0.6, 0.75)),
    Scenario("ground", ("car", "person", "ball", "box", "duck", "cone"), (),
             (2, 6), (0, 0), (1, 3), (1.4, 1.8), (10.0, 22.0), 55.0, 0.1, 200.0, 15.0,
             (("heightmaps/wm_height_out.png", 10.0, (0.75, 0.75, 0.72)),
              ("roboschool/models_outdoor/stadium/stadium_grass.jpg", 12.0, (1.0, 1.0, 1.0)),
              ("tex256.png", 0.0, (0.62, 0.6, 0.56))),
             300.0, ((0.55, 0.72, 0.95), (0.85, 0.9, 0.95)), (0.55, 0.7), sizes=_GROUND_SIZES),
]}


#: the ground scenario's object set: "own" (six everyday kinds) or "all" (every labelled kind of the stream too)
GROUND_KINDS = ("own", "all")


def scenario_spec(name: str, ground_kinds: str = "own") -> Scenario:
    """The `Scenario` of `name`; `ground_kinds="all"` widens the ground scenario to every labelled kind."""
    if ground_kinds not in GROUND_KINDS:
        raise ValueError(f"ground_kinds must be one of {', '.join(GROUND_KINDS)}, got {ground_kinds!r}")
    sc = SCENARIOS[name]
    if name == "ground" and ground_kinds == "all":
        sc = dataclasses.replace(sc, categories=_GROUND_ALL_CATEGORIES, n_objects=(3, 7), n_present=(2, 4),
                                 sizes=_GROUND_ALL_SIZES)
    return sc


# ------------------------------------------------------------------------------------------ helpers
def _hsv_jitter(rgb, rng: np.random.Generator, amount: float = 0.06) -> list[float]:
    c = np.clip(np.asarray(rgb) * rng.uniform(1 - amount * 2, 1 + amount) + rng.normal(0, amount / 3, 3), 0, 1)
    return [float(x) for x in c] + [1.0]


@lru_cache(maxsize=None)
def _obj_vertices(path: str) -> np.ndarray:
    with open(path, encoding="utf-8", errors="replace") as fh:
        v = [list(map(float, ln.split()[1:4])) for ln in fh if ln.startswith("v ")]
    return np.asarray(v, dtype=np.float64)


def _rot(p, rpy) -> np.ndarray:
    return np.asarray(p.getMatrixFromQuaternion(p.getQuaternionFromEuler(list(rpy)))).reshape(3, 3)


@dataclass
class PlacedObject:
    """One labelled object in a rendered scene: its body, category, colour and visible box (pixels)."""

    body: int
    category: str
    colour: str
    pixels: int = 0
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x1, y1, x2, y2 pixel edges (x2, y2 exclusive)


@dataclass
class RenderedScene:
    rgb: np.ndarray  # (SIZE, SIZE, 3) uint8, after the scenario's optics
    seg: np.ndarray  # (SIZE, SIZE) int32 body id per pixel, -1 = background
    objects: list[PlacedObject]  # labelled objects with >= MIN_PIXELS visible pixels


# ------------------------------------------------------------------------------------------ renderer
class SceneRenderer:
    """A pybullet DIRECT client set up for one scenario; `render(rng)` draws one seeded scene."""

    def __init__(self, scenario: str, ground_kinds: str = "own"):
        from mmcl.data.mm5.video import _quiet

        self.sc = scenario_spec(scenario, ground_kinds)
        with _quiet():
            import pybullet as p
            import pybullet_data

            self.p = p
            self.cid = p.connect(p.DIRECT)
        self.data = Path(pybullet_data.getDataPath())
        p.setAdditionalSearchPath(str(self.data), physicsClientId=self.cid)
        self._quiet = _quiet
        self._shapes: dict = {}
        self.grounds = [self._ground(t, rep) for t, rep, _ in self.sc.grounds]
        for g in self.grounds:
            p.resetBasePositionAndOrientation(g, _PARKED, [0, 0, 0, 1], physicsClientId=self.cid)

    def close(self):
        if self.cid is not None:
            try:
                self.p.disconnect(physicsClientId=self.cid)
            finally:
                self.cid = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- construction ----------------------------------------------------------------------------
    def _ground(self, texture: str, repeat: float) -> int:
        """A square subdivided mesh at z=0 (subdivision keeps TinyRenderer's affine texturing close
        to perspective-correct); repeat 0 means a plain (untextured) surface."""
        p, n, s = self.p, 12, self.sc.ground_size
        verts, uvs, idx = [], [], []
        for i in range(n + 1):
            for j in range(n + 1):
                u, v = i / n, j / n
                verts.append([(u - 0.5) * s, (v - 0.5) * s, 0.0])
                uvs.append([u * max(repeat, 1e-3), v * max(repeat, 1e-3)])
        for i in range(n):
            for j in range(n):
                a, b, c, d = i * (n + 1) + j, (i + 1) * (n + 1) + j, (i + 1) * (n + 1) + j + 1, i * (n + 1) + j + 1
                idx += [a, b, c, a, c, d]
        vs = p.createVisualShape(p.GEOM_MESH, vertices=verts, indices=idx, uvs=uvs, normals=[[0, 0, 1]] * len(verts),
                                 physicsClientId=self.cid)
        body = p.createMultiBody(baseMass=0, baseVisualShapeIndex=vs, physicsClientId=self.cid)
        if repeat > 0:
            tex = p.loadTexture(str(self.data / texture), physicsClientId=self.cid)
            p.changeVisualShape(body, -1, textureUniqueId=tex, physicsClientId=self.cid)
        return body

    def _shape(self, kind: Kind, scale: float, variant: int) -> int:
        """Visual shape of `kind` with longest extent `scale` (quantised to 2% steps so shapes are reused)."""
        q = round(math.log(scale) / math.log(1.02))
        key = (kind.name, q, variant)
        if key in self._shapes:
            return self._shapes[key]
        s = 1.02 ** q
        p = self.p
        if kind.build[0] == "mesh":
            f = kind.build[1].format(variant, variant) if "{" in kind.build[1] else kind.build[1]
            path = str(self.data / f)
            rot = _rot(p, kind.build[2])
            v = _obj_vertices(path) @ rot.T
            lo, hi = v.min(0), v.max(0)
            k = s / float((hi - lo).max())
            pos = [-(lo[0] + hi[0]) / 2 * k, -(lo[1] + hi[1]) / 2 * k, -lo[2] * k]
            vs = p.createVisualShape(p.GEOM_MESH, fileName=path, meshScale=[k, k, k], visualFramePosition=pos,
                                     visualFrameOrientation=p.getQuaternionFromEuler(list(kind.build[2])),
                                     physicsClientId=self.cid)
        else:
            types, radii, half, lengths, files, scales, poss, orns = [], [], [], [], [], [], [], []
            for geom, dims, pos, rpy in kind.build[1]:
                r, h, ln, f, ms = 0.0, [0.0, 0.0, 0.0], 0.0, "", [1.0, 1.0, 1.0]
                if geom == "box":
                    t, h = p.GEOM_BOX, [d * s for d in dims]
                elif geom == "cyl":
                    t, r, ln = p.GEOM_CYLINDER, dims[0] * s, dims[1] * s
                elif geom == "capsule":
                    t, r, ln = p.GEOM_CAPSULE, dims[0] * s, dims[1] * s
                elif geom == "sphere":
                    t, r = p.GEOM_SPHERE, dims[0] * s
                elif geom == "ellipsoid":  # unit sphere mesh, radius ~1
                    t, f, ms = p.GEOM_MESH, str(self.data / "sphere_smooth.obj"), [d * s for d in dims]
                elif geom == "torus":  # torus mesh: outer radius 0.75, in its x-z plane
                    t, f, ms = p.GEOM_MESH, str(self.data / "torus/torus_textured.obj"), [d * s / 0.75 for d in dims]
                else:  # pragma: no cover
                    raise ValueError(geom)
                types.append(t)
                radii.append(r)
                half.append(h)
                lengths.append(ln)
                files.append(f)
                scales.append(ms)
                poss.append([c * s for c in pos])
                orns.append(p.getQuaternionFromEuler(list(rpy)))
            vs = p.createVisualShapeArray(shapeTypes=types, radii=radii, halfExtents=half, lengths=lengths,
                                          fileNames=files, meshScales=scales, visualFramePositions=poss,
                                          visualFrameOrientations=orns, physicsClientId=self.cid)
        self._shapes[key] = vs
        return vs

    def _body(self, kind: Kind, scale: float, variant: int, pos, yaw: float, tilt, rgba) -> int:
        p, cid = self.p, self.cid
        q = p.getQuaternionFromEuler([float(tilt[0]), float(tilt[1]), float(yaw)])
        b = p.createMultiBody(baseMass=0, baseVisualShapeIndex=self._shape(kind, scale, variant),
                              basePosition=list(pos), baseOrientation=q, physicsClientId=cid)
        p.changeVisualShape(b, -1, rgbaColor=rgba, textureUniqueId=-1, physicsClientId=cid)
        return b

    # --- camera ----------------------------------------------------------------------------------
    def _camera(self, rng: np.random.Generator):
        sc = self.sc
        h = rng.uniform(*sc.height)
        pitch = math.radians(rng.uniform(*sc.pitch))
        yaw = rng.uniform(0, 2 * math.pi)
        fwd = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), -math.sin(pitch)])
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        if np.linalg.norm(right) < 1e-6:
            right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, fwd)
        eye = np.array([0.0, 0.0, h])
        return eye, fwd, right, up

    def _ray(self, cam, u: float, v: float) -> np.ndarray:
        """Direction (forward component 1) through normalised image point u, v in [0, 1] (v down)."""
        _, fwd, right, up = cam
        t = math.tan(math.radians(self.sc.fov / 2))
        return fwd + (2 * u - 1) * t * right + (1 - 2 * v) * t * up

    # --- scene -----------------------------------------------------------------------------------
    def _place(self, rng, cam, kinds: list[tuple[Kind, bool]]):
        """Sample non-overlapping positions by casting rays through random image points onto the
        plane the object stands on. Returns [(kind, labelled, pos, scale, yaw, tilt)]."""
        eye = cam[0]
        placed, footprints = [], []
        for kind, labelled in kinds:
            lo, hi = self.sc.sizes.get(kind.name, kind.size)
            scale = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            for _ in range(25):
                u, v = rng.uniform(0.04, 0.96, size=2)
                lift = rng.uniform(*kind.lift)
                d = self._ray(cam, u, v)
                if d[2] >= -1e-3:
                    continue
                t = (lift - eye[2]) / d[2]
                pos = eye + t * d
                rng_dist = float(np.linalg.norm(pos - eye))
                r = kind.footprint * scale
                if rng_dist > self.sc.max_range or rng_dist < 2.5 * scale + self.sc.near:
                    continue
                if any(np.hypot(*(pos[:2] - q[:2])) < r + rq for q, rq in footprints):
                    continue
                footprints.append((pos, r))
                tilt = np.radians(rng.uniform(-kind.tilt, kind.tilt, size=2))
                placed.append((kind, labelled, pos, scale, rng.uniform(0, 2 * math.pi), tilt))
                break
        return placed

    def render(self, rng: np.random.Generator) -> RenderedScene:
        p, cid, sc = self.p, self.cid, self.sc
        cam = self._camera(rng)
        # which labelled objects
        n_present = int(rng.integers(sc.n_present[0], min(sc.n_present[1], len(sc.categories)) + 1))
        present = list(rng.choice(len(sc.categories), size=n_present, replace=False))
        n = int(rng.integers(sc.n_objects[0], sc.n_objects[1] + 1))
        weights = rng.dirichlet(np.ones(n_present) * 1.5)
        cats = [sc.categories[present[i]] for i in rng.choice(n_present, size=max(n, n_present), p=weights)]
        cats[:n_present] = [sc.categories[i] for i in present]  # every drawn category appears at least once
        n_cl = int(rng.integers(sc.n_clutter[0], sc.n_clutter[1] + 1))
        kinds = [(KINDS[c], True) for c in cats] + [(KINDS[sc.clutter[i % len(sc.clutter)]], False)
                                                    for i in range(n_cl)]
        placed = self._place(rng, cam, kinds)
        # ground
        gi = int(rng.integers(len(self.grounds)))
        ground = self.grounds[gi]
        tint = _hsv_jitter(sc.grounds[gi][2], rng, 0.08)
        p.changeVisualShape(ground, -1, rgbaColor=tint, physicsClientId=cid)
        gyaw = rng.uniform(0, 2 * math.pi)
        off = rng.uniform(-0.08, 0.08, size=2) * sc.ground_size
        p.resetBasePositionAndOrientation(ground, [float(off[0]), float(off[1]), 0.0],
                                          p.getQuaternionFromEuler([0, 0, gyaw]), physicsClientId=cid)
        bodies, objects = [], []
        try:
            for kind, labelled, pos, scale, yaw, tilt in placed:
                if labelled:
                    colour = COLOURS[int(rng.integers(len(COLOURS)))]
                    rgba = _hsv_jitter(PALETTE[colour], rng, 0.05)
                else:
                    colour = ""
                    rgba = _hsv_jitter(np.full(3, rng.uniform(0.35, 0.75)) * rng.uniform(0.85, 1.1, 3), rng, 0.03)
                variant = int(rng.integers(0, 40)) if kind.build[0] == "mesh" and "{" in kind.build[1] else 0
                b = self._body(kind, scale, variant, pos, yaw, tilt, rgba)
                bodies.append(b)
                if labelled:
                    objects.append(PlacedObject(b, kind.name, colour))
            light = self._light(rng)
            while True:  # objects showing only a few pixels are taken out (ambiguous), then re-render
                rgb, z, seg = self._shot(cam, light)
                for o in objects:
                    ys, xs = np.nonzero(seg == o.body)
                    o.pixels = len(xs)
                    if o.pixels:
                        o.box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
                small = [o for o in objects if 0 < o.pixels < MIN_PIXELS]
                if not small:
                    break
                for o in small:
                    p.resetBasePositionAndOrientation(o.body, _PARKED, [0, 0, 0, 1], physicsClientId=cid)
                objects = [o for o in objects if o not in small]
            objects = [o for o in objects if o.pixels >= MIN_PIXELS]
            rgb = self._optics(rng, cam, rgb, z, seg)
        finally:
            for b in bodies:
                p.removeBody(b, physicsClientId=cid)
            p.resetBasePositionAndOrientation(ground, _PARKED, [0, 0, 0, 1], physicsClientId=cid)
        return RenderedScene(rgb, seg.astype(np.int32), objects)

    def _light(self, rng):
        az, el = rng.uniform(0, 2 * math.pi), rng.uniform(math.radians(35), math.radians(75))
        return {"lightDirection": [math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)],
                "lightAmbientCoeff": rng.uniform(*self.sc.light), "lightDiffuseCoeff": rng.uniform(0.35, 0.55),
                "lightSpecularCoeff": 0.05}

    def _shot(self, cam, light):
        p, sc = self.p, self.sc
        eye, fwd, _, up = cam
        view = p.computeViewMatrix(eye.tolist(), (eye + fwd).tolist(), up.tolist(), physicsClientId=self.cid)
        proj = p.computeProjectionMatrixFOV(sc.fov, 1.0, sc.near, sc.far, physicsClientId=self.cid)
        _, _, rgba, z, seg = p.getCameraImage(SIZE, SIZE, view, proj, renderer=p.ER_TINY_RENDERER, shadow=0,
                                              physicsClientId=self.cid, **light)
        rgb = np.asarray(rgba, np.uint8).reshape(SIZE, SIZE, 4)[..., :3]
        z = np.asarray(z, np.float64).reshape(SIZE, SIZE)
        seg = np.asarray(seg).reshape(SIZE, SIZE)
        return rgb, z, seg

    # --- optics ----------------------------------------------------------------------------------
    def _geometry(self, cam, z):
        """Per-pixel world points and ranges from the depth buffer (inf where nothing was hit)."""
        sc = self.sc
        lin = sc.far * sc.near / (sc.far - (sc.far - sc.near) * z)  # distance along the optical axis
        hit = z < 1.0
        g = (np.arange(SIZE) + 0.5) / SIZE
        u, v = np.meshgrid(g, g)
        eye, fwd, right, up = cam
        t = math.tan(math.radians(sc.fov / 2))
        d = fwd[None, None] + ((2 * u - 1) * t)[..., None] * right + ((1 - 2 * v) * t)[..., None] * up
        pts = eye + lin[..., None] * d
        rng_m = np.where(hit, lin * np.linalg.norm(d, axis=-1), np.inf)
        return pts, rng_m, hit, v

    def _optics(self, rng, cam, rgb, z, seg) -> np.ndarray:
        name = self.sc.name
        img = rgb.astype(np.float64) / 255.0
        pts, dist, hit, v = self._geometry(cam, z)
        if name == "underwater":
            img = underwater(img, pts, dist, hit, rng)
        else:
            top, bottom = (np.asarray(c) for c in self.sc.sky)
            sky = top + (bottom - top) * v[..., None]
            img = np.where(hit[..., None], img, sky)
            if name == "high-altitude":  # thin haze: the camera looks through ~200 m of air
                a = np.array([0.75, 0.8, 0.86]) * rng.uniform(0.9, 1.05)
                tr = rng.uniform(0.8, 0.93)
                img = img * tr + a * (1 - tr)
            elif name == "low-altitude":
                a = np.array([0.8, 0.84, 0.9])
                tr = np.exp(-rng.uniform(0.001, 0.004) * np.where(hit, dist, 300.0))[..., None]
                img = img * tr + a * (1 - tr)
            elif name == "indoor":  # warm artificial light
                img = img * np.array([1.06, 1.0, 0.88]) * rng.uniform(0.9, 1.1)
        img = img + rng.normal(0.0, rng.uniform(0.004, 0.012), img.shape)
        return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W, C) float image with edge padding."""
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, ((r, r), (r, r), (0, 0)), mode="edge")
    h = sum(k[i] * pad[:, i:i + img.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * h[i:i + img.shape[0]] for i in range(2 * r + 1))


def underwater(img: np.ndarray, pts: np.ndarray, dist: np.ndarray, hit: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """Underwater image formation on a rendered (H, W, 3) float image in [0, 1].

    Sunlight reaching the scene is dimmed per channel by the water column above it and modulated
    by caustics; light from a surface at range d is attenuated by exp(-b d) and replaced by the
    veiling light B (backscatter) in proportion; then forward scattering blurs and the camera's
    auto exposure rescales. Coefficients are drawn per image (clear oceanic to greener coastal).
    """
    b = np.array([rng.uniform(0.5, 0.9), rng.uniform(0.1, 0.25), rng.uniform(0.08, 0.22)])  # 1/m
    b_back = b * rng.uniform(0.8, 1.2)
    veil = np.array([rng.uniform(0.02, 0.08), rng.uniform(0.3, 0.5), rng.uniform(0.38, 0.6)])
    depth = rng.uniform(2.0, 10.0)  # metres of water above the floor
    sun = np.exp(-b * 0.4 * depth)  # diffuse downwelling attenuation (K ~ 0.4 b for this toy model)
    sun = sun / sun.max()
    # caustics: interference of a few surface waves projected onto the floor
    c = np.zeros(hit.shape)
    for _ in range(4):
        a, k = rng.uniform(0, 2 * math.pi), rng.uniform(5.0, 9.0)  # surface wavelengths ~0.7-1.3 m
        c += np.sin(k * (pts[..., 0] * math.cos(a) + pts[..., 1] * math.sin(a)) + rng.uniform(0, 2 * math.pi))
    caustic = np.clip(1.0 - np.abs(c) / 1.5, 0.0, 1.0) ** 3
    strength = rng.uniform(0.4, 0.8) * math.exp(-0.08 * depth)  # caustics fade with depth
    j = img * sun * (0.75 + strength * caustic[..., None])
    d = np.where(hit, dist, np.inf)[..., None]
    out = j * np.exp(-b * d) + veil * (1.0 - np.exp(-b_back * d))
    out = _blur(out, rng.uniform(0.5, 0.9))
    lum = float((out @ np.array([0.3, 0.59, 0.11])).mean())
    out = out * np.clip(rng.uniform(0.32, 0.42) / max(lum, 1e-3), 0.8, 3.0)
    # marine snow: a few small bright particles
    n = int(rng.integers(5, 30))
    ys, xs = rng.integers(0, out.shape[0], n), rng.integers(0, out.shape[1], n)
    out[ys, xs] = out[ys, xs] * 0.4 + 0.6 * np.array([0.75, 0.9, 0.95])
    return out


def render_scene(scenario: str, rng: np.random.Generator, renderer: SceneRenderer | None = None) -> RenderedScene:
    """Render one scene of `scenario` drawn from `rng` (a fresh renderer is made and closed if none is given)."""
    if renderer is not None:
        return renderer.render(rng)
    with SceneRenderer(scenario) as r:
        return r.render(rng)
