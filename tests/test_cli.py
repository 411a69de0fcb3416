"""Every subcommand end to end through the real CLI on a tiny synthetic set, and bad input."""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch

from segadapt.data.io import read_label
from segadapt.data.prepared import PreparedDataset

from conftest import TINY_SET, run_cli


def one_json(proc):
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


@pytest.mark.slow
def test_pipeline_end_to_end(tiny_bench, tmp_path):
    d, src, tgt = tmp_path, tiny_bench / "source", tiny_bench / "target"
    run_cli("warmup", "-c", "synthetic/source_only", "--source", src, "--out", d / "so", "--iters", 2, *TINY_SET)
    out = one_json(run_cli("warmup", "-c", "synthetic/diga_warmup", "--source", src, "--target", tgt,
                           "--out", d / "wu", "--iters", 3, *TINY_SET))
    assert out["iterations"] == 3 and out["loss_skd"] > 0
    cfg_text = (d / "wu" / "config.yaml").read_text()
    assert "segadapt_version" in cfg_text and "skd_weight: 0.5" in cfg_text
    records = [json.loads(x) for x in (d / "wu" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [0, 1, 2]

    pl = one_json(run_cli("pseudo-label", "--ckpt", d / "wu" / "last.pt", "--data", tgt, "--out", d / "pl1"))
    assert pl["num_images"] == 8 and pl["complete"]
    manifest = json.loads((d / "pl1" / "manifest.json").read_text())
    assert manifest["protocol"]["scales"] == [1.0, 0.5] and manifest["weights"] == "student"
    protos = torch.load(d / "pl1" / "prototypes.pt", weights_only=True)["prototypes"]
    assert protos.shape == (19, 16)

    run_cli("self-train", "-c", "synthetic/diga_self_train", "--ckpt", d / "wu" / "last.pt", "--pseudo-labels",
            d / "pl1", "--source", src, "--target", tgt, "--out", d / "st1", "--iters", 2, *TINY_SET)
    run_cli("pseudo-label", "--ckpt", d / "st1" / "last.pt", "--data", tgt, "--out", d / "pl2")
    st2 = one_json(run_cli("self-train", "-c", "synthetic/diga_self_train", "--ckpt", d / "st1" / "last.pt",
                           "--pseudo-labels", d / "pl2", "--source", src, "--target", tgt, "--out", d / "st2",
                           "--iters", 2, *TINY_SET))
    assert 0.0 <= st2["kept"] <= 1.0

    ev = one_json(run_cli("evaluate", "--ckpt", d / "st2" / "last.pt", "--data", tgt, "--split", "val", "--json",
                          "--save-matrix", d / "st2" / "matrix.json"))
    assert ev["num_images"] == 4 and 0 <= ev["miou"] <= 100 and len(ev["per_class"]) == 19
    saved = json.loads((d / "st2" / "matrix.json").read_text())  # every valid val pixel counted once
    valid = sum(int((read_label(lab) != 255).sum()) for _, _, lab in PreparedDataset(tgt).items("val"))
    assert sum(map(sum, saved["matrix"])) + sum(saved["missed"]) == valid and saved["miou"] == ev["miou"]
    run_cli("visualize", "confusion", d / "st2" / "matrix.json", "--out", d / "confusion.png")
    assert cv2.imread(str(d / "confusion.png")) is not None
    assert ev["protocol"]["weights"] == "student" and ev["protocol"]["split"] == "val"
    # the pseudo-label folder scores against the target train labels (labels exist, training never read them)
    ev_pl = one_json(run_cli("evaluate", "--pred-dir", d / "pl1", "--data", tgt, "--split", "train", "--json"))
    assert ev_pl["num_images"] == 8 and ev_pl["protocol"]["source"] == "predictions"
    table = run_cli("evaluate", "--ckpt", d / "so" / "last.pt", "--data", tgt, "--split", "val")
    assert "mIoU" in table.stdout and "road" in table.stdout

    vis = one_json(run_cli("visualize", "panels", "--ckpt", d / "st2" / "last.pt", "--data", tgt, "--n", 2,
                           "--out", d / "vis"))
    assert len(vis["written"]) == 3
    panel = cv2.imread(str(d / "vis" / "panels.png"))
    assert panel is not None and panel.shape[1] >= 5 * 96
    run_cli("visualize", "curves", d / "wu", d / "st1", "--out", d / "curves.png")
    assert cv2.imread(str(d / "curves.png")) is not None


def test_bad_input_gives_one_line_errors(tiny_bench, tmp_path):
    src, tgt = tiny_bench / "source", tiny_bench / "target"

    def fails(code, *args, match):
        p = run_cli(*args, check=False)
        assert p.returncode == code, (p.returncode, p.stderr)
        assert "Traceback" not in p.stderr
        err = [line for line in p.stderr.splitlines() if line.strip()]
        assert any(match in line for line in err), p.stderr
        return p

    # independent refusals, two processes at a time (each is mostly interpreter start-up)
    independent = [
        (1, ("warmup", "-c", "synthetic/source_only", "--source", tmp_path / "nope", "--out", tmp_path / "r"),
         "does not exist"),
        (2, ("warmup", "-c", "synthetic/source_only", "--source", src, "--out", tmp_path / "r", "--set",
             "optim.lrr=1"), "unknown config key 'optim.lrr'"),
        (2, ("warmup", "-c", "synthetic/source_only", "--source", src, "--out", tmp_path / "r", "--method", "magic"),
         "unknown warmup method 'magic'"),
        (2, ("evaluate", "--data", tgt), "exactly one of --ckpt or --pred-dir"),
        (2, ("warmup", "--bogus-option"), "No such option"),
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda case: fails(case[0], *case[1], match=case[2]), independent))

    run_cli("warmup", "-c", "synthetic/source_only", "--source", src, "--out", tmp_path / "a", "--iters", 1, *TINY_SET)
    before = (tmp_path / "a" / "last.pt").read_bytes()
    fails(1, "warmup", "-c", "synthetic/source_only", "--source", src, "--out", tmp_path / "a", "--iters", 1, *TINY_SET,
          match="already holds a run")
    assert (tmp_path / "a" / "last.pt").read_bytes() == before  # nothing overwritten

    # a checkpoint whose recorded architecture does not fit its weights (another model)
    ck = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    ck["model_spec"]["feat_dim"] = 32
    torch.save(ck, tmp_path / "wrong_arch.pt")
    fails(1, "evaluate", "--ckpt", tmp_path / "wrong_arch.pt", "--data", tgt, match="does not match")
    # a checkpoint of another label space
    ck = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    ck["label_space"] = {"name": "camvid11", "classes": [f"c{i}" for i in range(19)], "palette": [[0, 0, 0]] * 19}
    torch.save(ck, tmp_path / "other_space.pt")
    fails(1, "evaluate", "--ckpt", tmp_path / "other_space.pt", "--data", tgt, match="label space")

    # pseudo-labels made by another checkpoint are refused for self-training
    run_cli("warmup", "-c", "synthetic/source_only", "--source", src, "--out", tmp_path / "b", "--iters", 1, *TINY_SET)
    run_cli("pseudo-label", "--ckpt", tmp_path / "a" / "last.pt", "--data", tgt, "--out", tmp_path / "pl")
    fails(1, "self-train", "-c", "synthetic/diga_self_train", "--ckpt", tmp_path / "b" / "last.pt", "--pseudo-labels",
          tmp_path / "pl", "--source", src, "--target", tgt, "--out", tmp_path / "st", match="another checkpoint")
    fails(1, "pseudo-label", "--ckpt", tmp_path / "b" / "last.pt", "--data", tgt, "--out", tmp_path / "pl",
          match="another checkpoint")

    # a corrupt target image (in a copy of the raw data, which the prepared folder points to)
    bench = tmp_path / "bench"
    shutil.copytree(tiny_bench, bench)
    from segadapt.data.prepare.cityscapes import prepare_cityscapes

    prepare_cityscapes(bench / "raw" / "cityscapes", bench / "target", force=True)
    val = sorted((bench / "raw" / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))[0]
    val.write_bytes(b"\x89PNG broken")
    fails(1, "evaluate", "--ckpt", tmp_path / "a" / "last.pt", "--data", bench / "target", match="cannot read image")


def test_pseudo_label_rerun_skips_finished_files(tiny_bench, tmp_path):
    src, tgt = tiny_bench / "source", tiny_bench / "target"
    run_cli("warmup", "-c", "synthetic/source_only", "--source", src, "--out", tmp_path / "a", "--iters", 1, *TINY_SET)
    run_cli("pseudo-label", "--ckpt", tmp_path / "a" / "last.pt", "--data", tgt, "--out", tmp_path / "pl")
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "pl" / "labels").glob("*.png")}
    p = run_cli("pseudo-label", "--ckpt", tmp_path / "a" / "last.pt", "--data", tgt, "--out", tmp_path / "pl")
    assert "8 of 8 images already done" in p.stderr
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items())
    assert np.all([f.exists() for f in mtimes])


def test_log_lines_are_not_wrapped(capsys):
    # piped logs keep a long path on its line, so scripts can grep it
    from segadapt.console import log

    path = "/runs/" + "x" * 150 + "/last.pt"
    log(f"finished 3 iterations; checkpoint {path}")
    err = capsys.readouterr().err
    assert err == f"finished 3 iterations; checkpoint {path}\n"
