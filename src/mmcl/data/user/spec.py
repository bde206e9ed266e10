"""The `user` benchmark's YAML: sources and experiences, checked key by key.

Every problem is a one-line `ConfigError` naming the config key (`benchmark.experiences[1].source.root`)
and, for paths, the file or directory that is missing.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmcl.errors import ConfigError
from mmcl.stream import MODALITIES

LAYOUTS = ("folders", "manifest", "esc50", "hf")
COMMON_KEYS = ("name", "modality", "layout", "seconds")
LAYOUT_KEYS = {
    "folders": ("root", "label_names", "test_list"),
    "manifest": ("manifest", "root", "label_names", "label_base", "columns", "text_columns"),
    "esc50": ("root", "test_folds", "esc10"),
    "hf": ("root", "column", "label_column", "label_names"),
}
REQUIRED = {"folders": ("root",), "manifest": ("manifest",), "esc50": ("root",), "hf": ("root",)}
HF_MODALITIES = ("image", "audio", "text")  # what a Hugging Face dataset's cells are read as
EXPERIENCE_KEYS = ("source", "modality", "classes", "name", "template", "parts")
SPLIT_KEYS = ("train", "test")

#: text each class anchor embeds, per modality ({} = the class's plain-English name)
DEFAULT_TEMPLATES = {
    "image": "an image of a {}",
    "video": "a video of {}",
    "audio": "the sound of {}",
    "depth": "a depth map of a {}",
    "text": "a text about {}",
}


@dataclass
class SourceSpec:
    key: str  # where it was declared, for error messages
    name: str
    layout: str
    modality: str | None = None
    root: Path | None = None
    manifest: dict[str | None, Path] = field(default_factory=dict)  # split (None = from the rows) -> file
    label_names: Path | None = None
    label_base: int = 0
    columns: list[str] | None = None
    text_columns: list[str] = field(default_factory=lambda: ["text"])
    test_list: Path | None = None
    test_folds: list[int] = field(default_factory=lambda: [5])
    esc10: bool = False
    seconds: float | None = None
    column: str | None = None  # hf: the column holding the samples (default: found by its feature type)
    label_column: str = "label"  # hf: the column holding the labels (ClassLabel names become class names)

    def identity(self) -> tuple:
        """Sources with the same identity are scanned once (an inline source repeated in experiences)."""
        return (self.layout, str(self.root), tuple(sorted((str(k), str(v)) for k, v in self.manifest.items())),
                str(self.label_names), self.label_base, tuple(self.columns or ()), tuple(self.text_columns),
                str(self.test_list), tuple(self.test_folds), self.esc10, self.seconds, self.column,
                self.label_column)

    def describe(self) -> str:
        where = self.root if self.layout != "manifest" else ", ".join(str(p) for p in self.manifest.values())
        return f"{self.layout} {where}"


@dataclass
class ExperienceSpec:
    key: str
    source: SourceSpec
    modality: str
    classes: Any = None  # None = all; list of names; "a:b" slice of the source's class order
    name: str | None = None
    template: str | None = None
    parts: int = 1


def _unknown(key: str, k: str, valid) -> ConfigError:
    close = difflib.get_close_matches(str(k), list(valid), n=1, cutoff=0.5)
    hint = f"; closest valid key: '{close[0]}'" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{key}.{k}'{hint}")


def _path(key: str, value: Any, kind: str) -> Path:
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise ConfigError(f"config key '{key}' expects a path, got {value!r}")
    p = Path(os.path.expandvars(os.path.expanduser(str(value))))
    if kind == "dir" and not p.is_dir():
        raise ConfigError(f"{key}: directory {p} does not exist" if not p.exists() else f"{key}: {p} is not a directory")
    if kind == "file" and not p.is_file():
        raise ConfigError(f"{key}: file {p} does not exist" if not p.exists() else f"{key}: {p} is not a file")
    return p


def _str_list(key: str, value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, (str, int)) for v in value):
        raise ConfigError(f"config key '{key}' expects a list of column names, got {value!r}")
    return [str(v) for v in value]


def _modality(key: str, value: Any) -> str:
    if value not in MODALITIES:
        raise ConfigError(f"config key '{key}' must be one of {', '.join(MODALITIES)}, got {value!r}")
    return value


def parse_source(key: str, d: Any, named: bool) -> SourceSpec:
    if not isinstance(d, dict):
        raise ConfigError(f"config key '{key}' expects a mapping (layout, root or manifest, ...), got {d!r}")
    layout = d.get("layout")
    if layout is None:
        layout = "manifest" if "manifest" in d else "folders"
    if layout not in LAYOUTS:
        raise ConfigError(f"config key '{key}.layout' must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    valid = COMMON_KEYS + LAYOUT_KEYS[layout]
    for k in d:
        if k not in valid:
            others = [lay for lay in LAYOUTS if k in LAYOUT_KEYS[lay]]
            if others:
                raise ConfigError(f"config key '{key}.{k}' does not apply to layout '{layout}' "
                                  f"(it belongs to layout {', '.join(repr(o) for o in others)})")
            raise _unknown(key, k, valid)
    for k in REQUIRED[layout]:
        if d.get(k) is None:
            raise ConfigError(f"config key '{key}.{k}' is required for layout '{layout}'")
    if named and not isinstance(d.get("name"), str):
        raise ConfigError(f"config key '{key}.name' is required: experiences refer to a source by its name")
    s = SourceSpec(key=key, name=str(d.get("name") or key), layout=layout)
    if d.get("modality") is not None:
        s.modality = _modality(f"{key}.modality", d["modality"])
    if layout == "esc50":
        if s.modality not in (None, "audio"):
            raise ConfigError(f"config key '{key}.modality': layout 'esc50' is audio, got {s.modality!r}")
        s.modality = "audio"
    if d.get("root") is not None:
        s.root = _path(f"{key}.root", d["root"], "dir")
    if layout == "manifest":
        m = d["manifest"]
        if isinstance(m, dict):
            for k in m:
                if k not in SPLIT_KEYS:
                    raise _unknown(f"{key}.manifest", k, SPLIT_KEYS)
            if "train" not in m:
                raise ConfigError(f"config key '{key}.manifest.train' is required when the manifest is split by file")
            s.manifest = {k: _path(f"{key}.manifest.{k}", v, "file") for k, v in m.items()}
        else:
            s.manifest = {None: _path(f"{key}.manifest", m, "file")}
    if d.get("label_names") is not None:
        s.label_names = _path(f"{key}.label_names", d["label_names"], "file")
    if d.get("test_list") is not None:
        s.test_list = _path(f"{key}.test_list", d["test_list"], "file")
    if "label_base" in d:
        if not isinstance(d["label_base"], int) or isinstance(d["label_base"], bool):
            raise ConfigError(f"config key '{key}.label_base' expects an integer (the label of the first "
                              f"line of label_names), got {d['label_base']!r}")
        s.label_base = d["label_base"]
    if d.get("columns") is not None:
        s.columns = _str_list(f"{key}.columns", d["columns"])
    if d.get("text_columns") is not None:
        s.text_columns = _str_list(f"{key}.text_columns", d["text_columns"])
    if "test_folds" in d:
        f = d["test_folds"]
        f = [f] if isinstance(f, int) else f
        if not isinstance(f, list) or not f or not all(isinstance(x, int) and 1 <= x <= 5 for x in f):
            raise ConfigError(f"config key '{key}.test_folds' expects ESC-50 folds (1..5), got {d['test_folds']!r}")
        s.test_folds = list(f)
    if "esc10" in d:
        if not isinstance(d["esc10"], bool):
            raise ConfigError(f"config key '{key}.esc10' expects true or false, got {d['esc10']!r}")
        s.esc10 = d["esc10"]
    for k in ("column", "label_column"):
        if d.get(k) is not None:
            if not isinstance(d[k], str) or not d[k].strip():
                raise ConfigError(f"config key '{key}.{k}' expects a column name, got {d[k]!r}")
            setattr(s, k, d[k].strip())
    if layout == "hf" and s.modality is not None and s.modality not in HF_MODALITIES:
        raise ConfigError(f"config key '{key}.modality': layout 'hf' reads {', '.join(HF_MODALITIES)} columns, "
                          f"got {s.modality!r}")
    if d.get("seconds") is not None:
        v = d["seconds"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 600:
            raise ConfigError(f"config key '{key}.seconds' expects a duration in seconds (0-600], got {v!r}")
        s.seconds = float(v)
    return s


_SLICE = re.compile(r"^\s*(-?\d*)\s*:\s*(-?\d*)\s*$")


def parse_experience(key: str, d: Any, sources: dict[str, SourceSpec]) -> ExperienceSpec:
    if not isinstance(d, dict):
        raise ConfigError(f"config key '{key}' expects a mapping (source, modality, classes), got {d!r}")
    for k in d:
        if k not in EXPERIENCE_KEYS:
            raise _unknown(key, k, EXPERIENCE_KEYS)
    if d.get("source") is None:
        raise ConfigError(f"config key '{key}.source' is required (a source name or a mapping with a layout)")
    src = d["source"]
    if isinstance(src, str):
        if src not in sources and ("/" in src or "\\" in src or src.startswith(("~", "."))):
            raise ConfigError(f"config key '{key}.source': {src!r} looks like a path, not a source name; "
                              f"write source: {{root: {src}}} (class folders) or source: {{manifest: {src}}}")
        if src not in sources:
            close = difflib.get_close_matches(src, list(sources), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            avail = ", ".join(sources) or "none: add a benchmark.sources list, or give the source inline"
            raise ConfigError(f"config key '{key}.source': unknown source '{src}'{hint}; sources: {avail}")
        source = sources[src]
    else:
        source = parse_source(f"{key}.source", src, named=False)
    modality = d.get("modality")
    if modality is not None:
        modality = _modality(f"{key}.modality", modality)
        if source.modality is not None and modality != source.modality and source.layout != "manifest":
            raise ConfigError(f"config key '{key}.modality' is {modality!r} but its source is {source.modality!r}")
    modality = modality or source.modality
    if modality is None:
        raise ConfigError(f"config key '{key}.modality' is required (one of {', '.join(MODALITIES)}) "
                          f"when the source does not name one")
    if source.layout == "hf" and modality not in HF_MODALITIES:
        raise ConfigError(f"config key '{key}.modality': layout 'hf' reads {', '.join(HF_MODALITIES)} columns, "
                          f"got {modality!r}")
    if source.seconds is not None and modality != "audio":
        raise ConfigError(f"config key '{source.key}.seconds' applies to audio sources only")
    e = ExperienceSpec(key=key, source=source, modality=modality)
    classes = d.get("classes")
    if classes is None or classes == "all":
        e.classes = None
    elif isinstance(classes, str) and _SLICE.match(classes):
        e.classes = classes
    elif isinstance(classes, (str, int)) and not isinstance(classes, bool):
        e.classes = [str(classes)]
    elif isinstance(classes, list) and classes and all(isinstance(c, (str, int)) and not isinstance(c, bool)
                                                       for c in classes):
        e.classes = [str(c) for c in classes]
    else:
        raise ConfigError(f"config key '{key}.classes' expects 'all', a list of class names or a slice "
                          f"like '0:20', got {classes!r}")
    if d.get("name") is not None:
        if not isinstance(d["name"], str) or not d["name"].strip():
            raise ConfigError(f"config key '{key}.name' expects a non-empty string, got {d['name']!r}")
        e.name = d["name"].strip()
    if d.get("template") is not None:
        t = d["template"]
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ConfigError(f"config key '{key}.template' must contain '{{}}' once (where the class name goes), "
                              f"got {t!r}")
        e.template = t
    if "parts" in d:
        if not isinstance(d["parts"], int) or isinstance(d["parts"], bool) or d["parts"] < 1:
            raise ConfigError(f"config key '{key}.parts' expects a positive integer, got {d['parts']!r}")
        e.parts = d["parts"]
    return e


def parse(experiences: Any, sources: Any) -> list[ExperienceSpec]:
    """Check `benchmark.sources` and `benchmark.experiences`; return the experiences (parts not yet expanded)."""
    if not isinstance(sources, list):
        raise ConfigError(f"config key 'benchmark.sources' expects a list of named sources, got {sources!r}")
    named: dict[str, SourceSpec] = {}
    for i, d in enumerate(sources):
        s = parse_source(f"benchmark.sources[{i}]", d, named=True)
        if s.name in named:
            raise ConfigError(f"config key 'benchmark.sources[{i}].name': source '{s.name}' is defined twice")
        named[s.name] = s
    if not isinstance(experiences, list) or not experiences:
        raise ConfigError("config key 'benchmark.experiences' must list the experiences of the user stream, e.g. "
                          "[{modality: image, source: {layout: folders, root: /data/x}}]")
    return [parse_experience(f"benchmark.experiences[{i}]", d, named) for i, d in enumerate(experiences)]
