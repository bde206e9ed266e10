"""Writing msvqa-mini to disk once (seeded, hashed, cached) and reading it back as `Sample` records."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mmcl.data.mm5.common import begin, files_digest
from mmcl.data.msvqa.boxes import format_box, format_boxes, pixel_box_to_percent
from mmcl.data.msvqa.llava_format import ObjectBox, Sample, read_llava_json, write_llava_json
from mmcl.data.msvqa.scenes import COLOURS, KINDS, SCENARIOS, SIZE, RenderedScene, SceneRenderer, scenario_spec
from mmcl.results import atomic_write_text

NAME = "msvqa-mini"
VERSION = "1"
STREAM_SCENARIOS = ("high-altitude", "underwater", "low-altitude", "indoor")  # the continual stream
PRETRAIN_SCENARIO = "ground"  # the base model's pre-training scenario
ALL_SCENARIOS = STREAM_SCENARIOS + (PRETRAIN_SCENARIO,)
QUESTION_TYPES = ("count", "exist", "category", "color", "grounding")
SPLITS = ("train", "test")
#: images per scenario and split; the pre-training scenario (`ground`) has `base_images` training images
#: (0 = train_images): the base model stands in for a pretrained MLLM and needs more data than a step has
DEFAULTS = {"train_images": 200, "test_images": 50, "questions_per_image": 4, "base_images": 0}


# ------------------------------------------------------------------------------------------ questions
#: the question templates, with {noun} / {colour} / {box} for what `_questions` fills in
TEMPLATES = {"count": "How many {noun} are there?", "exist a": "Is there a {noun} in the image?",
             "exist an": "Is there an {noun} in the image?", "category by colour": "What is the {colour} object?",
             "category at": "What object is at {box}?", "color": "What color is the {noun}?",
             "color at": "What color is the {noun} at {box}?", "grounding one": "Where is the {noun}?",
             "grounding many": "Where are the {noun}?"}


def vocabulary_texts() -> list[str]:
    """Every word msvqa-mini can write, as texts: the templates, each kind's name and plural, each
    colour, the answers yes / no / 0-100 and the box punctuation (the tiny preset's `vocab: msvqa-mini`
    is cut to these; tests/scenario check that every generated question and answer is covered)."""
    words = [w for k in KINDS.values() for w in (k.name, k.plural)] + list(COLOURS) + ["yes", "no"]
    return list(TEMPLATES.values()) + words + [str(i) for i in range(101)] + ["[0,0,100,100];[1,1,99,99]"]


def _questions(scene: RenderedScene, cats: tuple[str, ...], rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    """`n` distinct (question, answer, type) about a rendered scene of a scenario with labelled
    categories `cats`, types drawn without repetition."""
    objs = scene.objects
    counts = {c: sum(o.category == c for o in objs) for c in cats}
    present = [c for c in cats if counts[c]]
    absent = [c for c in cats if not counts[c]]
    pct = {id(o): pixel_box_to_percent(o.box, SIZE, SIZE) for o in objs}
    colours = [o.colour for o in objs]
    types = [QUESTION_TYPES[i] for i in rng.permutation(len(QUESTION_TYPES))]
    if not objs:  # nothing visible: only counting / existence can be asked
        types = ["count", "exist"] * len(QUESTION_TYPES)
    out, seen = [], set()
    for t in types * 3:
        if len(out) == n:
            break
        if t == "count":
            c = present[int(rng.integers(len(present)))] if present and (not absent or rng.random() < 0.8) \
                else absent[int(rng.integers(len(absent)))]
            qa = (TEMPLATES["count"].format(noun=KINDS[c].plural), str(counts[c]))
        elif t == "exist":
            c = present[int(rng.integers(len(present)))] if present and (not absent or rng.random() < 0.5) \
                else absent[int(rng.integers(len(absent)))]
            qa = (TEMPLATES["exist an" if c[0] in "aeiou" else "exist a"].format(noun=c), "yes" if counts[c] else "no")
        elif t == "category":
            o = objs[int(rng.integers(len(objs)))]
            if colours.count(o.colour) == 1 and rng.random() < 0.5:
                qa = (TEMPLATES["category by colour"].format(colour=o.colour), o.category)
            else:
                qa = (TEMPLATES["category at"].format(box=format_box(pct[id(o)])), o.category)
        elif t == "color":
            o = objs[int(rng.integers(len(objs)))]
            if counts[o.category] == 1:
                qa = (TEMPLATES["color"].format(noun=o.category), o.colour)
            else:
                qa = (TEMPLATES["color at"].format(noun=o.category, box=format_box(pct[id(o)])), o.colour)
        else:  # grounding
            c = present[int(rng.integers(len(present)))]
            q = TEMPLATES["grounding one"].format(noun=c) if counts[c] == 1 else TEMPLATES["grounding many"].format(noun=KINDS[c].plural)
            qa = (q, format_boxes([pct[id(o)] for o in objs if o.category == c]))
        if qa[0] not in seen:
            seen.add(qa[0])
            out.append((*qa, t))
    return out


def _rng(seed: int, scenario: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), ALL_SCENARIOS.index(scenario), SPLITS.index(split), int(index)])


def image_path(scenario: str, split: str, index: int) -> str:
    return f"images/{scenario}/{split}/{index:04d}.png"


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _generate_scenario(args) -> tuple[list[Sample], dict]:
    """Render and write one scenario's images; return its samples and statistics."""
    root, scenario, seed, counts, q_per_image, ground_kinds = args
    root = Path(root)
    samples: list[Sample] = []
    stats = {}
    cats = scenario_spec(scenario, ground_kinds).categories
    with SceneRenderer(scenario, ground_kinds) as r:
        for split in SPLITS:
            means, stds, areas, n_obj = [], [], [], []
            for i in range(counts[split]):
                rng = _rng(seed, scenario, split, i)
                scene = r.render(rng)
                rel = image_path(scenario, split, i)
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(_png(scene.rgb))  # the manifest, written last, vouches for the files
                img = scene.rgb.astype(np.float64) / 255.0
                means.append(img.mean((0, 1)))
                stds.append(float((img @ np.array([0.299, 0.587, 0.114])).std()))
                n_obj.append(len(scene.objects))
                areas += [(o.box[2] - o.box[0]) * (o.box[3] - o.box[1]) / SIZE ** 2 * 100 for o in scene.objects]
                boxes = tuple(ObjectBox(o.category, pixel_box_to_percent(o.box, SIZE, SIZE)) for o in scene.objects)
                for k, (q, a, t) in enumerate(_questions(scene, cats, rng, q_per_image)):
                    samples.append(Sample(f"{scenario}-{split}-{i:04d}-{k}", str((root / rel).resolve()), q, a,
                                          scenario, boxes, t, split))
            stats[split] = {
                "images": counts[split],
                "mean_rgb": [round(float(x), 4) for x in np.mean(means, 0)] if means else None,
                "contrast": round(float(np.mean(stds)), 4) if stds else None,
                "objects_per_image": round(float(np.mean(n_obj)), 3) if n_obj else None,
                "box_area_pct_median": round(float(np.median(areas)), 3) if areas else None,
            }
    return samples, stats


# ------------------------------------------------------------------------------------------ files
def generate(root, seed: int = 0, train_images: int = DEFAULTS["train_images"], test_images: int = DEFAULTS["test_images"],
             questions_per_image: int = DEFAULTS["questions_per_image"], scenarios=ALL_SCENARIOS,
             workers: int = 1, base_images: int = DEFAULTS["base_images"], ground_kinds: str = "own") -> dict:
    """Render every scenario's images under `root`, write train.json / test.json (LLaVA format) and,
    last, manifest.json with the content hash; return the manifest. Same seed and sizes -> same bytes.
    `ground_kinds` (`scenes.GROUND_KINDS`): the ground scenario's objects, its own six kinds or all."""
    t0 = time.perf_counter()
    scenarios = tuple(scenarios)
    for s in scenarios:
        if s not in SCENARIOS:
            raise ValueError(f"unknown msvqa-mini scenario {s!r}; available: {', '.join(ALL_SCENARIOS)}")
    scenario_spec(PRETRAIN_SCENARIO, ground_kinds)  # a bad ground_kinds fails here, before any file is written
    if min(train_images, test_images, base_images) < 0 or not 1 <= questions_per_image <= len(QUESTION_TYPES):
        raise ValueError("need train_images, test_images, base_images >= 0 and "
                         f"1 <= questions_per_image <= {len(QUESTION_TYPES)}")
    root = begin(Path(root))
    counts = {s: {"train": int(base_images or train_images) if s == PRETRAIN_SCENARIO else int(train_images),
                  "test": int(test_images)}
              for s in scenarios}
    jobs = [(str(root), s, int(seed), counts[s], int(questions_per_image), ground_kinds) for s in scenarios]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            results = pool.map(_generate_scenario, jobs)
    else:
        results = [_generate_scenario(j) for j in jobs]
    samples = [s for res, _ in results for s in res]
    for split in SPLITS:
        write_llava_json([s for s in samples if s.split == split], root / f"{split}.json", image_root=root)
    files = [{"path": image_path(s, split, i)} for s in scenarios for split in SPLITS for i in range(counts[s][split])]
    files += [{"path": f"{split}.json"} for split in SPLITS]
    sha, total = files_digest(root, files)
    stats = {}
    for s, (res, st) in zip(scenarios, results):
        stats[s] = {split: {**st[split], "questions": sum(x.split == split for x in res),
                            "by_type": {t: sum(x.split == split and x.qtype == t for x in res) for t in QUESTION_TYPES}}
                    for split in SPLITS}
    man = {
        "name": NAME, "version": VERSION, "seed": int(seed),
        "params": _params(train_images, test_images, questions_per_image, scenarios, base_images, ground_kinds),
        "image_size": SIZE,
        "categories": {s: list(scenario_spec(s, ground_kinds).categories) for s in scenarios},
        "box_format": "[x1,y1,x2,y2] integers 0-100 (percent of width/height, origin top-left); boxes joined by ';'",
        "files": files, "bytes": total, "sha256": sha, "stats": stats,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    atomic_write_text(root / "manifest.json", json.dumps(man, indent=1))
    return man


def _params(train_images, test_images, questions_per_image, scenarios, base_images, ground_kinds) -> dict:
    p = {"train_images": int(train_images), "test_images": int(test_images),
         "questions_per_image": int(questions_per_image), "scenarios": list(scenarios), "base_images": int(base_images)}
    if ground_kinds != "own":  # the default leaves the parameters (and caches) of before the option
        p["ground_kinds"] = ground_kinds
    return p


def read_manifest(root) -> dict | None:
    """root/manifest.json as a dict, or None when it is missing or unreadable."""
    try:
        man = json.loads((Path(root) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return man if isinstance(man, dict) and man.get("name") == NAME else None


def manifest_matches(root, seed: int, params: dict, verify: bool = False) -> dict | None:
    """The manifest if it describes exactly this version, seed and sizes and its files are all present
    (with `verify`, also re-hashed); otherwise None."""
    root = Path(root)
    man = read_manifest(root)
    if man is None or man.get("version") != VERSION or man.get("seed") != int(seed) or man.get("params") != params:
        return None
    files = man.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and (root / str(f.get("path"))).is_file() for f in files):
        return None
    if verify and files_digest(root, files)[0] != man.get("sha256"):
        return None
    return man


def default_root(seed: int, params: dict) -> Path:
    from mmcl.paths import cache_dir

    tag = (f"s{seed}-{params['train_images']}x{params['test_images']}x{params['questions_per_image']}"
           f"-b{params['base_images']}")
    if tuple(params["scenarios"]) != ALL_SCENARIOS:
        tag += "-" + "+".join(params["scenarios"])
    if params.get("ground_kinds", "own") != "own":
        tag += f"-g{params['ground_kinds']}"
    return cache_dir() / "data" / "msvqa" / f"{NAME}-v{VERSION}-{tag}"


def ensure_msvqa_mini(seed: int = 0, train_images: int = DEFAULTS["train_images"],
                      test_images: int = DEFAULTS["test_images"],
                      questions_per_image: int = DEFAULTS["questions_per_image"], scenarios=ALL_SCENARIOS,
                      root=None, workers: int = 1, verify: bool = False,
                      base_images: int = DEFAULTS["base_images"], ground_kinds: str = "own") -> tuple[Path, dict]:
    """msvqa-mini on disk (generated once, under $MMCL_CACHE/data/msvqa/ unless `root` is given):
    returns (root, manifest). Regeneration is skipped when the manifest matches."""
    params = _params(train_images, test_images, questions_per_image, scenarios, base_images, ground_kinds)
    root = Path(root) if root is not None else default_root(seed, params)
    man = manifest_matches(root, seed, params, verify)
    if man is None:
        man = generate(root, seed, train_images, test_images, questions_per_image, scenarios, workers, base_images,
                       ground_kinds)
    return root, man


def ensure_msvqa_mini_for(b: dict) -> tuple[Path, dict]:
    """`ensure_msvqa_mini` for a config's `benchmark` section (msvqa-mini's fields)."""
    return ensure_msvqa_mini(seed=b["data_seed"], train_images=b["train_images"], test_images=b["test_images"],
                             questions_per_image=b["questions_per_image"], base_images=b["base_images"],
                             ground_kinds=b["ground_kinds"])


def load_msvqa_mini(split: str | None = None, scenarios=None, **kwargs) -> list[Sample]:
    """Samples of msvqa-mini (generated if needed; `kwargs` go to `ensure_msvqa_mini`), optionally one
    split and a subset of scenarios, in file order (scenario, split, image, question)."""
    root, _ = ensure_msvqa_mini(**kwargs)
    out = []
    for sp in ([split] if split else SPLITS):
        if sp not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {sp!r}")
        out += read_llava_json(root / f"{sp}.json", image_root=root)
    return [s for s in out if scenarios is None or s.scenario in scenarios]
