import pytest

from segadapt import config as C
from segadapt.errors import UsageError
from segadapt.pipeline import resolve_train_config
from segadapt.translation.train import resolve_translator_config


def test_packaged_config_inherits_base_and_overrides():
    cfg = resolve_train_config("synthetic/diga_warmup", [], None, None, "warmup")  # the YAML chain + code defaults
    assert cfg["method"] == "diga"
    assert cfg["optim"]["iters"] == 400  # stage file overrides the base
    assert cfg["optim"]["name"] == "adamw"  # inherited from base.yaml
    assert cfg["diga"]["skd_weight"] == 0.5
    assert "synthetic/diga_warmup" in C.packaged_configs()


def test_iters_flag_sets_optim_iters_and_refuses_non_positive():
    cfg = resolve_train_config("synthetic/diga_warmup", [], None, 7, "warmup")
    assert cfg["optim"]["iters"] == 7
    assert resolve_translator_config("synthetic/translator", [], 9)["optim"]["iters"] == 9
    for bad in (0, -3):
        with pytest.raises(UsageError, match=f"--iters must be positive, got {bad}"):
            resolve_train_config("synthetic/diga_warmup", [], None, bad, "warmup")
        with pytest.raises(UsageError, match="--iters must be positive"):
            resolve_translator_config("synthetic/translator", [], bad)


def test_set_overrides_parse_yaml_values():
    cfg = C.load_config("synthetic/source_only")
    out = C.apply_overrides(cfg, ["optim.lr=0.5", "data.crop=[32, 64]", "model.pretrained=null", "train.amp=bf16"])
    assert out["optim"]["lr"] == 0.5 and out["data"]["crop"] == [32, 64]
    assert out["model"]["pretrained"] is None and out["train"]["amp"] == "bf16"
    assert cfg["optim"]["lr"] == 0.002  # the original is untouched


@pytest.mark.parametrize("bad", ["optim.lrr=1", "nosuch=1", "optim=3", "noequals", "=3"])
def test_bad_overrides_are_usage_errors(bad):
    with pytest.raises(UsageError):
        C.apply_overrides(C.load_config("synthetic/source_only"), [bad])


def test_config_file_path_and_missing(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("base: synthetic/base.yaml\nmethod: source-only\noptim:\n  iters: 7\n")
    cfg = C.load_config(str(f))
    assert cfg["optim"]["iters"] == 7 and cfg["model"]["backbone"] == "tiny"
    with pytest.raises(UsageError, match="not found"):
        C.load_config("nope/nothing")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        C.load_config(str(tmp_path / "bad.yaml"))
