"""Engine behaviour: deterministic batches, checkpoints, exact resume, pseudo-label resume, scoring."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from segadapt.data.io import read_label, write_png
from segadapt.data.prepared import PreparedDataset
from segadapt.data.pseudo_labels import PseudoLabelFolder
from segadapt.data.sampling import IterationBatchSampler
from segadapt.engine import pseudo_label as PL
from segadapt.engine.checkpoint import load_checkpoint, save_checkpoint
from segadapt.engine.evaluate import evaluate_predictions
from segadapt.engine.inference import Protocol, infer
from segadapt.errors import DataError
from segadapt.models.segmenter import build_segmenter
from segadapt.pipeline import run_warmup

from conftest import TINY_OVERRIDES as TINY_SET


def test_batches_depend_only_on_iteration():
    full = IterationBatchSampler(10, 4, seed=1, stream=0, start=0, total=6)
    late = IterationBatchSampler(10, 4, seed=1, stream=0, start=3, total=6)
    assert list(full)[3:] == list(late)
    # each epoch is a permutation: iterations 0..4 with batch 4 cover 2 full epochs of 10
    idx = [i for b in list(full)[:5] for i, _ in b]
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:20]) == list(range(10))
    # two ranks split the global batch without overlap
    r0 = IterationBatchSampler(10, 4, 1, 0, 0, 2, rank=0, world_size=2)
    r1 = IterationBatchSampler(10, 4, 1, 0, 0, 2, rank=1, world_size=2)
    for a, b, g in zip(r0, r1, full):
        assert sorted(a + b) == sorted(g)


def test_checkpoint_is_atomic_and_weights_only(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"model": {"w": torch.ones(2)}, "iteration": 3})
    ck = load_checkpoint(p)
    assert ck["iteration"] == 3 and torch.equal(ck["model"]["w"], torch.ones(2))
    assert not list(tmp_path.glob(".*tmp"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"a": 1}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="not a segadapt checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def _losses(run: Path):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["source-only", "diga"])
def test_resumed_run_reproduces_the_uninterrupted_losses(tiny_bench, tmp_path, monkeypatch, method):
    kw = dict(config="synthetic/diga_warmup", source=tiny_bench / "source", target=tiny_bench / "target",
              overrides=TINY_SET, method=method, iters=6)
    run_warmup(out=tmp_path / "ref", **kw)
    ref = _losses(tmp_path / "ref")
    assert len(ref) == 6

    # interrupt the same run at iteration 4 (Ctrl-C): it saves its state and stops with an error
    from segadapt.methods import method_class

    cls = method_class("warmup", method)
    original = cls.training_step

    def interrupted(self, batch, iteration):
        if iteration == 4:
            raise KeyboardInterrupt
        return original(self, batch, iteration)

    monkeypatch.setattr(cls, "training_step", interrupted)
    with pytest.raises(DataError, match="interrupted at iteration 4"):
        run_warmup(out=tmp_path / "cut", **kw)
    monkeypatch.setattr(cls, "training_step", original)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["iteration"] == 4
    with pytest.raises(DataError, match="already holds a run"):
        run_warmup(out=tmp_path / "cut", **kw)
    run_warmup(out=tmp_path / "cut", resume=True, **kw)
    assert _losses(tmp_path / "cut") == ref  # identical, not merely close


def test_resume_refuses_a_changed_config(tiny_bench, tmp_path):
    kw = dict(config="synthetic/source_only", source=tiny_bench / "source", target=None, iters=2)
    run_warmup(out=tmp_path / "r", overrides=TINY_SET, **kw)
    from segadapt.errors import UsageError

    with pytest.raises(UsageError, match="different configuration"):
        run_warmup(out=tmp_path / "r", overrides=TINY_SET + ["optim.lr=0.5"], resume=True, **kw)
    run_warmup(out=tmp_path / "r", overrides=TINY_SET + ["optim.lr=0.5"], force=True, **kw)
    assert load_checkpoint(tmp_path / "r" / "last.pt")["config"]["optim"]["lr"] == 0.5


def test_pseudo_labels_skip_finished_images_and_refuse_other_checkpoints(tiny_bench, tmp_path):
    ds = PreparedDataset(tiny_bench / "target")
    run = tmp_path / "run"
    run_warmup(config="synthetic/source_only", source=tiny_bench / "source", target=None, out=run, iters=2,
               overrides=TINY_SET)
    proto = Protocol(scales=[1.0, 0.5])
    full = PL.generate(run / "last.pt", ds, "train", tmp_path / "pl_full", proto, "student", torch.device("cpu"))
    assert full["complete"] and full["num_images"] == 8
    assert sum(full["class_pixels"].values()) == 8 * 48 * 96

    # a killed run: only 3 images finished (their records are in the log), one torn record at the end
    part = tmp_path / "pl_part"
    PL.generate(run / "last.pt", ds, "train", part, proto, "student", torch.device("cpu"), limit=3)
    with open(PseudoLabelFolder(part).log_path(), "ab") as f:
        f.write(b"\x01\x02torn")
    done = {p.name: p.stat().st_mtime_ns for p in (part / "labels").glob("*.png")}
    assert len(done) == 3
    again = PL.generate(run / "last.pt", ds, "train", part, proto, "student", torch.device("cpu"))
    assert again["complete"]
    for name, mtime in done.items():  # finished files were not redone
        assert (part / "labels" / name).stat().st_mtime_ns == mtime
    a = torch.load(part / "prototypes.pt", weights_only=True)["prototypes"]
    b = torch.load(tmp_path / "pl_full" / "prototypes.pt", weights_only=True)["prototypes"]
    assert torch.allclose(a, b, atol=1e-5)
    for f in (tmp_path / "pl_full" / "labels").glob("*.png"):
        assert np.array_equal(read_label(f), read_label(part / "labels" / f.name))

    # a different checkpoint is refused, then accepted with force
    other = tmp_path / "other"
    run_warmup(config="synthetic/source_only", source=tiny_bench / "source", target=None, out=other, iters=1,
               overrides=TINY_SET)
    with pytest.raises(DataError, match="another checkpoint"):
        PL.generate(other / "last.pt", ds, "train", part, proto, "student", torch.device("cpu"))
    PL.generate(other / "last.pt", ds, "train", part, proto, "student", torch.device("cpu"), force=True)


def test_pseudo_label_agrees_with_plain_multiscale_inference(tiny_bench, tmp_path):
    ds = PreparedDataset(tiny_bench / "target")
    run = tmp_path / "run"
    run_warmup(config="synthetic/source_only", source=tiny_bench / "source", target=None, out=run, iters=2,
               overrides=TINY_SET)
    proto = Protocol(scales=[1.0, 0.5], fusion="max")
    PL.generate(run / "last.pt", ds, "train", tmp_path / "pl", proto, "student", torch.device("cpu"))
    from segadapt.engine.inference import load_model
    from segadapt.data.io import read_image

    model, ls, _ = load_model(run / "last.pt", "student")
    _id, img, _ = ds.items("train")[0]
    x = torch.from_numpy(read_image(img)).permute(2, 0, 1)[None].float() / 255
    lg1, _ = infer(model, x, Protocol(scales=[1.0]), ls.num_classes)
    lg2, _ = infer(model, x, Protocol(scales=[0.5]), ls.num_classes)
    expected = torch.maximum(lg1, lg2).argmax(1)[0].numpy()
    assert np.array_equal(read_label(tmp_path / "pl" / "labels" / f"{_id}.png"), expected)
    conf = read_label(tmp_path / "pl" / "confidence" / f"{_id}.png")
    assert conf.dtype == np.uint16
    exp_conf = torch.maximum(lg1, lg2).softmax(1).max(1).values[0].numpy()
    assert np.abs(conf / 65535.0 - exp_conf).max() < 1e-4


def test_evaluate_prediction_folder(tiny_bench, tmp_path):
    ds = PreparedDataset(tiny_bench / "target")
    preds = tmp_path / "preds"
    items = ds.items("val")
    for _id, _img, lab in items:  # perfect predictions except: first image all 'road'
        write_png(preds / f"{_id}.png", read_label(lab), rgb=False)
    r = evaluate_predictions(preds, ds, "val")
    assert r["miou"] == pytest.approx(100.0) and r["num_images"] == len(items)
    first = read_label(items[0][2])
    write_png(preds / f"{items[0][0]}.png", np.zeros_like(first), rgb=False)
    r = evaluate_predictions(preds, ds, "val")
    # recompute road IoU by hand from the label files
    tp = fp = fn = 0
    for k, (_id, _img, lab) in enumerate(items):
        g = read_label(lab)
        valid = g != 255
        p = np.zeros_like(g) if k == 0 else g
        tp += int(((p == 0) & (g == 0) & valid).sum())
        fp += int(((p == 0) & (g != 0) & valid).sum())
        fn += int(((p != 0) & (g == 0) & valid).sum())
    assert r["per_class"]["road"] == pytest.approx(100.0 * tp / (tp + fp + fn), abs=1e-9)
    os.remove(preds / f"{items[1][0]}.png")
    with pytest.raises(DataError, match="have no prediction"):
        evaluate_predictions(preds, ds, "val")


def test_sliding_window_covering_image_equals_whole(tiny_bench):
    model = build_segmenter({"backbone": "tiny", "feat_dim": 16}, 19).eval()
    x = torch.rand(1, 3, 48, 96)
    whole, _ = infer(model, x, Protocol(), 19)
    slide, _ = infer(model, x, Protocol(mode="slide", crop=[48, 96], stride=[48, 96]), 19)
    assert torch.allclose(whole, slide, atol=1e-5)
    flip, _ = infer(model, x, Protocol(flip=True), 19)
    expected = (whole + infer(model, x.flip(-1), Protocol(), 19)[0].flip(-1)) / 2
    assert torch.allclose(flip, expected, atol=1e-5)


def test_sigterm_finishes_the_iteration_saves_and_resumes_exactly(tiny_bench, tmp_path):
    """A pre-empted job (SIGTERM from the scheduler) stops cleanly and resumes to identical losses."""
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "segadapt", "warmup", "-c", "synthetic/source_only", "--source",
            str(tiny_bench / "source"), "--iters", "40", *[a for o in TINY_SET for a in ("--set", o)],
            "--set", "train.ckpt_every=1000"]
    env = dict(os.environ, SEGADAPT_QUIET="1", OMP_NUM_THREADS="1")
    subprocess.run(args + ["--out", str(tmp_path / "ref")], check=True, env=env, capture_output=True)
    ref = _losses(tmp_path / "ref")
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "cut")], env=env, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "stopped by SIGTERM" in err and "Traceback" not in err
    stopped_at = load_checkpoint(tmp_path / "cut" / "last.pt")["iteration"]
    assert 3 <= stopped_at < 40
    subprocess.run(args + ["--out", str(tmp_path / "cut"), "--resume"], check=True, env=env, capture_output=True)
    assert _losses(tmp_path / "cut") == ref
