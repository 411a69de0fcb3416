"""`segadapt predict`: values against infer/evaluate, video frames in order, the overlay blend, resume,
bad inputs and refused folders."""

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import run_cli
from segadapt.data.datasets import to_tensor
from segadapt.data.io import read_image, read_label
from segadapt.data.labelspace import CAMVID11
from segadapt.data.prepared import PreparedDataset
from segadapt.engine.checkpoint import save_checkpoint
from segadapt.engine.evaluate import evaluate_checkpoint, evaluate_predictions
from segadapt.engine.inference import Protocol, infer, load_model
from segadapt.engine.predict import collect_inputs, predict
from segadapt.errors import DataError, UsageError
from segadapt.models.segmenter import build_segmenter
from segadapt.translation.train import STAGE as TRANSLATOR_STAGE
from segadapt.viz.overlay import draw_legend

SPEC = {"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 16, "pretrained": None}


def make_ckpt(path: Path, label_space, seed: int = 0) -> Path:
    """A checkpoint in the trainer's format (model, teacher, model_spec, label_space) of a fixed tiny model.

    BatchNorm running statistics are randomised so the untrained model predicts several classes."""
    torch.manual_seed(seed)
    model = build_segmenter(SPEC, label_space.num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    save_checkpoint(path, {"stage": "warmup", "method": "source-only", "iteration": 1, "model": model.state_dict(),
                           "teacher": None, "label_space": label_space.to_dict(), "model_spec": model.spec})
    return path


def reference(ckpt, images, protocol=Protocol(), size=None):
    """infer's argmax at image resolution, as evaluate computes it (batch of one, image resized to ``size``)."""
    model, ls, _ = load_model(ckpt)
    out = []
    for img in images:
        x = img if size is None else cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        logits, _ = infer(model, to_tensor(x)[None], protocol, ls.num_classes)
        if logits.shape[-2:] != img.shape[:2]:
            logits = torch.nn.functional.interpolate(logits, size=img.shape[:2], mode="bilinear", align_corners=False)
        out.append(logits.argmax(1)[0].numpy().astype(np.uint8))
    return out


def write_video(path: Path, frames, fps=10.0):
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()


def video_frames(n, h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (7, 7), 0)
    return [np.roll(base, 4 * i, axis=1) for i in range(n)]  # a panning camera: every frame differs


def decode(path: Path):
    """Every frame the decoder gives (reading on past an undecodable one)."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    for _ in range(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) + 2):
        ok, f = cap.read()
        if ok:
            frames.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    return frames, cap.get(cv2.CAP_PROP_FPS)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_ckpt(tmp_path_factory.mktemp("ckpt") / "last.pt", CAMVID11)


@pytest.fixture
def images(tmp_path):
    """Two folders holding files of the same names."""
    rng = np.random.default_rng(1)
    for d in ("cam1", "cam2/sub"):
        (tmp_path / "in" / d).mkdir(parents=True)
        for i in range(2):
            img = cv2.GaussianBlur(rng.integers(0, 256, (36, 52, 3), dtype=np.uint8), (5, 5), 0)
            cv2.imwrite(str(tmp_path / "in" / d / f"img{i}.png"), img)
    return tmp_path / "in"


def test_folder_equals_evaluate(tiny_bench, tmp_path):
    """predict on the raw validation folder, scored with evaluate --pred-dir, gives evaluate --ckpt's
    confusion matrix exactly; each prediction equals infer's argmax (multi-scale, flip, --input-size)."""
    ds = PreparedDataset(tiny_bench / "target")
    ck = make_ckpt(tmp_path / "m.pt", ds.label_space, seed=2)
    folder = ds.items("val")[0][1].parent.parent  # leftImg8bit/val/<city>/...
    protocol = Protocol(scales=[1.0, 0.75], flip=True, fusion="mean")
    size = (80, 40)
    summary = predict(ck, [str(folder)], tmp_path / "out", protocol, size=size, batch_size=3)
    assert summary["images"] == 4 and summary["computed"] == 4 and summary["failed"] == []
    preds = tmp_path / "preds"
    preds.mkdir()
    refs = reference(ck, [read_image(p) for _, p, _ in ds.items("val")], protocol, size)
    for (i, p, _), ref in zip(ds.items("val"), refs):
        key = p.relative_to(folder).with_suffix("").as_posix()
        got = read_label(tmp_path / "out" / "labels" / f"{key}.png")
        assert (got == ref).mean() > 0.999  # batched (3) against one-by-one: float sums may differ at ties
        shutil.copy(tmp_path / "out" / "labels" / f"{key}.png", preds / f"{i}.png")
    ev = evaluate_checkpoint(ck, ds, "val", protocol, "student", torch.device("cpu"), size=size)
    ev_pred = evaluate_predictions(preds, ds, "val")
    assert ev_pred["miou"] == pytest.approx(ev["miou"], abs=1e-3)
    # batch 1 is exactly evaluate's computation
    s1 = predict(ck, [str(folder)], tmp_path / "out1", protocol, size=size, batch_size=1)
    assert s1["computed"] == 4
    for (i, p, _), ref in zip(ds.items("val"), refs):
        key = p.relative_to(folder).with_suffix("").as_posix()
        np.testing.assert_array_equal(read_label(tmp_path / "out1" / "labels" / f"{key}.png"), ref)
        shutil.copy(tmp_path / "out1" / "labels" / f"{key}.png", preds / f"{i}.png")
    exact = evaluate_predictions(preds, ds, "val")
    assert (exact["per_class"], exact["pixel_acc"]) == (ev["per_class"], ev["pixel_acc"])
    # pixel shares are those of the written labels
    counts = np.zeros(ds.label_space.num_classes)
    for r in refs:
        counts += np.bincount(r.reshape(-1), minlength=ds.label_space.num_classes)
    for name, share in zip(ds.label_space.classes, counts / counts.sum()):
        assert s1["class_pixel_share"][name] == pytest.approx(share)


def test_same_names_in_two_folders_stay_apart(ckpt, images, tmp_path):
    s = predict(ckpt, [str(images / "cam1"), str(images / "cam2")], tmp_path / "out", Protocol(), batch_size=2,
                confidence=True)
    assert s["images"] == 4
    refs = reference(ckpt, [read_image(images / d / f"img{i}.png") for d in ("cam1", "cam2/sub") for i in range(2)])
    keys = ["cam1/img0", "cam1/img1", "cam2/sub/img0", "cam2/sub/img1"]
    for key, ref in zip(keys, refs):
        for kind in ("labels", "color", "overlay", "confidence"):
            assert (tmp_path / "out" / kind / f"{key}.png").is_file()
        lab = read_label(tmp_path / "out" / "labels" / f"{key}.png")
        assert (lab == ref).mean() > 0.999
        np.testing.assert_array_equal(read_image(tmp_path / "out" / "color" / f"{key}.png"), CAMVID11.colorize(lab))
        conf = read_label(tmp_path / "out" / "confidence" / f"{key}.png")
        assert conf.dtype == np.uint16 and conf.min() >= 65535 // CAMVID11.num_classes
    # a.jpg beside a.png: the extension joins the key; a glob's key is relative to its fixed folder part
    shutil.copy(images / "cam1" / "img0.png", images / "cam1" / "img0.bmp")
    keys = {s.key for s in collect_inputs([str(images / "cam1" / "*.*")])}
    assert keys == {"img0_png", "img0_bmp", "img1"}
    # an output folder inside the input folder: a re-run does not predict its own outputs
    inner = images / "cam1" / "pred"
    first = predict(ckpt, [str(images / "cam1")], inner, Protocol())
    again = predict(ckpt, [str(images / "cam1")], inner, Protocol())
    assert first["images"] == again["images"] == 3 and again["skipped"] == 3


def test_video_frames_in_order(ckpt, tmp_path):
    n = 7
    write_video(tmp_path / "clip.avi", video_frames(n), fps=12.0)
    decoded, _ = decode(tmp_path / "clip.avi")  # the frames as the decoder gives them (MJPG is lossy)
    assert len(decoded) == n
    s = predict(ckpt, [str(tmp_path / "clip.avi")], tmp_path / "out", Protocol(), batch_size=3)
    assert (s["frames"], s["images"], s["videos"], s["computed"]) == (n, 0, 1, n)
    refs = reference(ckpt, decoded)
    names = sorted(p.name for p in (tmp_path / "out" / "labels" / "clip").iterdir())
    assert names == [f"{i:06d}.png" for i in range(n)]
    for i in range(n):
        lab = read_label(tmp_path / "out" / "labels" / "clip" / f"{i:06d}.png")
        assert (lab == refs[i]).mean() > 0.999, i
        assert not all((lab == refs[j]).mean() > 0.999 for j in range(n) if j != i)  # frames are told apart
    frames, fps = decode(tmp_path / "out" / "videos" / "clip.mp4")
    assert len(frames) == n and fps == pytest.approx(12.0)
    # the overlay video shows the overlay PNGs (up to the video codec's loss)
    ov = read_image(tmp_path / "out" / "overlay" / "clip" / "000004.png").astype(float)
    assert np.abs(frames[4].astype(float) - ov).mean() < 8


def test_overlay_pixel_is_the_blend(ckpt, images, tmp_path):
    alpha = 0.3
    predict(ckpt, [str(images / "cam1" / "img1.png")], tmp_path / "out", Protocol(), alpha=alpha)
    img = read_image(images / "cam1" / "img1.png").astype(np.int64)
    lab = read_label(tmp_path / "out" / "labels" / "img1.png")
    ov = read_image(tmp_path / "out" / "overlay" / "img1.png")
    palette = np.asarray(CAMVID11.palette)
    w = round(alpha * 255)
    y, x = img.shape[0] - 1, img.shape[1] - 1  # the bottom-right corner, away from the legend
    expect = (img[y, x] * (255 - w) + palette[lab[y, x]] * w + 127) // 255
    np.testing.assert_array_equal(ov[y, x], expect)
    # every pixel outside the legend box is the blend; inside it the legend's swatches show the classes
    full = ((img * (255 - w) + palette[lab] * w + 127) // 255).astype(np.uint8)
    box = draw_legend(full.copy(), CAMVID11, np.bincount(lab.reshape(-1), minlength=11))
    mask = np.ones(lab.shape, bool)
    mask[box[1]:box[3], box[0]:box[2]] = False
    assert mask.sum() > 0 and box[2] > 0
    np.testing.assert_array_equal(ov[mask], full[mask])
    top = int(np.bincount(lab.reshape(-1)).argmax())
    legend_colours = {tuple(int(v) for v in c) for c in ov[box[1]:box[3], box[0]:box[2]].reshape(-1, 3)}
    assert tuple(CAMVID11.palette[top]) in legend_colours
    # without the legend the whole overlay is the blend
    predict(ckpt, [str(images / "cam1" / "img1.png")], tmp_path / "plain", Protocol(), alpha=alpha, legend=False)
    np.testing.assert_array_equal(read_image(tmp_path / "plain" / "overlay" / "img1.png"), full)


def _stamps(folder: Path):
    return {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in folder.rglob("*.png")}


def test_resume_skips_finished_and_force_redoes(ckpt, images, tmp_path):
    write_video(tmp_path / "v.avi", video_frames(5))
    args = ([str(images), str(tmp_path / "v.avi")], tmp_path / "out", Protocol())
    first = predict(ckpt, *args, batch_size=2)
    assert first["computed"] == 9
    before = _stamps(tmp_path / "out")
    video = (tmp_path / "out" / "videos" / "v.mp4").stat()
    again = predict(ckpt, *args, batch_size=2)
    assert (again["computed"], again["skipped"], again["images"], again["frames"]) == (0, 9, 4, 5)
    assert again["class_pixel_share"] == first["class_pixel_share"]
    assert _stamps(tmp_path / "out") == before
    assert (tmp_path / "out" / "videos" / "v.mp4").stat().st_mtime_ns == video.st_mtime_ns
    # a lost file (a run killed before it was written): only that item is redone; a lost video frame
    # rebuilds the overlay video from the finished frames
    (tmp_path / "out" / "overlay" / "in" / "cam1" / "img1.png").unlink()
    (tmp_path / "out" / "labels" / "v" / "000002.png").unlink()
    part = predict(ckpt, *args)
    assert (part["computed"], part["skipped"]) == (2, 7)
    assert (tmp_path / "out" / "videos" / "v.mp4").stat().st_mtime_ns != video.st_mtime_ns
    assert len(decode(tmp_path / "out" / "videos" / "v.mp4")[0]) == 5
    after = _stamps(tmp_path / "out")
    changed = {p for p in before if after.get(p) != before[p]}
    assert {p.relative_to(tmp_path / "out").as_posix() for p in changed} == {
        f"{k}/{key}.png" for k in ("labels", "color", "overlay") for key in ("in/cam1/img1", "v/000002")}
    forced = predict(ckpt, *args, force=True)
    assert forced["computed"] == 9
    redone = _stamps(tmp_path / "out")
    assert all(redone[p] != after[p] for p in after)


def test_corrupt_image_and_video_frame_are_skipped(ckpt, images, tmp_path):
    """An unreadable image between two good ones, and a video whose frame 3 is undecodable."""
    (images / "cam1" / "img0b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    n, bad = 6, 3
    write_video(tmp_path / "v.avi", video_frames(n))
    data = bytearray((tmp_path / "v.avi").read_bytes())
    soi = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(soi) == n
    data[soi[bad]:soi[bad + 1] - 8] = bytes(soi[bad + 1] - 8 - soi[bad])  # the JPEG of frame 3, zeroed
    (tmp_path / "v.avi").write_bytes(bytes(data))
    proc = run_cli("predict", "--ckpt", ckpt, "--input", images / "cam1", "--input", tmp_path / "v.avi",
                   "--out", tmp_path / "out", "--json", check=False)
    assert proc.returncode == 1
    summary = json.loads(proc.stdout)
    assert {(Path(f["input"]).name, f["frame"]) for f in summary["failed"]} == {("img0b.png", None), ("v.avi", bad)}
    assert "img0b.png" in proc.stderr and "frame 3" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("segadapt: error: 2 inputs or frames")
    assert (summary["images"], summary["frames"]) == (2, n - 1)
    labels = tmp_path / "out" / "labels"
    assert sorted(p.name for p in (labels / "in" / "cam1").iterdir()) == ["img0.png", "img1.png"]
    assert sorted(p.name for p in (labels / "v").iterdir()) == [f"{i:06d}.png" for i in range(n) if i != bad]
    # frames after the lost one keep their own index: frame 4's prediction is frame 4's
    decoded, _ = decode(tmp_path / "v.avi")
    assert len(decoded) == n - 1
    ref = reference(ckpt, [decoded[bad]])[0]  # the decoder's 4th good frame is frame 4
    assert (read_label(labels / "v" / "000004.png") == ref).mean() > 0.999
    # a re-run reports the same failures again (so exits 1 again) without recomputing anything
    again = predict(ckpt, [str(images / "cam1"), str(tmp_path / "v.avi")], tmp_path / "out", Protocol(fusion="mean"))
    assert again["computed"] == 0 and again["skipped"] == 2 + n - 1
    assert {(Path(f["input"]).name, f["frame"]) for f in again["failed"]} == {("img0b.png", None), ("v.avi", bad)}


def test_refusals(ckpt, images, tmp_path):
    # a translator checkpoint (its payload as train-translator saves it) is not a segmentation model
    trans = tmp_path / "translator.pt"
    save_checkpoint(trans, {"stage": TRANSLATOR_STAGE, "method": "cyclegan", "iteration": 10,
                            "generator_spec": {"channels": 8}, "g_st": {}, "config": {}})
    with pytest.raises(DataError, match=r"translator.pt is an image-translator checkpoint \(train-translator\), "
                                        "not a segmentation model"):
        predict(trans, [str(images)], tmp_path / "o1", Protocol())
    assert not (tmp_path / "o1").exists()
    with pytest.raises(UsageError):
        collect_inputs([str(tmp_path / "missing")])
    # another model's folder: refused without --force, replaced with it
    predict(ckpt, [str(images / "cam1")], tmp_path / "o3", Protocol())
    other = make_ckpt(tmp_path / "other.pt", CAMVID11, seed=5)
    with pytest.raises(DataError, match="another model"):
        predict(other, [str(images / "cam2")], tmp_path / "o3", Protocol())
    with pytest.raises(DataError, match="protocol"):
        predict(ckpt, [str(images / "cam1")], tmp_path / "o3", Protocol(flip=True))
    assert len(list((tmp_path / "o3" / "labels").rglob("*.png"))) == 2  # nothing lost
    s = predict(other, [str(images / "cam2")], tmp_path / "o3", Protocol(), force=True)
    assert s["computed"] == 2
    assert sorted(p.name for p in (tmp_path / "o3" / "labels").rglob("*.png")) == ["img0.png", "img1.png"]
    assert json.loads((tmp_path / "o3" / "predict.json").read_text())["checkpoint"] == str(other.resolve())


@pytest.mark.slow  # three CLI processes
def test_cli(ckpt, images, tmp_path):
    """A shell-expanded glob after --input (several paths) works; --json prints one object; a translator
    checkpoint is one error line and exit 1; no input matched is exit 2."""
    files = sorted(str(p) for p in (images / "cam2" / "sub").glob("*.png"))
    proc = run_cli("predict", "--ckpt", ckpt, "--input", *files, "--out", tmp_path / "out", "--json",
                   "--batch-size", "2", "--confidence")
    s = json.loads(proc.stdout)
    assert s["images"] == 2 and s["failed"] == [] and sum(s["class_pixel_share"].values()) == pytest.approx(1.0)
    assert sorted(os.listdir(tmp_path / "out" / "confidence")) == ["img0.png", "img1.png"]
    trans = tmp_path / "translator.pt"
    save_checkpoint(trans, {"stage": TRANSLATOR_STAGE, "method": "cyclegan", "generator_spec": {}, "g_st": {}})
    proc = run_cli("predict", "--ckpt", trans, "--input", images, "--out", tmp_path / "o1", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"segadapt: error: {trans} is an image-translator checkpoint (train-translator), not a segmentation "
        "model; give a warmup or self-train checkpoint"]
    proc = run_cli("predict", "--ckpt", ckpt, "--input", str(images / "*.jpg"), "--out", tmp_path / "o2", check=False)
    assert proc.returncode == 2 and "matched no image or video" in proc.stderr
