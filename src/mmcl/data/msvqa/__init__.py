"""msvqa-mini: an embedded multi-scenario VQA and grounding benchmark, and LLaVA-format data readers.

msvqa-mini is the counterpart of MSVQA (DESIGN.md section 3) that ships with mmcl: 3-D scenes
rendered with pybullet's CPU TinyRenderer from meshes in ``pybullet_data`` and primitive compounds,
one camera set-up per visual scenario (see ``scenes.py`` for the physical reasoning):

| scenario | view | labelled categories |
|---|---|---|
| high-altitude | nadir, 220-320 m up, near-orthographic; many small objects | airplane, helicopter, car, truck, storage tank |
| underwater | oblique, 1.2-2.5 m over sand; attenuation + backscatter + caustics + blur | fish, turtle, starfish, jellyfish, rock |
| low-altitude | drone, 8-18 m up, 35-60 deg down, perspective | car, bus, truck, person, bicycle |
| indoor | first person over a table, 0.35-0.6 m, clutter | mug, teddy bear, duck, ball, bottle, book |
| ground | eye height, plain ground and sky (base-model pre-training only) | car, person, ball, box, duck, cone |

Colours: red, green, blue, yellow, white, black. Images are 128x128 RGB PNG. Each image carries
``questions_per_image`` questions of distinct types (``Sample.qtype``):

| qtype | question | answer |
|---|---|---|
| count | How many fish are there? | ``3`` (``0`` for an absent category) |
| exist | Is there a bus in the image? | ``yes`` / ``no`` |
| category | What object is at [12,30,25,44]? / What is the red object? | ``turtle`` |
| color | What color is the mug? / What color is the car at [..]? | ``blue`` |
| grounding | Where is the duck? / Where are the cars? | ``[12,30,25,44];[50,60,70,81]`` |

Box format (answers and box references in questions): ``[x1,y1,x2,y2]``, integers 0-100 = percent
of image width (x) and height (y), origin at the top-left, x2/y2 the right/bottom edge; several
boxes joined by ``;`` without spaces, in reading order (top edge, then left edge). Boxes are the
extent of the object's visible pixels in the renderer's segmentation mask. Objects with fewer
than ``scenes.MIN_PIXELS`` visible pixels are removed from the scene before the final render, so
every object in the picture is annotated and counted. Model output is parsed by
``mmcl.scenario.answers.parse_boxes`` (the metric's parser; malformed -> [], never raises).

Records (`Sample`, frozen): ``id``, ``image`` (absolute path), ``question`` (no ``<image>`` token),
``answer``, ``scenario``, ``boxes`` (tuple of ``ObjectBox(label, (x1, y1, x2, y2))`` in 0-100
floats: every annotated object in the image), ``qtype``, ``split``; ``is_grounding``; ``to_dict()``.

On disk (``$MMCL_CACHE/data/msvqa/msvqa-mini-v<version>-s<seed>-<train>x<test>x<q>/``):
``images/<scenario>/<split>/<index>.png``, ``train.json`` and ``test.json`` in the LLaVA format
(`read_llava_json` reads them back; the same reader takes a user's own MSVQA or any LLaVA-format
copy), and ``manifest.json`` (written last: parameters, sha256 over all files, per-scenario
statistics). ``ensure_msvqa_mini`` regenerates only when the manifest does not match. Each image
is seeded from (seed, scenario, split, index): the bytes do not depend on order or worker count.

Usage::

    from mmcl.data.msvqa import ensure_msvqa_mini, load_msvqa_mini, read_llava_json, write_llava_json
    root, manifest = ensure_msvqa_mini(seed=0)            # ~1 min on one core (2000 base images: ~3), cached
    train = load_msvqa_mini("train", scenarios=["underwater"])
    write_llava_json(train, "/tmp/export/underwater.json", image_root=root)
"""
from mmcl.data.msvqa.boxes import format_box, format_boxes, is_box_answer
from mmcl.data.msvqa.mini import (ALL_SCENARIOS, PRETRAIN_SCENARIO, QUESTION_TYPES, STREAM_SCENARIOS,
                                      ensure_msvqa_mini, ensure_msvqa_mini_for, generate, load_msvqa_mini, manifest_matches)
from mmcl.data.msvqa.llava_format import LlavaFormatError, ObjectBox, Sample, read_llava_json, write_llava_json

__all__ = [
    "ALL_SCENARIOS", "PRETRAIN_SCENARIO", "QUESTION_TYPES", "STREAM_SCENARIOS", "LlavaFormatError", "ObjectBox",
    "Sample", "ensure_msvqa_mini", "ensure_msvqa_mini_for", "format_box", "format_boxes", "generate", "is_box_answer", "load_msvqa_mini",
    "manifest_matches", "read_llava_json", "write_llava_json",
]
