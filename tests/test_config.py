"""Config files, dotted overrides with type checks, and the JSON round trip."""

import glob
import json
import os

import pytest

from nanodna.checkpoint import ResumeError, check_resume, config_changes, write_config
from nanodna.config import (
    Config,
    ConfigError,
    apply_overrides,
    format_config,
    from_dict,
    load_config,
    to_dict,
)

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.py")))


@pytest.fixture(scope="module")
def demo() -> Config:
    return load_config(os.path.join(ROOT, "configs", "demo.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_file_loads_and_round_trips(path):
    cfg = load_config(path)
    again = from_dict(json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg


def test_overrides_set_nested_fields_with_conversion(demo):
    before = to_dict(demo)
    cfg = apply_overrides(demo, [
        "optim.lr=3e-4", "model.n_layers=7", "train.max_minutes=2",  # int into a float field
        "optim.schedule=wsds", "eval.table=None", "data.holdout_assemblies=['a', 'b']",
        "train.fsdp=True",
    ])
    assert cfg.optim.lr == 3e-4 and cfg.model.n_layers == 7
    assert cfg.train.max_minutes == 2.0 and isinstance(cfg.train.max_minutes, float)
    assert cfg.optim.schedule == "wsds" and cfg.eval.table is None and cfg.train.fsdp is True
    assert cfg.data.holdout_assemblies == ("a", "b")  # list literal -> the field's tuple
    assert to_dict(demo) == before  # the original is untouched


def test_unknown_key_names_it_and_suggests(demo):
    with pytest.raises(ConfigError, match=r"'optim.lrr'.*optim\.lr"):
        apply_overrides(demo, ["optim.lrr=1e-3"])
    with pytest.raises(ConfigError, match="'nosuch.x'"):
        apply_overrides(demo, ["nosuch.x=1"])


@pytest.mark.parametrize("override", [
    "model.n_layers=2.5", "model.n_layers=True", "train.fsdp=1", "optim.lr='fast'",
    "optim.schedule=linear", "data.holdout_assemblies=3", "train.steps=None",
])
def test_wrong_type_names_the_key(demo, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        apply_overrides(demo, [override])


def test_bad_override_forms(demo):
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(demo, ["optim.lr"])
    with pytest.raises(ConfigError, match="section"):
        apply_overrides(demo, ["optim=3"])


def test_bare_string_values_and_format(demo):
    cfg = apply_overrides(demo, ["simulate.dir=/tmp/somewhere"])
    assert cfg.simulate.dir == "/tmp/somewhere"
    assert "  simulate.dir = '/tmp/somewhere'" in format_config(cfg).splitlines()


def test_dataclass_own_checks_become_config_errors(demo):
    with pytest.raises(ConfigError, match="model.arch"):
        apply_overrides(demo, ["model.arch=rnn"])


def test_from_dict_rejects_unknown_saved_key(demo):
    d = to_dict(demo)
    d["optim"]["momentum"] = 0.9
    with pytest.raises(ConfigError, match="optim.momentum"):
        from_dict(d)


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.py"))
    bad = tmp_path / "bad.py"
    bad.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="get_config"):
        load_config(str(bad))


def test_resume_check_sorts_changes_into_safe_and_refused(demo, tmp_path):
    write_config(demo, str(tmp_path))
    saved = (tmp_path / "config.json").read_bytes()
    shape = apply_overrides(demo, ["model.d_model=64", "data.seq_len=64", "train.log_every=7"])
    assert check_resume(shape, str(tmp_path)) == []  # no checkpoint yet: starts over
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    with pytest.raises(ResumeError) as e:
        check_resume(shape, str(tmp_path))
    msg = str(e.value)
    assert "model.d_model (96 -> 64)" in msg and "data.seq_len (128 -> 64)" in msg
    assert "train.log_every" not in msg and "--restart" in msg and "\n" not in msg
    assert (tmp_path / "config.json").read_bytes() == saved  # nothing written
    safe = apply_overrides(demo, ["train.steps=9999", "train.log_every=7", "eval.every=11",
                                  "train.max_minutes=3.0"])
    assert check_resume(safe, str(tmp_path)) == [
        "eval.every", "train.log_every", "train.max_minutes", "train.steps"]
    assert config_changes(demo, str(tmp_path)) == ([], [])
