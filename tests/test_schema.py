"""Typed config sections (segadapt/schema.py): one check for every method and engine section, from a
YAML file, its `base:` list, or --set; the complete, commented RUN/config.yaml."""

import dataclasses
import subprocess
import sys

import pytest
import yaml

from segadapt import config as C
from segadapt import schema
from segadapt.engine.run_config import ENGINE_SECTIONS
from segadapt.errors import UsageError
from segadapt.methods import STAGES
from segadapt.pipeline import config_sections, resolve_train_config
from segadapt.translation.train import resolve_translator_config
from conftest import TINY_OVERRIDES

ALL_METHODS = sorted({(stage, name) for stage, reg in STAGES.items() for name in reg.names()})


def _typo(word: str) -> str:
    """A plausible typo: the last two letters swapped (skd_weight -> skd_weigth)."""
    return word[:-2] + word[-1] + word[-2]


def _yaml(tmp_path, text: str) -> str:
    f = tmp_path / "mine.yaml"
    f.write_text(text)
    return str(f)


def _resolve(config, overrides=(), stage="warmup"):
    return resolve_train_config(config, list(overrides), None, None, stage)


@pytest.mark.parametrize("stage,name", ALL_METHODS)
def test_a_mistyped_key_in_every_method_section_is_named_with_its_close_match(tmp_path, stage, name):
    cls = STAGES[stage].get(name).config_class
    fields = [f.name for f in dataclasses.fields(cls)]
    key = _typo(fields[0]) if fields else "weight"
    config = _yaml(tmp_path, f"base: {C._locate('synthetic/base.yaml')}\nmethod: {name}\n{name}:\n  {key}: 1\n")
    with pytest.raises(UsageError) as yaml_err:
        _resolve(config, stage=stage)
    assert f"'{name}.{key}'" in str(yaml_err.value)
    with pytest.raises(UsageError) as set_err:
        _resolve("synthetic/base", [f"method={name}", f"{name}.{key}=1"], stage=stage)
    assert f"'{name}.{key}'" in str(set_err.value)
    if fields:  # the message offers the key that was meant
        assert f"did you mean: {fields[0]}" in str(yaml_err.value)
        assert f"did you mean: {fields[0]}" in str(set_err.value)


@pytest.mark.parametrize("dotted,meant", [("data.crpo", "crop"), ("optim.lrr", "lr"), ("train.log_evry", "log_every"),
                                          ("log.tensorbaord", "tensorboard"),
                                          ("data.rare_class_sampling.enabeld", "enabled")])
def test_a_mistyped_key_in_each_engine_section(tmp_path, dotted, meant):
    *parents, key = dotted.split(".")
    text = "".join(f"{'  ' * i}{p}:\n" for i, p in enumerate(parents)) + f"{'  ' * len(parents)}{key}: 1\n"
    config = _yaml(tmp_path, f"base: {C._locate('synthetic/base.yaml')}\nmethod: source-only\n{text}")
    for call in (lambda: _resolve(config), lambda: _resolve("synthetic/source_only", [f"{dotted}=1"])):
        with pytest.raises(UsageError) as err:
            call()
        assert dotted in str(err.value) and f"did you mean: {meant}" in str(err.value)


def test_every_method_section_present_is_checked_not_only_the_selected_one(tmp_path):
    with pytest.raises(UsageError, match=r"dacs\.tau must be in \(0, 1\], got 5"):
        _resolve("synthetic/source_only", ["dacs.tau=5"])
    config = _yaml(tmp_path, f"base: {C._locate('synthetic/source_only.yaml')}\neval:\n  flip: false\n")
    with pytest.raises(UsageError, match="unknown config section 'eval'"):  # read by nothing: removed
        _resolve(config)


@pytest.mark.parametrize("override,match", [
    ("dacs.class_mix=maybe", "dacs.class_mix accepts true or false, got 'maybe'"),
    ("optim.lr=[1]", "optim.lr accepts numbers in [0, inf), got [1]"),
    ("data.batch_size=true", "data.batch_size accepts integers in [1, inf), got True"),  # a bool is not an int
    ("data.crop=[48]", "data.crop accepts lists of 2 integers in [1, inf), got [48]"),
    ("t2s.proj_dim=1.5", "t2s.proj_dim accepts integers in [1, inf), got 1.5"),
    ("plca.levels=[feat, logits]", "plca.levels accepts lists of values out of feat, pred"),
    ("train.init_weights=ema", "train.init_weights must be one of student, teacher, got 'ema'"),
])
def test_a_value_of_the_wrong_type_names_the_key_and_what_it_accepts(override, match):
    with pytest.raises(UsageError) as err:
        _resolve("synthetic/source_only", [override])
    assert match in str(err.value)


@pytest.mark.parametrize("override,match", [
    ("t2s.contrastive_weight=-1", "t2s.contrastive_weight must be in [0, inf), got -1"),  # negative weight
    ("threshold.threshold=1.5", "threshold.threshold must be in [0, 1], got 1.5"),  # threshold above 1
    ("dacs.p_blur=2", "dacs.p_blur must be in [0, 1], got 2"),  # probability outside [0, 1]
    ("diga.skd_weight=-0.5", "diga.skd_weight must be in [0, inf), got -0.5"),
    ("data.rare_class_sampling.temperature=0", "data.rare_class_sampling.temperature must be in (0, inf), got 0"),
    ("optim.betas=[0.9, 1.0]", "optim.betas must be in [0, 1), got 1.0"),
])
def test_an_out_of_range_value_names_the_key_and_the_range(override, match):
    with pytest.raises(UsageError) as err:
        _resolve("synthetic/source_only", [override])  # a self-train section is checked in a warm-up config too
    assert match in str(err.value)


def test_ints_are_taken_for_floats_and_yaml_exponent_strings_too():
    cfg = _resolve("synthetic/source_only", ["optim.lr=1", "optim.weight_decay=1e-4", "diga.ema_alpha=1"])
    assert cfg["optim"]["lr"] == 1.0 and isinstance(cfg["optim"]["lr"], float)
    assert cfg["optim"]["weight_decay"] == 0.0001  # PyYAML reads 1e-4 as a string
    assert cfg["diga"]["ema_alpha"] == 1.0 and isinstance(cfg["diga"]["ema_alpha"], float)


def test_the_old_size_keys_are_refused_with_the_new_name_and_order(tmp_path):
    config = _yaml(tmp_path, f"base: {C._locate('synthetic/source_only.yaml')}\ndata:\n  source_size: [240, 180]\n")
    with pytest.raises(UsageError, match=r"^data\.source_size was \[W, H\]; use data\.source_resize: \[H, W\]$"):
        _resolve(config)
    with pytest.raises(UsageError, match=r"^data\.target_size was \[W, H\]; use data\.target_resize: \[H, W\]$"):
        _resolve("synthetic/source_only", ["data.target_size=[240,180]"])
    with pytest.raises(UsageError, match=r"data\.source_size was \[W, H\]; use data\.source_resize"):
        resolve_translator_config("synthetic/translator", ["data.source_size=[240,180]"], None)
    assert _resolve("camvid_day2dusk/source_only")["data"]["source_resize"] == [180, 240]  # [H, W]


def test_set_reaches_a_key_the_yaml_leaves_to_its_default():
    assert "tau" not in C.load_config("synthetic/t2s")["t2s"]
    cfg = _resolve("synthetic/t2s", ["t2s.tau=0.2"], stage="self-train")
    assert cfg["t2s"]["tau"] == 0.2 and cfg["t2s"]["num_negatives"] == 128  # the YAML's value stays
    cfg = _resolve("synthetic/source_only", ["data.rare_class_sampling.enabled=true", "dacs.tau=0.5"])
    assert cfg["data"]["rare_class_sampling"] == {"enabled": True, "temperature": 0.01, "min_pixels": 3000}
    assert cfg["dacs"]["tau"] == 0.5 and cfg["dacs"]["p_blur"] == 0.5  # a section absent from the YAML


def test_base_list_merges_left_to_right_then_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("x: {p: 1, q: 1, r: 1}\nlst: [1]\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nx: {q: 2}\ny: 2\n")
    (tmp_path / "c.yaml").write_text("x: {q: 3, r: 3}\ny: 3\nlst: [3]\n")
    (tmp_path / "d.yaml").write_text("base: [b.yaml, c.yaml]\nx: {r: 4}\n")
    # by hand: a then b gives x = {1, 2, 1}, y 2, lst [1]; c on top: x = {1, 3, 3}, y 3, lst [3]; d: r = 4
    assert C.load_config(str(tmp_path / "d.yaml")) == {"x": {"p": 1, "q": 3, "r": 4}, "y": 3, "lst": [3]}
    (tmp_path / "e.yaml").write_text("base: [c.yaml, b.yaml]\n")  # the other order: b (and its base a) win
    assert C.load_config(str(tmp_path / "e.yaml")) == {"x": {"p": 1, "q": 2, "r": 1}, "y": 2, "lst": [1]}
    (tmp_path / "f.yaml").write_text("base: [c.yaml, 3]\n")
    with pytest.raises(UsageError, match="'base' must be a file name or a list"):
        C.load_config(str(tmp_path / "f.yaml"))


def test_the_daformer_configs_are_their_stage_plus_the_daformer_fragment():
    for bench in ("gta5_cityscapes", "synthia_cityscapes"):
        warm = C.load_config(f"{bench}/diga_warmup_daformer")
        assert warm["model"]["pretrained"] == "pretrained/mit_b5.pth" and warm["model"]["head"] == "daformer"
        assert warm["diga"] == C.load_config(f"{bench}/diga_warmup")["diga"]
        st = C.load_config(f"{bench}/diga_self_train_daformer")
        assert st["model"]["pretrained"] is None and st["optim"]["warmup_iters"] == 1500
    assert not any(n.startswith("_base") for n in C.packaged_configs())  # a fragment, not a config


@pytest.mark.parametrize("name,stage", [("synthetic/t2s", "self-train"), ("synthetic/diga_warmup", "warmup"),
                                        ("gta5_cityscapes/dacs", "warmup")])
def test_the_written_config_parses_back_and_documents_every_field(name, stage):
    cfg = _resolve(name, stage=stage)
    sections = config_sections(cfg, stage)
    text = C.dump_config(cfg, sections)
    assert yaml.safe_load(text) == cfg
    lines = text.splitlines()
    for top, cls in sections.items():
        if not isinstance(cls, type) or top not in cfg:
            continue
        for dotted in schema.known_keys(cls):
            *parents, key = dotted.split(".")
            indent = "  " * (len(parents) + 1)
            doc = schema.field_doc(cls, dotted)
            assert any(ln.startswith(f"{indent}{key}:") and ln.endswith(f"  # {doc}") for ln in lines), (top, dotted)
    # the selected method's section is complete: every field, defaults filled in
    method = cfg["method"]
    assert set(cfg[method]) == {f.name for f in dataclasses.fields(sections[method])}
    assert set(cfg["train"]) == {f.name for f in dataclasses.fields(ENGINE_SECTIONS["train"])}


def test_a_typo_on_the_command_line_exits_2_with_one_line(tmp_path):
    p = subprocess.run([sys.executable, "-m", "segadapt", "warmup", "-c", "synthetic/diga_warmup", "--source",
                        str(tmp_path), "--out", str(tmp_path / "r"), "--set", "diga.skd_wieght=1"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "diga.skd_wieght" in p.stderr and "did you mean: skd_weight" in p.stderr


def test_a_run_writes_its_complete_commented_config_and_resumes_from_it(tiny_bench, tmp_path):
    from segadapt.engine.checkpoint import load_checkpoint
    from segadapt.pipeline import run_warmup

    kw = dict(config="synthetic/source_only", source=tiny_bench / "source", target=None, out=tmp_path / "run",
              overrides=TINY_OVERRIDES)
    run_warmup(iters=1, **kw)
    text = (tmp_path / "run" / "config.yaml").read_text()
    written = yaml.safe_load(text)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert {k: v for k, v in written.items() if k != "provenance"} == ckpt["config"]
    assert "  grad_accum: 1  # split each iteration's batch into N micro-batches (same global batch)" in text
    run_warmup(iters=1, resume=True, **kw)  # the same config: accepted (the run is already finished)
    with pytest.raises(UsageError, match=r"differs in: train\.grad_accum\)"):  # a real change is refused
        run_warmup(iters=1, resume=True, **{**kw, "overrides": TINY_OVERRIDES + ["train.grad_accum=2"]})


def test_a_run_stored_by_an_older_segadapt_resumes_when_its_settings_are_the_same(tmp_path):
    """Before the typed configs, a checkpoint stored only the YAML's keys, sizes as data.target_size
    [W, H] and an unread eval: section. Such a run resumes under the same settings; a real change is
    still refused."""
    import copy

    from segadapt.engine.trainer import check_resume_config
    from segadapt.pipeline import resolve_train_config, stored_config_upgrade

    cfg = resolve_train_config("synthetic/diga_warmup", ["data.target_resize=[96,128]"], None, None, "warmup")
    old = copy.deepcopy(cfg)
    old["data"].pop("target_resize")
    old["data"]["target_size"] = [128, 96]  # [W, H]
    old["data"].pop("source_resize")
    old["data"]["source_size"] = None
    old["diga"].pop("ce_on_mixed")  # a default the old code filled in silently
    old["eval"] = {"scales": [1.0], "flip": False}
    old["provenance"] = {"segadapt_version": "0.0.1"}
    with pytest.raises(UsageError, match="different configuration"):
        check_resume_config({"config": old}, cfg, tmp_path)  # compared as stored: differs
    check_resume_config({"config": old}, cfg, tmp_path, stored_config_upgrade("warmup"))
    changed = copy.deepcopy(old)
    changed["data"]["target_size"] = [128, 64]
    with pytest.raises(UsageError, match=r"differs in: data\.target_resize"):
        check_resume_config({"config": changed}, cfg, tmp_path, stored_config_upgrade("warmup"))
