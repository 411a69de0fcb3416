"""The pieces methods share (segadapt.methods.common) against values computed here by hand or by loops."""

import math

import pytest
import torch
from torch import nn

from segadapt.data.labelspace import IGNORE
from segadapt.engine.pseudo_label import image_class_stats
from segadapt.methods.common import MeanTeacher, class_feature_means, resize_label, seg_ce, weighted_seg_ce


def test_weighted_ce_with_class_and_pixel_weights_by_hand():
    # 2 classes on a 2x2 map at label resolution (the bilinear resize is then the identity)
    lg = torch.tensor([[[[1.0, 0.0], [2.0, -1.0]],
                        [[0.0, 0.5], [0.0, 3.0]]]])
    label = torch.tensor([[[0, 1], [1, IGNORE]]])
    cw = torch.tensor([2.0, 0.5])
    pw = torch.tensor([[[1.0, 0.5], [0.25, 9.0]]])  # the ignored pixel's 9 must not count anywhere

    def nll(i, j):  # -log softmax of the labelled class at pixel (i, j)
        a, b = lg[0, 0, i, j].item(), lg[0, 1, i, j].item()
        y = int(label[0, i, j])
        return -((a, b)[y] - math.log(math.exp(a) + math.exp(b)))

    pixels = [(0, 0), (0, 1), (1, 0)]
    cls = [int(label[0, i, j]) for i, j in pixels]
    both = sum(pw[0, i, j].item() * cw[c].item() * nll(i, j) for (i, j), c in zip(pixels, cls)) / \
        sum(cw[c].item() for c in cls)
    assert weighted_seg_ce(lg, label, cw, pw).item() == pytest.approx(both, rel=1e-6)
    # class weights only: PyTorch's weighted mean; pixel weights only: divided by the labelled pixel count
    only_c = sum(cw[c].item() * nll(i, j) for (i, j), c in zip(pixels, cls)) / sum(cw[c].item() for c in cls)
    assert weighted_seg_ce(lg, label, class_weight=cw).item() == pytest.approx(only_c, rel=1e-6)
    only_p = sum(pw[0, i, j].item() * nll(i, j) for i, j in pixels) / 3
    assert weighted_seg_ce(lg, label, pixel_weight=pw).item() == pytest.approx(only_p, rel=1e-6)
    plain = sum(nll(i, j) for i, j in pixels) / 3
    assert seg_ce(lg, label).item() == pytest.approx(plain, rel=1e-6)
    assert weighted_seg_ce(lg, label).item() == seg_ce(lg, label).item()
    none = torch.full_like(label, IGNORE)
    assert weighted_seg_ce(lg, none, cw, pw).item() == 0.0


def test_resize_label_picks_the_nearest_source_pixel():
    label = torch.arange(16).view(1, 4, 4)
    label[0, 0, 0] = IGNORE
    # 'nearest' takes source index floor(i * in / out): halving keeps every second row and column
    assert resize_label(label, (2, 2)).tolist() == [[[IGNORE, 2], [8, 10]]]
    # 2x2 -> 3x3: source indices floor(i * 2 / 3) = 0, 0, 1
    small = torch.tensor([[[1, 2], [3, IGNORE]]])
    idx = [i * 2 // 3 for i in range(3)]
    expected = [[[int(small[0, r, c]) for c in idx] for r in idx]]
    out = resize_label(small, torch.Size([3, 3]))
    assert out.tolist() == expected == [[[1, 1, 2], [1, 1, 2], [3, 3, IGNORE]]]
    assert out.dtype == torch.long


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


@pytest.mark.parametrize("bn,offset", [("averaged", 1), ("batch", 1), ("batch", 0)])
def test_mean_teacher_update_is_alpha_teacher_plus_one_minus_alpha_student(bn, offset):
    student, head = _tiny(), nn.Linear(3, 2)
    mt = MeanTeacher([student, head], bn, dropout=False, max_alpha=0.99, offset=offset)
    teacher, teacher_head = mt.teachers
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():  # the student moves away from the copy (a stand-in for optimiser steps)
        for p in list(student.parameters()) + list(head.parameters()):
            p.add_(torch.randn_like(p))
        student[1].running_mean.add_(1.0)
    t_before = [t.detach().clone() for t in list(teacher.parameters()) + list(teacher_head.parameters())]
    s_now = [s.detach().clone() for s in list(student.parameters()) + list(head.parameters())]
    buf_before = teacher[1].running_mean.clone()
    it = 3
    alpha = min(1 - 1 / (it + offset + 1), 0.99)  # alpha(k) = min(1 - 1/(k+1), max), k = iteration + offset
    assert mt.update(it) == alpha
    for t, t0, s in zip(list(teacher.parameters()) + list(teacher_head.parameters()), t_before, s_now):
        assert torch.allclose(t, alpha * t0 + (1 - alpha) * s, atol=1e-7, rtol=0)
    if bn == "averaged":  # BN running statistics averaged the same way; integer buffers copied
        assert torch.allclose(teacher[1].running_mean, alpha * buf_before + (1 - alpha) * student[1].running_mean)
        assert not teacher.training
    else:  # batch statistics: buffers untouched, teacher in train mode
        assert torch.equal(teacher[1].running_mean, buf_before)
        assert teacher.training


def test_mean_teacher_forward_runs_each_group_on_its_own_batch_statistics():
    student = _tiny()
    mt = MeanTeacher([student], "batch", dropout=False, max_alpha=0.999)
    a, b = torch.rand(2, 3, 4, 4), torch.rand(3, 3, 4, 4) + 1.0

    def fn(x):
        return {"out": mt.teachers[0](x)}

    out = mt.forward(fn, a, b)["out"]
    with torch.no_grad():
        ref = torch.cat([mt.teachers[0](a), mt.teachers[0](b)])
    assert torch.allclose(out, ref, atol=1e-6)


def test_class_feature_means_equal_a_loop_over_pixels():
    g = torch.Generator().manual_seed(0)
    b, d, h, w, c = 2, 3, 4, 5, 4
    feat = torch.randn(b, d, h, w, generator=g)
    label = torch.randint(0, c + 1, (b, h, w), generator=g)  # value c (out of range) is skipped
    label[0, 0, :2] = IGNORE
    label[1][label[1] == 2] = 0  # class 2 absent from image 1
    sums = torch.zeros(b, c, d, dtype=torch.float64)
    counts = torch.zeros(b, c, dtype=torch.long)
    for i in range(b):
        for y in range(h):
            for x in range(w):
                k = int(label[i, y, x])
                if k < c:
                    sums[i, k] += feat[i, :, y, x].double()
                    counts[i, k] += 1
    means, cnt = class_feature_means(feat, label, c, per_image=True)
    assert torch.equal(cnt, counts)
    expect = sums / counts.clamp(min=1)[..., None]
    assert torch.allclose(means.double(), expect, atol=1e-6)
    assert torch.equal(means[1, 2], torch.zeros(d))  # absent class: mean 0, count 0
    pooled, pcnt = class_feature_means(feat, label, c)
    assert torch.equal(pcnt, counts.sum(0))
    assert torch.allclose(pooled.double(), sums.sum(0) / counts.sum(0).clamp(min=1)[:, None], atol=1e-6)
    # the pseudo-label engine's per-image sums are the same computation in float64
    s0, c0 = image_class_stats(feat[0], label[0], c)
    assert torch.equal(c0, counts[0]) and s0.dtype == torch.float64
    assert torch.allclose(s0, sums[0], atol=1e-12)
