"""CLI conventions of issue 13: sizes are HxW everywhere (the old WxH spellings are refused naming the new
option), fixed choices are Enums refused by the parser, and prepare-data has one subcommand per registered
converter with only its own options. In-process through ``main.run`` (the real one-line error path)."""

import json
import sys

import cv2
import numpy as np
import pytest
import typer
from PIL import Image

from segadapt.cli import main
from segadapt.data.io import read_image, read_label, write_png
from segadapt.data.labelspace import CAMVID11, CITYSCAPES_LABELID_TO_TRAINID, labelid_lut
from segadapt.data.prepare import CONVERTERS
from segadapt.engine.inference import Protocol

from test_predict import make_ckpt, reference


def cli(capsys, monkeypatch, *args):
    """Run `segadapt ARGS` in this process: (exit code, stdout, non-empty stderr lines)."""
    monkeypatch.setattr(sys, "argv", ["segadapt", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main.run()
    out, err = capsys.readouterr()
    return e.value.code, out, [line for line in err.splitlines() if line.strip()]


OLD_SPELLINGS = [
    (("evaluate", "--data", "d", "--size", "1280x720"), "--size", "--input-size"),
    (("predict", "--ckpt", "c", "--out", "o", "--size", "1280x720"), "--size", "--input-size"),
    (("pseudo-label", "--ckpt", "c", "--data", "d", "--out", "o", "--size", "1280x720"), "--size", "--input-size"),
    (("visualize", "panels", "--data", "d", "--out", "o", "--size", "1280x720"), "--size", "--input-size"),
    (("prepare-data", "gta5", "--root", "r", "--out", "o", "--resize", "1280x720"), "--resize", "--image-size"),
    (("prepare-data", "camvid", "--resize", "1280x720"), "--resize", "--image-size"),  # before missing options
    (("prepare-data", "synthetic", "--out", "o", "--size", "256x128"), "--size", "--image-size"),
]


@pytest.mark.parametrize("args,old,new", OLD_SPELLINGS, ids=[" ".join(a[:2]) + " " + o for a, o, _ in OLD_SPELLINGS])
def test_old_wxh_spellings_are_refused_naming_the_new_option(capsys, monkeypatch, tmp_path, args, old, new):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, monkeypatch, *args)
    assert (code, out) == (2, "")
    assert err == [f"segadapt: error: {old} was WxH; use {new} HxW (height first)"]
    assert not (tmp_path / "o").exists()


BAD_CHOICES = [
    (("evaluate", "--data", "d", "--fusion", "maxx"), "--fusion", ["max", "mean"]),
    (("pseudo-label", "--ckpt", "c", "--data", "d", "--out", "o", "--fusion", "avg"), "--fusion", ["max", "mean"]),
    (("predict", "--ckpt", "c", "--out", "o", "--mode", "sliding"), "--mode", ["whole", "slide"]),
    (("evaluate", "--data", "d", "--weights", "ema"), "--weights", ["student", "teacher"]),
    (("visualize", "panels", "--data", "d", "--out", "o", "--weights", "ema"), "--weights", ["student", "teacher"]),
    (("export", "--ckpt", "c", "--format", "onnx", "--out", "o", "--weights", "ema"), "--weights",
     ["student", "teacher"]),
    (("predict", "--ckpt", "c", "--out", "o", "--amp", "fp8"), "--amp", ["auto", "off", "bf16", "fp16"]),
    (("evaluate", "--data", "d", "--protocol", "7"), "--protocol", ["all", "19", "16", "13"]),
    (("export", "--ckpt", "c", "--format", "onx", "--out", "o"), "--format", ["onnx", "torchscript", "safetensors"]),
]


@pytest.mark.parametrize("args,option,choices", BAD_CHOICES, ids=[f"{a[0]} {o}" for a, o, _ in BAD_CHOICES])
def test_bad_choice_is_one_line_usage_error_listing_the_choices(capsys, monkeypatch, args, option, choices):
    code, out, err = cli(capsys, monkeypatch, *args)
    assert (code, out, len(err)) == (2, "", 1), err
    assert err[0].startswith(f"segadapt: error: Invalid value for '{option}'")
    assert ", ".join(f"'{c}'" for c in choices) in err[0]


def _subcommands():
    return typer.main.get_command(main.app).commands["prepare-data"].commands


def test_prepare_data_has_one_subcommand_per_converter_with_only_its_options(capsys, monkeypatch):
    names = CONVERTERS.names()
    assert set(names) == {"gta5", "synthia", "cityscapes", "bdd100k", "mapillary", "camvid", "folder", "synthetic"}
    assert sorted(_subcommands()) == names
    code, out, _ = cli(capsys, monkeypatch, "prepare-data", "--help")
    assert code == 0 and all(n in out for n in names)
    flags = {n: {o.flag for o in CONVERTERS.get(n).options} for n, _ in CONVERTERS.items()}
    for name, cmd in _subcommands().items():
        shown = {opt for p in cmd.params if not p.hidden for opt in p.opts}
        assert shown == flags[name], name
    assert flags["camvid"] == {"--root", "--out", "--splits", "--sequences", "--image-size", "--workers", "--force"}
    assert flags["synthetic"] == {"--out", "--seed", "--n-source", "--n-target-train", "--n-target-val",
                                  "--image-size", "--shift", "--workers", "--force"}
    assert {"--version"} == flags["mapillary"] - flags["cityscapes"] and {"--classes"} == flags["folder"] - flags["bdd100k"]


def test_each_prepare_subcommand_rejects_the_options_of_other_kinds(capsys, monkeypatch, tmp_path):
    every = set().union(*({o.flag for o in c.options} for _, c in CONVERTERS.items()))
    tried = 0
    for name, conv in CONVERTERS.items():
        for flag in sorted(every - {o.flag for o in conv.options}):
            code, out, err = cli(capsys, monkeypatch, "prepare-data", name, "--out", tmp_path / "o", flag, "x")
            assert (code, out, len(err)) == (2, "", 1), (name, flag, err)
            assert err[0].startswith(f"segadapt: error: No such option: {flag}"), err
            tried += 1
    assert tried >= 7 * 2  # e.g. gta5 --sequences, synthetic --root, camvid --classes ...
    assert not (tmp_path / "o").exists()


def _tiny_gta5(root):
    """Two 5x7 GTA5 pairs (palette labels = Cityscapes labelIds), odd sizes so that resizing interpolates."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in ("00001", "00002"):
        write_png(root / "images" / f"{i}.png", rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), rgb=True)
        ids = rng.choice(np.array([7, 8, 11, 26, 0], np.uint8), (5, 7))
        lab = Image.fromarray(ids, mode="P")
        lab.putpalette([v for c in range(256) for v in (c, c, c)])
        lab.save(root / "labels" / f"{i}.png")
    return root


def test_image_size_hxw_writes_what_resize_wxh_wrote(capsys, monkeypatch, tmp_path):
    """--image-size 3x4 (H x W) = the old --resize 4x3 (W x H): the same files, computed here by hand with
    the resize the old code made (cv2 takes (W, H); INTER_AREA shrinking, nearest for labels)."""
    raw = _tiny_gta5(tmp_path / "raw")
    code, out, err = cli(capsys, monkeypatch, "prepare-data", "gta5", "--root", raw, "--out", tmp_path / "p",
                         "--image-size", "3x4", "--workers", "0")
    assert code == 0, err
    assert json.loads(out) == {"out": str(tmp_path / "p"), "kept": {"train": 2}, "skipped": 0}
    meta = json.loads((tmp_path / "p" / "dataset.json").read_text())
    assert meta["resize"] == [4, 3]  # the folder format's record stays (W, H)
    lut = labelid_lut(CITYSCAPES_LABELID_TO_TRAINID, 256)
    for i in ("00001", "00002"):
        img = read_image(raw / "images" / f"{i}.png")
        want = tmp_path / "want" / f"{i}.png"
        write_png(want, cv2.resize(img, (4, 3), interpolation=cv2.INTER_AREA), rgb=True)
        assert (tmp_path / "p" / "images" / "train" / f"{i}.png").read_bytes() == want.read_bytes()
        lab = cv2.resize(lut[read_label(raw / "labels" / f"{i}.png")], (4, 3), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(read_label(tmp_path / "p" / "labels" / "train" / f"{i}.png"), lab)


def test_input_size_hxw_predicts_what_size_wxh_predicted(capsys, monkeypatch, tmp_path):
    """predict --input-size 24x40 runs the model on images resized to 40 wide, 24 high (the old --size 40x24)."""
    rng = np.random.default_rng(1)
    (tmp_path / "in").mkdir()
    images = [rng.integers(0, 256, (30, 52, 3), dtype=np.uint8)]
    for k, img in enumerate(images):
        write_png(tmp_path / "in" / f"im{k}.png", img, rgb=True)
    ck = make_ckpt(tmp_path / "m.pt", CAMVID11, seed=3)
    code, out, err = cli(capsys, monkeypatch, "predict", "--ckpt", ck, "--input", tmp_path / "in", "--out",
                         tmp_path / "out", "--input-size", "24x40", "--batch-size", "1", "--device", "cpu", "--json")
    assert code == 0, err
    assert json.loads(out)["computed"] == 1
    manifest = json.loads((tmp_path / "out" / "predict.json").read_text())
    refs = reference(ck, images, Protocol(scales=[1.0], fusion="mean"), size=(40, 24))  # cv2's (W, H)
    other = reference(ck, images, Protocol(scales=[1.0], fusion="mean"), size=(24, 40))
    assert any((r != o).any() for r, o in zip(refs, other))  # the order matters for this model
    for k, ref in enumerate(refs):
        np.testing.assert_array_equal(read_label(tmp_path / "out" / "labels" / f"im{k}.png"), ref)
    assert manifest["protocol"]["size"] == [40, 24]  # recorded as before: (W, H)
