"""`evaluate --save-matrix` writes the split's confusion matrix (equal to one counted pixel by pixel
here); `visualize confusion` pictures it, rows normalised to 1 (checked on hand numbers)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from segadapt.data.io import read_label, write_png
from segadapt.data.prepared import PreparedDataset
from segadapt.engine.evaluate import load_confusion
from segadapt.errors import DataError
from segadapt.viz.confusion import normalised_confusion, plot_confusion

from conftest import run_cli


def test_normalised_confusion_on_hand_numbers():
    m = [[3, 1, 0], [0, 0, 0], [2, 2, 4]]
    norm, other = normalised_confusion(m)
    assert not other
    assert norm[0].tolist() == [0.75, 0.25, 0.0]
    assert np.isnan(norm[1]).all()  # no ground-truth pixels of class 1
    assert norm[2].tolist() == [0.25, 0.25, 0.5]
    # 2 pixels of class 2 predicted outside the classes: an 'other' column, the diagonal stays the recall
    norm, other = normalised_confusion(m, missed=[0, 0, 2])
    assert other and norm.shape == (3, 4)
    assert norm[2].tolist() == [0.2, 0.2, 0.4, 0.2]
    assert norm[0].tolist() == [0.75, 0.25, 0.0, 0.0]


def _hand_confusion(pairs, c):
    """Pixel by pixel, the slow way: m[gt, pred] += 1 over valid pixels; missed = out-of-range predictions."""
    m, missed = np.zeros((c, c), np.int64), np.zeros(c, np.int64)
    for pred, gt in pairs:
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
            if g >= c:
                continue  # ignore (255)
            if p < c:
                m[g, p] += 1
            else:
                missed[g] += 1
    return m, missed


def test_evaluate_saves_the_matrix_and_visualize_draws_it(tiny_bench, tmp_path):
    ds = PreparedDataset(tiny_bench / "target")
    c = ds.label_space.num_classes
    preds = tmp_path / "preds"
    pairs = []
    for k, (_id, _img, lab) in enumerate(ds.items("val")):
        g = read_label(lab)
        p = g.copy()
        if k == 0:
            p[:] = 0  # everything 'road'
        elif k == 1:
            p = np.where(g < c, (g + 1) % c, g).astype(np.uint8)  # every class taken for the next one
        elif k == 2:
            p[:5, :7] = 200  # an id outside the classes: no column, a miss of its ground-truth class
        write_png(preds / f"{_id}.png", p, rgb=False)
        pairs.append((p, g))
    expected, missed = _hand_confusion(pairs, c)
    assert missed.sum() > 0

    out = tmp_path / "eval" / "matrix.json"
    proc = run_cli("evaluate", "--data", ds.root, "--split", "val", "--pred-dir", preds, "--json", "--save-matrix", out)
    saved = json.loads(out.read_text())
    assert saved["classes"] == list(ds.label_space.classes)
    assert np.array_equal(np.asarray(saved["matrix"]), expected)
    assert saved["missed"] == missed.tolist()
    assert saved["miou"] == json.loads(proc.stdout)["miou"]  # the same evaluation
    assert [p.name for p in out.parent.iterdir()] == ["matrix.json"]  # atomic: no temp file left

    # nothing overwritten without --force, and the refusal comes before evaluating
    mtime = out.stat().st_mtime_ns
    from typer.testing import CliRunner

    from segadapt.cli.main import app

    args = ["evaluate", "--data", str(ds.root), "--split", "val", "--pred-dir", str(preds), "--save-matrix", str(out)]
    res = CliRunner().invoke(app, args)  # in-process: the CLI's own error path (exit 1, one line) is run_cli's
    assert isinstance(res.exception, DataError) and "--force" in str(res.exception) and "\n" not in str(res.exception)
    assert out.stat().st_mtime_ns == mtime
    res = CliRunner().invoke(app, args + ["--force"])
    assert res.exit_code == 0 and out.stat().st_mtime_ns != mtime
    assert np.array_equal(np.asarray(json.loads(out.read_text())["matrix"]), expected)

    png = tmp_path / "confusion.png"
    run_cli("visualize", "confusion", out, "--out", png)
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 0

    data = load_confusion(out)
    norm, other = normalised_confusion(data["matrix"], data["missed"])
    assert other
    rows = expected.sum(1) + missed
    present = rows > 0
    assert np.allclose(norm[present, :c], expected[present] / rows[present, None])
    assert np.allclose(norm[present].sum(1), 1.0)


def test_a_file_that_is_not_a_matrix_is_refused(tmp_path):
    bad = tmp_path / "m.json"
    bad.write_text(json.dumps({"format": "segadapt-confusion", "classes": ["a", "b"], "matrix": [[1, 2]]}))
    with pytest.raises(DataError, match="C x C"):
        load_confusion(bad)
    bad.write_text(json.dumps({"miou": 3}))
    with pytest.raises(DataError, match="not a confusion matrix"):
        load_confusion(bad)
    good = {"format": "segadapt-confusion", "classes": ["a", "b"], "matrix": [[5, 0], [1, 3]], "missed": [0, 0]}
    plot_confusion({**good, "matrix": np.asarray(good["matrix"])}, tmp_path / "p.png", title="t")
    assert cv2.imread(str(tmp_path / "p.png")) is not None
