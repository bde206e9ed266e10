"""Benchmarks of the scenario setting: `msvqa-mini` (embedded) and `llava-json` (your own LLaVA-format data).

Both turn `Sample` records into a `Stream` of steps whose data are `SampleSet`s (images decoded
once, resized to the model's input side for the presets). Protocols (`stream.protocol`):

- `4-step` (any number of scenarios: `per-scenario`): one step per scenario, in `benchmark.scenarios` order (`stream.order=random`: a
  seeded permutation);
- `20-step` (`per-subtask`): every scenario's images are split into 5 disjoint sub-tasks (a seeded partition,
  of training and of test images), and the steps interleave the scenarios in 5 rounds, so
  every scenario recurs: round r holds sub-task r of every scenario, in scenario order
  (`stream.order=random`: a seeded permutation per round).

With K scenarios the protocols have K and 5K steps. The order, the sub-tasks and their sizes are
recorded in metrics.json (`experiences`, `stream_info.order`). The pre-training scenario
(`base_scenario`, msvqa-mini's `ground`) is not a step: its training questions train the base
model (`mmcl.scenario.base_model`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mmcl.errors import ConfigError
from mmcl.data.registry import BuildContext, register_benchmark
from mmcl.data.msvqa.llava_format import LlavaFormatError, Sample, read_llava_json
from mmcl.data.msvqa.mini import PRETRAIN_SCENARIO, STREAM_SCENARIOS, ensure_msvqa_mini_for
from mmcl.data.msvqa.scenes import GROUND_KINDS
from mmcl.stream import Experience, SampleSet, Stream

SUBTASKS = 5  # sub-tasks per scenario in the 20-step protocol (DESIGN.md section 3)
#: protocols of one step per scenario; the others split each scenario into SUBTASKS sub-tasks. MSVQA's names
#: (4-step, 20-step) count its four scenarios; per-scenario / per-subtask say the same for any number.
PER_SCENARIO = ("4-step", "per-scenario")
PROTOCOLS = ("4-step", "20-step", "per-scenario", "per-subtask")


@dataclass
class MsvqaMiniParams:
    """msvqa-mini: the embedded multi-scenario VQA + grounding benchmark (see mmcl.data.msvqa)."""
    ranges = {"data_seed": ">=0", "train_images": ">=1", "test_images": ">=1", "questions_per_image": ">=1",
              "base_images": ">=0"}

    setting = "scenario"
    data_seed: int = 0  # seed of the generated images and questions
    train_images: int = 200  # per scenario (each carries questions_per_image questions)
    test_images: int = 50  # per scenario
    questions_per_image: int = 4
    base_images: int = 0  # training images of the pre-training scenario (the base model's data); 0 = train_images
    scenarios: list = field(default_factory=lambda: list(STREAM_SCENARIOS))  # the stream's scenarios
    base_scenario: str = PRETRAIN_SCENARIO  # trains the base model; "" = use the model as built
    ground_kinds: str = "own"  # the ground scenario's objects: own (six everyday kinds) | all (every kind of the stream too)

    @staticmethod
    def check(b: dict) -> None:
        bad = [s for s in b["scenarios"] if s not in STREAM_SCENARIOS]
        if bad or not b["scenarios"] or len(set(b["scenarios"])) != len(b["scenarios"]):
            raise ConfigError(f"benchmark.scenarios: expected distinct names among {', '.join(STREAM_SCENARIOS)}, "
                              f"got {b['scenarios']}")
        if b["ground_kinds"] not in GROUND_KINDS:
            raise ConfigError(f"benchmark.ground_kinds: expected one of {', '.join(GROUND_KINDS)}, got {b['ground_kinds']!r}")
        if b["base_scenario"] not in ("", PRETRAIN_SCENARIO):
            raise ConfigError(f"benchmark.base_scenario: '{PRETRAIN_SCENARIO}' or '' (no base training), "
                              f"got {b['base_scenario']!r}")


@dataclass
class LlavaJsonParams:
    """Your own LLaVA-format data (an MSVQA copy or any LLaVA-style JSON): train and test files."""

    setting = "scenario"
    train: str = ""  # LLaVA-format .json / .jsonl of the training questions
    test: str = ""  # the same format, test questions
    image_root: str = ""  # folder the image paths are relative to (default: each file's folder)
    scenarios: list = field(default_factory=list)  # stream order; default: order of first appearance in train
    base_scenario: str = ""  # a scenario of the training file held out of the stream to train the base model

    @staticmethod
    def check(b: dict) -> None:
        for k in ("train", "test"):
            if not b[k]:
                raise ConfigError(f"benchmark.{k}: the path of a LLaVA-format JSON file is required")


def decode_images(paths: list[str], size: int | None) -> torch.Tensor:
    """uint8 (M, 3, S, S) images, resized to `size` (None: as stored; all must then share one size)."""
    from PIL import Image

    out = []
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if size and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1))
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) > 1:
        raise ValueError(f"images differ in size {sorted(shapes)[:3]}; a model preset resizes them (vlm.preset)")
    return torch.stack(out) if out else torch.zeros(0, 3, 1, 1, dtype=torch.uint8)


def sample_set(samples: list[Sample], images: torch.Tensor, where: dict[str, int]) -> SampleSet:
    return SampleSet(images, torch.tensor([where[s.image] for s in samples], dtype=torch.long),
                     [s.question for s in samples], [s.answer for s in samples],
                     torch.tensor([s.is_grounding for s in samples], dtype=torch.bool),
                     [s.id for s in samples], [s.scenario for s in samples], [s.boxes for s in samples])


def _partition(samples: list[Sample], k: int, rng: np.random.Generator) -> list[list[Sample]]:
    """`k` disjoint groups of `samples`, by image (all questions about one image stay together)."""
    images = sorted({s.image for s in samples})
    perm = rng.permutation(len(images))
    group = {images[i]: r * k // len(images) for r, i in enumerate(perm)} if images else {}
    return [[s for s in samples if group[s.image] == g] for g in range(k)]


def build_steps(train: list[Sample], test: list[Sample], scenarios: list[str], ctx: BuildContext,
                pretrain: list[Sample], name: str, info: dict) -> Stream:
    """The stream of `stream.protocol` over `scenarios`, with images decoded once."""
    protocol, order = ctx.stream.get("protocol", "4-step"), ctx.stream.get("order", "fixed")
    rng = np.random.default_rng([ctx.order_seed, 7])
    if order == "random":
        scenarios = [scenarios[i] for i in rng.permutation(len(scenarios))]
    by = lambda xs, sc: [s for s in xs if s.scenario == sc]  # noqa: E731
    steps: list[tuple[str, str, list[Sample], list[Sample], dict]] = []
    if protocol in PER_SCENARIO:
        for sc in scenarios:
            steps.append((sc, sc, by(train, sc), by(test, sc), {}))
    else:
        parts = {}
        for sc in scenarios:
            g = np.random.default_rng([ctx.order_seed, 11, STREAM_SCENARIOS.index(sc) if sc in STREAM_SCENARIOS else
                                       sum(map(ord, sc))])
            parts[sc] = (_partition(by(train, sc), SUBTASKS, g), _partition(by(test, sc), SUBTASKS, g))
        for r in range(SUBTASKS):
            rnd = scenarios if order == "fixed" else [scenarios[i] for i in rng.permutation(len(scenarios))]
            for sc in rnd:
                steps.append((f"{sc}/{r + 1}", sc, parts[sc][0][r], parts[sc][1][r], {"sub_task": r + 1}))
    for n, sc, tr, te, _ in steps:
        if not tr or not te:
            raise ConfigError(f"step {n}: no {'training' if not tr else 'test'} questions (scenario '{sc}'); "
                              f"more images per scenario are needed")
    paths = sorted({s.image for s in train + test + pretrain})
    images = decode_images(paths, ctx.image_size)
    where = {p: i for i, p in enumerate(paths)}
    exps = [Experience(i, n, sample_set(tr, images, where), sample_set(te, images, where), scenario=sc,
                       info={**extra, "train": len(tr), "test": len(te)})
            for i, (n, sc, tr, te, extra) in enumerate(steps)]
    info = {**info, "protocol": protocol, "steps": len(exps), "order": [e.name for e in exps], "order_seed": ctx.order_seed,
            "scenarios": scenarios, "pretrain_questions": len(pretrain)}
    return Stream(name, exps, info=info,
                  pretrain=sample_set(pretrain, images, where) if pretrain else None)


@register_benchmark("msvqa-mini", MsvqaMiniParams)
def build_msvqa_mini(p: MsvqaMiniParams, ctx: BuildContext) -> Stream:
    """msvqa-mini: embedded multi-scenario VQA and grounding (pybullet renders), generated once and cached."""
    root, man = ensure_msvqa_mini_for(dataclasses.asdict(p))
    samples = read_llava_json(root / "train.json", image_root=root) + read_llava_json(root / "test.json",
                                                                                        image_root=root)
    train = [s for s in samples if s.split == "train"]
    test = [s for s in samples if s.split == "test"]
    pretrain = [s for s in train if s.scenario == p.base_scenario] if p.base_scenario else []
    info = {"source": "msvqa-mini (embedded, pybullet renders)", "root": str(root), "sha256": man["sha256"],
            "data_seed": p.data_seed, "params": man["params"], "base_scenario": p.base_scenario}
    return build_steps(train, test, list(p.scenarios), ctx, pretrain, "msvqa-mini", info)


def _counts(xs) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def check_scenarios(train: list[Sample], test: list[Sample], scenarios: list[str], p: "LlavaJsonParams") -> None:
    """Every test question belongs to a scenario of the training file; every step has test questions."""
    import difflib

    seen = list(dict.fromkeys(s.scenario for s in train))
    for s in test:
        if s.scenario not in seen:
            close = difflib.get_close_matches(s.scenario, seen, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{p.test}: entry '{s.id.split('#')[0]}' has scenario '{s.scenario}', which no entry of "
                              f"{p.train} has (scenarios: {', '.join(seen)}){hint}")
    tested = {s.scenario for s in test}
    for sc in scenarios:
        if sc not in tested:
            raise ConfigError(f"benchmark: scenario '{sc}' has training questions in {p.train} but none in {p.test}; "
                              f"a step needs test questions: set benchmark.base_scenario={sc} to train the base model "
                              f"on it instead, or list the stream's scenarios in benchmark.scenarios")


@register_benchmark("llava-json", LlavaJsonParams)
def build_llava_json(p: LlavaJsonParams, ctx: BuildContext) -> Stream:
    """llava-json: your own LLaVA-format train/test files (scenario and boxes fields optional)."""
    root = p.image_root or None
    try:
        train = read_llava_json(Path(p.train).expanduser(), image_root=root, scenario="default")
        test = read_llava_json(Path(p.test).expanduser(), image_root=root, scenario="default")
    except LlavaFormatError as e:
        raise ConfigError(str(e)) from None
    seen = list(dict.fromkeys(s.scenario for s in train))
    scenarios = list(p.scenarios) or [s for s in seen if s != p.base_scenario]
    unknown = [s for s in scenarios + ([p.base_scenario] if p.base_scenario else []) if s not in seen]
    if unknown:
        raise ConfigError(f"benchmark: scenario(s) {unknown} have no training questions in {p.train}; "
                          f"found: {', '.join(seen)}")
    check_scenarios(train, test, scenarios, p)
    pretrain = [s for s in train if s.scenario == p.base_scenario] if p.base_scenario else []
    import hashlib

    digest = hashlib.sha256(Path(p.train).expanduser().read_bytes() + Path(p.test).expanduser().read_bytes())
    info = {"source": "LLaVA-format JSON", "train": str(p.train), "test": str(p.test),
            "sha256": digest.hexdigest(), "base_scenario": p.base_scenario}
    left = {split: _counts(s.scenario for s in samples if s.scenario not in scenarios and
                           not (split == "train" and s.scenario == p.base_scenario))
            for split, samples in (("train", train), ("test", test))}
    if any(left.values()):  # every question is used or reported: those of scenarios that are not steps
        info["left_out"] = {k: v for k, v in left.items() if v}
    return build_steps(train, test, scenarios, ctx, pretrain, "llava-json", info)
