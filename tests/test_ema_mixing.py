"""The mean teacher as the official code runs it (ema_bn: batch | averaged, the alpha schedule), ClassMix as
DiGA and DACS draw it, and FDA's corner window: values computed another way in the test."""

import numpy as np
import pytest
import torch
from torch import nn

from segadapt import config as C
from segadapt.data.labelspace import IGNORE
from segadapt.data.mixing import class_mix_mask, fda, mix, photometric
from segadapt.engine.ema import ema_alpha, ema_step, ema_update, make_teacher, teacher_forward
from segadapt.errors import UsageError
from segadapt.methods.dacs import DacsWarmup
from segadapt.methods.diga import DigaSelfTrain, DigaWarmup
from segadapt.methods.t2s import T2S
from segadapt.models.segmenter import build_segmenter
from segadapt.pipeline import resolve_train_config


class Net(nn.Module):
    """conv 1x1 -> BN -> ReLU -> dropout: small enough to forward by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout2d(0.5)

    def forward(self, x):
        return {"logits": self.drop(torch.relu(self.bn(self.conv(x))))}


def _net():
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():  # running statistics far from any batch's, so a mix-up would show
        net.bn.running_mean.fill_(5.0)
        net.bn.running_var.fill_(9.0)
        net.bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        net.bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return net


def _by_hand(net, x, mean=None, var=None):
    """BN normalisation written out: batch statistics (biased variance) unless mean/var are given."""
    y = nn.functional.conv2d(x, net.conv.weight, net.conv.bias)
    if mean is None:
        mean = y.mean((0, 2, 3))
        var = ((y - mean.view(1, -1, 1, 1)) ** 2).mean((0, 2, 3))
    z = (y - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + net.bn.eps)
    return torch.relu(z * net.bn.weight.view(1, -1, 1, 1) + net.bn.bias.view(1, -1, 1, 1))


def test_batch_mode_teacher_uses_each_batch_statistics():
    teacher = make_teacher(_net(), "batch", dropout=False)
    x1, x2 = torch.randn(3, 2, 4, 4), torch.randn(2, 2, 4, 4) * 3 + 1
    out = teacher_forward(teacher, [x1], [teacher], "batch", dropout=False)["logits"]
    assert torch.allclose(out, _by_hand(teacher, x1), atol=1e-5)
    # two groups: each normalised with its own statistics, outputs concatenated in order
    out = teacher_forward(teacher, [x1, x2], [teacher], "batch", dropout=False)["logits"]
    assert torch.allclose(out, torch.cat([_by_hand(teacher, x1), _by_hand(teacher, x2)]), atol=1e-5)
    # averaged: eval mode, the running statistics (5, 9), one batch or two give the same values
    t_avg = make_teacher(_net(), "averaged")
    out = teacher_forward(t_avg, [x1, x2], [t_avg], "averaged", dropout=False)["logits"]
    ref = _by_hand(t_avg, torch.cat([x1, x2]), torch.full((3,), 5.0), torch.full((3,), 9.0))
    assert torch.allclose(out, ref, atol=1e-5)


def test_batch_mode_forward_moves_running_stats_as_a_train_mode_forward_does():
    # what DiGA's saved teacher holds: its own train-mode forwards move the running statistics by the
    # BN momentum (0.1) toward the batch mean and the unbiased batch variance
    teacher = make_teacher(_net(), "batch", dropout=False)
    x = torch.randn(3, 2, 4, 4)
    y = nn.functional.conv2d(x, teacher.conv.weight, teacher.conv.bias)
    n = y.numel() // 3
    mean = y.mean((0, 2, 3))
    var_unbiased = ((y - mean.view(1, -1, 1, 1)) ** 2).sum((0, 2, 3)) / (n - 1)
    teacher_forward(teacher, [x], [teacher], "batch", dropout=False)
    assert torch.allclose(teacher.bn.running_mean, 0.9 * 5.0 + 0.1 * mean, atol=1e-5)
    assert torch.allclose(teacher.bn.running_var, 0.9 * 9.0 + 0.1 * var_unbiased, atol=1e-4)
    # averaged mode never touches them in a forward
    t_avg = make_teacher(_net(), "averaged")
    teacher_forward(t_avg, [x], [t_avg], "averaged", dropout=False)
    assert torch.equal(t_avg.bn.running_mean, torch.full((3,), 5.0))


def test_dropout_follows_the_method_in_batch_mode_and_is_off_in_averaged_mode():
    t = make_teacher(_net(), "batch", dropout=True)
    assert t.bn.training and t.drop.training
    x = torch.randn(2, 2, 4, 4)
    a = teacher_forward(t, [x], [t], "batch", dropout=True)["logits"]
    b = teacher_forward(t, [x], [t], "batch", dropout=True)["logits"]
    assert not torch.equal(a, b)  # DiGA: dropout active
    t = make_teacher(_net(), "batch", dropout=False)
    assert t.bn.training and not t.drop.training  # DAFormer: dropout off, BN on batch statistics
    t.eval()  # anything that switched the mode is undone by the next teacher forward
    teacher_forward(t, [x], [t], "batch", dropout=False)
    assert t.bn.training
    t = make_teacher(_net(), "averaged")
    assert not t.bn.training and not t.drop.training


def test_ema_update_averages_buffers_only_in_averaged_mode():
    s, t = _net(), _net()
    with torch.no_grad():
        for p in s.parameters():
            p.add_(1.0)
        s.bn.running_mean.fill_(1.0)
        s.bn.num_batches_tracked.fill_(7)
    t_params = [p.clone() for p in t.parameters()]
    ema_update(t, s, 0.75, "batch")
    for old, new, sp in zip(t_params, t.parameters(), s.parameters()):
        assert torch.allclose(new, 0.75 * old + 0.25 * sp)
    assert torch.equal(t.bn.running_mean, torch.full((3,), 5.0)) and int(t.bn.num_batches_tracked) == 0
    ema_update(t, s, 0.5, "averaged")
    assert torch.allclose(t.bn.running_mean, torch.full((3,), 3.0)) and int(t.bn.num_batches_tracked) == 7


def test_alpha_sequence_matches_the_official_loop():
    """DiGA / DAFormer: before the forward of iteration k, teacher <- alpha(k) teacher + (1 - alpha(k))
    student_k (student after k steps). segadapt: after step it, ema_step(it). The teacher each forward
    sees must be the same; DACS (offset 0) applies alpha(it) after step it."""
    cap, steps = 0.8, 8
    student_w = [float(k * k + 1) for k in range(steps + 1)]  # the student's weight after k steps
    # official loop
    official, t = [], student_w[0]
    for k in range(steps):
        a = min(1 - 1 / (k + 1), cap)
        t = a * t + (1 - a) * student_w[k]
        official.append(t)
    # segadapt's loop: the teacher seen at iteration k is the state before after_step(k)
    s_mod, t_mod = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        t_mod.weight.fill_(student_w[0])
    ours, alphas = [], []
    for k in range(steps):
        ours.append(t_mod.weight.item())
        with torch.no_grad():
            s_mod.weight.fill_(student_w[k + 1])
        alphas.append(ema_step([(t_mod, s_mod)], k, cap, "batch"))
    assert ours == pytest.approx(official)
    assert alphas == pytest.approx([0.5, 2 / 3, 0.75, 0.8, 0.8, 0.8, 0.8, 0.8])
    dacs = [ema_step([(t_mod, s_mod)], k, cap, "batch", offset=0) for k in range(4)]
    assert dacs == pytest.approx([0.0, 0.5, 2 / 3, 0.75]) and ema_alpha(3, cap) == 0.75


def _tiny(c=3):
    torch.manual_seed(0)
    return build_segmenter({"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 16, "pretrained": None}, c)


@pytest.mark.parametrize("cls,cfg", [(DigaWarmup, {"ema_alpha": 0.9}), (DacsWarmup, {"ema_alpha": 0.9})])
def test_methods_step_their_teacher_through_the_shared_path(cls, cfg):
    m = cls(cfg, _tiny(), 3)
    assert m.teacher.training  # the default is the official batch mode
    t0 = next(m.teacher.parameters()).clone()
    with torch.no_grad():
        for p in m.student.parameters():
            p.add_(1.0)
    bn0 = [b.clone() for b in m.teacher.buffers()]
    m.after_step(0)
    a = 0.5 if cls is DigaWarmup else 0.0  # DiGA alpha(1); DACS alpha(0)
    assert torch.allclose(next(m.teacher.parameters()), a * t0 + (1 - a) * (t0 + 1), atol=1e-6)
    assert all(torch.equal(x, y) for x, y in zip(bn0, m.teacher.buffers()))


@pytest.mark.parametrize("make", [
    lambda v: DigaWarmup({"ema_bn": v}, _tiny(), 3),
    lambda v: DigaSelfTrain({"ema_bn": v, "selection": "none"}, _tiny(), 3),
    lambda v: DacsWarmup({"ema_bn": v}, _tiny(), 3), lambda v: T2S({"ema_bn": v}, _tiny(), 3),
])
def test_a_bad_ema_bn_is_a_usage_error(make):
    with pytest.raises(UsageError, match="ema_bn"):
        make("running")
    assert make("averaged").teacher.training is False


def test_a_bad_fda_window_is_a_usage_error():
    with pytest.raises(UsageError, match="fda_window"):
        DigaWarmup({"fda_window": "square"}, _tiny(), 3)
    with pytest.raises(UsageError, match="fda_window"):
        T2S({"fda_window": "square"}, _tiny(), 3)


def test_paper_configs_run_the_teacher_on_batch_statistics():
    for name in C.packaged_configs():
        if not name.startswith(("gta5_cityscapes/", "synthia_cityscapes/")):
            continue
        method = C.load_config(name).get("method")
        if method in ("diga", "dacs", "t2s"):
            stage = "self-train" if any(s in name for s in ("self_train", "t2s")) else "warmup"
            cfg = resolve_train_config(name, [], None, None, stage)  # the YAML with the code defaults
            assert cfg[method]["ema_bn"] == "batch", name
    cfg = resolve_train_config("synthetic/diga_warmup", ["diga.ema_bn=averaged"], None, None, "warmup")
    assert cfg["diga"]["ema_bn"] == "averaged"
    with pytest.raises(UsageError, match="unknown config key"):
        resolve_train_config("synthetic/diga_warmup", ["diga.ema_bnn=batch"], None, None, "warmup")


def test_gta5_self_training_blend_is_the_official_0_3():
    for name in ("gta5_cityscapes/diga_self_train", "gta5_cityscapes/diga_self_train_daformer"):
        assert C.load_config(name)["diga"]["photometric_blend"] == 0.3


# -- ClassMix --------------------------------------------------------------------------------------

LABEL = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, IGNORE]]])  # 4 classes + ignore: n = 5 values


def _pasted(mask, label):
    m = mask[0, 0].bool()
    for v in label[0].unique():  # a value is pasted whole or not at all
        assert bool(m[label[0] == v].all()) or not bool(m[label[0] == v].any())
    return {int(v) for v in label[0][m].unique()}


def test_diga_class_mix_pastes_ignore_and_floor_half_of_the_values():
    counts = []
    for seed in range(200):
        pasted = _pasted(class_mix_mask(LABEL, torch.Generator().manual_seed(seed), rule="diga"), LABEL)
        assert IGNORE in pasted  # the source ignore region is always pasted
        real = pasted - {IGNORE}
        # floor(5 / 2) = 2 values drawn among {0, 1, 2, 3, ignore}: 2 classes, or 1 when ignore was drawn
        assert len(real) in (1, 2)
        counts.append(len(real))
        # the draw itself: the first 2 of a random permutation of the 5 sorted values
        values = LABEL[0].unique()
        drawn = {int(v) for v in values[torch.randperm(5, generator=torch.Generator().manual_seed(seed))[:2]]}
        assert pasted == drawn | {IGNORE}
    # P(ignore among the 2 drawn of 5) = 2/5
    assert np.mean(np.array(counts) == 1) == pytest.approx(0.4, abs=0.1)
    no_ignore = torch.tensor([[[0, 1, 2, 3, 4]]])  # 5 classes, no ignore: exactly floor(5/2) = 2
    for seed in range(20):
        assert len(_pasted(class_mix_mask(no_ignore, torch.Generator().manual_seed(seed), rule="diga"), no_ignore)) == 2


def test_dacs_class_mix_draws_ceil_half_with_ignore_counted():
    for seed in range(100):
        pasted = _pasted(class_mix_mask(LABEL, torch.Generator().manual_seed(seed), rule="dacs"), LABEL)
        # ceil(5 / 2) = 3 values: 3 classes (ignore not pasted) or 2 classes + the ignore region
        assert (len(pasted - {IGNORE}), IGNORE in pasted) in ((3, False), (2, True))
    no_ignore = torch.tensor([[[0, 1, 2, 3]]])
    for seed in range(20):
        assert len(_pasted(class_mix_mask(no_ignore, torch.Generator().manual_seed(seed), rule="dacs"), no_ignore)) == 2


# -- FDA -------------------------------------------------------------------------------------------

def _numpy_fda(src, trg, beta, window):
    s, t = src.numpy().astype(np.float64), trg.numpy().astype(np.float64)
    fs, ft = np.fft.fft2(s, axes=(-2, -1)), np.fft.fft2(t, axes=(-2, -1))
    amp_s, pha_s, amp_t = np.abs(fs), np.angle(fs), np.abs(ft)
    h, w = s.shape[-2:]
    b = int(np.floor(min(h, w) * beta))
    if window == "corner":  # FDA's low_freq_mutate: four b x b corner blocks
        for rs in (slice(0, b), slice(h - b, h)):
            for cs in (slice(0, b), slice(w - b, w)):
                amp_s[..., rs, cs] = amp_t[..., rs, cs]
    else:  # FDA's low_freq_mutate_np: the centred (2b+1)^2 square of the shifted spectrum
        a_s, a_t = np.fft.fftshift(amp_s, axes=(-2, -1)), np.fft.fftshift(amp_t, axes=(-2, -1))
        ch, cw = h // 2, w // 2
        a_s[..., ch - b:ch + b + 1, cw - b:cw + b + 1] = a_t[..., ch - b:ch + b + 1, cw - b:cw + b + 1]
        amp_s = np.fft.ifftshift(a_s, axes=(-2, -1))
    return np.real(np.fft.ifft2(amp_s * np.exp(1j * pha_s), axes=(-2, -1)))


@pytest.mark.parametrize("h,w", [(16, 20), (15, 17)])
def test_fda_windows_against_a_numpy_fft(h, w):
    g = torch.Generator().manual_seed(0)
    src = torch.rand(2, 3, h, w, generator=g)
    trg = torch.rand(2, 3, h, w, generator=g) * 0.3 + 0.7  # a bright target: the result leaves [0, 1]
    ref = _numpy_fda(src, trg, 0.15, "corner")
    out = fda(src, trg, 0.15, window="corner")
    assert np.allclose(out.numpy(), ref, atol=1e-5)
    assert ref.max() > 1.0 and out.max() > 1.0  # not clamped, as FDA's training code
    ref_c = np.clip(_numpy_fda(src, trg, 0.15, "centre"), 0, 1)  # the demo clips when writing the image
    assert np.allclose(fda(src, trg, 0.15).numpy(), ref_c, atol=1e-5)
    assert not np.allclose(ref, _numpy_fda(src, trg, 0.15, "centre"), atol=1e-3)  # the windows differ


def test_cdmix_without_a_translator_mixes_the_photometric_view_with_the_clean_source():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 16, 16)
    y = torch.zeros(2, 16, 16, dtype=torch.long)
    y[:, :, 8:] = 1
    y[:, :4] = 2
    m = DigaWarmup({"translator": "none", "photometric_blend": 1.0}, _tiny(), 3)
    torch.manual_seed(1)
    x_aug, x_cd = m._views(x, y, None)
    torch.manual_seed(1)  # the same draws, by hand: x_cd = M * x_aug + (1 - M) * x
    aug = photometric(x, blend=1.0)
    mask = class_mix_mask(y, None, rule="diga")
    assert torch.equal(x_aug, aug)
    assert torch.equal(x_cd, mix(mask, aug, x))
    # one class of each image comes from the augmented view, the rest is the clean source untouched
    assert 0 < mask.mean() < 1 and not torch.equal(x_cd, x_aug)
    assert torch.equal(x_cd[mask.expand_as(x) == 0], x[mask.expand_as(x) == 0])
    off = DigaWarmup({"translator": "none", "cdmix": False}, _tiny(), 3)
    a, cd = off._views(x, y, None)
    assert cd is a  # cdmix false: the photometric view only
    with pytest.raises(UsageError, match="fda needs target images"):
        DigaWarmup({}, _tiny(), 3)._views(x, y, None)
