"""The procedural two-domain street-scene generator (segadapt.data.synthetic)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segadapt.data import synthetic as syn
from segadapt.data.labelspace import CITYSCAPES_LABELID_TO_TRAINID
from segadapt.errors import UsageError

W, H = 128, 64
SMALL = dict(n_source=4, n_target_train=4, n_target_val=2, width=W, height=H)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    summary = syn.generate_raw(out, seed=3, **SMALL)
    return out, summary


def _scenes(style, domain: int, n: int = 8, seed: int = 0):
    return [syn.render_scene(np.random.default_rng([seed, domain, i]), style, W, H) for i in range(n)]


def test_layout_and_names(raw):
    out, summary = raw
    names = set(_files(out))
    expected = {f"gta5/{d}/{i:05d}.png" for d in ("images", "labels") for i in range(1, 5)}
    # 4 train images over 4 cities, 2 val images over 2 cities; Cityscapes' labelled frame is 19
    for split, cities in (("train", syn.TRAIN_CITIES), ("val", syn.VAL_CITIES)):
        for city in cities:
            stem = f"{city}_000000_000019"
            expected.add(f"cityscapes/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")
            expected.add(f"cityscapes/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png")
    assert names == expected
    assert not set(syn.TRAIN_CITIES) & set(syn.VAL_CITIES)
    assert summary["counts"] == {"source": 4, "target_train": 4, "target_val": 2}


def test_cityscapes_sequence_numbers(tmp_path):
    syn.generate_raw(tmp_path, n_source=0, n_target_train=9, n_target_val=0, width=64, height=32)
    city_files = sorted(p.name for p in (tmp_path / "cityscapes/leftImg8bit/train").rglob("*.png"))
    assert len(city_files) == 9
    assert f"{syn.TRAIN_CITIES[0]}_000002_000019_leftImg8bit.png" in city_files  # 3 images in the first city
    assert f"{syn.TRAIN_CITIES[0]}_000003_000019_leftImg8bit.png" not in city_files


def test_label_formats_and_sizes(raw):
    out, _ = raw
    allowed = set(syn.LABEL_IDS)
    for i in range(1, 5):
        with Image.open(out / f"gta5/labels/{i:05d}.png") as im:
            assert im.mode == "P"
            lab = np.asarray(im)
            pal = np.asarray(im.getpalette()[: 34 * 3]).reshape(34, 3)
        assert tuple(pal[26]) == (0, 0, 142) and tuple(pal[7]) == (128, 64, 128)  # Cityscapes labelId colours
        assert lab.shape == (H, W)
        assert set(np.unique(lab)) <= allowed - {syn.EGO}  # no ego hood and no unlabelled pixel in the source
        img = cv2.imread(str(out / f"gta5/images/{i:05d}.png"), cv2.IMREAD_UNCHANGED)
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
    gt = sorted((out / "cityscapes/gtFine").rglob("*_labelIds.png"))
    assert len(gt) == 6
    for p in gt:
        lab = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert lab.dtype == np.uint8 and lab.shape == (H, W)
        assert set(np.unique(lab)) <= allowed
        img = cv2.imread(str(p).replace("gtFine", "leftImg8bit").replace("_leftImg8bit_labelIds", "_leftImg8bit"),
                         cv2.IMREAD_UNCHANGED)
        assert img.shape == (H, W, 3)


def test_deterministic_per_seed_and_independent_of_workers(raw, tmp_path):
    out, summary = raw
    again = syn.generate_raw(tmp_path / "again", seed=3, **SMALL)
    assert _files(tmp_path / "again") == _files(out)
    assert again == summary
    pooled = syn.generate_raw(tmp_path / "pool", seed=3, workers=2, **SMALL)
    assert _files(tmp_path / "pool") == _files(out)
    assert pooled == summary
    syn.generate_raw(tmp_path / "other", seed=4, **SMALL)
    other = _files(tmp_path / "other")
    a = _files(out)
    assert other.keys() == a.keys()
    assert all(other[k] != a[k] for k in a if "images" in k or "leftImg8bit" in k)


def test_summary_fractions(raw):
    _, summary = raw
    for domain in ("source", "target_train", "target_val"):
        frac = summary["class_fraction"][domain]
        assert len(frac) == 19
        total = sum(frac.values())
        if domain == "source":
            assert total == pytest.approx(1.0, abs=1e-4)  # every source pixel has a class
        else:
            assert 0.8 < total <= 1.0 + 1e-6  # the rest is the ignored ego-vehicle hood
        assert frac["road"] > 0.05 and frac["train"] == 0.0


def test_class_coverage_and_imbalance():
    src, tgt = syn.domain_styles(1.0)
    for style, domain in ((src, 0), (tgt, 1)):
        labels = np.stack([lab for _, lab in _scenes(style, domain, n=10)])
        counts = np.bincount(labels.ravel(), minlength=256)
        train_counts = {t: counts[lid] for lid, t in CITYSCAPES_LABELID_TO_TRAINID.items()}
        present = [t for t, c in train_counts.items() if c > 0]
        assert len(present) >= 13, present
        labelled = sum(train_counts.values())
        frac = {t: c / labelled for t, c in train_counts.items()}
        assert frac[0] + frac[2] + frac[8] + frac[10] > 0.5  # road + building + vegetation + sky
        for rare in (5, 6, 7, 11):  # pole, traffic light, traffic sign, person
            assert frac[rare] < 0.05
        assert frac[0] > frac[11] * 5 and frac[2] > frac[7] * 10


def _class_means(scenes, lids) -> dict[int, np.ndarray]:
    img = np.concatenate([i.reshape(-1, 3) for i, _ in scenes]).astype(float)
    lab = np.concatenate([lab.ravel() for _, lab in scenes])
    return {lid: img[lab == lid].mean(0) for lid in lids}


BIG = (syn.ROAD, syn.SIDEWALK, syn.BUILDING, syn.VEGETATION, syn.SKY)


def test_domains_differ_in_appearance():
    src, tgt = syn.domain_styles(1.0)
    sa, sb = _scenes(src, 0), _scenes(tgt, 1)
    a, b = _class_means(sa, BIG), _class_means(sb, BIG)
    dist = {lid: np.abs(a[lid] - b[lid]).max() for lid in a}
    assert all(d > 20 for d in dist.values()), dist
    assert np.mean(list(dist.values())) > 40
    # car colours average to grey in both domains, but target cars are far less colourful
    chroma = [np.ptp(np.concatenate([i[lab == syn.CAR] for i, lab in s]).astype(float), axis=-1).mean()
              for s in (sa, sb)]
    assert chroma[1] < 0.6 * chroma[0], chroma
    # the target is darker and less saturated overall
    sa = np.concatenate([i for i, _ in _scenes(src, 0, n=4)]).astype(float)
    sb = np.concatenate([i for i, _ in _scenes(tgt, 1, n=4)]).astype(float)
    assert sb.mean() < sa.mean() - 10
    assert (sb.max(-1) - sb.min(-1)).mean() < 0.7 * (sa.max(-1) - sa.min(-1)).mean()


def test_shift_zero_matches_source_appearance():
    src, tgt0 = syn.domain_styles(0.0)
    assert tgt0 == syn.SOURCE_STYLE
    # different scenes: per-class mean colours agree up to the sampling of 10 scenes
    a = _class_means(_scenes(src, 0, n=10), BIG)
    b = _class_means(_scenes(tgt0, 1, n=10), BIG)
    assert np.mean([np.abs(a[lid] - b[lid]).max() for lid in BIG]) < 15
    # the same scenes (same RNG): shift 0 renders the source exactly, and colours move with the shift
    same = [syn.render_scene(np.random.default_rng([0, 1, i]), tgt0, W, H) for i in range(3)]
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(same, _scenes(src, 1, n=3)))
    dists = []
    for shift in (0.25, 1.0):
        moved = _class_means([syn.render_scene(np.random.default_rng([0, 1, i]), syn.domain_styles(shift)[1], W, H)
                              for i in range(3)], BIG)
        ref = _class_means(same, BIG)
        dists.append(np.mean([np.abs(moved[lid] - ref[lid]).max() for lid in BIG if lid in moved]))
    assert 5 < dists[0] < dists[1]
    # a half shift is half way in every parameter
    _, tgt_half = syn.domain_styles(0.5)
    assert tgt_half.gamma == pytest.approx((syn.SOURCE_STYLE.gamma + syn.TARGET_STYLE.gamma) / 2)
    assert tgt_half.cars[0] == pytest.approx(
        tuple((x + y) / 2 for x, y in zip(syn.SOURCE_STYLE.cars[0], syn.TARGET_STYLE.cars[0])))


def test_bad_arguments(tmp_path):
    with pytest.raises(UsageError):
        syn.domain_styles(1.5)
    with pytest.raises(UsageError):
        syn.generate_raw(tmp_path, n_source=1, n_target_train=0, n_target_val=0, width=8, height=8)
    with pytest.raises(UsageError):
        syn.generate_raw(tmp_path, n_source=-1)


def test_face_shading_by_normal():
    """A face's shade depends on where its normal points: sun side lit, far side dimmed by sun_contrast,
    faces toward the camera in between, tops slightly brighter (hand-computed factors)."""
    from segadapt.data.synthetic.raster import Camera, Canvas, Painter

    st = syn.SOURCE_STYLE
    pen = Painter(Canvas(W, H), Camera(W, H, 100.0, 2.0, W / 2, H / 2), st, np.random.default_rng(0))
    c = st.sun_contrast
    col = (200.0, 100.0, 50.0)
    assert np.allclose(pen.face(col, pen.sun), col)
    assert np.allclose(pen.face(col, -pen.sun), np.multiply(col, 1 - c))
    assert np.allclose(pen.face(col, 0), np.multiply(col, 1 - 0.45 * c))
    assert np.allclose(pen.face(col, top=True), np.minimum(np.multiply(col, 1 + 0.15 * c), 255))
    assert pen.face((250, 250, 250), top=True).max() == 255  # clipped to the colour range
