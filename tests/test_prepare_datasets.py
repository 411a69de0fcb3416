"""Converters for SYNTHIA, BDD100K, Mapillary Vistas, CamVid and a user's own folder.

Real-format samples (``/work/shared/data/samples``) and the real CamVid copy are read in place
(converters never write into the raw folder) or copied into small layouts built here. Expected
trainIds are computed in the tests independently of the package: SYNTHIA's 16-bit PNGs are decoded
by a small PNG reader written here, the SYNTHIA table is written out by hand, and Mapillary's
mapping is read from the YAML file with ``yaml.safe_load``."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from PIL import Image

from segadapt.data.labelspace import CAMVID11, CITYSCAPES19
from segadapt.data.prepare import (CONVERTERS, prepare_bdd100k, prepare_camvid, prepare_folder, prepare_mapillary,
                                   prepare_synthia)
from segadapt.data.prepared import PreparedDataset
from segadapt.errors import DataError, UsageError
from tests.conftest import run_cli

SHARED = Path("/work/shared/data")
SAMPLES = SHARED / "samples"
SYNTHIA_SEQ = SAMPLES / "synthia/datumaro_fixtures/v_e561f0e69d/labels_segm_dataset"
BDD_SAMPLE = SAMPLES / "bdd100k/mmseg_pseudo"
BDD_TOOLKIT = SAMPLES / "bdd100k/bdd100k_toolkit_tests/tests/label/testcases"
MAPILLARY_SAMPLE = SAMPLES / "mapillary/mmseg_pseudo"
CAMVID = SHARED / "camvid"
MAPPING_YAML = Path(__file__).resolve().parent.parent / "segadapt/data/mappings/mapillary_v1.2_to_cityscapes19.yaml"

def needs_path(p: Path):
    return pytest.mark.skipif(not p.exists(), reason=f"{p} not available")


# SYNTHIA class id -> Cityscapes trainId (SYNTHIA-RAND-CITYSCAPES README as used by DAFormer/DACS),
# written out here rather than imported so that a wrong table in the package would be caught.
SYNTHIA_TABLE = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12, 8: 13,
                 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}


def lut_apply(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.full(raw.shape, 255, np.uint8)
    for k, v in table.items():
        out[raw == k] = v
    return out


def read_grey(path: Path) -> np.ndarray:
    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert a is not None and a.dtype == np.uint8 and a.ndim == 2, path
    return a


def indices(path: Path) -> np.ndarray:
    """Raw label values as Pillow reads them (palette indices for mode P, grey values for mode L)."""
    with Image.open(path) as im:
        assert im.mode in ("P", "L"), im.mode
        return np.asarray(im).copy()


def save_rgb(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


def save_grey(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), a)


def skipped(report) -> set[tuple[str, str, str]]:
    return {(e["split"], e["id"], e["reason"]) for e in report["skipped"]}


def png16_rgb(path: Path) -> np.ndarray:
    """Decode a non-interlaced 16-bit RGB PNG by hand (zlib + PNG row filters) -> (H, W, 3) uint16 in
    R, G, B order: an independent check of the OpenCV-based reader (Pillow cannot read these)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    w, h, depth, color, _, _, interlace = header
    assert (depth, color, interlace) == (16, 2, 0), header
    bpp, stride = 6, w * 6
    raw, rows, prev = zlib.decompress(idat), [], bytearray(stride)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], (prev[x - bpp] if x >= bpp else 0)
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return np.frombuffer(b"".join(rows), ">u2").reshape(h, w, 3).astype(np.uint16)


def test_converters_registered():
    assert {"synthia", "bdd100k", "mapillary", "camvid", "folder"} <= set(CONVERTERS.names())


# --------------------------------------------------------------------------------------- SYNTHIA


@needs_path(SYNTHIA_SEQ)
def test_synthia_sequence_fixture(tmp_path):
    out = tmp_path / "syn"
    report = prepare_synthia(SYNTHIA_SEQ, out)
    ids = ["Stereo_Left_Omni_B_000000", "Stereo_Left_Omni_B_000001", "Stereo_Left_Omni_F_000000",
           "Stereo_Left_Omni_F_000001"]
    assert report["kept"] == {"train": 4} and report["skipped"] == []
    assert [ln.split("\t")[0] for ln in (out / "splits/train.txt").read_text().splitlines()] == ids
    for i in ids:
        cam, frame = i.rsplit("_", 1)
        raw = png16_rgb(SYNTHIA_SEQ / "GT/LABELS" / cam.replace("Left_", "Left/") / f"{frame}.png")
        np.testing.assert_array_equal(read_grey(out / "labels/train" / f"{i}.png"), lut_apply(raw[:, :, 0], SYNTHIA_TABLE))
    # spelled out for one file: class ids sky, sky, building, building, road
    assert read_grey(out / "labels/train/Stereo_Left_Omni_F_000000.png").tolist() == [[10, 10, 2, 2, 0]]
    # the instance channel (G) is not the class: Omni_B 000000 has instance 10 where the class is 10 too,
    # but Omni_B 000001 has instance 8 on a class-8 (car) pixel and class 11 (bicycle) elsewhere
    assert read_grey(out / "labels/train/Stereo_Left_Omni_B_000001.png").tolist() == [[13, 18, 18, 0, 0]]
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["kind"] == "synthia" and meta["label_space"] == "cityscapes19"
    assert meta["label_space_def"] == CITYSCAPES19.to_dict()


def make_synthia_rand(root: Path) -> dict[str, np.ndarray]:
    """RAND-CITYSCAPES layout with 16-bit labels; returns the expected trainIds of the good file."""
    h, w = 3, 4
    cls = np.array([[21, 21, 3, 3], [8, 8, 10, 1], [0, 22, 13, 11]], np.uint16)  # wall road car person sky ...
    inst = np.full((h, w), 0x1234, np.uint16)  # a large instance id: its low byte is not 0
    lab = np.dstack([np.zeros((h, w), np.uint16), inst, cls])  # OpenCV writes BGR: class in R = last
    for n in ("0000001", "0000002", "0000003", "0000004"):
        save_rgb(root / "RGB" / f"{n}.png", h, w, int(n))
    gt = root / "GT/LABELS"
    gt.mkdir(parents=True)
    assert cv2.imwrite(str(gt / "0000001.png"), lab)
    # the same ids re-saved as an 8-bit RGB PNG: must be refused, not converted
    assert cv2.imwrite(str(gt / "0000002.png"), lab.astype(np.uint8))
    bad = lab.copy()
    bad[0, 0, 2] = 300  # not a SYNTHIA class id
    assert cv2.imwrite(str(gt / "0000003.png"), bad)
    # 0000004 has no label
    return {"0000001": np.array([[3, 3, 0, 0], [13, 13, 11, 10], [255, 255, 255, 18]], np.uint8)}


def test_synthia_16bit_labels(tmp_path):
    raw = tmp_path / "RAND_CITYSCAPES"
    expected = make_synthia_rand(raw)
    gt = raw / "GT/LABELS/0000001.png"
    # the class ids only survive a 16-bit read: an 8-bit decode keeps the high byte (0 = void)
    assert cv2.imread(str(gt), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    eight = cv2.imread(str(gt), cv2.IMREAD_COLOR)
    assert eight.dtype == np.uint8 and (eight[:, :, 2] == 0).all()  # every class would read as void
    np.testing.assert_array_equal(lut_apply(png16_rgb(gt)[:, :, 0], SYNTHIA_TABLE), expected["0000001"])

    out = tmp_path / "syn"
    report = prepare_synthia(raw, out)
    assert report["kept"] == {"train": 1}
    np.testing.assert_array_equal(read_grey(out / "labels/train/0000001.png"), expected["0000001"])
    assert skipped(report) == {("train", "0000002", "label unreadable"), ("train", "0000003", "label invalid"),
                               ("train", "0000004", "label missing")}
    by_id = {e["id"]: e for e in report["skipped"]}
    assert "is 8-bit; expected 16-bit GT/LABELS" in by_id["0000002"]["detail"]
    assert "0000002.png" in by_id["0000002"]["detail"]
    assert not (out / "labels/train/0000002.png").exists()
    assert "300" in by_id["0000003"]["detail"]
    stats = json.loads((out / "stats/train.json").read_text())
    assert stats["counts"] == [[2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 1, 1, 0, 2, 0, 0, 0, 0, 1]]


def test_synthia_every_class_id(tmp_path):
    """Ids 0..22 (every SYNTHIA class) in one 16-bit label, against the table written out above."""
    ids = np.arange(23, dtype=np.uint16).reshape(1, 23)
    save_rgb(tmp_path / "raw/RGB/0000001.png", 1, 23)
    lab = np.dstack([np.zeros_like(ids), ids * 1000, ids])  # B, G = instance, R = class
    save_grey(tmp_path / "raw/GT/LABELS/0000001.png", lab)
    prepare_synthia(tmp_path / "raw", tmp_path / "out")
    got = read_grey(tmp_path / "out/labels/train/0000001.png")
    np.testing.assert_array_equal(got, lut_apply(png16_rgb(tmp_path / "raw/GT/LABELS/0000001.png")[:, :, 0], SYNTHIA_TABLE))
    assert got[0, [0, 13, 14, 22]].tolist() == [255] * 4  # void, parking-slot, road-work, lanemarking


def test_synthia_not_a_synthia_folder(tmp_path):
    (tmp_path / "RGB").mkdir()
    with pytest.raises(DataError, match="GT/LABELS/"):
        prepare_synthia(tmp_path, tmp_path.parent / "o")


# --------------------------------------------------------------------------------------- BDD100K


@needs_path(BDD_SAMPLE)
def test_bdd100k_sample(tmp_path):
    out = tmp_path / "bdd"
    report = prepare_bdd100k(BDD_SAMPLE, out)
    # every image of the sample has its mask; colormaps/ (which has an extra file, 7d2f7975-e0c1c5a7,
    # without image or mask) is not read at all
    assert report["kept"] == {"train": 3, "val": 3} and report["skipped"] == []
    listed = {s: [ln.split("\t")[0] for ln in (out / f"splits/{s}.txt").read_text().splitlines()] for s in ("train", "val")}
    assert listed == {"train": ["0004a4c0-d4dff0ad", "00054602-3bf57337", "00067cfb-e535423e"],
                      "val": ["7d06fefd-f7be05a6", "7d128593-0ccfea4c", "7d15b18b-1e0d6e3f"]}
    for s, ids in listed.items():
        for i in ids:
            raw = indices(BDD_SAMPLE / "labels/sem_seg/masks" / s / f"{i}.png")
            np.testing.assert_array_equal(read_grey(out / "labels" / s / f"{i}.png"), raw)  # already trainIds
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["label_space"] == "cityscapes19" and meta["has_labels"] == {"train": True, "val": True}
    assert not any("7d2f7975" in p.name for p in out.rglob("*"))


@needs_path(BDD_TOOLKIT)
def test_bdd100k_toolkit_masks(tmp_path):
    raw = tmp_path / "bdd100k"
    masks = {"0": BDD_TOOLKIT / "to_rle/sem_seg/masks/0.png", "test-mask": BDD_TOOLKIT / "to_rle/test-mask.png",
             "semseg": BDD_TOOLKIT / "semseg_mask.png"}
    for i, src in masks.items():
        w, h = Image.open(src).size
        save_grey(raw / "images/10k/train" / f"{i}.jpg", np.full((h, w), 90, np.uint8))
        (raw / "labels/sem_seg/masks/train").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, raw / "labels/sem_seg/masks/train" / f"{i}.png")
    val_lab = raw / "labels/sem_seg/masks/val"
    save_rgb(raw / "images/10k/val/bad.jpg", 4, 5)
    save_grey(val_lab / "bad.png", np.array([[0, 18, 255, 19, 30]] * 4, np.uint8))  # 19, 30: not trainIds
    save_rgb(raw / "images/10k/val/nolabel.jpg", 4, 5)
    save_grey(val_lab / "orphan.png", np.zeros((4, 5), np.uint8))
    save_rgb(raw / "images/10k/test/t1.jpg", 4, 5)

    out = tmp_path / "out"
    report = prepare_bdd100k(raw, out)
    assert report["kept"] == {"train": 3, "val": 0, "test": 1}
    assert skipped(report) == {("val", "bad", "label invalid"), ("val", "nolabel", "label missing"),
                               ("val", "orphan", "image missing")}
    bad = next(e for e in report["skipped"] if e["id"] == "bad")
    assert "19, 30" in bad["detail"]
    for i, src in masks.items():
        raw_vals = indices(src)
        assert raw_vals.shape == (720, 1280)
        np.testing.assert_array_equal(read_grey(out / "labels/train" / f"{i}.png"), raw_vals)
    assert set(np.unique(read_grey(out / "labels/train/semseg.png"))) == {13, 255}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["has_labels"] == {"train": True, "val": True, "test": False}
    assert not (out / "labels/test").exists()

    report = prepare_bdd100k(raw, tmp_path / "only_test", splits=["test"])
    assert report["kept"] == {"test": 1}
    with pytest.raises(DataError, match="split nope not found"):
        prepare_bdd100k(raw, tmp_path / "o2", splits=["nope"])


# ------------------------------------------------------------------------------------- Mapillary


def mapillary_table() -> dict[int, int]:
    doc = yaml.safe_load(MAPPING_YAML.read_text())
    assert doc["version"] == "v1.2" and len(doc["classes"]) == 66
    assert [c["id"] for c in doc["classes"]] == list(range(66))
    names = [c["name"] for c in doc["classes"]]
    assert names[13] == "Road" and names[45] == "Pole" and names[65] == "Unlabeled" and len(set(names)) == 66
    return {c["id"]: c["trainId"] for c in doc["classes"] if c["trainId"] is not None}


def test_mapillary_mapping_file():
    table = mapillary_table()
    text = MAPPING_YAML.read_text()
    assert "shachoi/RobustNet" in text and "datasets/mapillary.py" in text  # provenance header
    assert set(table.values()) == set(range(19))  # every Cityscapes class is reachable
    spot = {13: 0, 24: 0, 2: 1, 15: 1, 17: 2, 6: 3, 3: 4, 45: 5, 47: 5, 48: 6, 50: 7, 30: 8, 29: 9, 27: 10,
            19: 11, 20: 12, 55: 13, 61: 14, 54: 15, 58: 16, 57: 17, 52: 18}
    assert {k: table[k] for k in spot} == spot
    for unmapped in (0, 44, 49, 63, 64, 65):  # bird, street light, sign back, car mount, ego vehicle, unlabeled
        assert unmapped not in table


@needs_path(MAPILLARY_SAMPLE)
def test_mapillary_official_layout(tmp_path):
    raw = tmp_path / "vistas"
    stem = "__CRyFzoDOXn6unQ6a3DnQ"
    for split in ("training", "validation"):
        (raw / split / "images").mkdir(parents=True)
        (raw / split / "v1.2/labels").mkdir(parents=True)
    shutil.copy(MAPILLARY_SAMPLE / f"images/{stem}.jpg", raw / "training/images" / f"{stem}.jpg")
    shutil.copy(MAPILLARY_SAMPLE / f"v1.2/{stem}.png", raw / "training/v1.2/labels" / f"{stem}.png")
    # a v2.0 label (124 classes) put where v1.2 belongs: indices beyond 65 -> refused
    shutil.copy(MAPILLARY_SAMPLE / f"images/{stem}.jpg", raw / "validation/images/v2.jpg")
    shutil.copy(MAPILLARY_SAMPLE / f"v2.0/{stem}.png", raw / "validation/v1.2/labels/v2.png")
    save_rgb(raw / "testing/images/t.jpg", 10, 10)

    out = tmp_path / "out"
    report = prepare_mapillary(raw, out)
    assert report["kept"] == {"train": 1, "val": 0, "test": 1}
    assert skipped(report) == {("val", "v2", "label invalid")}
    assert "84" in report["skipped"][0]["detail"] or "85" in report["skipped"][0]["detail"]

    src = indices(MAPILLARY_SAMPLE / f"v1.2/{stem}.png")
    assert set(np.unique(src)) == {17, 44, 45}  # building, street light, pole
    expected = lut_apply(src, mapillary_table())
    got = read_grey(out / "labels/train" / f"{stem}.png")
    np.testing.assert_array_equal(got, expected)
    assert dict(zip(*np.unique(got, return_counts=True))) == {2: 9157, 5: 112, 255: 731}
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["kind"] == "mapillary" and meta["label_space"] == "cityscapes19"
    assert meta["splits"] == {"train": 1, "val": 0, "test": 1}
    assert meta["has_labels"] == {"train": True, "val": True, "test": False}

    # Vistas' own split names are accepted too and written as ours
    report = prepare_mapillary(raw, tmp_path / "out2", splits=["training"])
    assert report["kept"] == {"train": 1}
    with pytest.raises(UsageError, match="unknown Mapillary split"):
        prepare_mapillary(raw, tmp_path / "out3", splits=["dev"])


@needs_path(MAPILLARY_SAMPLE)
def test_mapillary_flat_sample_and_versions(tmp_path):
    report = prepare_mapillary(MAPILLARY_SAMPLE, tmp_path / "flat")
    assert report["kept"] == {"train": 1} and report["skipped"] == []
    with pytest.raises(UsageError) as e:
        prepare_mapillary(MAPILLARY_SAMPLE, tmp_path / "v2", version="v2.0")
    assert str(e.value) == "unknown Mapillary version 'v2.0' (supported: v1.2)"
    assert not (tmp_path / "v2").exists()


def test_mapillary_cli_unknown_version(tmp_path):
    proc = run_cli("prepare-data", "mapillary", "--root", tmp_path, "--out", tmp_path / "out", "--version", "v2.0",
                   check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == ["segadapt: error: unknown Mapillary version 'v2.0' (supported: v1.2)"]


# ---------------------------------------------------------------------------------------- CamVid

CAMVID_FRAMES = {"train": ["0001TP_006690", "0001TP_006720", "0006R0_f00930", "0016E5_00390"],
                 "val": ["0016E5_07959"]}


@pytest.fixture
def camvid_copy(tmp_path):
    if not CAMVID.is_dir():
        pytest.skip(f"{CAMVID} not available")
    raw = tmp_path / "CamVid"
    for split, names in CAMVID_FRAMES.items():
        for d in (split, f"{split}annot"):
            (raw / d).mkdir(parents=True)
            for n in names:
                shutil.copy(CAMVID / d / f"{n}.png", raw / d / f"{n}.png")
    return raw


def camvid_expected(path: Path) -> np.ndarray:
    raw = indices(path)
    assert raw.max() <= 11
    return np.where(raw == 11, 255, raw).astype(np.uint8)


def test_camvid_labels_and_sequences(camvid_copy, tmp_path):
    raw = camvid_copy
    out = tmp_path / "all"
    report = prepare_camvid(raw, out)
    assert report["kept"] == {"train": 4, "val": 1} and report["skipped"] == []
    for split, names in CAMVID_FRAMES.items():
        for n in names:
            exp = camvid_expected(raw / f"{split}annot" / f"{n}.png")
            np.testing.assert_array_equal(read_grey(out / "labels" / split / f"{n}.png"), exp)
    void = indices(raw / "trainannot/0001TP_006690.png") == 11
    assert void.any() and (read_grey(out / "labels/train/0001TP_006690.png")[void] == 255).all()
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["label_space"] == "camvid11" and meta["label_space_def"] == CAMVID11.to_dict()
    stats = json.loads((out / "stats/train.json").read_text())
    assert stats["classes"] == list(CAMVID11.classes) and len(stats["total"]) == 11

    out = tmp_path / "dusk"
    report = prepare_camvid(raw, out, sequences=["0001TP"])
    assert report["kept"] == {"train": 2}  # val has no 0001TP frame: no val split at all
    assert [ln.split("\t")[0] for ln in (out / "splits/train.txt").read_text().splitlines()] == [
        "0001TP_006690", "0001TP_006720"]
    report = prepare_camvid(raw, tmp_path / "day", sequences="0006R0,0016E5", splits=["train"])
    assert report["kept"] == {"train": 2}

    with pytest.raises(DataError) as e:
        prepare_camvid(raw, tmp_path / "x", sequences=["0001TP", "0005VD"])
    msg = str(e.value)
    assert "0005VD" in msg and "0001TP, 0006R0, 0016E5" in msg and "\n" not in msg
    with pytest.raises(DataError, match="sequences present: 0016E5"):
        prepare_camvid(raw, tmp_path / "x", sequences=["0001TP"], splits=["val"])
    with pytest.raises(DataError, match="split test not found"):
        prepare_camvid(raw, tmp_path / "x", splits=["test"])
    with pytest.raises(UsageError, match="bad CamVid sequence"):
        prepare_camvid(raw, tmp_path / "x", sequences=["0001TP_006690"])


def test_camvid_invalid_value_and_image_only(camvid_copy, tmp_path):
    raw = camvid_copy
    lab = indices(raw / "valannot/0016E5_07959.png")
    lab[0, :3] = 12  # beyond void (11)
    save_grey(raw / "valannot/0016E5_07959.png", lab)
    shutil.copytree(raw / "val", raw / "test")  # a split without annot folder: image-only
    report = prepare_camvid(raw, tmp_path / "out")
    assert report["kept"] == {"train": 4, "val": 0, "test": 1}
    assert skipped(report) == {("val", "0016E5_07959", "label invalid")}
    assert "12" in report["skipped"][0]["detail"]
    assert json.loads((tmp_path / "out/dataset.json").read_text())["has_labels"]["test"] is False


@needs_path(CAMVID)
def test_camvid_real_dusk_frames(tmp_path):
    out = tmp_path / "dusk"
    report = prepare_camvid(CAMVID, out, splits=["train"], sequences=["0001TP"], workers=0)
    assert report["kept"] == {"train": 62} and report["skipped"] == []
    ids = [ln.split("\t")[0] for ln in (out / "splits/train.txt").read_text().splitlines()]
    assert len(ids) == 62 and all(i.startswith("0001TP_") for i in ids)
    for i in (ids[0], ids[31], ids[-1]):
        np.testing.assert_array_equal(read_grey(out / f"labels/train/{i}.png"),
                                      camvid_expected(CAMVID / f"trainannot/{i}.png"))
    ds = PreparedDataset(out)
    assert ds.label_space.name == "camvid11"


# ---------------------------------------------------------------------------------------- folder

CLASSES = {"name": "mycam", "classes": [{"value": 0, "name": "road", "color": [128, 64, 128]},
                                        {"value": 7, "name": "car", "color": [0, 0, 142]},
                                        {"value": 200, "name": "person", "color": [220, 20, 60]}],
           "ignore": [255]}
# raw values 0 -> 0, 7 -> 1, 200 -> 2, 255 -> 255
GOOD = np.array([[0, 0, 7, 7], [200, 200, 255, 0], [7, 0, 0, 255]], np.uint8)
GOOD_TRAIN = np.array([[0, 0, 1, 1], [2, 2, 255, 0], [1, 0, 0, 255]], np.uint8)


def write_yaml(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


def make_folder(root: Path, split_dirs: bool = False) -> Path:
    sub = (lambda s: f"/{s}") if split_dirs else (lambda s: "")
    save_rgb(root / f"images{sub('train')}/a.png", 3, 4, 1)
    save_grey(root / f"labels{sub('train')}/a.png", GOOD)
    save_rgb(root / f"images{sub('train')}/b.jpg", 3, 4, 2)
    save_grey(root / f"labels{sub('train')}/b.png", np.where(GOOD == 7, 9, GOOD).astype(np.uint8))  # 9: unknown
    save_rgb(root / f"images{sub('train')}/c.jpeg", 3, 4, 3)  # no label
    if split_dirs:
        save_rgb(root / "images/val/v.png", 3, 4, 4)  # val: no labels/val folder -> image-only
    return root


def test_folder_flat(tmp_path):
    raw = make_folder(tmp_path / "raw")
    classes = write_yaml(tmp_path / "classes.yaml", CLASSES)
    out = tmp_path / "out"
    report = prepare_folder(raw, out, classes=classes)
    assert report["kept"] == {"train": 1}
    assert skipped(report) == {("train", "b", "label invalid"), ("train", "c", "label missing")}
    detail = next(e for e in report["skipped"] if e["id"] == "b")["detail"]
    assert "value 9 is neither a class nor ignored in classes.yaml" in detail and str(raw / "labels/b.png") in detail
    np.testing.assert_array_equal(read_grey(out / "labels/train/a.png"), GOOD_TRAIN)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["kind"] == "folder" and meta["label_space"] == "mycam"
    assert meta["label_space_def"] == {"name": "mycam", "classes": ["road", "car", "person"],
                                       "palette": [[128, 64, 128], [0, 0, 142], [220, 20, 60]]}
    stats = json.loads((out / "stats/train.json").read_text())
    assert stats["counts"] == [[5, 3, 2]]
    ds = PreparedDataset(out)
    assert ds.label_space.classes == ("road", "car", "person")

    # a re-run with another classes file would reuse labels made with the old one: refused
    other = write_yaml(tmp_path / "other.yaml", {**CLASSES, "name": "mycam2"})
    with pytest.raises(DataError, match="another classes file"):
        prepare_folder(raw, out, classes=other)
    # same label space, other values: the labels would differ too
    swapped = write_yaml(tmp_path / "swapped.yaml", {**CLASSES, "classes": [
        {**CLASSES["classes"][0], "value": 7}, {**CLASSES["classes"][1], "value": 0}, CLASSES["classes"][2]]})
    with pytest.raises(DataError, match="another classes file"):
        prepare_folder(raw, out, classes=swapped)
    # the same classes file again: finished labels are reused
    assert prepare_folder(raw, out, classes=classes)["reused"] == {"train": 1}
    assert json.loads((out / "dataset.json").read_text())["conversion"]["values"] == [[0, 0], [7, 1], [200, 2]]
    # unknown value 9 declared as ignore (--force: the classes file changed): b is kept, its car pixels ignored
    ign = write_yaml(tmp_path / "ign.yaml", {**CLASSES, "ignore": [9, 255]})
    with pytest.raises(DataError, match="another classes file"):
        prepare_folder(raw, out, classes=ign)
    report = prepare_folder(raw, out, classes=ign, force=True)
    assert report["kept"] == {"train": 2}
    np.testing.assert_array_equal(read_grey(out / "labels/train/b.png"), np.where(GOOD_TRAIN == 1, 255, GOOD_TRAIN))


def test_folder_splits_and_workers(tmp_path):
    raw = make_folder(tmp_path / "raw", split_dirs=True)
    classes = write_yaml(tmp_path / "classes.yaml", CLASSES)
    r0 = prepare_folder(raw, tmp_path / "w0", classes=classes, workers=0)
    r2 = prepare_folder(raw, tmp_path / "w2", classes=classes, workers=2)
    assert r0["kept"] == r2["kept"] == {"train": 1, "val": 1}
    assert [(e["id"], e["reason"], e["detail"]) for e in r0["skipped"]] == \
           [(e["id"], e["reason"], e["detail"]) for e in r2["skipped"]]
    assert (tmp_path / "w0/labels/train/a.png").read_bytes() == (tmp_path / "w2/labels/train/a.png").read_bytes()
    meta = json.loads((tmp_path / "w2/dataset.json").read_text())
    assert meta["has_labels"] == {"train": True, "val": False}
    report = prepare_folder(raw, tmp_path / "v", classes=classes, splits=["val"])
    assert report["kept"] == {"val": 1}
    with pytest.raises(DataError, match="split test not found"):
        prepare_folder(raw, tmp_path / "t", classes=classes, splits=["test"])


BAD_CLASSES = {
    "missing name": ({"classes": CLASSES["classes"]}, "'name'"),
    "missing classes": ({"name": "x"}, "'classes'"),
    "empty classes": ({"name": "x", "classes": []}, "'classes'"),
    "duplicate value": ({"name": "x", "classes": [{"value": 1, "name": "a"}, {"value": 1, "name": "b"}]},
                        "value 1 is given to two classes"),
    "duplicate name": ({"name": "x", "classes": [{"value": 1, "name": "a"}, {"value": 2, "name": "a"}]},
                       "class name 'a' appears twice"),
    "colour of 4": ({"name": "x", "classes": [{"value": 1, "name": "a", "color": [1, 2, 3, 4]}]}, "color"),
    "colour > 255": ({"name": "x", "classes": [{"value": 1, "name": "a", "color": [1, 2, 300]}]}, "color"),
    "colour as text": ({"name": "x", "classes": [{"value": 1, "name": "a", "color": "red"}]}, "color"),
    "value as text": ({"name": "x", "classes": [{"value": "1", "name": "a"}]}, "value must be an integer"),
    "misspelt key": ({"name": "x", "classes": [{"value": 1, "name": "a", "colour": [1, 2, 3]}]}, "unknown key 'colour'"),
    "ignored class": ({"name": "x", "classes": [{"value": 1, "name": "a"}], "ignore": [1]}, "both a class"),
    "built-in name": ({"name": "cityscapes19", "classes": [{"value": 1, "name": "a"}]}, "built-in"),
    "not a mapping": ("- just\n- a list\n", "expected a mapping"),
    "bad syntax": ("name: x\nclasses: [{value: 1, name: a\n", "bad YAML"),
    "python tag": ("!!python/object/apply:os.system ['true']\n", "bad YAML"),
}


@pytest.mark.parametrize("case", list(BAD_CLASSES))
def test_folder_bad_classes_file(tmp_path, case):
    doc, needle = BAD_CLASSES[case]
    raw = make_folder(tmp_path / "raw")
    path = write_yaml(tmp_path / "classes.yaml", doc)
    with pytest.raises(UsageError) as e:
        prepare_folder(raw, tmp_path / "out", classes=path)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_folder_missing_classes_file_and_default_colours(tmp_path):
    raw = make_folder(tmp_path / "raw")
    with pytest.raises(UsageError, match="not found"):
        prepare_folder(raw, tmp_path / "out", classes=tmp_path / "nope.yaml")
    doc = {"name": "nocolours", "classes": [{"value": v, "name": n} for v, n in ((0, "road"), (7, "car"), (200, "p"))],
           "ignore": [255]}
    prepare_folder(raw, tmp_path / "out", classes=write_yaml(tmp_path / "c.yaml", doc))
    palette = json.loads((tmp_path / "out/dataset.json").read_text())["label_space_def"]["palette"]
    assert len(palette) == 3 and len({tuple(c) for c in palette}) == 3
    assert all(0 <= x <= 255 for c in palette for x in c)


def test_folder_16bit_labels(tmp_path):
    raw = tmp_path / "raw"
    save_rgb(raw / "images/a.png", 2, 3)
    save_grey(raw / "labels/a.png", np.array([[0, 1000, 1000], [0, 0, 1000]], np.uint16))
    save_rgb(raw / "images/b.png", 2, 3)
    save_grey(raw / "labels/b.png", np.array([[0, 5000, 1000], [0, 0, 1000]], np.uint16))  # 5000: unknown
    save_rgb(raw / "images/c.png", 2, 3)
    save_grey(raw / "labels/c.png", np.array([[0, 7, 0], [0, 0, 0]], np.uint8))  # 8-bit, 7: unknown
    doc = {"name": "deep", "classes": [{"value": 0, "name": "ground"}, {"value": 1000, "name": "thing"}]}
    report = prepare_folder(raw, tmp_path / "out", classes=write_yaml(tmp_path / "c.yaml", doc))
    assert report["kept"] == {"train": 1}
    assert skipped(report) == {("train", "b", "label invalid"), ("train", "c", "label invalid")}
    assert "value 5000 is" in next(e["detail"] for e in report["skipped"] if e["id"] == "b")
    assert read_grey(tmp_path / "out/labels/train/a.png").tolist() == [[0, 1, 1], [0, 0, 1]]
