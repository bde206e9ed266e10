"""mm5 text modality: real English quotations labelled by topic.

What the data is
    Each sample is one short English quotation (a "fortune cookie") taken from the topic files
    of the Debian package ``fortunes`` (installed under ``/usr/share/games/fortunes``). The label
    is the topic file the quotation comes from; ``CLASSES`` are the names of those topic files
    (``computers``, ``science``, ...), which are plain English words a sentence encoder
    understands, so they double as class anchors.

What is real and what is synthetic
    Everything in the text is real: human-written quotations, jokes and aphorisms collected by
    the fortune-mod maintainers. Nothing is synthesised. The labels are the curators' own topic
    grouping, so they are real but noisy (a quip in ``law`` may be about lawyers, courts or
    statutes, and some quotations are only loosely on topic). "Generation" only cleans the
    quotations and copies a seeded, class-balanced selection into one UTF-8 ``.txt`` file per
    sample, so that this modality has the same one-file-per-sample interface as the others.

Cleaning
    Quotes are separated by lines holding only ``%``. Per quote: terminal overstriking
    (``_\\bX`` underline/bold sequences) is removed, the attribution (the first line, after
    the first, that starts with ``--``, and everything after it, e.g. ``\\t\\t-- Mark Twain``)
    is dropped while the quote text is kept, control characters are removed and all
    whitespace is collapsed to single spaces. Quotes shorter than 20 or longer than 400
    characters are dropped, as are duplicates (case- and punctuation-insensitive), including
    quotes that occur in more than one of the chosen topic files (their label would be
    ambiguous).

Split
    For every class, the cleaned quotes are permuted with a generator derived from ``seed``;
    the first ``train_per_class`` become train samples and the next ``test_per_class`` test
    samples. Train and test therefore hold different quotations from the same topics: the
    test set measures generalisation to unseen sentences of a known topic.

Layout and decoded format
    ``root/<split>/<class>/<i>.txt`` (UTF-8, the quote followed by one newline) plus
    ``root/manifest.json`` (written last, atomically). ``load`` returns each sample as a
    ``str``: a single line without leading/trailing whitespace, 20-400 characters long.
    A sample file that is empty, not valid UTF-8 or contains control characters raises
    ``ValueError`` naming the file.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np

from mmcl.data.mm5.common import begin, finish_manifest, read_manifest, sample_path
from mmcl.results import atomic_write_bytes

MODALITY = "text"
VERSION = "1"  # bump when generated data would change

FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNES_PACKAGE = "fortunes"

# class name -> fortunes topic file. Every source holds >= 170 usable quotes after cleaning,
# enough for the default 100 train + 50 test per class.
_SOURCES: dict[str, str] = {
    "computers": "computers",
    "science": "science",
    "politics": "politics",
    "law": "law",
    "food": "food",
    "education": "education",
    "literature": "literature",
    "drugs": "drugs",
}
CLASSES: list[str] = list(_SOURCES)

MIN_CHARS = 20
MAX_CHARS = 400

_ATTRIBUTION = re.compile(r"^\s*(--|\u2014|\u2013)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BAD_DECODED = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\ufffd]")


# --------------------------------------------------------------------------- cleaning


def _remove_overstrike(s: str) -> str:
    """Remove backspace overstriking ("_\\bX", "____\\b\\b\\b\\bword") as a terminal would show it."""
    while True:
        new = re.sub(r"[^\x08\n]\x08", "", s)
        if new == s:
            break
        s = new
    return s.replace("\x08", "")


def _split_quotes(text: str) -> list[str]:
    quotes, cur = [], []
    for line in text.split("\n"):
        if line.strip() == "%":
            quotes.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    quotes.append("\n".join(cur))
    return quotes


def clean_quote(raw: str) -> str:
    """Clean one raw fortune: drop overstriking and the attribution, collapse whitespace."""
    lines = _remove_overstrike(raw).split("\n")
    for i, line in enumerate(lines):
        if i > 0 and _ATTRIBUTION.match(line):
            lines = lines[:i]
            break
    q = " ".join(lines)
    q = _CONTROL.sub(" ", q)
    return re.sub(r"\s+", " ", q).strip()


def _key(q: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", q.lower())


def _read_source(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _check_fortunes_dir() -> None:
    hint = (
        f"the mm5 text modality needs the Debian package '{FORTUNES_PACKAGE}' "
        f"(install it with: apt-get install {FORTUNES_PACKAGE})"
    )
    if not FORTUNES_DIR.is_dir():
        raise FileNotFoundError(f"{FORTUNES_DIR}: fortunes directory not found; {hint}")
    for cls, fname in _SOURCES.items():
        if not (FORTUNES_DIR / fname).is_file():
            raise FileNotFoundError(f"{FORTUNES_DIR / fname}: topic file for class {cls!r} not found; {hint}")


def clean_quotes() -> dict[str, list[str]]:
    """Cleaned, de-duplicated quotes per class (file order), with cross-class duplicates removed."""
    _check_fortunes_dir()
    per_class: dict[str, list[str]] = {}
    owners: dict[str, set[str]] = {}
    for cls, fname in _SOURCES.items():
        seen: set[str] = set()
        kept: list[str] = []
        for raw in _split_quotes(_read_source(FORTUNES_DIR / fname)):
            q = clean_quote(raw)
            if not (MIN_CHARS <= len(q) <= MAX_CHARS) or q.startswith("--"):
                continue
            k = _key(q)
            if not k or k in seen:
                continue
            seen.add(k)
            kept.append(q)
            owners.setdefault(k, set()).add(cls)
        per_class[cls] = kept
    return {cls: [q for q in qs if len(owners[_key(q)]) == 1] for cls, qs in per_class.items()}


def _package_version() -> str | None:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", FORTUNES_PACKAGE],
            capture_output=True, text=True, timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    v = out.stdout.strip()
    return v if out.returncode == 0 and v else None


# --------------------------------------------------------------------------- generate / load


def generate(root: Path, seed: int = 0, train_per_class: int = 100, test_per_class: int = 50) -> dict:
    """Write all sample files under `root` plus `root/manifest.json`; return the manifest dict."""
    t0 = time.perf_counter()
    root = Path(root)
    if train_per_class < 0 or test_per_class < 0:
        raise ValueError("train_per_class and test_per_class must be >= 0")
    quotes = clean_quotes()
    need = train_per_class + test_per_class

    chosen: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for ci, cls in enumerate(CLASSES):
        qs = quotes[cls]
        if len(qs) < need:
            raise ValueError(
                f"{FORTUNES_DIR / _SOURCES[cls]}: class {cls!r} has {len(qs)} usable quotes, "
                f"need {need} ({train_per_class} train + {test_per_class} test)"
            )
        rng = np.random.default_rng([int(seed), ci])
        order = rng.permutation(len(qs))[:need]
        chosen["train"][cls] = [qs[i] for i in order[:train_per_class]]
        chosen["test"][cls] = [qs[i] for i in order[train_per_class:]]

    begin(root)  # after the checks above: a request that cannot be met leaves the old data alone
    files: list[dict] = []
    for split in ("train", "test"):
        for label, cls in enumerate(CLASSES):
            for i, q in enumerate(chosen[split][cls]):
                rel = sample_path(split, cls, i, "txt")
                atomic_write_bytes(root / rel, (q + "\n").encode("utf-8"))
                files.append({"path": rel, "label": label, "split": split})

    source = {
        "package": FORTUNES_PACKAGE,
        "package_version": _package_version(),
        "directory": str(FORTUNES_DIR),
        "class_files": {cls: str(FORTUNES_DIR / f) for cls, f in _SOURCES.items()},
        "available_quotes": {cls: len(quotes[cls]) for cls in CLASSES},
    }
    notes = (
        "Real data: every sample is a real, human-written English quotation from the topic files "
        f"of the Debian package '{FORTUNES_PACKAGE}'; its label is the topic file it comes from "
        "(the curators' grouping, real but noisy). Nothing is synthetic: generation only cleans the "
        "quotes (overstriking and '-- Author' attribution lines removed, whitespace collapsed, "
        f"{MIN_CHARS}-{MAX_CHARS} characters, duplicates and quotes shared between topics dropped) "
        "and copies a seeded, class-balanced selection into one UTF-8 .txt file per sample to keep "
        "the per-sample-file interface of mm5. Train and test are disjoint sets of quotations drawn "
        "from the same topics: the test split holds out unseen sentences of known topics."
    )
    return finish_manifest(root, MODALITY, VERSION, int(seed), list(CLASSES), int(train_per_class),
                           int(test_per_class), files, time.perf_counter() - t0, notes, source=source)


def _decode(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{path}: sample file listed in the manifest is missing") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: expected UTF-8 text, cannot decode ({e})") from None
    text = text.strip()
    if not text:
        raise ValueError(f"{path}: expected a non-empty UTF-8 sentence, got an empty file")
    if _BAD_DECODED.search(text):
        raise ValueError(f"{path}: expected one line of plain text, found control/replacement characters")
    return text


def load(root: Path) -> tuple[list, np.ndarray, np.ndarray]:
    """Decode every file listed in root/manifest.json, in manifest order.

    Returns (samples: list[str], labels: int64 array, split: int8 array with 0 = train, 1 = test).
    """
    root = Path(root)
    manifest = read_manifest(root, MODALITY)
    entries = manifest["files"]
    n_classes = len(manifest["classes"])

    samples: list[str] = []
    labels = np.empty(len(entries), dtype=np.int64)
    split = np.empty(len(entries), dtype=np.int8)
    for j, entry in enumerate(entries):
        path = root / entry["path"]
        label = entry["label"]
        if not isinstance(label, int) or not 0 <= label < n_classes:
            raise ValueError(f"{path}: expected a label in [0, {n_classes}), got {label!r}")
        if entry["split"] not in ("train", "test"):
            raise ValueError(f"{path}: expected split 'train' or 'test', got {entry['split']!r}")
        samples.append(_decode(path))
        labels[j] = label
        split[j] = 0 if entry["split"] == "train" else 1
    return samples, labels, split
