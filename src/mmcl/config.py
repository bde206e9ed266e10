"""YAML configs with dotted command-line overrides and validation that names the bad key.

A run's config is the shared defaults below plus its setting's own section (`Setting.schema`),
overlaid by a bundled or user YAML file, overlaid by `key=value` overrides. Method and benchmark
hyper-parameters are validated against the dataclass of the chosen method / benchmark, so every
key a user can type is known.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
from pathlib import Path
from typing import Any

import yaml

from mmcl.errors import ConfigError
from mmcl.paths import cache_dir  # noqa: F401  (re-exported: where computed-once artefacts live)

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = "mm5-er"

#: The keys every setting has (outside `method.*` and `benchmark.*`), with their defaults (and so their types);
#: each setting adds its own (`mmcl.settings`, `Setting.schema`).
BASE: dict[str, Any] = {
    "setting": "modality",
    "seed": 0,
    "benchmark": {"name": "animals"},
    "method": {"name": "finetune"},
    "stream": {
        "order": "fixed",  # fixed | random: order of classes (animals) or modalities (mm5), seeded
        "order_seed": None,  # seed of a random order; default: seed
    },
    "train": {
        "epochs": 5,
        "batch_size": 64,
        "lr": 1e-3,
        "optimizer": "adam",  # adam | sgd
        "momentum": 0.9,
        "weight_decay": 0.0,
        "reset_optimizer": True,  # new optimiser state at every experience
        "fused": False,  # torch's fused Adam/SGD kernel: a faster step, not bitwise equal to the default kernel
    },
    "eval": {
        "batch_size": 1024,
        "future": True,  # also score experiences not yet trained (needed for fwt)
        "split": "test",  # test | validation: score on the test split, or on a seeded per-class
        #                   hold-out of the training split (for choosing hyper-parameters)
        "val_fraction": 0.2,  # share of every class's training samples held out when split=validation
    },
    "logging": {
        "tensorboard": False,
        "progress": True,
        "log_every": 20,
        "wandb": False,  # also log to Weights & Biases (pip install 'mmcl[wandb]')
        "wandb_project": "mmcl",
        "wandb_entity": None,  # default: your W&B default entity
        "wandb_name": None,  # default: the run directory's name
        "wandb_mode": "auto",  # auto (online when logged in, else offline files in DIR/wandb) | online | offline
    },
    "report": True,
    "threads": 0,  # torch intra-op threads; 0 = leave torch's default
    "device": "auto",  # auto (CUDA when available) | cpu | cuda | cuda:N; under torchrun: one GPU per rank
    "precision": "auto",  # auto (bf16 on a GPU that supports it, else fp32) | fp32 | bf16 | fp16 (mixed precision)
}

#: The allowed range of every numeric shared key (">=1", ">0", "[0,1)", ...), checked when the config
#: loads; settings, benchmarks and methods declare theirs in a `ranges` attribute of the same form.
RANGES = {
    "seed": ">=0", "stream.order_seed": ">=0",
    "train.epochs": ">=1", "train.batch_size": ">=1", "train.lr": ">0", "train.momentum": "[0,1)",
    "train.weight_decay": ">=0",
    "eval.batch_size": ">=1", "eval.val_fraction": "(0,1)",
    "logging.log_every": ">=1", "threads": ">=0",
}
#: Keys whose default is None, with the type a value must have.
NULLABLE = {"stream.order_seed": 0, "logging.wandb_entity": "", "logging.wandb_name": ""}

#: Keys whose value may differ between a run and its resumption.
RESUME_FREE = {"logging.progress", "logging.tensorboard", "logging.wandb", "logging.wandb_project",
               "logging.wandb_entity", "logging.wandb_name", "logging.wandb_mode", "report", "threads", "device",
               "precision"}

_CHOICES = {
    "stream.order": ("fixed", "random"),
    "train.optimizer": ("adam", "sgd"),
    "eval.split": ("test", "validation"),
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "logging.wandb_mode": ("auto", "online", "offline"),
}


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"config key '{p}' is a value, not a section (while setting '{key}')")
        d = nxt
    d[parts[-1]] = value


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def bundled_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping with a key given twice (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key '{key}' is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    return data


def find_config(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    cand = CONFIG_DIR / f"{name_or_path}.yaml"
    if cand.is_file():
        return cand
    close = difflib.get_close_matches(name_or_path, bundled_configs(), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ConfigError(
        f"unknown config '{name_or_path}'{hint}; bundled configs: {', '.join(bundled_configs())}"
    )


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def in_range(value, spec: str) -> bool:
    """`value` satisfies `spec`: ">=a", ">a", "<=a", "<a", or an interval "[a,b]", "(a,b)", "[a,b)", "(a,b]"."""
    spec = spec.replace(" ", "")
    for op in (">=", "<=", ">", "<"):
        if spec.startswith(op):
            x = float(spec[len(op):])
            return {">=": value >= x, "<=": value <= x, ">": value > x, "<": value < x}[op]
    lo, hi = (float(v) for v in spec[1:-1].split(","))
    return (value >= lo if spec[0] == "[" else value > lo) and (value <= hi if spec[-1] == "]" else value < hi)


def check_ranges(resolved: dict[str, Any], ranges: dict[str, str]) -> None:
    for key, spec in ranges.items():
        v = resolved.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not in_range(v, spec):
            what = f"in {spec}" if spec[0] in "[(" else f"{spec.rstrip('0123456789.-')} {spec.lstrip('<>=')}"
            raise ConfigError(f"config key '{key}' must be {what}, got {v!r}")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check `value` against the type of `default`; ints are accepted where floats are expected."""
    if default is None and value is not None and key in NULLABLE:
        default = NULLABLE[key]
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e5" or "1e-05" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
    else:
        return value
    raise ConfigError(
        f"config key '{key}' expects {type(default).__name__} (like {default!r}), got {value!r}"
    )


def _schema_for(cfg: dict) -> dict[str, Any]:
    """Flat schema: every valid key -> its default, including the setting's, method's and benchmark's fields."""
    from mmcl.data import BENCHMARKS, benchmark_params
    from mmcl.methods import METHODS, method_hparams
    from mmcl.settings import SETTINGS

    setting = cfg.get("setting", BASE["setting"])
    if setting not in SETTINGS:
        close = difflib.get_close_matches(str(setting), list(SETTINGS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"config key 'setting' must be one of {', '.join(SETTINGS)}, got {setting!r}{hint}")
    scls = SETTINGS[setting]
    schema = flatten(BASE)
    schema.update(flatten(scls.schema))
    schema.update(scls.extra_schema(cfg))
    bname = cfg.get("benchmark", {}).get("name") if isinstance(cfg.get("benchmark"), dict) else None
    mname = cfg.get("method", {}).get("name") if isinstance(cfg.get("method"), dict) else None
    if bname not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark '{bname}'; available: {', '.join(sorted(BENCHMARKS))}")
    if mname not in METHODS:
        raise ConfigError(f"unknown method '{mname}'; available: {', '.join(sorted(METHODS))}")
    kind = scls.variant_of or setting  # a variant takes its parent setting's benchmarks and methods
    b_setting = getattr(benchmark_params(bname), "setting", "modality")
    if b_setting != kind:
        raise ConfigError(f"benchmark '{bname}' belongs to the {b_setting} setting; set setting={b_setting}")
    if kind not in METHODS[mname].settings:
        able = sorted(n for n, c in METHODS.items() if kind in c.settings)
        raise ConfigError(f"method '{mname}' does not support the {setting} setting yet; "
                          f"methods of that setting: {', '.join(able)}")
    for f in dataclasses.fields(benchmark_params(bname)):
        schema[f"benchmark.{f.name}"] = _field_default(f)
    for f in dataclasses.fields(method_hparams(mname)):
        schema[f"method.{f.name}"] = _field_default(f)
    # a method may default some hyper-parameters differently in a setting (e.g. ewc's lambda in scenario)
    for k, v in METHODS[mname].setting_defaults.get(kind, {}).items():
        if f"method.{k}" not in schema:
            raise ValueError(f"method '{mname}': setting_defaults names '{k}', which is not a hyper-parameter")
        schema[f"method.{k}"] = v
    return schema


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _benchmark_owning(key: str) -> str | None:
    """The benchmark whose parameters include `key` (benchmark.<field>), if exactly one does."""
    from mmcl.data import BENCHMARKS

    if not key.startswith("benchmark."):
        return None
    field = key.split(".")[1]
    owners = [n for n, (params, _) in BENCHMARKS.items() if field in {f.name for f in dataclasses.fields(params)}]
    return owners[0] if len(owners) == 1 else None


def validate(cfg: dict) -> dict:
    """Return the fully resolved config (all defaults filled in) or raise ConfigError."""
    from mmcl.data import benchmark_params
    from mmcl.methods import METHODS
    from mmcl.settings import SETTINGS

    schema = _schema_for(cfg)
    resolved: dict[str, Any] = {}
    for key, value in flatten(cfg).items():
        if key not in schema:
            # a section given an empty mapping flattens to the section name itself
            if isinstance(value, dict) and not value and any(k.startswith(key + ".") for k in schema):
                continue
            owner = _benchmark_owning(key)
            if owner:  # e.g. a user stream's keys with benchmark.name left at its default
                raise ConfigError(f"unknown config key '{key}' for benchmark '{cfg['benchmark'].get('name')}': "
                                  f"it belongs to benchmark '{owner}'; set benchmark.name: {owner}")
            close = difflib.get_close_matches(key, list(schema), n=1, cutoff=0.5)
            hint = f"; closest valid key: '{close[0]}'" if close else ""
            raise ConfigError(f"unknown config key '{key}'{hint}")
        resolved[key] = _coerce(key, value, schema[key])
    setting = SETTINGS[cfg.get("setting", BASE["setting"])]
    method_choices = METHODS[cfg["method"]["name"]].choices  # a method's own closed sets
    for key, choices in [*_CHOICES.items(), *setting.choices.items(),
                         *((f"method.{k}", v) for k, v in method_choices.items())]:
        if key in resolved and resolved[key] not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(choices)}, got {resolved[key]!r}")
    out: dict = {}
    for key, default in schema.items():
        set_dotted(out, key, copy.deepcopy(resolved.get(key, default)))
    full = flatten(out)
    check_ranges(full, {**RANGES, **setting.ranges,
                        **{f"benchmark.{k}": v for k, v in
                           getattr(benchmark_params(out["benchmark"]["name"]), "ranges", {}).items()},
                        **{f"method.{k}": v for k, v in METHODS[cfg["method"]["name"]].ranges.items()}})
    from mmcl.device import check_device

    check_device(out["device"])
    setting.check(out)
    setting.check_method(out, METHODS)
    if out["logging"]["wandb"]:
        import importlib.util

        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("config key 'logging.wandb' needs the wandb package: pip install 'mmcl[wandb]'")
    check = getattr(benchmark_params(out["benchmark"]["name"]), "check", None)
    if check is not None:  # the benchmark's own checks of what the schema cannot see (nested lists, paths)
        check(out["benchmark"])
    return out


def load_config(source: str | Path | dict | None, overrides: list[str] | tuple[str, ...] | dict = ()) -> dict:
    """Base defaults <- YAML file (bundled name or path; or a config mapping) <- overrides; validated.

    Overrides are `key=value` strings (values parsed as YAML) or a mapping of dotted keys to values.
    Naming another method or benchmark (`method=er`, `benchmark.name=llava-json`) drops the file's
    other keys of that section: they belong to the file's own method or benchmark; so does a `vlm.vocab`
    cut to the file's benchmark (back to the default, unless the overrides set it)."""
    cfg = copy.deepcopy(BASE)
    if isinstance(source, dict):
        cfg = deep_merge(cfg, {k: v for k, v in source.items() if k != "versions"})  # a run's config.yaml too
    else:
        cfg = deep_merge(cfg, read_yaml(find_config(str(source or DEFAULT_CONFIG))))
    if isinstance(overrides, dict):
        parsed = [(str(k), v) for k, v in overrides.items()]
    elif isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of key=value strings or a mapping, got the string {overrides!r}")
    else:
        parsed = [parse_override(item) for item in overrides]
    for key, value in parsed:  # first: sections whose method / benchmark is replaced
        section = key if key in ("method", "benchmark") and isinstance(value, str) else \
            key[: -len(".name")] if key in ("method.name", "benchmark.name") else None
        if section and isinstance(cfg.get(section), dict) and cfg[section].get("name") != value:
            if section == "benchmark" and isinstance(cfg.get("vlm"), dict) and cfg["vlm"].get("vocab") == cfg[section].get("name"):
                del cfg["vlm"]["vocab"]  # a vocabulary cut to the file's benchmark belongs to it too
            cfg[section] = {"name": value}
    for key, value in parsed:
        if key in ("method", "benchmark") and isinstance(value, str):
            continue  # `method=er`: shorthand for method.name=er, applied above
        set_dotted(cfg, key, value)
    return validate(cfg)


def diff_keys(a: dict, b: dict, ignore: set[str] = RESUME_FREE) -> list[str]:
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if k not in ignore and fa.get(k) != fb.get(k))
