"""DiGA's pieces and the shared losses on tiny tensors against hand-computed values."""

import math

import pytest
import torch

from segadapt.data.labelspace import IGNORE
from segadapt.data.mixing import class_mix_mask, fda, mix, photometric
from segadapt.engine.ema import ema_alpha, ema_update
from segadapt.methods.common import class_feature_means, seg_ce, soft_ce
from segadapt.methods.diga import cdmix, dps_select, nearest_prototype, skd_loss, update_prototypes


def logits(*vals):
    """One pixel, C classes: shape (1, C, 1, 1)."""
    return torch.tensor(vals, dtype=torch.float32).view(1, -1, 1, 1)


def test_soft_ce_by_hand():
    # teacher uniform over 2 classes; student softmax = (0.25, 0.75)
    h = soft_ce(logits(0.0, 0.0), logits(0.0, math.log(3.0)))
    assert h.item() == pytest.approx(-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)), abs=1e-6)


def test_skd_is_symmetric_sum_with_weight():
    t_x, s_x = logits(2.0, 0.0), logits(0.0, 1.0)
    t_cd, s_cd = logits(0.0, 0.0), logits(1.0, 0.0)
    p = 1 / (1 + math.exp(-2))  # teacher softmax on x: (p, 1-p)
    ls_cd = [math.log(1 / (1 + math.exp(-1))), math.log(1 / (1 + math.exp(1)))]  # student log-softmax on x_cd
    ls_x = [math.log(1 / (1 + math.exp(1))), math.log(1 / (1 + math.exp(-1)))]  # student log-softmax on x
    forward = -(p * ls_cd[0] + (1 - p) * ls_cd[1])
    backward = -(0.5 * ls_x[0] + 0.5 * ls_x[1])
    assert skd_loss(t_x, s_x, t_cd, s_cd, 0.5).item() == pytest.approx(forward + 0.5 * backward, abs=1e-6)
    assert skd_loss(t_x, s_x, t_cd, s_cd, 0.0).item() == pytest.approx(forward, abs=1e-6)


def test_seg_ce_ignores_unlabelled_pixels_in_the_mean():
    lg = torch.zeros(1, 2, 1, 2)
    lg[0, 0, 0, 0] = math.log(3.0)  # pixel 0: p(class 0) = 0.75
    label = torch.tensor([[[0, IGNORE]]])
    assert seg_ce(lg, label).item() == pytest.approx(-math.log(0.75), abs=1e-6)  # not divided by 2
    assert seg_ce(lg, torch.full((1, 1, 2), IGNORE)).item() == 0.0


def test_class_mix_mask_takes_half_of_the_present_classes():
    label = torch.tensor([[[0, 1, 2, 3], [0, 1, 2, 4]]])  # 5 classes, no ignore
    g = torch.Generator().manual_seed(0)
    m = class_mix_mask(label, g)[0, 0]
    chosen = {int(c) for c in label[0][m.bool()].unique()}
    assert len(chosen) == 2  # DiGA: floor(5 / 2)
    for c in chosen:  # every pixel of a chosen class is in the mask
        assert bool(m[label[0] == c].all())


def test_cdmix_takes_augmented_source_on_mask_and_translated_elsewhere():
    label = torch.tensor([[[0, 0, 1, 1], [IGNORE, 0, 1, 1]]])
    x = torch.zeros(1, 3, 2, 4)
    x_aug = torch.full((1, 3, 2, 4), 0.25)
    x_tr = torch.full((1, 3, 2, 4), 0.75)
    out, mask = cdmix(x, x_aug, label, x_tr, torch.Generator().manual_seed(1))
    m = mask[0, 0].bool()
    assert bool(m[1, 0])  # the ignore region stays augmented source
    assert torch.equal(out[0, :, m], torch.full_like(out[0, :, m], 0.25))
    assert torch.equal(out[0, :, ~m], torch.full_like(out[0, :, ~m], 0.75))
    # floor(3 / 2) = 1 of the values {0, 1, ignore} drawn: one class, or none when ignore was drawn
    assert int(m[0, 0]) + int(m[0, 2]) <= 1


def test_fda_swaps_the_low_frequencies_only():
    torch.manual_seed(0)
    src = 0.3 + 0.4 * torch.rand(1, 3, 32, 32)
    trg = torch.full((1, 3, 32, 32), 0.5)
    trg[:, 0] = 0.2
    assert torch.equal(fda(src, trg, 0.0), src)
    out = fda(src, trg, 0.1)
    # the DC term (per-channel mean) comes from the target; high-frequency detail from the source
    assert out.mean((2, 3)).flatten().tolist() == pytest.approx([0.2, 0.5, 0.5], abs=2e-3)
    hp = lambda z: z - torch.nn.functional.avg_pool2d(z, 5, 1, 2)  # noqa: E731
    assert torch.allclose(hp(out)[..., 4:-4, 4:-4], hp(src)[..., 4:-4, 4:-4], atol=0.05)


def test_photometric_identity_cases_and_range():
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(photometric(x, blend=0.0), x)
    none = photometric(x, p_jitter=0, p_gray=0, p_blur=0, p_sharp=0)
    assert torch.allclose(none, x, atol=1e-6)
    gray = photometric(x, p_jitter=0, p_gray=1, p_blur=0, p_sharp=0)
    expected = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    assert torch.allclose(gray[:, 1], expected, atol=1e-6)
    half = photometric(x, p_jitter=0, p_gray=1, p_blur=0, p_sharp=0, blend=0.4)
    assert torch.allclose(half, 0.4 * gray + 0.6 * x, atol=1e-6)
    out = photometric(x, generator=torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1


def test_nearest_prototype_and_dps_by_hand():
    protos = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # class 0 at origin, class 1 at (1, 0)
    feat = torch.tensor([[0.1, 0.9, 0.4, 0.6], [0.0, 0.0, 0.0, 0.0]]).view(1, 2, 1, 4)  # x-coords 0.1 .9 .4 .6
    assert nearest_prototype(feat, protos).tolist() == [[[0, 1, 0, 1]]]
    pl = torch.tensor([[[0, 0, 1, 1]]])
    assert dps_select(pl, feat, protos).tolist() == [[[0, IGNORE, IGNORE, 1]]]
    # pseudo-labels at twice the feature resolution: each feature pixel decides a 2x2 block
    pl2 = torch.tensor([[[0, 0, 0, 0, 1, 1, 1, 1]] * 2])
    feat2 = feat  # 1x4 features for a 2x8 label
    assert dps_select(pl2, feat2, protos)[0, 0].tolist() == [0, 0, IGNORE, IGNORE, IGNORE, IGNORE, 1, 1]


def test_prototype_ema_update_by_hand():
    protos = torch.tensor([[0.0, 0.0], [10.0, 10.0], [5.0, 5.0]])
    feat = torch.tensor([[1.0, 3.0, 20.0], [1.0, 3.0, 20.0]]).view(1, 2, 1, 3)
    label = torch.tensor([[[0, 0, 1]]])
    pred = torch.tensor([[[0, 0, 0]]])  # pixel 2: teacher disagrees -> not used
    means, counts = class_feature_means(feat, label, 3)
    assert counts.tolist() == [2, 1, 0] and means[0].tolist() == [2.0, 2.0]
    means, counts = class_feature_means(torch.cat([feat, 2 * feat]), label.repeat(2, 1, 1), 3, per_image=True)
    assert counts.tolist() == [[2, 1, 0]] * 2 and means[:, 0].tolist() == [[2.0, 2.0], [4.0, 4.0]]
    assert class_feature_means(torch.cat([feat, 2 * feat]), label.repeat(2, 1, 1), 3)[0][0].tolist() == [3.0, 3.0]
    new = update_prototypes(protos, feat, label, pred, momentum=0.1, min_pixels=1)  # 2 pixels: below DiGA's 5
    assert new[0].tolist() == pytest.approx([0.2, 0.2])  # 0.9 * 0 + 0.1 * mean(1, 3)
    assert new[1].tolist() == [10.0, 10.0]  # disagreeing pixel ignored
    assert new[2].tolist() == [5.0, 5.0]  # absent class unchanged


def test_ema_schedule_and_update():
    assert ema_alpha(0, 0.999) == 0.0 and ema_alpha(1, 0.999) == 0.5 and ema_alpha(10**6, 0.999) == 0.999
    s, t = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    with torch.no_grad():
        s.weight.fill_(2.0), s.bias.fill_(0.0), t.weight.fill_(1.0), t.bias.fill_(1.0)
    ema_update(t, s, 0.75)
    assert t.weight.item() == pytest.approx(1.25) and t.bias.item() == pytest.approx(0.75)


def test_mix_labels_and_images():
    mask = torch.tensor([[[[1.0, 0.0]]]])
    assert mix(mask, torch.tensor([[[3, 3]]]), torch.tensor([[[7, 7]]])).tolist() == [[[3, 7]]]
    img = mix(mask, torch.ones(1, 3, 1, 2), torch.zeros(1, 3, 1, 2))
    assert img[0, :, 0, 0].tolist() == [1, 1, 1] and img[0, :, 0, 1].tolist() == [0, 0, 0]


def test_diga_self_train_fixed_threshold_selection(monkeypatch):
    """selection: threshold keeps a pseudo-label only where its stored confidence reaches diga.threshold."""
    from segadapt.methods import diga as D
    from segadapt.models.segmenter import build_segmenter

    torch.manual_seed(0)
    student = build_segmenter({"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 8, "pretrained": None}, 3)
    m = D.DigaSelfTrain({"selection": "threshold", "threshold": 0.7, "translator": "none", "cdmix": False,
                         "skd_weight": 0.0}, student, 3)
    assert m.needs_confidence
    seen = {}
    real_mix = D.mix

    def spy(mask, a, b):  # the label mix receives the selected target pseudo-label as ``b``
        if a.dtype == torch.long:
            seen["selected"] = b.clone()
        return real_mix(mask, a, b)

    monkeypatch.setattr(D, "mix", spy)
    yt = torch.tensor([[[0, 1], [2, 1]]]).repeat_interleave(8, 1).repeat_interleave(8, 2)
    conf = torch.tensor([[[0.9, 0.5], [0.7, 0.69]]]).repeat_interleave(8, 1).repeat_interleave(8, 2)
    batch = {"source": {"image": torch.rand(1, 3, 16, 16), "label": torch.zeros(1, 16, 16, dtype=torch.long)},
             "target": {"image": torch.rand(1, 3, 16, 16), "label": yt, "confidence": conf}}
    m.training_step(batch, 0)
    expected = torch.where(conf >= 0.7, yt, torch.full_like(yt, IGNORE))
    assert torch.equal(seen["selected"], expected)
    assert (expected[0, :8, :8] == 0).all() and (expected[0, :8, 8:] == IGNORE).all()
