"""Dataset converters (GTA5, Cityscapes), the common engine and the prepared-dataset reader.

Every dataset is a handful of tiny files built here in the raw layouts; expected trainIds and class
counts are written out by hand."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segadapt.data.labelspace import CITYSCAPES19
from segadapt.data.prepare import parse_image_size, prepare_cityscapes, prepare_gta5
from segadapt.data.prepare.common import resize_image
from segadapt.data.prepared import PreparedDataset
from segadapt.errors import DataError, UsageError

# Cityscapes labelId -> trainId, from the Cityscapes documentation (labels.py), written out here
# rather than imported so that a wrong table in the package would be caught.
LABELID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                      24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def to_train(label_ids: np.ndarray) -> np.ndarray:
    out = np.full(label_ids.shape, 255, np.uint8)
    for lid, tid in LABELID_TO_TRAINID.items():
        out[label_ids == lid] = tid
    return out


# GTA5 label 00001 (H=6, W=8), in labelIds
LAB1 = np.array([[7] * 8,                   # road -> 0
                 [7] * 8,
                 [26] * 8,                  # car -> 13
                 [0] * 8,                   # unlabeled -> 255
                 [8] * 8,                   # sidewalk -> 1
                 [33] * 4 + [3] * 4],       # bicycle -> 18, out of roi -> 255
                np.uint8)
# 00002: building (11 -> 2) everywhere except one person pixel (24 -> 11)
LAB2 = np.full((6, 8), 11, np.uint8)
LAB2[2, 5] = 24
COUNTS1 = {0: 16, 13: 8, 1: 8, 18: 4}
COUNTS2 = {2: 47, 11: 1}


def row(counts: dict) -> list[int]:
    r = [0] * 19
    for c, n in counts.items():
        r[c] = n
    return r


def save_palette_png(path: Path, ids: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids).tobytes())
    # colours are irrelevant (only indices count) but GTA5 files carry a full palette
    im.putpalette([(i * 37) % 256 for i in range(768)])
    im.save(path)


def save_rgb(path: Path, h: int, w: int, seed: int) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(img).save(path)
    return img


def make_gta5(root: Path) -> Path:
    img, lab = root / "images", root / "labels"
    save_rgb(img / "00001.png", 6, 8, 1)
    save_palette_png(lab / "00001.png", LAB1)
    save_rgb(img / "00002.png", 6, 8, 2)
    save_palette_png(lab / "00002.png", LAB2)
    save_rgb(img / "00003.png", 6, 8, 3)                       # label one column narrower
    save_palette_png(lab / "00003.png", LAB1[:, :7])
    save_rgb(img / "00004.png", 6, 8, 4)                       # blank: all ids unmapped
    save_palette_png(lab / "00004.png", np.array([[0, 1, 2, 3] * 2] * 6, np.uint8))
    (img / "00005.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # corrupt image
    save_palette_png(lab / "00005.png", LAB1)
    save_rgb(img / "00006.png", 6, 8, 6)                       # no label
    save_rgb(img / "00007.png", 6, 8, 7)                       # truncated label
    save_palette_png(lab / "00007.png", LAB1)
    data = (lab / "00007.png").read_bytes()
    (lab / "00007.png").write_bytes(data[: len(data) // 2])
    save_palette_png(lab / "00008.png", LAB2)                  # label without image
    return root


CITY_TRAIN = {  # id -> labelIds (H=4, W=6)
    "aachen_000000_000019": np.array([[7, 7, 7, 26, 26, 0],
                                      [7, 7, 7, 26, 26, 0],
                                      [8, 8, 24, 24, 1, 1],
                                      [33, 33, 33, 23, 23, 23]], np.uint8),
    "bochum_000000_000313": np.full((4, 6), 21, np.uint8),
}
CITY_VAL = {"frankfurt_000000_000294": np.array([[11] * 6, [11] * 6, [17] * 6, [7] * 6], np.uint8)}


def make_cityscapes(root: Path) -> Path:
    for split, labels in (("train", CITY_TRAIN), ("val", CITY_VAL)):
        for n, (cid, ids) in enumerate(labels.items()):
            city = cid.split("_")[0]
            save_rgb(root / "leftImg8bit" / split / city / f"{cid}_leftImg8bit.png", 4, 6, n)
            p = root / "gtFine" / split / city / f"{cid}_gtFine_labelIds.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), ids)
            # the real download also has color/instance files next to the labelIds
            cv2.imwrite(str(p.parent / f"{cid}_gtFine_color.png"), np.zeros((4, 6, 3), np.uint8))
    save_rgb(root / "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png", 4, 6, 9)
    # public test labels are placeholders (all unlabeled); they must not make the image "blank"
    p = root / "gtFine/test/berlin/berlin_000000_000019_gtFine_labelIds.png"
    p.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(p), np.zeros((4, 6), np.uint8))
    return root


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
            h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def read_grey(path: Path) -> np.ndarray:
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert a is not None and a.dtype == np.uint8 and a.ndim == 2
    return a


@pytest.fixture
def gta(tmp_path):
    return make_gta5(tmp_path / "raw_gta5")


# ---------------------------------------------------------------------------------------- GTA5


def test_gta5_conversion_skips_and_stats(gta, tmp_path):
    before = tree_hash(gta)
    out = tmp_path / "gta5"
    report = prepare_gta5(gta, out)
    assert tree_hash(gta) == before  # the raw folder is never written to

    assert report["kept"] == {"train": 2}
    reasons = {(e["id"], e["reason"]) for e in report["skipped"]}
    assert reasons == {("00003", "size mismatch"), ("00004", "blank label"), ("00005", "image unreadable"),
                       ("00006", "label missing"), ("00007", "label unreadable"), ("00008", "image missing")}
    assert json.loads((out / "report.json").read_text())["skipped"] == report["skipped"]
    mism = next(e for e in report["skipped"] if e["id"] == "00003")
    assert "7x6" in mism["detail"] and "8x6" in mism["detail"]
    assert mism["image"] == str(gta / "images/00003.png") and mism["label"] == str(gta / "labels/00003.png")

    lab1 = read_grey(out / "labels/train/00001.png")
    np.testing.assert_array_equal(lab1, to_train(LAB1))
    assert lab1[0, 0] == 0 and lab1[2, 0] == 13 and lab1[3, 0] == 255 and lab1[5, 0] == 18 and lab1[5, 7] == 255
    np.testing.assert_array_equal(read_grey(out / "labels/train/00002.png"), to_train(LAB2))
    assert sorted(p.name for p in (out / "labels/train").iterdir()) == ["00001.png", "00002.png"]
    assert not (out / "images").exists()  # no --image-size: raw images are referenced, not copied

    lines = (out / "splits/train.txt").read_text().splitlines()
    assert lines == [f"00001\t{gta / 'images/00001.png'}", f"00002\t{gta / 'images/00002.png'}"]

    stats = json.loads((out / "stats/train.json").read_text())
    assert stats["classes"][0] == "road" and len(stats["classes"]) == 19
    assert stats["ids"] == ["00001", "00002"]
    assert stats["counts"] == [row(COUNTS1), row(COUNTS2)]
    assert stats["total"] == row({0: 16, 13: 8, 1: 8, 18: 4, 2: 47, 11: 1})

    meta = json.loads((out / "dataset.json").read_text())
    assert meta.pop("label_space_def") == CITYSCAPES19.to_dict()
    assert meta == {"format": "segadapt-prepared", "version": 1, "kind": "gta5", "label_space": "cityscapes19",
                    "raw_root": str(gta), "resize": None, "splits": {"train": 2}, "has_labels": {"train": True}}
    assert not (out / ".in-progress.json").exists()


def test_gta5_resize(gta, tmp_path):
    out = tmp_path / "small"
    prepare_gta5(gta, out, image_size="3x4")
    img = cv2.imread(str(out / "images/train/00001.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (3, 4, 3)
    lab = read_grey(out / "labels/train/00001.png")
    # nearest neighbour from 8x6 to 4x3 takes rows 0, 2, 4: road, car, sidewalk; no blended ids
    np.testing.assert_array_equal(lab, np.array([[0] * 4, [13] * 4, [1] * 4], np.uint8))
    lab2 = read_grey(out / "labels/train/00002.png")
    assert set(np.unique(lab2)) <= {2, 11}
    assert (out / "splits/train.txt").read_text().splitlines() == [
        "00001\timages/train/00001.png", "00002\timages/train/00002.png"]
    stats = json.loads((out / "stats/train.json").read_text())
    assert stats["counts"][0] == row({0: 4, 13: 4, 1: 4})  # counted at the written resolution
    assert json.loads((out / "dataset.json").read_text())["resize"] == [4, 3]

    big = tmp_path / "big"
    prepare_gta5(gta, big, image_size=(12, 16))
    assert cv2.imread(str(big / "images/train/00002.png")).shape == (12, 16, 3)
    big_lab = read_grey(big / "labels/train/00001.png")
    assert big_lab.shape == (12, 16)
    np.testing.assert_array_equal(big_lab[::2, ::2], to_train(LAB1))  # each label pixel became a 2x2 block


def test_resize_interpolation():
    img = np.zeros((6, 6), np.uint8)
    img[0, 0] = 90
    # shrinking averages (INTER_AREA): the 3x3 block holding 90 becomes 10; bilinear would sample 0
    np.testing.assert_array_equal(resize_image(img, (2, 2)), [[10, 0], [0, 0]])
    # enlarging interpolates linearly (INTER_AREA would repeat pixels: 0 0 100 100)
    np.testing.assert_array_equal(resize_image(np.array([[0, 100]], np.uint8), (1, 4)), [[0, 25, 75, 100]])


def test_gta5_rerun_is_idempotent_and_force_redoes(gta, tmp_path):
    out = tmp_path / "gta5"
    prepare_gta5(gta, out, image_size="3x4")
    outputs = sorted(p for p in (out / "labels").rglob("*.png")) + sorted((out / "images").rglob("*.png"))
    assert len(outputs) == 4
    for p in outputs:  # mark with an old mtime: a rewrite would change it
        os.utime(p, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    stats_before = (out / "stats/train.json").read_text()

    report = prepare_gta5(gta, out, image_size="3x4")
    assert report["kept"] == {"train": 2} and report["reused"] == {"train": 2}
    assert len(report["skipped"]) == 6  # defects are still reported
    assert all(p.stat().st_mtime_ns == 1_000_000_000_000_000_000 for p in outputs)
    assert (out / "stats/train.json").read_text() == stats_before  # counts read back from existing labels

    report = prepare_gta5(gta, out, image_size="3x4", force=True)
    assert report["reused"] == {"train": 0}
    assert all(p.stat().st_mtime_ns != 1_000_000_000_000_000_000 for p in outputs)
    assert (out / "stats/train.json").read_text() == stats_before


def test_refuses_other_raw_root_or_resize(gta, tmp_path):
    out = tmp_path / "gta5"
    prepare_gta5(gta, out)
    other = tmp_path / "other_copy"
    shutil.copytree(gta, other)
    with pytest.raises(DataError, match="raw_root"):
        prepare_gta5(other, out)
    with pytest.raises(DataError, match="resize"):
        prepare_gta5(gta, out, image_size="3x4")
    assert json.loads((out / "dataset.json").read_text())["raw_root"] == str(gta)  # refused before touching it

    # an interrupted run (no dataset.json, only its in-progress marker) is protected the same way
    (out / "dataset.json").rename(out / ".in-progress.json")
    with pytest.raises(DataError, match="raw_root"):
        prepare_gta5(other, out)

    report = prepare_gta5(other, out, force=True)
    assert report["reused"] == {"train": 0}
    assert json.loads((out / "dataset.json").read_text())["raw_root"] == str(other)
    assert (out / "splits/train.txt").read_text().splitlines()[0] == f"00001\t{other / 'images/00001.png'}"


def test_bad_roots_and_options(tmp_path, gta):
    with pytest.raises(DataError, match="does not exist"):
        prepare_gta5(tmp_path / "nope", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*images/ and labels/"):
        prepare_gta5(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(DataError, match="leftImg8bit"):
        prepare_cityscapes(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(UsageError, match="inside the raw dataset"):
        prepare_gta5(gta, gta / "prepared")
    assert not (gta / "prepared").exists()
    with pytest.raises(UsageError, match="workers"):
        prepare_gta5(gta, tmp_path / "o", workers=-1)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        prepare_gta5(gta, busy)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    assert prepare_gta5(gta, busy, force=True)["kept"] == {"train": 2}


def test_parse_image_size():  # height x width
    assert parse_image_size("720x1280") == (720, 1280)
    assert parse_image_size(" 32X64 ") == (32, 64)
    assert parse_image_size(None) is None
    assert parse_image_size((6, 8)) == (6, 8)
    for bad in ("1280", "720x0", "axb", "12x", "-5x4", "720x1280x3"):
        with pytest.raises(UsageError, match="image-size"):
            parse_image_size(bad)


def test_workers_give_same_output(gta, tmp_path):
    prepare_gta5(gta, tmp_path / "a", image_size="3x4", workers=0)
    report = prepare_gta5(gta, tmp_path / "b", image_size="3x4", workers=2)
    assert report["kept"] == {"train": 2} and len(report["skipped"]) == 6
    for rel in ("labels/train/00001.png", "labels/train/00002.png", "images/train/00001.png",
                "splits/train.txt", "stats/train.json"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


# ----------------------------------------------------------------------------------- Cityscapes


def test_cityscapes_all_splits(tmp_path):
    raw = make_cityscapes(tmp_path / "cs")
    before = tree_hash(raw)
    out = tmp_path / "out"
    report = prepare_cityscapes(raw, out)
    assert tree_hash(raw) == before
    assert report["kept"] == {"train": 2, "val": 1, "test": 1} and report["skipped"] == []

    meta = json.loads((out / "dataset.json").read_text())
    assert meta["kind"] == "cityscapes" and meta["splits"] == {"train": 2, "val": 1, "test": 1}
    assert meta["has_labels"] == {"train": True, "val": True, "test": False}

    aachen = read_grey(out / "labels/train/aachen_000000_000019.png")
    np.testing.assert_array_equal(aachen, to_train(CITY_TRAIN["aachen_000000_000019"]))
    np.testing.assert_array_equal(aachen[0], [0, 0, 0, 13, 13, 255])  # 7 -> 0, 26 -> 13, 0 -> 255
    np.testing.assert_array_equal(aachen[2], [1, 1, 11, 11, 255, 255])  # 1 (ego vehicle) -> 255
    assert (read_grey(out / "labels/train/bochum_000000_000313.png") == 8).all()  # vegetation
    np.testing.assert_array_equal(read_grey(out / "labels/val/frankfurt_000000_000294.png")[:, 0], [2, 2, 5, 0])
    assert not (out / "labels/test").exists() and not (out / "stats/test.json").exists()

    assert (out / "splits/train.txt").read_text().splitlines() == [
        f"aachen_000000_000019\t{raw / 'leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png'}",
        f"bochum_000000_000313\t{raw / 'leftImg8bit/train/bochum/bochum_000000_000313_leftImg8bit.png'}"]
    stats = json.loads((out / "stats/train.json").read_text())
    assert stats["counts"] == [row({0: 6, 13: 4, 1: 2, 11: 2, 18: 3, 10: 3}), row({8: 24})]
    assert json.loads((out / "stats/val.json").read_text())["counts"] == [row({2: 12, 5: 6, 0: 6})]

    # test images are validated once; a re-run trusts the previous list instead of decoding again
    report = prepare_cityscapes(raw, out)
    assert report["reused"] == {"train": 2, "val": 1, "test": 1}


def test_cityscapes_split_choice_missing_label_and_merge(tmp_path):
    raw = make_cityscapes(tmp_path / "cs")
    (raw / "gtFine/train/bochum/bochum_000000_000313_gtFine_labelIds.png").unlink()
    out = tmp_path / "out"
    report = prepare_cityscapes(raw, out, splits=["val"])
    assert report["kept"] == {"val": 1}
    report = prepare_cityscapes(raw, out, splits=["train"])
    assert report["kept"] == {"val": 1, "train": 1}  # earlier splits with the same settings stay
    assert [(e["id"], e["reason"]) for e in report["skipped"]] == [("bochum_000000_000313", "label missing")]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["splits"] == {"val": 1, "train": 1}
    assert meta["has_labels"] == {"val": True, "train": True}
    with pytest.raises(DataError, match=r"train_extra.*available: test, train, val"):
        prepare_cityscapes(raw, out, splits=["train_extra"])

    # a split without gtFine is image-only, not an error
    shutil.rmtree(raw / "gtFine/val")
    report = prepare_cityscapes(raw, tmp_path / "out2", splits=["val"])
    assert report["kept"] == {"val": 1} and report["skipped"] == []
    assert PreparedDataset(tmp_path / "out2").has_labels("val") is False


# ------------------------------------------------------------------------------- PreparedDataset


def test_prepared_dataset_reader(gta, tmp_path):
    out = tmp_path / "gta5"
    prepare_gta5(gta, out)
    ds = PreparedDataset(out)
    assert ds.kind == "gta5" and ds.label_space.name == "cityscapes19" and ds.label_space.num_classes == 19
    assert ds.splits == ["train"] and ds.has_labels("train")
    assert ds.ids("train") == ["00001", "00002"]
    assert ds.image_path("train", "00002") == gta / "images/00002.png"
    assert ds.label_path("train", "00001") == out.absolute() / "labels/train/00001.png"
    counts = ds.class_counts("train")
    assert counts.dtype == np.int64 and counts.shape == (2, 19)
    np.testing.assert_array_equal(counts, [row(COUNTS1), row(COUNTS2)])
    items = ds.items("train")
    assert [(i, p.name, lab.name) for i, p, lab in items] == [("00001", "00001.png", "00001.png"),
                                                                 ("00002", "00002.png", "00002.png")]
    assert all(p.is_file() and lab.is_file() for _, p, lab in items)
    with pytest.raises(UsageError, match=r"unknown split 'val'.*available: train"):
        ds.ids("val")
    with pytest.raises(UsageError, match="unknown id"):
        ds.image_path("train", "00003")

    small = tmp_path / "small"
    prepare_gta5(gta, small, image_size="3x4")
    ds = PreparedDataset(small)
    assert ds.image_path("train", "00001") == small.absolute() / "images/train/00001.png"
    assert ds.image_path("train", "00001").is_file()


def test_prepared_dataset_image_only_and_errors(tmp_path):
    raw = make_cityscapes(tmp_path / "cs")
    out = tmp_path / "out"
    prepare_cityscapes(raw, out, image_size="2x3")
    ds = PreparedDataset(out)
    assert ds.splits == ["train", "val", "test"]
    assert not ds.has_labels("test")
    assert ds.label_path("test", "berlin_000000_000019") is None
    assert ds.items("test") == [("berlin_000000_000019", out.absolute() / "images/test/berlin_000000_000019.png", None)]
    assert cv2.imread(str(ds.image_path("test", "berlin_000000_000019"))).shape == (2, 3, 3)
    with pytest.raises(DataError, match="no labels"):
        ds.class_counts("test")
    assert ds.class_counts("val").sum() == 6  # 3x2 pixels, all valid classes

    with pytest.raises(DataError, match="does not exist"):
        PreparedDataset(tmp_path / "missing")
    with pytest.raises(DataError, match="no dataset.json"):
        PreparedDataset(raw)
    (out / "dataset.json").write_text('{"format": "something-else"}')
    with pytest.raises(DataError, match="not a segadapt prepared"):
        PreparedDataset(out)
