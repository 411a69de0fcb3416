"""Our evaluator against the official cityscapesScripts on the same prediction files."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

cs = pytest.importorskip("cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling",
                         reason="cityscapesscripts is a test-only dependency (pip install -e .[dev])")


def test_class_ious_equal_cityscapesscripts(tmp_path):
    import parity_data

    from segadapt.data.prepare import prepare_cityscapes
    from segadapt.data.prepared import PreparedDataset
    from segadapt.engine.evaluate import evaluate_predictions

    ids = parity_data.make(tmp_path, n=3, width=96, height=64, seed=1)
    prepare_cityscapes(tmp_path / "raw", tmp_path / "prepared")
    ours = evaluate_predictions(tmp_path / "pred", PreparedDataset(tmp_path / "prepared"), "val")
    theirs = parity_data.cityscapesscripts_iou(tmp_path, ids)
    assert len(ours["per_class"]) == 19
    for name, iou in ours["per_class"].items():
        ref = theirs[name]
        if math.isnan(ref):
            assert iou is None, name
        else:
            assert iou / 100 == pytest.approx(ref, abs=1e-6), name
    assert ours["per_class"]["train"] is None  # undefined on both sides, left out of the mean
    defined = [v for v in theirs.values() if not math.isnan(v)]
    assert ours["miou"] / 100 == pytest.approx(sum(defined) / len(defined), abs=1e-6)


def test_the_benchmarks_c_counting_is_cityscapesscripts_confusion_count(tmp_path):
    """benchmarks/evaluator_speed.py times cityscapesScripts with its C counting switched on by a loop it
    compiles; that loop must count exactly what the official pure-Python branch counts."""
    import ctypes

    import numpy as np
    import evaluator_speed

    so = evaluator_speed.build_c_counting(tmp_path)
    if so is None:
        pytest.skip("no C compiler")
    lib = ctypes.CDLL(str(so))
    lib.add_to_confusion_matrix.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                            ctypes.c_uint]
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 34, (37, 53), dtype=np.uint8)
    pred = rng.integers(0, 34, (37, 53), dtype=np.uint8)
    conf = np.zeros((34, 34), np.uint64)
    conf[2, 3] = 7  # it adds to what is there
    lib.add_to_confusion_matrix(pred.ctypes.data, gt.ctypes.data, pred.size, conf.ctypes.data, 34)
    want = np.zeros((34, 34), np.uint64)
    np.add.at(want, (gt.ravel(), pred.ravel()), 1)  # confMatrix[gt][pred] += 1, pixel by pixel
    want[2, 3] += 7
    assert np.array_equal(conf, want) and int(conf.sum()) == gt.size + 7
