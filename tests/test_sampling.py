"""Rare-class sampling (DAFormer) and source -> target label maps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from segadapt.data.labelspace import CAMVID11, CITYSCAPES19, IGNORE, class_map_lut
from segadapt.data.prepared import PreparedDataset
from segadapt.data.sampling import IterationBatchSampler, RareClassSampling, rare_class_probabilities
from segadapt.errors import UsageError


def _prepared_with_stats(root, counts):
    """A prepared folder written by hand: three images, per-image class counts in stats/train.json."""
    ids = [f"im{i}" for i in range(len(counts))]
    (root / "splits").mkdir(parents=True)
    (root / "stats").mkdir()
    (root / "splits/train.txt").write_text("".join(f"{i}\t/nowhere/{i}.png\n" for i in ids))
    (root / "stats/train.json").write_text(json.dumps({"classes": list(CITYSCAPES19.classes), "ids": ids,
                                                       "counts": counts, "total": np.sum(counts, 0).tolist()}))
    (root / "dataset.json").write_text(json.dumps({"format": "segadapt-prepared", "version": 1, "kind": "gta5",
                                                   "label_space": "cityscapes19", "raw_root": "/nowhere",
                                                   "resize": None, "splits": {"train": len(ids)},
                                                   "has_labels": {"train": True}}))
    return PreparedDataset(root)


def _row(d):
    r = [0] * 19
    for k, v in d.items():
        r[k] = v
    return r


ROAD, CAR, PERSON = 0, 13, 11
COUNTS = [_row({ROAD: 800, CAR: 40}), _row({ROAD: 100, CAR: 50, PERSON: 6}), _row({PERSON: 4})]


def test_probabilities_on_hand_made_stats(tmp_path):
    ds = _prepared_with_stats(tmp_path / "src", COUNTS)
    counts = ds.class_counts("train")
    classes, p = rare_class_probabilities(counts.sum(0), temperature=0.1)
    assert classes.tolist() == [ROAD, PERSON, CAR]
    # shares: road 900/1000, car 90/1000, person 10/1000 -> weights exp((1 - f) / 0.1)
    w = {ROAD: math.exp(1.0), CAR: math.exp(9.1), PERSON: math.exp(9.9)}
    z = sum(w.values())
    assert p.tolist() == pytest.approx([w[ROAD] / z, w[PERSON] / z, w[CAR] / z], rel=1e-12)
    # DAFormer's T = 0.01: road practically never drawn, person e^8 times as likely as car ((0.99 - 0.91) / 0.01)
    _, p = rare_class_probabilities(counts.sum(0), temperature=0.01)
    assert p[0] < 1e-30 and p[1] / p[2] == pytest.approx(math.exp(8.0))


def test_draws_follow_the_probabilities_and_min_pixels(tmp_path):
    counts = np.asarray(COUNTS)
    rcs = RareClassSampling(counts, temperature=0.1, min_pixels=5)
    # person: only image 1 has >= 5 pixels of it; car: images 0 and 1; road: 0 and 1
    assert [x.tolist() for x in rcs.images] == [[0, 1], [1], [0, 1]]
    draws = np.array([rcs(0, 0, pos) for pos in range(4000)])
    assert set(draws.tolist()) <= {0, 1}  # image 2 holds only 4 person pixels
    p_person = rcs.probs[1]
    # image 1 is drawn for every person draw and half of the others
    assert (draws == 1).mean() == pytest.approx(p_person + (1 - p_person) / 2, abs=0.03)
    # deterministic per position, so a resumed stream draws the same images
    assert [rcs(0, 0, pos) for pos in range(50)] == draws[:50].tolist()
    sampler = IterationBatchSampler(3, 4, seed=0, stream=0, start=0, total=5, choose=rcs)
    resumed = IterationBatchSampler(3, 4, seed=0, stream=0, start=3, total=5, choose=rcs)
    assert list(sampler)[3:] == list(resumed)


def test_bad_rcs_settings():
    with pytest.raises(ValueError, match="temperature"):
        RareClassSampling(np.asarray(COUNTS), temperature=0)
    with pytest.raises(ValueError, match="no labelled pixels"):
        RareClassSampling(np.zeros((2, 19), np.int64))


def test_source_label_map_to_another_space():
    mapping = {c: None for c in CITYSCAPES19.classes}
    mapping.update({"road": "road", "car": "car", "truck": "car", "bus": "car", "terrain": "tree"})
    lut = class_map_lut(CITYSCAPES19, CAMVID11, mapping)
    assert lut[0] == 3 and lut[13] == lut[14] == lut[15] == 8 and lut[9] == 5
    assert lut[2] == IGNORE and lut[IGNORE] == IGNORE
    del mapping["wall"]
    with pytest.raises(UsageError, match="does not say where .* wall"):
        class_map_lut(CITYSCAPES19, CAMVID11, mapping)
    with pytest.raises(UsageError, match="lacks: lorry"):
        class_map_lut(CITYSCAPES19, CAMVID11, {**mapping, "wall": None, "road": "lorry"})
