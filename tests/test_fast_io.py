"""The decoded-label cache of evaluate --pred-dir and the libspng image and label decoders: same values as a fresh
OpenCV / Pillow decode, and a cache that is rebuilt when a label file changes."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segadapt.data import label_cache as LC
from segadapt.data.io import decode_label, read_label, write_png

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _hand_matrix(ds, pred_dir, split, c=19):
    """Confusion matrix counted pixel by pixel with np.add.at on fresh OpenCV decodes."""
    m = np.zeros((c, c), np.int64)
    for i, _, lab in ds.items(split):
        t = cv2.imread(str(lab), cv2.IMREAD_UNCHANGED).ravel().astype(np.int64)
        p = cv2.imread(str(pred_dir / f"{i}.png"), cv2.IMREAD_UNCHANGED).ravel().astype(np.int64)
        keep = (t < c) & (p < c)
        np.add.at(m, (t[keep], p[keep]), 1)
    return m


@pytest.fixture
def prepared(tmp_path):
    import parity_data

    from segadapt.data.prepare import prepare_cityscapes
    from segadapt.data.prepared import PreparedDataset

    parity_data.make(tmp_path, n=4, width=96, height=64, seed=3)
    prepare_cityscapes(tmp_path / "raw", tmp_path / "prepared")
    return PreparedDataset(tmp_path / "prepared"), tmp_path / "pred"


def _eval(ds, pred, tmp_path, name, **kw):
    from segadapt.engine.evaluate import evaluate_predictions, load_confusion

    out = tmp_path / f"{name}.json"
    evaluate_predictions(pred, ds, "val", save_matrix=out, **kw)
    return load_confusion(out)["matrix"]


def test_cache_gives_the_fresh_decode_matrix_and_is_rebuilt_on_change(prepared, tmp_path):
    ds, pred = prepared
    items = ds.items("val")
    assert LC.open_cache(ds.root, "val", items) is None  # nothing yet
    fresh = _eval(ds, pred, tmp_path, "fresh", label_cache=False)
    assert not LC.cache_path(ds.root, "val").exists()  # --no-label-cache writes nothing
    assert np.array_equal(fresh, _hand_matrix(ds, pred, "val"))
    first = _eval(ds, pred, tmp_path, "first")  # decodes the PNGs and builds the cache
    cache = LC.open_cache(ds.root, "val", items)
    assert cache is not None
    for i, _, lab in items:
        assert np.array_equal(cache.get(i), read_label(lab, fast=False))
    cache.close()
    # the streams are plain zlib: a cache written with ISA-L reads back with the standard library
    import zlib

    assert zlib.decompress(LC.encode(read_label(items[1][2]))) == read_label(items[1][2]).tobytes()
    cached = _eval(ds, pred, tmp_path, "cached")  # reads the ground truth from the cache
    assert np.array_equal(first, fresh) and np.array_equal(cached, fresh)

    # change one label file (same size and shape, other values): the cache is stale, then rebuilt
    i0, _, lab0 = items[0]
    new = np.where(read_label(lab0) == 0, 1, read_label(lab0)).astype(np.uint8)
    write_png(lab0, new, rgb=False)
    assert LC.open_cache(ds.root, "val", items) is None
    changed = _eval(ds, pred, tmp_path, "changed")
    assert np.array_equal(changed, _hand_matrix(ds, pred, "val")) and not np.array_equal(changed, fresh)
    cache = LC.open_cache(ds.root, "val", items)
    assert cache is not None and np.array_equal(cache.get(i0), new)
    cache.close()
    assert np.array_equal(_eval(ds, pred, tmp_path, "again"), changed)


def test_corrupt_or_foreign_cache_is_ignored_and_replaced(prepared, tmp_path):
    ds, pred = prepared
    fresh = _eval(ds, pred, tmp_path, "fresh", label_cache=False)
    path = LC.cache_path(ds.root, "val")
    path.write_bytes(LC.MAGIC + b"\xff" * 20)  # a truncated header
    assert LC.open_cache(ds.root, "val", ds.items("val")) is None
    assert np.array_equal(_eval(ds, pred, tmp_path, "rebuilt"), fresh)
    assert LC.open_cache(ds.root, "val", ds.items("val")) is not None
    # a cache of fewer ids (another version of the split) is stale too
    assert LC.open_cache(ds.root, "val", ds.items("val")[:2]) is None


def test_libspng_and_opencv_decode_identical_arrays(tmp_path):
    pytest.importorskip("pyspng")
    rng = np.random.default_rng(0)
    lab = cv2.resize(rng.integers(0, 34, (16, 24)).astype(np.uint8), (240, 130), interpolation=cv2.INTER_NEAREST)
    lab[::7, ::3] = 255
    # grey: segadapt's run-length writer, OpenCV's default, Pillow (as cityscapesScripts writes gtFine)
    write_png(tmp_path / "seg.png", lab, rgb=False)
    cv2.imwrite(str(tmp_path / "cv.png"), lab)
    Image.fromarray(lab).save(tmp_path / "pil.png")
    # palette (GTA5-style label files): indices, not colours, on both paths
    im = Image.fromarray(lab, mode="P")
    im.putpalette([(i * 37) % 256 for i in range(768)])
    im.save(tmp_path / "pal.png")
    # 16-bit grey (confidence maps): OpenCV on both paths
    conf = (rng.random((50, 70)) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), conf)
    for name, want in [("seg", lab), ("cv", lab), ("pil", lab), ("pal", lab), ("c16", conf)]:
        data = (tmp_path / f"{name}.png").read_bytes()
        fast, slow = decode_label(data, name, fast=True), decode_label(data, name, fast=False)
        assert fast.dtype == slow.dtype == want.dtype and fast.shape == want.shape, name
        assert np.array_equal(fast, want) and np.array_equal(slow, want), name


def test_read_image_fast_path_gives_opencv_pixels(tmp_path):
    pytest.importorskip("pyspng")
    from segadapt.data.io import read_image

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb[..., ::-1])  # 8-bit RGB: libspng
    Image.fromarray(rgb).save(tmp_path / "pil.png")
    rgba = np.dstack([rgb, rng.integers(0, 256, (37, 53), dtype=np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")  # OpenCV on both paths: drops alpha
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")  # grey -> 3 equal channels
    cv2.imwrite(str(tmp_path / "j.jpg"), rgb[..., ::-1])
    for name in ("rgb.png", "pil.png", "rgba.png", "grey.png", "j.jpg"):
        fast, slow = read_image(tmp_path / name, fast=True), read_image(tmp_path / name, fast=False)
        assert fast.dtype == np.uint8 and fast.shape == (37, 53, 3) and np.array_equal(fast, slow), name
    assert np.array_equal(read_image(tmp_path / "rgb.png"), rgb)
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)


def test_to_tensor_values_of_flipped_crop():
    from segadapt.data.datasets import to_tensor

    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    view = img[3:15, 4:26][:, ::-1]  # a crop, then a horizontal flip: a strided view, as TrainCrops passes
    t = to_tensor(view)
    want = np.stack([view[..., c].astype(np.float32) / np.float32(255) for c in range(3)])
    assert t.dtype == torch.float32 and t.is_contiguous() and np.array_equal(t.numpy(), want)


def test_train_crops_leave_the_loader_as_uint8_and_become_the_models_input_on_the_device(tmp_path):
    """Crops cross the loader as uint8; batch_to_device gives the float image to_tensor gives the same crop
    and the int64 label, channels_last when asked, and leaves the other tensors alone."""
    from torch.utils.data import default_collate
    from segadapt.data.datasets import TrainCrops, batch_to_device, to_tensor

    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    lab = rng.integers(0, 12, (50, 70), dtype=np.uint8)
    lab[:5] = 255
    cv2.imwrite(str(tmp_path / "i.png"), img[..., ::-1])
    write_png(tmp_path / "l.png", lab, rgb=False)
    ds = TrainCrops([("a", tmp_path / "i.png", tmp_path / "l.png")], crop=(30, 40), scale=(0.7, 1.4))
    samples = [ds[(0, seed)] for seed in range(3)]
    for s in samples:
        assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 30, 40)
        assert s["label"].dtype == torch.uint8 and s["label"].shape == (30, 40)
    batch = default_collate(samples)
    for channels_last in (False, True):
        dev = batch_to_device(batch, "cpu", channels_last)
        want = torch.stack([to_tensor(s["image"].permute(1, 2, 0).numpy()) for s in samples])
        assert dev["image"].dtype == torch.float32 and torch.equal(dev["image"], want)
        assert dev["image"].is_contiguous(memory_format=torch.channels_last) == channels_last
        assert dev["label"].dtype == torch.int64
        assert torch.equal(dev["label"], torch.stack([s["label"].long() for s in samples]))
        assert set(dev["label"].unique().tolist()) <= set(range(12)) | {255}
        assert torch.equal(dev["index"], batch["index"])


def test_unlabelled_crops_equal_crops_of_an_all_ignore_label_file(tmp_path):
    """Target images without labels skip resizing a constant map; the sample must be what an all-ignore
    label file gives (same rng draws, same image, label 255 everywhere, padding included)."""
    from segadapt.data.datasets import TrainCrops

    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (60, 100, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "i.png"), img[..., ::-1])
    write_png(tmp_path / "l.png", np.full((60, 100), 255, np.uint8), rgb=False)
    bare = TrainCrops([("a", tmp_path / "i.png", None)], crop=(40, 90), scale=(0.6, 1.5), resize=(50, 80))
    ref = TrainCrops([("a", tmp_path / "i.png", tmp_path / "l.png")], crop=(40, 90), scale=(0.6, 1.5),
                     resize=(50, 80))
    for seed in range(8):  # scales below and above 1: padded and unpadded crops, flips both ways
        a, b = bare[(0, seed)], ref[(0, seed)]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"]), seed
        assert (a["label"] == 255).all() and a["label"].dtype == torch.uint8
