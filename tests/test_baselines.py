"""Baselines: DACS, confidence-threshold self-training (fixed / class-balanced), the target oracle, and
the pieces they need from the engine (confidence crops, the pseudo-label confidence histogram)."""

import json
import math

import numpy as np
import pytest
import torch

from segadapt import config as C
from segadapt.data.datasets import TrainCrops
from segadapt.data.io import read_label, write_png
from segadapt.data.labelspace import IGNORE
from segadapt.data.prepared import PreparedDataset
from segadapt.data.pseudo_labels import PseudoLabelFolder
from segadapt.engine import pseudo_label as PL
from segadapt.engine.inference import Protocol
from segadapt.errors import DataError, UsageError
from segadapt.methods import method_class
from segadapt.methods.common import weighted_seg_ce
from segadapt.methods.dacs import (DacsSelfTrain, DacsWarmup, class_mix, confidence_weight, mixed_pixel_weight,
                                   teacher_pseudo_labels)
from segadapt.methods.source_only import SourceOnly
from segadapt.methods.threshold import (ThresholdSelfTrain, class_balanced_thresholds, fixed_thresholds,
                                        threshold_pseudo_labels)
from segadapt.models.segmenter import build_segmenter
from segadapt.pipeline import run_self_train, run_warmup

from conftest import TINY_OVERRIDES as TINY_SET

C3 = 3  # classes of the hand-made batches


def u16(x):
    """A confidence as pseudo-label stores it, and as TrainCrops hands it to training."""
    q = np.round(np.asarray(x, np.float64) * 65535).astype(np.uint16)
    return q, torch.from_numpy(q.astype(np.float32) / np.float32(65535))


# -- DACS ------------------------------------------------------------------------------------------

def test_dacs_teacher_labels_and_confidence_weight_by_hand():
    # 4 pixels, 2 classes: softmax max = 0.99, 0.97, 0.98 (class 1) and 0.5 (tie -> class 0)
    p = torch.tensor([0.99, 0.97, 0.98, 0.5])
    lg = torch.stack([torch.zeros(4), torch.log(p / (1 - p))]).view(1, 2, 1, 4)
    lg[0, :, 0, 1] = lg[0, :, 0, 1].flip(0)  # pixel 1: class 0 is the confident one
    label, conf = teacher_pseudo_labels(lg, (1, 4))
    assert label.tolist() == [[[1, 0, 1, 0]]]
    assert conf[0, 0].tolist() == pytest.approx([0.99, 0.97, 0.98, 0.5], abs=1e-6)
    assert confidence_weight(conf, 0.968).item() == pytest.approx(0.75)  # 3 of 4 pixels >= tau
    assert confidence_weight(conf, 0.975).item() == pytest.approx(0.5)
    # q is over the whole batch (DACS): a second image with no confident pixel halves it
    assert confidence_weight(torch.cat([conf, torch.full_like(conf, 0.4)]), 0.968).item() == pytest.approx(0.375)


def test_dacs_mixed_weight_and_weighted_ce_by_hand():
    mask = torch.tensor([[[[1.0, 0.0, 0.0]]]])
    w = mixed_pixel_weight(mask, torch.tensor(0.25))
    assert w.tolist() == [[[1.0, 0.25, 0.25]]]  # pasted source pixels count fully, target ones by q
    lg = torch.zeros(1, 2, 1, 3)
    lg[0, 0, 0, 0] = math.log(3.0)  # pixel 0: p(class 0) = 0.75; pixels 1-2 uniform
    label = torch.tensor([[[0, 1, IGNORE]]])
    expected = (1.0 * -math.log(0.75) + 0.25 * -math.log(0.5)) / 2  # ignored pixel: not in the sum nor the count
    assert weighted_seg_ce(lg, label, pixel_weight=w).item() == pytest.approx(expected, abs=1e-6)
    assert weighted_seg_ce(lg, torch.full((1, 1, 3), IGNORE), pixel_weight=w).item() == 0.0


def test_classmix_pastes_half_of_the_source_classes_with_their_labels():
    ys = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, IGNORE]]])
    yt = torch.tensor([[[5, 5, 5, 5], [6, 6, 6, 6]]])
    xs, xt = torch.ones(1, 3, 2, 4), torch.zeros(1, 3, 2, 4)
    x_mix, y_mix, mask = class_mix(xs, ys, xt, yt, torch.Generator().manual_seed(0))
    m = mask[0, 0].bool()
    pasted = {int(c) for c in ys[0][m].unique()}
    # DACS's draw: ceil(5/2) = 3 of the 5 values (ignore counted): 3 classes, or 2 and the ignore region
    assert (len(pasted - {IGNORE}), IGNORE in pasted) in ((3, False), (2, True))
    assert torch.equal(y_mix[0][m], ys[0][m]) and torch.equal(y_mix[0][~m], yt[0][~m])  # labels mixed like images
    assert bool((x_mix[0][:, m] == 1).all()) and bool((x_mix[0][:, ~m] == 0).all())


# -- thresholds ------------------------------------------------------------------------------------

def test_fixed_threshold_masks_by_hand():
    label = torch.tensor([[[0, 1, 2, IGNORE]]])
    _, conf = u16([[[0.95, 0.85, 0.9, 0.99]]])
    out = threshold_pseudo_labels(label, conf, fixed_thresholds(C3, 0.9))
    assert out.tolist() == [[[0, IGNORE, 2, IGNORE]]]  # 0.9 is stored as 58982/65535 >= 0.9: kept
    out = threshold_pseudo_labels(label, conf, fixed_thresholds(C3, 0.91))
    assert out.tolist() == [[[0, IGNORE, IGNORE, IGNORE]]]
    assert threshold_pseudo_labels(label, conf, fixed_thresholds(C3, 0.0)).tolist() == [[[0, 1, 2, IGNORE]]]


def _hand_set():
    """Two pseudo-labelled 'images' (label, stored confidence) with known per-class rankings."""
    lab1 = np.array([[0, 0, 1, 2, 2], [3, IGNORE, 1, 2, 2]], np.uint8)
    conf1 = [[0.95, 0.70, 0.60, 0.5001, 0.5002], [0.99, 0.999, 0.99, 0.5003, 0.30]]
    lab2 = np.array([[0, 0, 1]], np.uint8)
    conf2 = [[0.90, 0.80, 0.6001]]
    return [(lab1, u16(conf1)), (lab2, u16(conf2))]


def test_class_balanced_thresholds_on_hand_made_confidence_maps():
    data = _hand_set()
    hist = sum(PL.confidence_histogram(torch.from_numpy(lab), torch.from_numpy(q.astype(np.int32)), 5).numpy()
               for lab, (q, _) in data)
    assert hist.shape == (5, PL.CONF_BINS) and hist.sum(1).tolist() == [4, 3, 4, 1, 0]  # ignore not counted
    t = class_balanced_thresholds(hist, 0.5)
    grid = lambda v: float(np.float32(v) / np.float32(65535))  # noqa: E731
    # class 0: confidences .95 .90 .80 .70, k = 2 -> the bin of 0.90 (900) -> ceil(900 * 65.535) = 58982
    # class 1: .99 .60 .6001, k = 1 -> bin 990 -> ceil(64879.65) = 64880
    # class 2: .5001 .5002 .5003 .30, k = 2 -> bin 500 -> ceil(32767.5) = 32768 (all three of bin 500 pass)
    # class 3: one pixel, k = floor(0.5) = 0 -> keeps nothing; class 4: never predicted -> nothing
    assert t[:3].tolist() == [grid(58982), grid(64880), grid(32768)]
    assert math.isinf(t[3]) and math.isinf(t[4])
    kept = np.zeros(5, np.int64)
    for lab, (_, conf) in data:
        out = threshold_pseudo_labels(torch.from_numpy(lab).long(), conf, t).numpy()
        kept += np.bincount(out[out != IGNORE], minlength=5)
    assert kept.tolist() == [2, 1, 3, 0, 0]
    # exact to the bin: pixels kept per class == histogram mass at or above the threshold's bin
    for c, b in ((0, 900), (1, 990), (2, 500)):
        assert kept[c] == hist[c, b:].sum()
    # portion 1 keeps every pixel of a class: the threshold is its lowest bin. 0.70 is stored as 45874 (bin 699,
    # ceil(699 * 65.535) = 45809); 0.30 as 19660 (bin 299, ceil(19594.965) = 19595)
    t1 = class_balanced_thresholds(hist, 1.0)
    assert t1[0] == grid(45809) and t1[2] == grid(19595)
    # k = floor(0.29 * 100) is 29, not 28 (as 0.29 * 100 = 28.999... in floating point would give)
    h = np.zeros((1, PL.CONF_BINS), np.int64)
    h[0, 100:200] = 1  # 100 pixels, one per bin
    assert class_balanced_thresholds(h, 0.29)[0] == grid(11207)  # 29th from the top: bin 171, ceil(11206.485)


def test_confidence_crop_stays_aligned_with_the_label_crop(tmp_path):
    h, w = 40, 60
    yy, xx = np.mgrid[0:h, 0:w]
    code = (yy * w + xx + 1).astype(np.uint16)  # every pixel's position, never 0 (0 = padding)
    label = ((yy * 7 + xx) % 200).astype(np.uint8)
    image = np.stack([yy * 4, xx * 4, np.zeros_like(xx)], -1).astype(np.uint8)
    (tmp_path / "img").mkdir()
    write_png(tmp_path / "img" / "a.png", image)
    write_png(tmp_path / "labels" / "a.png", label, False)
    write_png(tmp_path / "confidence" / "a.png", code, False)
    items = PseudoLabelFolder(tmp_path).items([("a", tmp_path / "img" / "a.png", None)], with_confidence=True)
    assert items[0][3] == tmp_path / "confidence" / "a.png"
    plain = TrainCrops(PseudoLabelFolder(tmp_path).items([("a", tmp_path / "img" / "a.png", None)]), (32, 48),
                       scale=(0.5, 1.6), flip=True)
    ds = TrainCrops(items, (32, 48), scale=(0.5, 1.6), flip=True)
    flips = set()
    for seed in range(12):
        s = ds[(0, seed)]
        ref = plain[(0, seed)]  # the confidence draws no extra random numbers: same crop as without it
        assert torch.equal(s["image"], ref["image"]) and torch.equal(s["label"], ref["label"])
        c = np.round(s["confidence"].numpy() * 65535).astype(np.int64)
        pad = c == 0
        assert bool((s["label"].numpy()[pad] == IGNORE).all())
        pos = c[~pad] - 1
        assert np.array_equal(label.reshape(-1)[pos], s["label"].numpy()[~pad])  # same source pixel as the label
        cols = (pos % w).reshape(-1)
        flips.add(bool(cols[0] > cols[-1]) if cols.size > 1 else None)
    assert {True, False} <= flips  # both flipped and unflipped crops were checked


def test_pseudo_label_histogram_survives_a_kill_exactly(pl_folders):
    full, part, ds = pl_folders
    h_full = PseudoLabelFolder(full).histogram()
    h_part = PseudoLabelFolder(part).histogram()
    assert h_full.shape == (ds.label_space.num_classes, PL.CONF_BINS)
    assert np.array_equal(h_full, h_part)  # resumed after 3 images + a torn record: identical counts
    assert h_full.sum() == 8 * 48 * 96
    # and it is the histogram of the files as stored
    ref = np.zeros_like(h_full)
    for f in (full / "labels").glob("*.png"):
        lab = torch.from_numpy(read_label(f).astype(np.int64))
        conf = torch.from_numpy(read_label(full / "confidence" / f.name).astype(np.int32))
        ref += PL.confidence_histogram(lab, conf, ds.label_space.num_classes).numpy()
    assert np.array_equal(ref, h_full)
    assert json.loads((full / "manifest.json").read_text())["confidence_bins"] == PL.CONF_BINS


def test_a_folder_from_before_the_histogram_is_refused(pl_folders, tmp_path):
    full, _, ds = pl_folders
    import shutil

    old = tmp_path / "old"
    shutil.copytree(full, old)
    man = json.loads((old / "manifest.json").read_text())
    man.pop("confidence_bins")
    (old / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DataError, match="confidence_bins"):
        PL.generate(man["checkpoint"], ds, "train", old, Protocol(scales=[1.0]), "student", torch.device("cpu"))
    PseudoLabelFolder(old).histogram_path.unlink()
    with pytest.raises(DataError, match="re-run pseudo-label"):
        PseudoLabelFolder(old).histogram()


# -- training steps on a fixed tiny batch ------------------------------------------------------------

def _model():
    torch.manual_seed(0)
    return build_segmenter({"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 16, "pretrained": None}, C3)


def _batch(with_conf=False):
    g = torch.Generator().manual_seed(1)
    ys = torch.zeros(2, 32, 32, dtype=torch.long)
    ys[:, :, 12:] = 1
    ys[:, 20:, :] = 2
    xs = torch.rand(2, 3, 32, 32, generator=g) * 0.2
    xs[:, 0] += 0.7 * (ys == 1)
    xs[:, 1] += 0.7 * (ys == 2)
    xt = (xs.flip(-1) * 0.8 + 0.1).clamp(0, 1)
    yt = ys.flip(-1).clone()
    batch = {"source": {"image": xs, "label": ys}, "target": {"image": xt, "label": yt}}
    if with_conf:
        conf = torch.full((2, 32, 32), 0.95)
        conf[:, :, :8] = 0.5  # a low-confidence band
        batch["target"]["confidence"] = conf
    return batch


def _train(method, batch, steps=6, lr=1e-2):
    opt = torch.optim.Adam([p for ps in method.param_groups().values() for p in ps], lr=lr)
    method.train()
    losses, logs = [], []
    for it in range(steps):
        torch.manual_seed(100 + it)  # as the engine: each iteration's randomness from the global RNG
        loss, lg = method.training_step(batch, it)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(it)
        losses.append(loss.item())
        logs.append(lg)
    return losses, logs


@pytest.mark.parametrize("cls,cfg", [(DacsWarmup, {}), (DacsSelfTrain, {"tau": 0.3})])
def test_dacs_training_steps_reduce_the_loss(cls, cfg):
    m = cls(cfg, _model(), C3)
    losses, logs = _train(m, _batch())
    assert losses[-1] < losses[0] * 0.85
    if cfg:  # tau below every confidence of 3 classes (max softmax >= 1/3): every target pixel counts fully
        assert all(lg["conf_weight"] == 1.0 for lg in logs)
    else:  # an untrained teacher is never confident: q = 0, only the pasted source pixels train
        assert all(lg["conf_weight"] == 0.0 for lg in logs)
    # the teacher follows the student (alpha_0 = 0: a copy after the first step, then an EMA)
    assert not torch.equal(next(m.teacher.parameters()), next(_model().parameters()))


def test_dacs_ignores_offline_target_labels():
    b1, b2 = _batch(), _batch()
    b2["target"]["label"] = torch.full_like(b2["target"]["label"], IGNORE)
    m = DacsSelfTrain({}, _model(), C3)
    torch.manual_seed(5)
    l1, _ = m.training_step(b1, 0)
    torch.manual_seed(5)
    l2, _ = m.training_step(b2, 0)
    assert l1.item() == l2.item()


@pytest.mark.parametrize("cfg", [{"mode": "fixed", "threshold": 0.9}, {"mode": "fixed", "class_mix": True}])
def test_threshold_training_steps_reduce_the_loss(cfg):
    m = ThresholdSelfTrain(cfg, _model(), C3)
    losses, logs = _train(m, _batch(with_conf=True))
    assert losses[-1] < losses[0] * 0.85
    assert logs[0]["kept"] == pytest.approx(24 / 32)  # the 8-column band of confidence 0.5 is dropped


def test_threshold_class_balanced_needs_and_uses_the_histogram(pl_folders):
    full, _, ds = pl_folders
    m = ThresholdSelfTrain({"mode": "class_balanced", "portion": 0.5}, _model(), C3)
    with pytest.raises(DataError, match="pseudo-label folder"):
        m.training_step(_batch(with_conf=True), 0)
    m = ThresholdSelfTrain({"portion": 0.5}, _model(), ds.label_space.num_classes)
    m.use_pseudo_labels(PseudoLabelFolder(full))
    assert torch.equal(m.thresholds, class_balanced_thresholds(PseudoLabelFolder(full).histogram(), 0.5))
    state = m.modules()["method_state"].state_dict()
    m2 = ThresholdSelfTrain({}, _model(), ds.label_space.num_classes)
    m2.modules()["method_state"].load_state_dict(state)
    assert torch.equal(m2.thresholds, m.thresholds)
    with pytest.raises(DataError, match="confidence maps"):
        ThresholdSelfTrain({"mode": "fixed"}, _model(), C3).training_step(_batch(), 0)


def test_oracle_is_source_only_under_its_own_name():
    assert method_class("warmup", "oracle").name == "oracle" and issubclass(method_class("warmup", "oracle"), SourceOnly)
    b = _batch()
    a, _ = method_class("warmup", "oracle")({}, _model(), C3).training_step(b, 0)
    s, _ = SourceOnly({}, _model(), C3).training_step(b, 0)
    assert a.item() == s.item()


# -- config -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,cfg,msg", [
    (DacsWarmup, {"tau": 1.5}, "tau"), (DacsWarmup, {"ema_alpha": 1.0}, "ema_alpha"),
    (DacsWarmup, {"taus": 0.9}, "unknown dacs setting 'taus'"), (DacsWarmup, {"jitter": [0.1, 0.2]}, "jitter"),
    (DacsWarmup, {"class_mix": "yes"}, "class_mix"), (DacsWarmup, {"p_blur": 2}, "p_blur"),
    (DacsWarmup, {"mix_weight": "a lot"}, "numbers"),
    (ThresholdSelfTrain, {"mode": "cbst"}, "mode"), (ThresholdSelfTrain, {"portion": 0}, "portion"),
    (ThresholdSelfTrain, {"threshold": 2}, "threshold"), (ThresholdSelfTrain, {"target_weight": -1}, "target_weight"),
    (ThresholdSelfTrain, {"portio": 0.5}, "unknown threshold setting"),
])
def test_bad_config_values_are_usage_errors(cls, cfg, msg):
    with pytest.raises(UsageError, match=msg):
        cls(cfg, _model(), C3)


@pytest.mark.parametrize("bench", ["synthetic", "camvid_day2dusk", "gta5_cityscapes"])
def test_packaged_configs_build_their_methods(bench):
    for name, stage in (("dacs", "warmup"), ("dacs", "self-train"), ("threshold", "self-train"), ("oracle", "warmup")):
        cfg = C.load_config(f"{bench}/{name}")
        assert cfg["method"] == name
        method_class(stage, name)(cfg[name], _model(), C3)
    assert C.load_config(f"{bench}/oracle")["data"]["source_split"] == "train"


# -- through the pipeline ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pl_folders(tiny_bench, tmp_path_factory):
    """A warm-up checkpoint's pseudo-labels, made whole and made in a killed-then-resumed run."""
    d = tmp_path_factory.mktemp("pl")
    run_warmup(config="synthetic/source_only", source=tiny_bench / "source", target=None, out=d / "run", iters=2,
               overrides=TINY_SET)
    ds = PreparedDataset(tiny_bench / "target")
    proto = Protocol(scales=[1.0])
    PL.generate(d / "run" / "last.pt", ds, "train", d / "full", proto, "student", torch.device("cpu"))
    PL.generate(d / "run" / "last.pt", ds, "train", d / "part", proto, "student", torch.device("cpu"), limit=3)
    with open(PseudoLabelFolder(d / "part").log_path(), "ab") as f:
        f.write(b"\x01\x02torn")  # killed in the middle of the 4th record
    PL.generate(d / "run" / "last.pt", ds, "train", d / "part", proto, "student", torch.device("cpu"))
    return d / "full", d / "part", ds


def test_class_balanced_self_train_through_the_pipeline(tiny_bench, pl_folders, tmp_path):
    """The pipeline hands the folder to the method (thresholds) and confidence crops to the batches."""
    full, _, _ = pl_folders
    out = run_self_train(config="synthetic/threshold", ckpt=full.parent / "run" / "last.pt", pseudo_labels=full,
                         source=tiny_bench / "source", target=tiny_bench / "target", out=tmp_path / "thr",
                         overrides=TINY_SET, iters=2)
    assert out["iterations"] == 2 and 0.0 < out["kept"] < 1.0
    from segadapt.engine.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "thr" / "last.pt")["method_state"]
    assert torch.equal(state["thresholds"], class_balanced_thresholds(PseudoLabelFolder(full).histogram(), 0.5))


def test_dacs_warmup_and_oracle_through_the_pipeline(tiny_bench, tmp_path):
    out = run_warmup(config="synthetic/dacs", source=tiny_bench / "source", target=tiny_bench / "target",
                     out=tmp_path / "dacs", iters=2, overrides=TINY_SET)
    assert out["iterations"] == 2
    with pytest.raises(UsageError, match="needs target images"):
        run_warmup(config="synthetic/dacs", source=tiny_bench / "source", target=None, out=tmp_path / "d2", iters=2,
                   overrides=TINY_SET)
    out = run_warmup(config="synthetic/oracle", source=tiny_bench / "target", target=None, out=tmp_path / "oracle",
                     iters=2, overrides=TINY_SET)
    assert out["iterations"] == 2
