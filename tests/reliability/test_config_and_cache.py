"""Bad values are refused when the config loads (before anything is written); cached features are verified."""
import pytest
import torch

from mmcl import cli
from mmcl.config import load_config
from mmcl.data.cache import cached_tensors
from mmcl.errors import ConfigError
from tests.harness import tiny_cfg, write_cfg

CASES = [  # (overrides on the synthetic stream, what the message names)
    (["train.epochs=-1"], "'train.epochs' must be >= 1"),
    (["train.batch_size=0"], "'train.batch_size' must be >= 1"),
    (["eval.batch_size=0"], "'eval.batch_size' must be >= 1"),
    (["logging.log_every=0"], "'logging.log_every' must be >= 1"),
    (["threads=-1"], "'threads' must be >= 0"),
    (["model.hidden_dim=0"], "'model.hidden_dim' must be >= 1"),
    (["train.lr=0"], "'train.lr' must be > 0"),
    (["eval.val_fraction=1.5"], "'eval.val_fraction' must be in (0,1)"),
    (["benchmark.num_experiences=0"], "'benchmark.num_experiences' must be >= 1"),
    (["stream.order_seed=abc"], "'stream.order_seed' expects int"),
]


@pytest.mark.parametrize("overrides,message", CASES, ids=[c[0][0] for c in CASES])
def test_out_of_range_values_are_refused_before_anything_is_written(tmp_path, capsys, overrides, message):
    cfg = write_cfg(tmp_path / "syn.yaml", tiny_cfg("finetune"))
    out = tmp_path / "out"
    assert cli.main(["run", str(cfg), *overrides, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_scenario_and_method_ranges():
    with pytest.raises(ConfigError, match="'eval.max_new_tokens' must be >= 1"):
        load_config("msvqa-mini-finetune", ["eval.max_new_tokens=0"])
    with pytest.raises(ConfigError, match="'benchmark.train_images' must be >= 1"):
        load_config("msvqa-mini-finetune", ["benchmark.train_images=0"])


def test_a_yaml_key_given_twice_is_refused(tmp_path, capsys):
    f = tmp_path / "dup.yaml"
    f.write_text("benchmark: {name: synthetic}\ntrain:\n  lr: 0.1\n  lr: 0.2\n")
    assert cli.main(["run", str(f), "--out", str(tmp_path / "o")]) == 2
    assert "key 'lr' is given twice" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_a_changed_cache_entry_is_recomputed_not_used(tmp_path, capsys):
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(1000, dtype=torch.float32)}

    path = tmp_path / "feat.safetensors"
    a = cached_tensors(path, compute)
    assert torch.equal(cached_tensors(path, compute)["x"], a["x"]) and len(calls) == 1  # intact: loaded
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(8)  # same size, still a valid file: other feature values
    path.write_bytes(bytes(data))
    b = cached_tensors(path, compute)
    assert len(calls) == 2 and torch.equal(b["x"], a["x"])  # noticed and rebuilt
    assert "changed since it was written: recomputing" in capsys.readouterr().err


def test_every_numeric_key_has_a_range():
    """Shared keys, each setting's, each benchmark's and each method's hyper-parameters: none unchecked."""
    import dataclasses

    from mmcl.config import BASE, RANGES, flatten
    from mmcl.data import BENCHMARKS
    from mmcl.methods import METHODS
    from mmcl.settings import SETTINGS

    def numeric(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    missing = [k for k, v in flatten(BASE).items() if numeric(v) and k not in RANGES]
    for name, s in SETTINGS.items():
        keys = {**flatten(s.schema), **s.extra_schema({})}
        missing += [f"{name}: {k}" for k, v in keys.items() if numeric(v) and k not in s.ranges]
    for name, (params, _) in BENCHMARKS.items():
        missing += [f"benchmark {name}: {f.name}" for f in dataclasses.fields(params)
                    if numeric(f.default) and f.name not in getattr(params, "ranges", {})]
    for name, cls in METHODS.items():
        missing += [f"method {name}: {f.name}" for f in dataclasses.fields(cls.Hparams)
                    if numeric(f.default) and f.name not in cls.ranges]
    assert not missing, missing
    with pytest.raises(ConfigError, match="'method.buffer_size' must be >= 0"):
        load_config("mm5-er", ["method.buffer_size=-1"])
    with pytest.raises(ConfigError, match=r"'method.blend' must be in \[0,1\]"):
        load_config("mm5-comm", ["method.blend=2"])
