"""Where users' samples are and what they are labelled: four layouts, read as they are on disk.

- ``folders``: ``root/<class>/<file>`` or ``root/<split>/<class>/<file>`` (split folders ``train`` and
  ``test``; ``val``/``valid``/``validation`` count as test). Files may sit deeper below a class folder.
  Without split folders, a seeded per-class split is drawn later, or ``test_list`` names the test files
  (UCF101's ``testlist01.txt``). Files with other extensions than the modality's are ignored and counted.
- ``manifest``: a CSV (header row, or ``columns`` naming header-less columns) or JSONL file with
  ``path,label[,split][,modality]`` per sample, paths relative to the manifest (or ``root``); for text,
  a ``text`` column (or ``text_columns``, joined) instead of a path. ``manifest: {train: a.csv, test: b.csv}``
  gives one file per split.
- ``hf``: a Hugging Face dataset on disk: a folder written by ``save_to_disk`` (a Dataset or a DatasetDict),
  or a folder of parquet files (split from the file or folder names: ``train-00000.parquet``,
  ``test/x.parquet``); an image, audio or text ``column`` and a ``label_column`` (default ``label``;
  ``ClassLabel`` names become class names). Needs the ``datasets`` package (``mmcl[hf]``).
- ``esc50``: ESC-50's own ``meta/esc50.csv`` + ``audio/``; folds in ``test_folds`` (default [5]) are the
  test split; ``esc10: true`` keeps the ESC-10 subset.

Class names come from the folder names / labels, or from a ``label_names`` file, and are cleaned into
plain English for the text anchors (`plain_name`). Labels that are only ids (``n01440764``, ``3``)
need a ``label_names`` file.
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

from mmcl.errors import ConfigError
from mmcl.data.user.readers import EXTENSIONS
from mmcl.data.user.spec import SourceSpec
from mmcl.stream import MODALITIES

SPLIT_NAMES = {"train": "train", "training": "train", "test": "test", "testing": "test", "val": "test",
               "valid": "test", "validation": "test"}


@dataclass
class Entry:
    """One sample as listed on disk, before decoding."""

    where: str  # what an error line names: the file, or "<manifest>:<line>" for inline text
    path: Path | None = None  # the file to decode (None: inline text)
    text: str | None = None
    raw: str | None = None  # the label as found (folder name, manifest value, ESC-50 category)
    split: str | None = None  # "train" | "test" | None (seeded split)
    error: str | None = None  # found while scanning: unknown label, missing file, bad split
    fetch: Callable[[], Any] | None = None  # a Hugging Face dataset's cell (read when decoded)
    ident: str | None = None  # what identifies a fetched cell in the feature cache key (split and row)


@dataclass
class Scan:
    entries: list[Entry]
    classes: list[str]  # raw labels, in the source's class order
    names: dict[str, str]  # raw label -> plain-English name
    ignored: dict[str, int] = field(default_factory=dict)  # extension -> files ignored
    identity: str = ""  # for the feature cache key, where entries are not files (the dataset's files and fingerprints)


# ------------------------------------------------------------------------------------ class names
def plain_name(raw: str, camel: bool = True) -> str:
    """A folder name or label as plain English: ``golden_retriever`` -> ``golden retriever``,
    ``ApplyEyeMakeup`` -> ``apply eye makeup``, ``001.Black_footed_Albatross`` -> ``black footed albatross``.
    Acronyms (``TV``) keep their case."""
    s = str(raw).strip()
    s = re.sub(r"^\d+[._\-\s]+(?=[A-Za-z])", "", s)
    s = s.replace("_", " ").replace("+", " ")
    if camel:
        s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", s)
        s = re.sub(r"(?<=[A-Z])(?=[A-Z][a-z])", " ", s)
    words = [w if (len(w) > 1 and w.isupper() and camel) else w.lower() for w in s.split()]
    return " ".join(words)


def id_kind(name: str) -> str | None:
    """Why a class name is not English (it needs label_names), or None."""
    if re.fullmatch(r"n\d{8}", name.strip()):
        return "WordNet ids"
    if not any(ch.isalpha() for ch in name):  # a word in any script is a name; digits and marks are not
        return "numbers or ids"
    return None


def read_label_names(path: Path, raws: list[str], base: int) -> tuple[dict[str, str], list[str]]:
    """raw label -> name, and the file's order of raw labels.

    Formats: JSON or YAML (a mapping raw -> name, or a list: index + label_base -> name); text, one
    class per line, either ``<raw> <name>`` (keyed: ``n01440764 tench, Tinca tinca``; the name ends at
    the first comma) or ``<name>`` alone (positional: line i names integer label i + label_base, as
    AG News' classes.txt) or, when labels are not integers, the list of known labels. Blank lines and lines starting with '#' are skipped.
    """
    import yaml

    where = f"label_names file {path}"
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        try:
            obj = json.loads(path.read_text()) if path.suffix.lower() == ".json" else yaml.safe_load(path.read_text())
        except Exception as e:  # noqa: BLE001
            raise ConfigError(f"{where}: cannot parse ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        if isinstance(obj, dict):
            pairs = [(_label(k), str(v)) for k, v in obj.items()]
        elif isinstance(obj, list):
            pairs = [(str(i + base), str(v)) for i, v in enumerate(obj)]
        else:
            raise ConfigError(f"{where}: expected a mapping label -> name or a list of names")
    else:
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()]
        except UnicodeDecodeError:
            raise ConfigError(f"{where}: not UTF-8 text") from None
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
        split = [re.split(r"[\t ,:;]+", ln, maxsplit=1) for ln in lines]
        present = set(raws)
        if all(len(t) == 2 for t in split) and any(t[0] in present for t in split):  # keyed
            pairs = [(t[0], t[1]) for t in split]
        elif all(re.fullmatch(r"-?\d+", r) for r in present):  # positional, for integer labels
            pairs = [(str(i + base), ln) for i, ln in enumerate(lines)]
        else:  # the list of known labels, each its own name
            pairs = [(ln, ln) for ln in lines]
    out: dict[str, str] = {}
    for raw, name in pairs:
        name = plain_name(name.split(",")[0], camel=False)
        if not name:
            raise ConfigError(f"{where}: label {raw!r} has an empty name")
        out[raw] = name
    if not out:
        raise ConfigError(f"{where}: no class names in it")
    return out, [r for r, _ in pairs]


def _label(v) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _order(raws) -> list[str]:
    raws = sorted(set(raws), key=lambda n: (n.lower(), n))
    if all(re.fullmatch(r"-?\d+", r) for r in raws):
        return sorted(raws, key=int)
    return raws


def resolve_names(scan_entries: list[Entry], natural_order: list[str], src: SourceSpec) -> tuple[list[str], dict]:
    """Class order and names; entries whose label is not in label_names get an 'unknown label' error."""
    raws = [e.raw for e in scan_entries if e.error is None and e.raw is not None]
    present = set(raws)
    if src.label_names is not None:
        names, file_order = read_label_names(src.label_names, sorted(present), src.label_base)
        for e in scan_entries:
            if e.error is None and e.raw is not None and e.raw not in names:
                e.error = f"unknown label {e.raw!r} (not in label_names {src.label_names})"
        classes = [r for r in file_order if r in present]
        return classes, {r: names[r] for r in classes}
    classes = [r for r in natural_order if r in present]
    names = {r: plain_name(r) for r in classes}
    for r in classes:
        kind = id_kind(names[r])
        if kind:
            raise ConfigError(f"{src.key}: class labels such as {r!r} are {kind}, not names a text encoder "
                              f"understands; give a label_names file mapping them to English names")
    return classes, names


# ----------------------------------------------------------------------------------------- layouts
def _visible_files(d: Path):
    """Files below `d` (hidden ones left out), and symbolic links that lead nowhere (broken, or a loop)."""
    for p in sorted(d.rglob("*")):
        rel = p.relative_to(d)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() or (p.is_symlink() and not p.exists()):
            yield p


def scan_folders(src: SourceSpec, modality: str) -> Scan:
    root = src.root
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    split_mode = bool(subdirs) and all(d.name.lower() in SPLIT_NAMES for d in subdirs)
    if split_mode:
        if src.test_list is not None:
            raise ConfigError(f"{src.key}.test_list: {root} already has split folders "
                              f"({', '.join(d.name for d in subdirs)}); use one or the other")
        have = {SPLIT_NAMES[d.name.lower()] for d in subdirs}
        if have != {"train", "test"}:
            missing = ({"train", "test"} - have).pop()
            raise ConfigError(f"{src.key}.root: {root} has split folder(s) {', '.join(d.name for d in subdirs)} "
                              f"but no {missing} folder")
        class_dirs = [(SPLIT_NAMES[s.name.lower()], d) for s in subdirs
                      for d in sorted(x for x in s.iterdir() if x.is_dir() and not x.name.startswith("."))]
    else:
        class_dirs = [(None, d) for d in subdirs]
    if not class_dirs:
        raise ConfigError(f"{src.key}.root: {root} has no class sub-folders (expected root/<class>/<file> "
                          f"or root/<split>/<class>/<file>)")
    exts = EXTENSIONS[modality]
    entries, ignored = [], Counter()
    empty = []
    for split, d in class_dirs:
        found = False
        for f in _visible_files(d):
            if f.is_symlink() and not f.exists():
                entries.append(Entry(where=str(f), raw=d.name, split=split,
                                     error="a symbolic link that leads nowhere (broken, or a loop)"))
                found = True
            elif f.suffix.lower() in exts:
                entries.append(Entry(where=str(f), path=f, raw=d.name, split=split))
                found = True
            else:
                ignored[f.suffix.lower() or "(none)"] += 1
        if not found:
            empty.append(d)
    if empty and entries:  # a class folder without a single file: a class with nothing to learn
        raise ConfigError(f"{src.key}.root: class folder {empty[0]} has no {modality} file ({', '.join(exts)}); "
                          f"add files, or remove the folder")
    if not entries:
        raise ConfigError(f"{src.key}.root: no {modality} files ({', '.join(exts)}) below {root}")
    if src.test_list is not None:
        listed = set()
        for ln in src.test_list.read_text(encoding="utf-8-sig").splitlines():
            if ln.strip():
                listed.add(ln.split()[0].replace("\\", "/").strip("/").lower())
        hits = 0
        for e in entries:
            rel = e.path.relative_to(root).as_posix().lower()
            e.split = "test" if rel in listed else "train"
            hits += e.split == "test"
        if not hits:
            raise ConfigError(f"{src.key}.test_list: none of the paths in {src.test_list} is a file below {root} "
                              f"(paths are relative to root, e.g. {entries[0].path.relative_to(root).as_posix()})")
    natural = sorted({d.name for _, d in class_dirs}, key=lambda n: (n.lower(), n))
    classes, names = resolve_names(entries, natural, src)
    return Scan(entries, classes, names, dict(ignored))


def _read_rows(path: Path, columns: list[str] | None, key: str):
    """(line number, row dict or an error string) for every data row of a CSV/TSV or JSONL file."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        if columns is not None:
            raise ConfigError(f"{key}.columns: applies to header-less CSV files, not to JSONL {path}")
        with open(path, encoding="utf-8-sig") as fh:
            for i, ln in enumerate(fh, 1):
                if not ln.strip():
                    continue
                try:
                    row = json.loads(ln)
                except json.JSONDecodeError as e:
                    yield i, f"not valid JSON ({e.msg})"
                    continue
                yield i, row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"
        return
    delim = "\t" if suffix == ".tsv" else ","
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter=delim)
        header = columns
        if header is None:
            header = next(reader, None)
            if header is None:
                raise ConfigError(f"{key}: manifest {path} is empty")
            header = [h.strip() for h in header]
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                yield reader.line_num, f"expected {len(header)} columns ({','.join(header)}), got {len(row)}"
                continue
            yield reader.line_num, dict(zip(header, row))


def _split_value(v) -> tuple[str | None, str | None]:
    if v is None or str(v).strip() == "":
        return None, None
    s = SPLIT_NAMES.get(str(v).strip().lower())
    return (s, None) if s else (None, f"unknown split {str(v)!r} (expected train or test)")


def scan_manifest(src: SourceSpec, modality: str) -> Scan:
    entries = []
    listed: dict[Path, str] = {}  # each file's first manifest row
    for forced, mpath in src.manifest.items():
        key = src.key + ".manifest" + (f".{forced}" if forced else "")
        base = src.root or mpath.parent
        header_checked = False
        for line, row in _read_rows(mpath, src.columns, key):
            where = f"{mpath}:{line}"
            if isinstance(row, str):
                entries.append(Entry(where=where, error=row))
                continue
            if not header_checked:
                cols = list(row)
                has_text = modality == "text" and any(c in row for c in src.text_columns)
                if "label" not in row or not ("path" in row or has_text):
                    need = "path (or " + "/".join(src.text_columns) + " for text)" if modality == "text" else "path"
                    raise ConfigError(f"{key}: manifest {mpath} needs columns label and {need}; it has "
                                      f"{', '.join(map(str, cols))} (rename them, or name header-less "
                                      f"columns with 'columns')")
                header_checked = True
            mod = row.get("modality")
            if mod is not None and str(mod).strip():
                mod = str(mod).strip().lower()
                if mod not in MODALITIES:
                    entries.append(Entry(where=where, error=f"unknown modality {mod!r} (expected one of "
                                                           f"{', '.join(MODALITIES)})"))
                    continue
                if mod != modality:
                    continue
            raw = _label(row.get("label", ""))
            split, err = (forced, None) if forced else _split_value(row.get("split"))
            text_cols = [c for c in src.text_columns if c in row] if modality == "text" else []
            e = Entry(where=where, raw=raw or None, split=split, error=err)
            if text_cols and not (row.get("path") or "").strip():
                e.text = " ".join(str(row[c] or "").strip() for c in text_cols)
            else:
                p = str(row.get("path") or "").strip()
                if not p:
                    e.error = e.error or "empty path"
                else:
                    e.path = Path(p) if Path(p).is_absolute() else base / p
                    e.where = str(e.path)
                    if not Path(p).is_absolute() and not e.path.resolve().is_relative_to(Path(base).resolve()):
                        # a relative path climbing out of the data folder: a typo, or a file never meant as data
                        e.error = e.error or (f"relative path {p!r} leads outside {base} (listed in {mpath} line "
                                              f"{line}); write it as an absolute path if it is meant")
                    row_id = f"{mpath}:{line}"
                    first = listed.setdefault(e.path.resolve(), row_id)
                    if first != row_id:  # the same file twice could land in train and test, or in two classes
                        raise ConfigError(f"{key}: {p} is listed twice ({first} and {row_id}); list every file once")
                    if not e.path.is_file() and e.error is None:
                        e.error = f"file not found (listed in {mpath} line {line})"
            if not raw and e.error is None:
                e.error = "missing label"
            entries.append(e)
    if not entries:
        raise ConfigError(f"{src.key}.manifest: no {modality} rows in {', '.join(map(str, src.manifest.values()))}")
    classes, names = resolve_names(entries, _order(e.raw for e in entries if e.raw), src)
    return Scan(entries, classes, names)


def scan_esc50(src: SourceSpec, modality: str) -> Scan:
    meta = src.root / "meta" / "esc50.csv"
    if not meta.is_file():
        raise ConfigError(f"{src.key}.root: {meta} does not exist (expected ESC-50's layout: meta/esc50.csv, audio/)")
    with open(meta, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"filename", "fold", "target", "category"}
        if not need <= set(reader.fieldnames or ()):
            raise ConfigError(f"{src.key}.root: {meta} lacks the ESC-50 columns {', '.join(sorted(need))}")
        entries, targets = [], {}
        for row in reader:
            if src.esc10 and str(row.get("esc10", "")).strip().lower() not in ("true", "1"):
                continue
            path = src.root / "audio" / row["filename"].strip()
            e = Entry(where=str(path), path=path, raw=row["category"].strip())
            try:
                e.split = "test" if int(row["fold"]) in src.test_folds else "train"
                targets.setdefault(e.raw, int(row["target"]))
            except ValueError:
                e.error = f"bad fold/target in {meta} line {reader.line_num}"
            if e.error is None and not path.is_file():
                e.error = f"file not found (listed in {meta} line {reader.line_num})"
            entries.append(e)
    if not entries:
        raise ConfigError(f"{src.key}.root: {meta} lists no clips")
    natural = sorted(targets, key=lambda r: (targets[r], r))
    classes, names = resolve_names(entries, natural, src)
    return Scan(entries, classes, names)


def _hf_splits(src: SourceSpec) -> tuple[dict[str | None, Any], list[Path]]:
    """The dataset's splits (name -> Dataset; None = one unsplit Dataset) and the files it is read from."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{src.key}: layout 'hf' needs the datasets package: pip install 'mmcl[hf]'") from None
    from mmcl.paths import cache_dir

    root = src.root
    saved = [root / "dataset_dict.json", root / "dataset_info.json", root / "state.json"]
    if any(p.is_file() for p in saved):
        try:
            ds = datasets.load_from_disk(str(root))
        except Exception as e:  # noqa: BLE001 - damaged or foreign folders raise many types
            raise ConfigError(f"{src.key}.root: {root} cannot be read with datasets.load_from_disk "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        splits = dict(ds) if isinstance(ds, datasets.DatasetDict) else {None: ds}
        return splits, sorted(p for p in root.rglob("*") if p.is_file())
    files = sorted(p for p in root.rglob("*.parquet") if not any(x.startswith(".") for x in p.relative_to(root).parts))
    if not files:
        raise ConfigError(f"{src.key}.root: {root} is neither a dataset saved with save_to_disk (no dataset_info.json "
                          f"or dataset_dict.json) nor a folder of parquet files")

    def split_of(p: Path) -> str:
        for part in [*p.relative_to(root).parent.parts[::-1], p.stem]:
            name = re.split(r"[-_.]", part.lower())[0]
            if name in SPLIT_NAMES or part.lower() in SPLIT_NAMES:
                return SPLIT_NAMES.get(part.lower(), SPLIT_NAMES.get(name))
        return ""

    by_split: dict[str, list[str]] = {}
    for p in files:
        by_split.setdefault(split_of(p), []).append(str(p))
    if "" in by_split and len(by_split) > 1:
        raise ConfigError(f"{src.key}.root: some parquet files name a split (train/test) and some do not, e.g. "
                          f"{by_split[''][0]}; name every file's split, or none")
    try:
        ds = datasets.load_dataset("parquet", data_files={k or "train": v for k, v in by_split.items()},
                                   cache_dir=str(cache_dir() / "hf-datasets"))
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{src.key}.root: cannot read the parquet files below {root} "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    return ({None: ds["train"]} if "" in by_split else dict(ds)), files


def _hf_column(src: SourceSpec, ds, modality: str) -> str:
    import datasets

    cols = list(ds.features)
    if src.column is not None:
        if src.column not in ds.features:
            raise ConfigError(f"{src.key}.column: no column {src.column!r} in {src.root}; it has {', '.join(cols)}")
        return src.column
    kind = {"image": datasets.Image, "audio": datasets.Audio}.get(modality)
    found = [c for c, f in ds.features.items() if c != src.label_column and (
        isinstance(f, kind) if kind else isinstance(f, datasets.Value) and f.dtype in ("string", "large_string"))]
    if not found:
        raise ConfigError(f"{src.key}: no {modality} column in {src.root} (columns: {', '.join(cols)}); "
                          f"name it with 'column'")
    if len(found) > 1:
        raise ConfigError(f"{src.key}: {src.root} has several {modality} columns ({', '.join(found)}); "
                          f"name one with 'column'")
    return found[0]


def _hf_cell(ds, column: str, row: int):
    return ds[row][column]


def scan_hf(src: SourceSpec, modality: str) -> Scan:
    import hashlib

    import datasets

    datasets.disable_progress_bars()  # mmcl shows its own progress
    splits, files = _hf_splits(src)
    entries, ignored, natural = [], Counter(), []
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    for name, ds in splits.items():
        split = None if name is None else SPLIT_NAMES.get(str(name).lower())
        if name is not None and split is None:  # e.g. IMDB's "unsupervised": no labels to learn from
            ignored[f"split {name}"] += len(ds)
            continue
        if src.label_column not in ds.features:
            raise ConfigError(f"{src.key}.label_column: no column {src.label_column!r} in {src.root}"
                              f"{f' (split {name})' if name else ''}; it has {', '.join(ds.features)}")
        column = _hf_column(src, ds, modality)
        feat = ds.features[src.label_column]
        if isinstance(feat, datasets.ClassLabel):
            natural += [n for n in feat.names if n not in natural]
            raws = [None if v is None or v < 0 else feat.names[v] for v in ds[src.label_column]]
        else:
            raws = [None if v is None else _label(v) for v in ds[src.label_column]]
        if modality == "text":
            values = ds[column]
        else:  # the encoded file's bytes, decoded by mmcl's readers like any file on disk
            ds = ds.cast_column(column, datasets.Image(decode=False) if modality == "image" else
                                datasets.Audio(decode=False))
        h.update(f"{name}|{ds._fingerprint}|{column}|{src.label_column}\n".encode())
        for i, raw in enumerate(raws):
            e = Entry(where=f"{src.root} [{name or 'data'} row {i}]", raw=raw, split=split,
                      error=None if raw else "missing label", ident=f"{name}|{i}")
            if modality == "text":
                e.text = values[i] if isinstance(values[i], str) else ""
            else:
                e.fetch = partial(_hf_cell, ds, column, i)
            entries.append(e)
    if not entries:
        raise ConfigError(f"{src.key}.root: {src.root} has no rows in a train or test split")
    classes, names = resolve_names(entries, natural or _order(e.raw for e in entries if e.raw), src)
    return Scan(entries, classes, names, dict(ignored), identity=h.hexdigest())


SCANNERS = {"folders": scan_folders, "manifest": scan_manifest, "esc50": scan_esc50, "hf": scan_hf}


def scan(src: SourceSpec, modality: str) -> Scan:
    return SCANNERS[src.layout](src, modality)
