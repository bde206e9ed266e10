"""`user`: a stream of your own data on disk (files or Hugging Face datasets), described in YAML — no code.

    benchmark:
      name: user
      sources:                       # optional: named sources, used by several experiences
        - {name: inr, modality: image, layout: folders, root: /data/imagenet-r, label_names: /data/inr-names.txt}
      experiences:
        - {source: inr, classes: "0:100", parts: 5}          # 5 experiences of 20 classes
        - {modality: audio, source: {layout: esc50, root: /data/ESC-50-master}, classes: [dog, rooster]}

Each experience names a source (a named one, or a mapping inline), its modality (image, video, audio,
depth, text) and the classes it takes (all by default; a list of names; or a slice of the source's
class order such as "0:20"); `parts: k` splits them over k experiences, `name` and `template` (the
anchor text, default per modality: "an image of a {}", "the sound of {}", ...) are optional.
Layouts and formats: `layouts.py` and `readers.py` beside this file; docs/your-data.md.

Before the first experience every sample file is decoded once; files that cannot be used (corrupt,
truncated, empty, wrong shape, unknown label, missing) are listed one line each, `<path>: <reason>`.
`data.on_error=fail` (default) stops with exit status 2 and writes only `data_errors.txt` into the
run directory; `data.on_error=skip` leaves them out, counts them in metrics.json (`stream_info`) and
lists them in `data_errors.txt`. Decoded samples become token features through mm5's frozen encoders
(`encode_modality`), or through a Hugging Face checkpoint in a local directory where the config says
`encoder.<modality>: hf:<dir>` (`mmcl.models.hf`), so the prompted model and every method of the modality
setting run unchanged; features are cached under $MMCL_CACHE/features/, keyed by the list of files with
their sizes and modification times and by the encoder (a checkpoint's path and a fingerprint of its
files): a cached source is not decoded again until a file or the checkpoint changes.
"""
from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from mmcl.errors import ConfigError
from mmcl.paths import cache_dir
from mmcl.data.registry import BuildContext, register_benchmark
from mmcl.errors import DataError
from mmcl.data.anchors import text_anchors
from mmcl.data.user import readers
from mmcl.data.user.layouts import Entry, Scan, scan
from mmcl.data.user.spec import DEFAULT_TEMPLATES, ExperienceSpec, SourceSpec, parse
from mmcl.results import atomic_write_text
from mmcl.stream import MODALITIES, Experience, Stream, TensorSet

DECODE_VERSION = "1"  # bump when a reader's decoded samples change
MEMORY_BUDGET = 2 << 30  # decoded samples kept between validation and encoding; beyond it they are re-decoded
ENCODE_CHUNK = 512
MAX_LISTED = 100  # bad files listed in metrics.json (all of them are in data_errors.txt)


@dataclass
class UserParams:
    ranges = {"split_seed": ">=0", "test_fraction": "(0,1)", "train_per_class": ">=0", "test_per_class": ">=0"}
    custom_encoders = True  # class attribute, not a key: `encoder.<modality>=hf:<dir>` applies to this benchmark

    experiences: list = field(default_factory=list)  # see the module doc
    sources: list = field(default_factory=list)  # named sources: [{name, modality, layout, ...}]
    split_seed: int = 0  # seed of the per-class train/test split where the data has none
    test_fraction: float = 0.2  # share of each class that becomes test data in that split
    train_per_class: int = 0  # > 0: a seeded subsample of at most this many training files per class
    test_per_class: int = 0  # > 0: the same for test files

    @staticmethod
    def check(bench: dict) -> None:
        """Keys and paths of the experiences and sources, at config time (before any run directory exists)."""
        parse(bench.get("experiences"), bench.get("sources", []))


class _Source:
    """One (source, modality): its scan, the files the stream uses, their split and features."""

    def __init__(self, spec: SourceSpec, modality: str, encoder=None):
        self.spec, self.modality = spec, modality
        self.encoder = encoder  # mmcl.models.hf.HFSpec, or None for the bundled encoders
        self._opts: dict | None = None
        self.scan: Scan | None = None
        self.used: dict[str, str] = {}  # raw label -> key of the experience that takes it
        self.entries: list[Entry] = []  # files to decode, sorted by `where`
        self.split: list[int] = []  # 0 train / 1 test per entry
        self.scan_errors: list[tuple[str, str]] = []
        self.decode_errors: dict[str, str] = {}
        self.samples: list = []  # per entry: decoded sample, None (bad) or False (good, not kept in memory)
        self.audio_seconds: float | None = None  # the duration every clip of an audio source is fitted to
        self.key = ""
        self.cached = False
        self.feats: dict[str, torch.Tensor] = {}
        self.by_class: dict[str, tuple[list[int], list[int]]] = {}  # raw -> (train rows, test rows) of features

    @property
    def label(self) -> str:
        return f"{self.spec.name} ({self.modality})" if self.spec.name != self.spec.key else f"{self.modality} source"

    # -- which files -----------------------------------------------------------------------
    def select(self, p: UserParams) -> None:
        """Entries of the used classes, split (seeded where the data has no split) and subsampled."""
        known = set(self.scan.classes)
        by_class: dict[str, list[Entry]] = {}
        for e in self.scan.entries:
            if e.raw in self.used:
                by_class.setdefault(e.raw, []).append(e)
            elif e.error is not None and (e.raw is None or e.raw not in known):
                self.scan_errors.append((e.where, e.error))  # unplaceable: unknown label, unreadable row
        chosen: list[tuple[Entry, int]] = []
        for raw, es in by_class.items():
            es = sorted(es, key=lambda e: e.where)
            crc = zlib.crc32(raw.encode())
            rng = np.random.default_rng([p.split_seed, crc])
            free = [e for e in es if e.split is None]
            test_ids = set()
            if len(free) >= 2:
                n_test = max(1, int(round(len(free) * p.test_fraction)))
                test_ids = {id(free[i]) for i in rng.permutation(len(free))[:n_test]}
            for s, limit in ((0, p.train_per_class), (1, p.test_per_class)):
                part = [e for e in es if (e.split == "test" or id(e) in test_ids) == bool(s)]
                if limit and len(part) > limit:
                    pick = np.random.default_rng([p.split_seed, crc, 1 + s]).permutation(len(part))[:limit]
                    part = [part[i] for i in sorted(pick)]
                chosen += [(e, s) for e in part]
        chosen.sort(key=lambda t: t[0].where)
        for e, s in chosen:
            if e.error is not None:
                self.scan_errors.append((e.where, e.error))
            else:
                self.entries.append(e)
                self.split.append(s)

    def cache_key(self) -> str:
        from mmcl.data.mm5 import FEATURE_VERSION, TOKENS, WIDTH
        from mmcl.models import encoders as enc

        h = hashlib.sha256()
        for e in self.entries:
            if e.path is not None:
                st = e.path.stat()
                h.update(f"{e.path.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            elif e.fetch is not None:  # a dataset's cell: the dataset (scan identity) and its split and row
                h.update(f"cell|{e.ident}\n".encode())
            else:
                h.update(b"text|" + e.text.encode() + b"\n")
        h.update(self.scan.identity.encode())
        from mmcl.data.cache import digest

        extra = () if self.encoder is None else (self.encoder.identity(),)
        return digest("user", DECODE_VERSION, self.modality, self.spec.seconds, enc.EFFNET_ID, enc.MINILM_ID,
                      TOKENS, WIDTH, FEATURE_VERSION.get(self.modality, "1"), h.hexdigest(), *extra)

    def paths(self):
        d = cache_dir() / "features"
        stem = f"user-{self.modality}-{self.key}"
        return d / f"{stem}.safetensors", d / f"{stem}.meta.json"

    # -- decode once, encode once ------------------------------------------------------------
    @property
    def opts(self) -> dict:
        """Reader options for the encoder (a checkpoint's input size or sampling rate); loads it once."""
        if self._opts is None:
            from mmcl.models import hf

            self._opts = hf.decode_options(self.encoder, self.modality)
        return self._opts

    def _decode(self, e: Entry):
        if e.fetch is not None:
            return readers.decode_value(self.modality, e.fetch(), **self.opts)
        if e.path is None:
            return readers.clean_text(e.text)
        return readers.decode(self.modality, e.path, **self.opts)

    def validate(self, progress: bool, budget: list[int]) -> None:
        from tqdm.auto import tqdm

        self.samples = []
        durations = []
        for e in tqdm(self.entries, desc=f"checking {self.label}", unit="file", leave=False,
                      disable=None if progress else True):
            try:
                s = self._decode(e)
            except readers.BadFile as b:
                self.decode_errors[e.where] = str(b)
                self.samples.append(None)
                continue
            if self.modality == "audio":
                durations.append(readers.audio_seconds(s, self.opts.get("wave_rate")))
            n = readers.sample_bytes(s)
            if budget[0] >= n:
                budget[0] -= n
                self.samples.append(s)
            else:
                self.samples.append(False)  # decodable; decoded again when encoded
        if self.modality == "audio":  # default: the longest clip (at least mm5's 0.96 s, at most 10 s)
            self.audio_seconds = self.spec.seconds or min(max(max(durations, default=1.0), 0.96), 10.0)

    def encode(self, progress: bool = False) -> dict[str, torch.Tensor]:
        from mmcl.data.mm5 import TOKENS, WIDTH, _pad, encode_modality

        ok = [i for i, e in enumerate(self.entries) if e.where not in self.decode_errors]
        samples = self.samples if len(self.samples) == len(self.entries) else [False] * len(self.entries)
        tokens, masks, zs = [], [], []
        for start in range(0, len(ok), ENCODE_CHUNK):
            chunk = []
            for i in ok[start:start + ENCODE_CHUNK]:
                s = samples[i]
                if s is None or s is False:
                    try:
                        s = self._decode(self.entries[i])
                    except readers.BadFile as b:  # changed on disk since it was checked
                        raise DataError([f"{self.entries[i].where}: {b}"]) from None
                if self.modality == "audio":
                    rate = self.opts.get("wave_rate")
                    s = readers.fit_wave(s, self.audio_seconds, rate) if rate else readers.fit_audio(s, self.audio_seconds)
                chunk.append(s)
            if self.encoder is None:
                f = encode_modality(self.modality, chunk, progress)
            else:
                from mmcl.models import hf

                f = hf.encode(self.encoder, self.modality, chunk, self.audio_seconds)
            t, m = _pad(f["tokens"])
            tokens.append(t)
            masks.append(m)
            zs.append(f["zs"].float())
        self.samples = []
        flags = torch.zeros(len(self.entries), dtype=torch.bool)
        flags[ok] = True
        if not ok:
            return {"tokens": torch.zeros(0, TOKENS, WIDTH, dtype=torch.float16),
                    "mask": torch.zeros(0, TOKENS, dtype=torch.bool), "zs": torch.zeros(0, 384), "ok": flags}
        return {"tokens": torch.cat(tokens), "mask": torch.cat(masks), "zs": torch.cat(zs), "ok": flags}


def starts_with_vowel_sound(name: str) -> bool:
    """Whether "an" goes before `name`: by its sound, not its first letter ("a one", "a unicorn", "an hour",
    "an 8")."""
    w = name.strip().lower()
    if not w:
        return False
    if w[0].isdigit():  # 8, 11, 18, 80...: eight, eleven, eighteen, eighty
        return w[0] == "8" or re.match(r"(11|18)(\D|$)", w) is not None
    if re.match(r"(one\b|once\b|uni|use|usu|uti|ure|euro?|ewe|u[bklr][aeiou])", w):
        return False  # a "w" or "y" sound
    if re.match(r"(hour|honest|honou?r|heir)", w):
        return True  # a silent h
    return w[0] in "aeiou"


def anchor_text(template: str, name: str) -> str:
    """The class's anchor sentence; "a {}" becomes "an {}" before a vowel sound ("an image of an elephant",
    "an image of a one")."""
    if starts_with_vowel_sound(name):
        template = re.sub(r"\b([Aa]) \{\}", r"\1n {}", template)
    return template.format(name)


def _select_classes(e: ExperienceSpec, sc: Scan) -> list[str]:
    if e.classes is None:
        return list(sc.classes)
    if isinstance(e.classes, str):  # "a:b" over the source's class order
        a, b = (int(x) if x.strip() else None for x in e.classes.split(":"))
        picked = sc.classes[a:b]
        if not picked:
            raise ConfigError(f"config key '{e.key}.classes': slice {e.classes!r} selects no class "
                              f"(the source has {len(sc.classes)})")
        return picked
    lookup: dict[str, str] = {}
    for raw in sc.classes:
        for k in (raw, sc.names[raw]):
            lookup.setdefault(k.lower(), raw)
    out = []
    for c in e.classes:
        raw = lookup.get(c.strip().lower())
        if raw is None:
            import difflib

            close = difflib.get_close_matches(c, [sc.names[r] for r in sc.classes], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            shown = ", ".join(sc.names[r] for r in sc.classes[:12]) + (" ..." if len(sc.classes) > 12 else "")
            raise ConfigError(f"config key '{e.key}.classes': unknown class '{c}'{hint}; "
                              f"the source has {len(sc.classes)}: {shown}")
        if raw in out:
            raise ConfigError(f"config key '{e.key}.classes': class '{c}' is listed twice")
        out.append(raw)
    return out


@register_benchmark("user", UserParams)
def build(p: UserParams, ctx: BuildContext) -> Stream:
    """Your own data: class folders, manifests (CSV/JSONL), Hugging Face datasets or ESC-50, described in YAML."""
    from mmcl.models import encoders as enc

    if ctx.stream.get("experiences_per_modality", 1) != 1:
        raise ConfigError("stream.experiences_per_modality applies to mm5; in a user stream give an experience "
                          "'parts: k' to split its classes over k experiences")
    if not 0 < p.test_fraction < 1:
        raise ConfigError(f"config key 'benchmark.test_fraction' must be in (0, 1), got {p.test_fraction}")
    for k in ("train_per_class", "test_per_class"):
        if getattr(p, k) < 0:
            raise ConfigError(f"config key 'benchmark.{k}' must be >= 0 (0 = all), got {getattr(p, k)}")
    from mmcl.models import hf

    policy = ctx.on_error
    progress = ctx.progress
    specs = parse(p.experiences, p.sources)
    encoders = hf.specs(ctx.encoders)  # modality -> local checkpoint (the others: bundled encoders)

    # 1. scan every source once; expand experiences into their classes
    sources: dict[tuple, _Source] = {}
    plan: list[tuple[ExperienceSpec, _Source, list[str], int]] = []
    for e in specs:
        src = sources.setdefault((e.source.identity(), e.modality), _Source(e.source, e.modality, encoders.get(e.modality)))
        if src.scan is None:
            src.scan = scan(e.source, e.modality)
        raws = _select_classes(e, src.scan)
        for raw in raws:
            if raw in src.used:
                raise ConfigError(f"config key '{e.key}.classes': class '{src.scan.names[raw]}' is already taken by "
                                  f"{src.used[raw]} (each class enters the stream once)")
            src.used[raw] = e.key
        if e.parts > len(raws):
            raise ConfigError(f"config key '{e.key}.parts' is {e.parts} but the experience has {len(raws)} classes")
        for i, part in enumerate(np.array_split(np.arange(len(raws)), e.parts)):
            plan.append((e, src, [raws[j] for j in part], i))
    if ctx.stream.get("order") == "random":
        perm = np.random.default_rng(ctx.order_seed).permutation(len(plan))
        plan = [plan[i] for i in perm]

    # 2. which files; cached features or decode every file once (validation)
    budget = [MEMORY_BUDGET]
    for src in sources.values():
        src.select(p)
        src.key = src.cache_key()
        fpath, epath = src.paths()
        if fpath.is_file() and epath.is_file():
            try:
                meta = json.loads(epath.read_text())
                src.decode_errors, src.audio_seconds = dict(meta["errors"]), meta["audio_seconds"]
                src.cached = True
            except (OSError, ValueError, KeyError, TypeError):
                src.cached = False
        if not src.cached:
            src.validate(progress, budget)
    lines, seen = [], set()
    for src in sources.values():
        for where, why in src.scan_errors + sorted(src.decode_errors.items()):
            if where not in seen:
                seen.add(where)
                lines.append(f"{where}: {why}")
    if lines and policy == "fail":
        raise DataError(lines)

    # 3. features (encode what is not cached)
    from mmcl.data.cache import cached_tensors

    for src in sources.values():
        fpath, epath = src.paths()
        if not src.cached:
            atomic_write_text(epath, json.dumps({"errors": src.decode_errors, "audio_seconds": src.audio_seconds}))
        src.feats = cached_tensors(fpath, lambda src=src: src.encode(progress))
        ok = src.feats["ok"].tolist()
        row = 0
        for i, e in enumerate(src.entries):
            if ok[i]:
                src.by_class.setdefault(e.raw, ([], []))[src.split[i]].append(row)
                row += 1

    # 4. experiences, class ids in order of first appearance; tokens of one width (a checkpoint may be wider)
    width = max(src.feats["tokens"].shape[-1] for src in sources.values())
    exps, names, anchor_texts, class_mod = [], [], [], []
    exp_names = [f"{e.name or src.modality}-{part + 1}" if e.parts > 1 else (e.name or src.modality)
                 for e, src, _, part in plan]
    dups, k = {n for n, c in Counter(exp_names).items() if c > 1}, Counter()
    for i, n in enumerate(exp_names):  # several experiences of one modality: image-1, image-2, ...
        if n in dups:
            k[n] += 1
            exp_names[i] = f"{n}-{k[n]}"
    if len(set(exp_names)) != len(exp_names):
        dup = Counter(exp_names).most_common(1)[0][0]
        raise ConfigError(f"benchmark.experiences: two experiences are named '{dup}'; give them distinct names")
    for (e, src, raws, part), name in zip(plan, exp_names):
        ids = list(range(len(names), len(names) + len(raws)))
        template = e.template or DEFAULT_TEMPLATES[src.modality]
        for raw in raws:
            anchor_texts.append(anchor_text(template, src.scan.names[raw]))
            names.append(anchor_texts[-1])
            class_mod.append(src.modality)

        def subset(s: int) -> TensorSet:
            rows, ys = [], []
            for cid, raw in zip(ids, raws):
                sel = src.by_class.get(raw, ([], []))[s]
                if not sel:
                    what = "training" if s == 0 else "test"
                    raise ConfigError(f"{e.key}: class '{src.scan.names[raw]}' has no usable {what} files in "
                                      f"{src.spec.describe()} (check the split, test_fraction and skipped files)")
                rows += sel
                ys += [cid] * len(sel)
            r = torch.tensor(rows, dtype=torch.long)
            tokens = src.feats["tokens"][r]
            if tokens.shape[-1] < width:
                tokens = torch.nn.functional.pad(tokens, (0, width - tokens.shape[-1]))
            return TensorSet({"tokens": tokens, "mask": src.feats["mask"][r],
                              "zs": src.feats["zs"][r].float(),
                              "m": torch.full((len(rows),), MODALITIES.index(src.modality), dtype=torch.long),
                              "y": torch.tensor(ys, dtype=torch.long)})

        exps.append(Experience(len(exps), name, subset(0), subset(1), modality=src.modality, classes=ids))
    anchors = text_anchors(anchor_texts, ctx.anchor_template)

    info = {
        "source": "user data (benchmark.experiences)",
        "split_seed": p.split_seed, "test_fraction": p.test_fraction,
        "train_per_class": p.train_per_class, "test_per_class": p.test_per_class,
        "encoders": {m: (encoders[m].describe() if m in encoders else enc.MINILM_ID if m == "text" else enc.EFFNET_ID)
                     for m in sorted({src.modality for src in sources.values()})},
        "anchors": enc.MINILM_ID,
        "sources": [],
        "data_errors": {"policy": policy, "skipped": len(lines), "files": lines[:MAX_LISTED]},
    }
    for src in sources.values():
        ok = src.feats["ok"]
        split = torch.tensor(src.split, dtype=torch.long)
        d = {"name": src.spec.name if src.spec.name != src.spec.key else None, "declared_at": src.spec.key,
             "layout": src.spec.layout, "where": src.spec.describe(), "modality": src.modality,
             "classes": len(src.used), "files": len(src.entries),
             "train": int((ok & (split == 0)).sum()), "test": int((ok & (split == 1)).sum()),
             "skipped": len(src.entries) - int(ok.sum()) + len(src.scan_errors),
             "feature_key": src.key, "cached": src.cached}
        if src.scan.ignored:
            d["ignored_files"] = src.scan.ignored
        if src.modality == "audio":
            d["audio_seconds"] = src.audio_seconds
        info["sources"].append(d)
    return Stream("user", exps, names, class_mod, anchors, info, data_errors=lines)
