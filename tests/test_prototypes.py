"""DiGA's class prototypes: how pseudo-label makes them (calc_centroids.py) and how self-training moves
them (the centroid EMA of train_DiGA_gta2city_self_training.py), each rule against numbers the test
computes another way."""

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import fixed_tiny_checkpoint
from segadapt.data.labelspace import IGNORE
from segadapt.data.prepared import PreparedDataset
from segadapt.data.pseudo_labels import PseudoLabelFolder
from segadapt.engine import pseudo_label as PL
from segadapt.engine.inference import Protocol
from segadapt.errors import DataError
from segadapt.methods.diga import DigaSelfTrain, update_prototypes
from segadapt.models.segmenter import build_segmenter

CPU = torch.device("cpu")


# -- initial prototypes (pseudo-label) ------------------------------------------------------------

@pytest.fixture(scope="module")
def two_image_folder(tiny_bench, tmp_path_factory):
    """A fixed random tiny DeepLab-v2 (output stride 8) saved as a checkpoint, and its pseudo-labels
    of the first two target images."""
    d = tmp_path_factory.mktemp("proto")
    ds = PreparedDataset(tiny_bench / "target")
    model, ckpt = fixed_tiny_checkpoint(ds, d)
    PL.generate(ckpt, ds, "train", d / "pl", Protocol(scales=[1.0, 0.5]), "student", CPU, limit=2)
    return model, ds, d


def test_pseudo_label_prototypes_are_the_mean_of_per_image_class_means(two_image_folder):
    model, ds, d = two_image_folder
    c = ds.label_space.num_classes
    per_image, pooled_sum, pooled_n = [], torch.zeros(c, 8), torch.zeros(c)
    for _id, path, _ in ds.items("train")[:2]:
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            out = model(x)
        feat, pred = out["feat"][0], out["logits"][0].argmax(0)  # both at feature resolution (1/8)
        assert feat.shape[-2:] == (x.shape[-2] // 8, x.shape[-1] // 8)
        means = {}
        for k in range(c):
            sel = pred == k
            pooled_sum[k] += feat[:, sel].sum(1)
            pooled_n[k] += sel.sum()
            if sel.sum() >= 5:
                means[k] = feat[:, sel].mean(1)
        per_image.append(means)
    expected = torch.zeros(c, 8)
    images = torch.zeros(c, dtype=torch.long)
    for k in range(c):
        got = [m[k] for m in per_image if k in m]
        images[k] = len(got)
        if got:
            expected[k] = torch.stack(got).mean(0)
    # the case covers each rule: a class in both images, one skipped in an image for < 5 pixels
    assert (images == 2).any() and ((pooled_n > 0) & (images < 2)).any()

    saved = torch.load(d / "pl" / "prototypes.pt", weights_only=True)
    assert torch.allclose(saved["prototypes"], expected, atol=1e-5)
    assert torch.equal(saved["images"], images)
    pooled = pooled_sum / pooled_n.clamp(min=1)[:, None]
    assert not torch.allclose(saved["prototypes"], pooled, atol=1e-3)  # mean of means, not the pooled mean

    # class_pixels (and the prototype file's counts) stay at label resolution: the written labels
    manifest = json.loads((d / "pl" / "manifest.json").read_text())
    labels = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted((d / "pl" / "labels").glob("*.png"))]
    counts = np.bincount(np.concatenate([lab.ravel() for lab in labels]), minlength=c)[:c]
    assert list(manifest["class_pixels"].values()) == counts.tolist() == saved["counts"].tolist()
    assert sum(counts) == 2 * 48 * 96 and manifest["version"] == PL.FORMAT_VERSION
    assert list(manifest["prototype_images"].values()) == images.tolist()


def test_accumulator_mean_of_image_means_across_rank_logs_and_a_torn_record(tmp_path):
    """Hand-computed: class 0 has mean (1, 2) on 10 pixels of image A and (4, 8) on 5 pixels of image B:
    the prototype is (2.5, 5), the pooled mean would be (2, 4). Class 1 has 4 pixels in A (skipped) and
    mean (3, 3) on 6 pixels of B. Class 2 never appears and keeps a zero prototype."""
    def image(parts, w=16):  # [(class, feature vector, pixels)] laid out in one row, the rest ignored
        feat, pred, x = torch.zeros(2, 1, w), torch.full((1, w), IGNORE), 0
        for k, v, n in parts:
            feat[:, 0, x:x + n] = torch.tensor(v)[:, None]
            pred[0, x:x + n] = k
            x += n
        return PL.image_class_stats(feat, pred, 3)

    hist = np.zeros((3, PL.CONF_BINS), np.int32)
    a_sums, a_n = image([(0, [1.0, 2.0], 10), (1, [9.0, 9.0], 4)])
    b_sums, b_n = image([(0, [4.0, 8.0], 5), (1, [3.0, 3.0], 6)])
    assert a_n.tolist() == [10, 4, 0] and a_sums[0].tolist() == [10.0, 20.0]
    out = tmp_path / "pl"
    out.mkdir()
    for rank, (_id, s, n) in enumerate((("A", a_sums, a_n), ("B", b_sums, b_n))):  # one log per rank
        acc = PL.Accumulator(PseudoLabelFolder(out).log_path(rank), 3, 2)
        with open(acc.path, "ab") as f:
            acc.append(_id, np.array([100, 50, 0]), n.numpy(), s.numpy(), hist, f)
    with open(PseudoLabelFolder(out).log_path(), "ab") as f:
        f.write(b"\x01\x02torn")  # killed in the middle of a record
    acc = PL.Accumulator(PseudoLabelFolder(out).log_path(), 3, 2)
    acc.load(PseudoLabelFolder(out).all_logs())
    assert acc.done == {"A", "B"} and acc.images.tolist() == [2, 1, 0]
    assert acc.prototypes().tolist() == [[2.5, 5.0], [3.0, 3.0], [0.0, 0.0]]
    assert acc.counts.tolist() == [200, 100, 0]  # label-resolution counts, summed over images
    assert PseudoLabelFolder(out).log_path().stat().st_size == acc.record  # the torn tail was cut


def test_old_format_folder_is_refused_with_the_fix(two_image_folder, tmp_path):
    import shutil

    _model, ds, d = two_image_folder
    old = tmp_path / "old"
    shutil.copytree(d / "pl", old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "version": 1}))
    with pytest.raises(DataError, match=r"older segadapt.*pseudo-label --force") as e:
        PseudoLabelFolder.open(old, ds, "train")
    assert "\n" not in str(e.value)
    with pytest.raises(DataError, match=r"older segadapt.*pseudo-label --force"):  # resuming into it
        PL.generate(d / "model.pt", ds, "train", old, Protocol(scales=[1.0, 0.5]), "student", CPU, limit=2)
    again = PL.generate(d / "model.pt", ds, "train", old, Protocol(scales=[1.0, 0.5]), "student", CPU, limit=2,
                        force=True)
    assert again["version"] == PL.FORMAT_VERSION and again["complete"]
    assert torch.equal(torch.load(old / "prototypes.pt", weights_only=True)["prototypes"],
                       torch.load(d / "pl" / "prototypes.pt", weights_only=True)["prototypes"])


# -- the self-training update ---------------------------------------------------------------------

def test_prototype_update_is_one_ema_step_per_image_in_order():
    m = 0.5
    protos = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    # two images of 1 x 5 feature pixels, all class 0 and agreeing; first channel 1..5 and 6..10
    feat = torch.stack([torch.arange(1.0, 6.0), torch.arange(6.0, 11.0)])[:, None, None, :].repeat(1, 2, 1, 1)
    label = torch.zeros(2, 1, 5, dtype=torch.long)
    new = update_prototypes(protos, feat, label, label.clone(), m, min_pixels=5)
    step1 = (1 - m) * 0.0 + m * 3.0  # image 0: mean 3
    step2 = (1 - m) * step1 + m * 8.0  # then image 1: mean 8
    assert new[0].tolist() == pytest.approx([step2, step2]) and step2 == 4.75
    assert new[0, 0].item() != pytest.approx((1 - m) * 0.0 + m * 5.5)  # not one step to the pooled mean
    assert new[1].tolist() == [10.0, 10.0]


def test_prototype_update_skips_classes_under_five_agreeing_pixels():
    m = 0.1
    protos = torch.tensor([[0.0], [0.0]])
    feat = torch.arange(1.0, 11.0).view(1, 1, 1, 10)
    # class 0: 5 agreeing pixels (values 1..5); class 1: labelled on 5 pixels but the teacher agrees on 4
    label = torch.tensor([[[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]]])
    pred = torch.tensor([[[0, 0, 0, 0, 0, 1, 1, 1, 1, 0]]])
    new = update_prototypes(protos, feat, label, pred, m, min_pixels=5)
    assert new[0].item() == pytest.approx(m * 3.0) and new[1].item() == 0.0
    new4 = update_prototypes(protos, feat, label, pred, m, min_pixels=4)  # the threshold is a setting
    assert new4[1].item() == pytest.approx(m * (6 + 7 + 8 + 9) / 4)


class _PoolTeacher(torch.nn.Module):
    """Stand-in teacher: its feature is the image average-pooled to stride 8; it predicts class 1 where the
    red channel of that feature exceeds 0.5, else class 0."""

    def forward(self, x):
        feat = F.avg_pool2d(x, 8)
        logits = torch.stack([0.5 - feat[:, 0], feat[:, 0] - 0.5], 1)
        return {"logits": logits, "feat": feat}


def test_self_train_updates_prototypes_from_target_then_the_cdmix_view(monkeypatch, tmp_path):
    torch.manual_seed(0)
    m_, k = 0.5, 5
    student = build_segmenter({"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 8, "pretrained": None}, 2)
    p0 = torch.tensor([[0.2, 0.2, 0.2], [0.8, 0.8, 0.8]])
    method = DigaSelfTrain({"selection": "none", "translator": "none", "skd_weight": 0.0, "proto_momentum": m_,
                            "proto_min_pixels": k}, student, 2)
    folder = PseudoLabelFolder(tmp_path)
    folder.write_prototypes({"prototypes": p0})  # the folder's prototypes.pt, as pseudo-label writes it
    method.use_pseudo_labels(folder)
    method.teacher = _PoolTeacher()
    up = lambda t: t.repeat_interleave(8, -1).repeat_interleave(8, -2)  # noqa: E731  4x4 -> 32x32
    g = torch.Generator().manual_seed(1)
    xs, x_cd, xt = (up(torch.rand(2, 3, 4, 4, generator=g)) for _ in range(3))
    ys4 = torch.tensor([[0, 0, 1, 1]] * 4).repeat(2, 1, 1)
    yt4 = torch.stack([torch.tensor([[1, 1, 0, 0]] * 4), torch.tensor([[0, 1, 1, IGNORE]] * 4)])
    monkeypatch.setattr(method, "_views", lambda *a, **kw: (xs, x_cd))  # the CDMix view, fixed by the test
    batch = {"source": {"image": xs, "label": up(ys4)}, "target": {"image": xt, "label": up(yt4)}}
    method.training_step(batch, 0)

    def by_hand(p, views):  # DiGA's loop: image by image, class by class, EMA when >= k agreeing pixels
        p = p.clone()
        for img, lab in views:
            f = F.avg_pool2d(img[None], 8)[0]  # (3, 4, 4)
            pred = (f[0] > 0.5).long()
            for c in range(2):
                sel = (lab == c) & (pred == c)
                if sel.sum() >= k:
                    p[c] = (1 - m_) * p[c] + m_ * f[:, sel].mean(1)
        return p

    target = list(zip(xt, yt4))
    expected = by_hand(p0, target + list(zip(x_cd, ys4)))
    assert torch.allclose(method.prototypes, expected, atol=1e-6)
    assert not torch.allclose(expected, by_hand(p0, target + list(zip(xs, ys4))), atol=1e-4)  # not the clean view
    assert not torch.allclose(expected, by_hand(p0, list(zip(x_cd, ys4)) + target), atol=1e-4)  # target first
    assert not torch.allclose(expected, p0)
