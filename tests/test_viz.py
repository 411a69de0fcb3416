import json

import cv2
import numpy as np
import pytest

from segadapt.data.labelspace import CITYSCAPES19, IGNORE
from segadapt.errors import DataError, UsageError
from segadapt.viz.curves import default_keys, ema, load_metrics, plot_curves
from segadapt.viz.panels import (CORRECT_COLOR, IGNORED_COLOR, TITLE_H, WRONG_COLOR, legend, make_panel,
                                 stack_panels)

LS = CITYSCAPES19
H, W = 6, 8


def _inputs():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    label = np.zeros((H, W), np.uint8)
    label[:, 4:] = 13  # car
    label[0, 0] = IGNORE
    pred = label.copy()
    pred[0, 0] = 0
    pred[5, 7] = 10  # sky instead of car
    pred[2, 1] = 1  # sidewalk instead of road
    conf = np.linspace(0, 1, H * W).reshape(H, W)
    return image, label, pred, conf


def test_panel_layout_and_colours():
    image, label, pred, conf = _inputs()
    panel = make_panel(image, label, pred, conf, LS)
    assert panel.dtype == np.uint8
    assert panel.shape == (H + TITLE_H, 5 * W, 3)  # image, gt, pred, error, confidence
    body = panel[TITLE_H:]
    tile = lambda k: body[:, k * W:(k + 1) * W]  # noqa: E731
    np.testing.assert_array_equal(tile(0), image)
    assert tuple(tile(1)[1, 0]) == LS.palette[0]  # GT road
    assert tuple(tile(1)[1, 5]) == LS.palette[13]  # GT car
    assert tuple(tile(1)[0, 0]) == (0, 0, 0)  # ignore shows black
    assert tuple(tile(2)[5, 7]) == LS.palette[10]  # predicted sky
    err = tile(3)
    assert tuple(err[1, 0]) == CORRECT_COLOR and tuple(err[1, 5]) == CORRECT_COLOR
    assert tuple(err[5, 7]) == WRONG_COLOR and tuple(err[2, 1]) == WRONG_COLOR
    assert tuple(err[0, 0]) == IGNORED_COLOR
    assert (err == CORRECT_COLOR).all(-1).sum() == H * W - 3
    # confidence: viridis, dark purple at 0, yellow at 1
    c = tile(4)
    expect0 = cv2.applyColorMap(np.zeros((1, 1), np.uint8), cv2.COLORMAP_VIRIDIS)[0, 0][::-1]
    np.testing.assert_array_equal(c[0, 0], expect0)
    assert c[-1, -1, 0] > 200 and c[-1, -1, 1] > 200 and c[-1, -1, 2] < 80
    # title bar is drawn (not all background) above each tile
    assert panel[:TITLE_H].std() > 0


def test_panel_omits_missing_tiles():
    image, label, pred, conf = _inputs()
    p = make_panel(image, None, pred, conf, LS)  # no error map without a label
    assert p.shape == (H + TITLE_H, 3 * W, 3)
    assert tuple(p[TITLE_H + 5, W + 7]) == LS.palette[10]  # second tile is the prediction
    p = make_panel(image, label, None, None, LS, titles=["rgb", "gt"])
    assert p.shape == (H + TITLE_H, 2 * W, 3)
    with pytest.raises(ValueError):
        make_panel(image, label, None, None, LS, titles=["only one"])
    # out-of-range predictions do not crash the colouriser; they show black
    bad = pred.astype(np.int64)
    bad[0, 1] = 300
    p = make_panel(image, None, bad, None, LS, titles={"pred": "student"})
    assert tuple(p[TITLE_H, W + 1]) == (0, 0, 0)


def test_panel_resizes_maps_and_accepts_tensors():
    torch = pytest.importorskip("torch")
    image, label, pred, conf = _inputs()
    big = cv2.resize(image, (2 * W, 2 * H), interpolation=cv2.INTER_NEAREST)
    p = make_panel(big, torch.from_numpy(label), pred, torch.from_numpy(conf).float(), LS)
    assert p.shape == (2 * H + TITLE_H, 5 * 2 * W, 3)
    assert tuple(p[TITLE_H + 11, 2 * W + 15]) == LS.palette[13]  # nearest-upsampled GT car


def test_stack_and_legend():
    image, label, pred, conf = _inputs()
    a = make_panel(image, label, pred, conf, LS)
    b = make_panel(image, None, pred, None, LS)
    s = stack_panels([a, b])
    assert s.shape == (2 * (H + TITLE_H), 5 * W, 3)
    assert (s[H + TITLE_H:, 2 * W:] == 0).all()  # right padding of the narrower panel
    np.testing.assert_array_equal(s[:H + TITLE_H], a)

    lg = legend(LS, classes_present=[13, 0, 255, 0])  # 255 and duplicates dropped
    assert lg.dtype == np.uint8 and lg.ndim == 3
    colours = {tuple(c) for c in lg.reshape(-1, 3)}
    assert LS.palette[0] in colours and LS.palette[13] in colours
    assert LS.palette[10] not in colours
    full = legend(LS)
    assert full.shape[0] > lg.shape[0]  # 19 classes need more rows than 2


def _write_log(path, n=4, truncated=True, **extra):
    lines = [json.dumps({"iter": 10 * (i + 1), "loss": 2.0 / (i + 1), "loss_seg": 1.0 / (i + 1),
                         "lr": 0.01 * (1 - i / n), "time": 0.5, "tag": "x", **extra}) for i in range(n)]
    text = "\n".join(lines) + "\n"
    if truncated:
        text += '{"iter": 50, "loss": 0.3'  # a run killed mid-write
    path.write_text(text)


def test_load_metrics(tmp_path):
    p = tmp_path / "metrics.jsonl"
    _write_log(p)
    recs = load_metrics(p)
    assert [r["iter"] for r in recs] == [10, 20, 30, 40]
    assert recs[1]["loss"] == 1.0
    with pytest.raises(DataError):
        load_metrics(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError):
        load_metrics(tmp_path / "empty.jsonl")
    (tmp_path / "only_partial.jsonl").write_text('{"iter": 1')
    with pytest.raises(DataError):
        load_metrics(tmp_path / "only_partial.jsonl")
    (tmp_path / "corrupt.jsonl").write_text('{"iter": 1}\n{bad\n{"iter": 2}\n')
    with pytest.raises(DataError):
        load_metrics(tmp_path / "corrupt.jsonl")


def test_default_keys_and_ema():
    runs = {"a": [{"iter": 1, "time": 3.0, "miou": 40.0, "lr": 0.1, "loss": 1.0, "ok": True, "name": "s"}],
            "b": [{"iter": 1, "loss_kd": 0.5}]}
    assert default_keys(runs) == ["loss", "loss_kd", "lr", "miou"]
    # 0.5 * prev + 0.5 * new: 4 -> 4, then 0.5*4 + 0.5*2 = 3, then 0.5*3 + 0.5*0 = 1.5
    assert ema([4.0, 2.0, 0.0], 0.5) == [4.0, 3.0, 1.5]


def test_plot_curves(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _write_log(a)
    _write_log(b, n=6, truncated=False, miou=50.0)
    runs = {"diga": load_metrics(a), "source-only": load_metrics(b)}
    out = tmp_path / "plots" / "curves.png"
    assert plot_curves(runs, out, smooth=0.6) == out
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] > 100 and img.shape[1] > 100
    assert img.std() > 0
    assert [f.name for f in out.parent.iterdir()] == ["curves.png"]  # no temp file left behind
    plot_curves(runs, out, keys=["loss"])  # overwrite with a single subplot
    assert cv2.imread(str(out)) is not None
    with pytest.raises(UsageError):
        plot_curves(runs, out, smooth=1.0)
    with pytest.raises(DataError):
        plot_curves({"x": [{"iter": 1, "time": 2.0}]}, out)
