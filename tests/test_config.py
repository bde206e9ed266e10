"""Config loading, overrides and validation errors."""
import pytest

from mmcl.cli import main
from mmcl.config import ConfigError, load_config, parse_override, validate
from tests.harness import tiny_cfg


def test_bundled_config_and_overrides():
    cfg = load_config("animals-er", ["seed=3", "train.lr=0.05", "method.buffer_size=50", "eval.future=false"])
    assert cfg["seed"] == 3 and cfg["train"]["lr"] == 0.05 and cfg["method"]["buffer_size"] == 50
    assert cfg["eval"]["future"] is False
    # defaults filled in
    assert cfg["train"]["epochs"] == 5 and cfg["benchmark"]["image_size"] == 96


def test_yaml_path(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("benchmark: {name: synthetic, num_experiences: 4}\nmethod: {name: joint}\n")
    cfg = load_config(str(p))
    assert cfg["benchmark"]["num_experiences"] == 4 and cfg["method"]["name"] == "joint"


def test_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'; closest valid key: 'train.lr'"):
        load_config("animals-er", ["train.lrr=0.1"])
    with pytest.raises(ConfigError, match=r"'method.bufer_size'.*'method.buffer_size'"):
        load_config("animals-er", ["method.bufer_size=10"])


def test_unknown_method_and_benchmark_list_available():
    with pytest.raises(ConfigError, match=r"unknown method 'ewk'; available: .*er.*finetune"):
        load_config("animals-er", ["method.name=ewk", "method.buffer_size=null"])
    with pytest.raises(ConfigError, match=r"unknown benchmark 'cifar'; available: animals, .*mm5, .*synthetic"):
        load_config("animals-finetune", ["benchmark.name=cifar"])
    with pytest.raises(ConfigError, match=r"unknown config 'animals-err' \(did you mean 'animals-er'\?\)"):
        load_config("animals-err")


def test_type_and_choice_errors():
    with pytest.raises(ConfigError, match=r"'train.epochs' expects int"):
        load_config("animals-er", ["train.epochs=many"])
    with pytest.raises(ConfigError, match=r"'train.optimizer' must be one of adam, sgd"):
        load_config("animals-er", ["train.optimizer=lion"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_override("seed")


def test_bad_yaml_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("method: {name: er\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*not valid YAML"):
        load_config(str(p))


def test_cli_exit_code_2_one_line(capsys):
    assert main(["run", "animals-er", "train.lrr=0.1", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.lrr" in err and "train.lr" in err


def test_validate_is_idempotent():
    cfg = tiny_cfg("er")
    assert validate(cfg) == cfg


def test_cache_dir_env(tmp_path, monkeypatch):
    from mmcl.config import cache_dir

    monkeypatch.setenv("MMCL_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()
