import io

import numpy as np
import pytest
import torch
from rich.console import Console

from segadapt.engine.metrics import ConfusionMatrix, compute, format_table
from segadapt.errors import DataError

NAMES3 = ["a", "b", "c"]

# Worked by hand. 255 at (0,3) and (2,2) is ignored, leaving 10 valid pixels.
# (gt, pred) pairs: (0,0) (0,1) (1,1) (0,0) (1,1) (1,2) (2,2) (2,2) (2,0) (1,1)
#            pred:  0  1  2    row sum
#   gt 0           2  1  0      3
#   gt 1           0  3  1      4
#   gt 2           1  0  2      3
#   col sum        3  4  3
# IoU a = 2/(3+3-2) = 1/2, IoU b = 3/(4+4-3) = 3/5, IoU c = 2/(3+3-2) = 1/2
# mIoU = (50+60+50)/3 = 160/3; pixel acc = 7/10; mean acc = (2/3 + 3/4 + 2/3)/3 = 25/36
LABEL = np.array([[0, 0, 1, 255],
                  [0, 1, 1, 2],
                  [2, 2, 255, 1]], np.uint8)
PRED = np.array([[0, 1, 1, 0],
                 [0, 1, 2, 2],
                 [2, 0, 1, 1]], np.int64)
EXPECTED = np.array([[2, 1, 0], [0, 3, 1], [1, 0, 2]])


def test_hand_worked_case():
    cm = ConfusionMatrix(3)
    cm.update(PRED, LABEL)
    np.testing.assert_array_equal(cm.matrix, EXPECTED)
    assert cm.matrix.dtype == np.int64
    assert cm.missed == 0
    r = cm.compute(NAMES3)
    assert r["per_class"] == {"a": 50.0, "b": 60.0, "c": 50.0}
    assert r["miou"] == pytest.approx(160 / 3, rel=1e-12)
    assert r["pixel_acc"] == pytest.approx(70.0, rel=1e-12)
    assert r["mean_acc"] == pytest.approx(2500 / 36, rel=1e-12)
    assert r["num_classes_scored"] == 3


def test_class_absent_from_both_is_none_and_not_averaged():
    cm = ConfusionMatrix(4)
    cm.update(PRED, LABEL)
    r = cm.compute(NAMES3 + ["d"])
    assert r["per_class"]["d"] is None
    assert r["miou"] == pytest.approx(160 / 3, rel=1e-12)
    assert r["num_classes_scored"] == 3
    assert r["mean_acc"] == pytest.approx(2500 / 36, rel=1e-12)


def test_class_only_predicted_scores_zero():
    # "d" is predicted on one "a" pixel but never in the label: union 1, IoU 0, counted in the mean
    pred = PRED.copy()
    pred[0, 0] = 3
    r = compute(_cm(pred, LABEL, 4).matrix, NAMES3 + ["d"])
    assert r["per_class"]["d"] == 0.0
    assert r["per_class"]["a"] == pytest.approx(100 / 4)  # tp 1, gt 3, predicted 2 -> 1/4
    assert r["num_classes_scored"] == 4
    # mean acc only over classes present in the label (a, b, c): (1/3 + 3/4 + 2/3)/3
    assert r["mean_acc"] == pytest.approx(100 * (1 / 3 + 3 / 4 + 2 / 3) / 3, rel=1e-12)


def _cm(pred, label, c):
    cm = ConfusionMatrix(c)
    cm.update(pred, label)
    return cm


def test_split_matrix_not_mean_of_images():
    # image A: gt [0 0 0 1], pred [0 0 0 0] -> IoU0 3/4, IoU1 0  -> mIoU 37.5
    # image B: gt [1 1 1 1], pred [1 1 1 1] -> IoU0 n/a, IoU1 1 -> mIoU 100
    # mean of per-image mIoU = 68.75; per-class mean over images = (75 + 50)/2 = 62.5
    # one matrix: gt0 -> p0 3; gt1 -> p0 1, p1 4. IoU0 = 3/(3+4-3) = 3/4, IoU1 = 4/(5+4-4) = 4/5
    la, pa = np.array([[0, 0, 0, 1]]), np.array([[0, 0, 0, 0]])
    lb, pb = np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1]])
    cm = ConfusionMatrix(2)
    cm.update(pa, la)
    cm.update(pb, lb)
    whole = _cm(np.concatenate([pa, pb], 1), np.concatenate([la, lb], 1), 2)
    np.testing.assert_array_equal(cm.matrix, whole.matrix)
    r = cm.compute(["x", "y"])
    assert r["per_class"] == {"x": 75.0, "y": 80.0}
    assert r["miou"] == pytest.approx(77.5, rel=1e-12)
    assert _cm(pa, la, 2).compute(["x", "y"])["miou"] == pytest.approx(37.5)
    assert _cm(pb, lb, 2).compute(["x", "y"])["miou"] == pytest.approx(100.0)


def test_merge_equals_joint_update():
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(PRED[:2], LABEL[:2])
    b.update(PRED[2:], LABEL[2:])
    a.merge(b).merge(ConfusionMatrix(3))  # an empty matrix adds nothing
    np.testing.assert_array_equal(a.matrix, EXPECTED)
    empty = ConfusionMatrix(3).merge(a)
    np.testing.assert_array_equal(empty.matrix, EXPECTED)
    with pytest.raises(ValueError):
        a.merge(ConfusionMatrix(4))


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (2, 17, 23)).astype(np.uint8)
    label[rng.random(label.shape) < 0.2] = 255
    pred = rng.integers(0, 5, label.shape)
    cn, ct = ConfusionMatrix(5), ConfusionMatrix(5)
    cn.update(pred, label)
    ct.update(torch.from_numpy(pred), torch.from_numpy(label))  # uint8 label, int64 pred
    np.testing.assert_array_equal(cn.matrix, ct.matrix)
    assert ct._mat.dtype == torch.int64 and ct._mat.device.type == "cpu"
    # reference: a plain loop over pixels
    ref = np.zeros((5, 5), np.int64)
    for g, p in zip(label.ravel(), pred.ravel()):
        if g != 255:
            ref[g, p] += 1
    np.testing.assert_array_equal(cn.matrix, ref)


def test_out_of_range_prediction_counts_as_wrong():
    # 4 valid pixels (gt 5 is outside [0, 3) and skipped like 255); preds 7 and -1 land nowhere
    label = np.array([[0, 0, 1, 1, 5]])
    pred = np.array([[0, 7, 1, -1, 0]])
    cm = _cm(pred, label, 3)
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    assert cm.missed == 2
    np.testing.assert_array_equal(cm.missed_per_class, [1, 1, 0])
    r = cm.compute(NAMES3)
    # IoU a = 1/(gt 2 + predicted 1 - 1) = 1/2; without the missed count it would be 100
    assert r["per_class"] == {"a": 50.0, "b": 50.0, "c": None}
    assert r["pixel_acc"] == 50.0  # 2 of 4, not 2 of 2
    assert r["mean_acc"] == 50.0
    # the bare matrix alone (no missed counts) cannot know about them
    assert compute(cm.matrix, NAMES3)["pixel_acc"] == 100.0


def test_subset_uses_full_matrix():
    # subset {a, b}: IoU a keeps the false positive from the "c" pixel predicted "a" -> 50,
    # not 2/(3+2-2) = 66.7 from the a/b sub-matrix
    r = _cm(PRED, LABEL, 3).compute(NAMES3, subset=[0, 1])
    assert r["per_class"] == {"a": 50.0, "b": 60.0}
    assert r["miou"] == pytest.approx(55.0, rel=1e-12)
    assert r["num_classes_scored"] == 2
    assert r["mean_acc"] == pytest.approx(100 * (2 / 3 + 3 / 4) / 2, rel=1e-12)
    assert r["pixel_acc"] == pytest.approx(70.0)  # over all valid pixels
    with pytest.raises(ValueError):
        compute(EXPECTED, NAMES3, subset=[3])


def test_empty_and_errors():
    cm = ConfusionMatrix(3)
    np.testing.assert_array_equal(cm.matrix, np.zeros((3, 3)))
    r = cm.compute(NAMES3)
    assert r["miou"] is None and r["pixel_acc"] is None and r["num_classes_scored"] == 0
    cm.update(np.full((2, 2), 1), np.full((2, 2), 255))  # all ignored
    assert cm.matrix.sum() == 0
    with pytest.raises(DataError):
        cm.update(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError):
        compute(np.zeros((2, 2)), NAMES3)


def test_all_reduce_noop_and_single_rank(tmp_path):
    cm = _cm(PRED, LABEL, 3)
    cm.all_reduce()  # not initialised: nothing happens
    np.testing.assert_array_equal(cm.matrix, EXPECTED)
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already in use")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        cm.all_reduce()
        np.testing.assert_array_equal(cm.matrix, EXPECTED)
        empty = ConfusionMatrix(3)
        empty.all_reduce()  # a rank without images still takes part
        np.testing.assert_array_equal(empty.matrix, np.zeros((3, 3)))
    finally:
        dist.destroy_process_group()


def test_format_table():
    r = compute(EXPECTED, NAMES3)
    r["per_class"]["d"] = None
    buf = io.StringIO()
    Console(file=buf, width=80).print(format_table(r, "val"))
    out = buf.getvalue()
    assert "53.33" in out and "60.00" in out and "70.00" in out and "69.44" in out
    assert "n/a" in out and "val" in out


def test_synthia_protocols_16_and_13_hand_case():
    """One 19-class matrix scored as mIoU16 / mIoU13: terrain (not in SYNTHIA's 16) predicted as
    road is still a road false positive; classes absent from both sides are not averaged."""
    from segadapt.data.labelspace import CITYSCAPES19
    from segadapt.engine.evaluate import score

    road, wall, terrain, sky = 0, 3, 9, 10
    label = np.array([road] * 4 + [wall] * 2 + [terrain] * 2 + [sky] * 2)
    pred = np.array([road, road, road, terrain, wall, wall, road, road, sky, sky])
    cm = ConfusionMatrix(19)
    cm.update(pred, label)
    # road: tp 3, gt 4, predicted 5 -> 3 / 6; wall and sky perfect; terrain 0 / 3
    r16 = score(cm, CITYSCAPES19, "16")
    assert r16["miou"] == pytest.approx((0.5 + 1 + 1) / 3 * 100)
    assert r16["miou_by_protocol"] == {"16": pytest.approx(250 / 3), "13": pytest.approx(75.0)}
    assert len(r16["per_class"]) == 16 and "terrain" not in r16["per_class"]
    r13 = score(cm, CITYSCAPES19, "13")
    assert r13["miou"] == pytest.approx(75.0) and "wall" not in r13["per_class"]
    assert score(cm, CITYSCAPES19, "all")["miou"] == pytest.approx((0.5 + 1 + 0 + 1) / 4 * 100)
    assert score(cm, CITYSCAPES19, "19")["miou"] == pytest.approx(62.5)
    text = io.StringIO()
    Console(file=text, width=120).print(format_table(r16, "t"))
    assert "mIoU16" in text.getvalue() and "75.00" in text.getvalue()


def test_protocol_unknown_or_incompatible():
    from segadapt.data.labelspace import CAMVID11, CITYSCAPES19, protocol_indices
    from segadapt.errors import UsageError

    with pytest.raises(UsageError, match="unknown evaluation protocol '7'"):
        protocol_indices(CITYSCAPES19, "7")
    with pytest.raises(UsageError, match="lacks: wall"):
        protocol_indices(CAMVID11, "16")
    assert protocol_indices(CAMVID11, "all") == list(range(11))


@pytest.mark.parametrize("shape", [(7,), (33, 65), (3, 17, 9)])
def test_uint8_fast_path_equals_int64_path(shape):
    """Label files take the joint-histogram path; it must count exactly what the general path counts,
    ignore pixels, out-of-range predictions and non-contiguous views included."""
    rng = np.random.default_rng(1)
    t = rng.choice(np.array([0, 1, 2, 3, 4, 255], np.uint8), size=shape)
    p = rng.choice(np.array([0, 1, 2, 3, 4, 7, 200], np.uint8), size=shape)
    fast, slow = ConfusionMatrix(5), ConfusionMatrix(5)
    fast.update(p, t)
    slow.update(p.astype(np.int64), t.astype(np.int64))
    assert np.array_equal(fast.matrix, slow.matrix) and np.array_equal(fast.missed_per_class, slow.missed_per_class)
    if len(shape) > 1:
        view_fast, view_slow = ConfusionMatrix(5), ConfusionMatrix(5)
        view_fast.update(p[..., ::2], t[..., ::2])
        view_slow.update(p[..., ::2].astype(np.int64), t[..., ::2].astype(np.int64))
        assert np.array_equal(view_fast.matrix, view_slow.matrix)


def test_joint_histogram_exact_beyond_float32_counts():
    """2^24 + 1 equal pixels: a float32 histogram would count 2^24; the count must be exact."""
    from segadapt.engine.metrics import _joint_histogram_u8

    t = np.zeros(2**24 + 1, np.uint8)
    p = np.zeros_like(t)
    p[-1] = 3
    h = _joint_histogram_u8(t, p)
    assert h[0, 0] == 2**24 and h[0, 3] == 1 and h.sum() == 2**24 + 1
