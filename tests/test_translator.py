"""The CDMix image translator: losses against hand values, network shapes, training, resume, and its use by
DiGA through `diga.translator: PATH`."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from segadapt.data.labelspace import IGNORE
from segadapt.engine.checkpoint import load_checkpoint
from segadapt.engine.runlog import WALL_CLOCK_KEYS
from segadapt.errors import DataError, UsageError
from segadapt.models.segmenter import build_segmenter
from segadapt.translation.losses import (cycle_loss, discriminator_loss, lsgan_loss, semantic_edge_loss,
                                         semantic_edge_mask, sobel_magnitude)
from segadapt.translation.networks import Generator, MultiScaleDiscriminator, build_generator
from segadapt.translation.train import (TranslatorStep, decayed_lr, resolve_translator_config,
                                       run_train_translator)

@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: a second intra-op thread only adds synchronisation, and on a busy machine
    (other jobs on both cores) it made the fixed-batch test 40x slower (67 s instead of 1.7 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# a translator small enough for milliseconds per step on 32x32 crops
TINY = ["data.crop=[32,32]", "generator.ngf=4", "generator.n_res=1", "discriminator.ndf=4",
        "discriminator.scales=1", "train.log_every=1", "train.ckpt_every=100"]


def test_lsgan_and_discriminator_loss_by_hand():
    preds = [torch.tensor([0.5, 1.5]), torch.tensor([[0.0]])]
    # scale 1: mean(0.25, 0.25) = 0.25; scale 2: (0 - 1)^2 = 1; mean over scales
    assert lsgan_loss(preds, 1.0).item() == pytest.approx(0.625)
    assert lsgan_loss(torch.tensor([0.5, 1.5]), 0.0).item() == pytest.approx((0.25 + 2.25) / 2)
    # 1/2 [mean((1-1)^2, (0-1)^2) + (0.5 - 0)^2] = 1/2 [0.5 + 0.25]
    assert discriminator_loss([torch.tensor([1.0, 0.0])], [torch.tensor([0.5])]).item() == pytest.approx(0.375)


def test_cycle_loss_by_hand():
    x = torch.zeros(1, 1, 2, 2)
    rec = torch.tensor([[[[0.1, -0.3], [0.2, 0.0]]]])
    assert cycle_loss(x, rec).item() == pytest.approx(0.15)


def test_semantic_edge_mask_of_a_hand_made_label():
    label = torch.tensor([[[0, 0, 1, 1],
                           [0, 0, 1, 1],
                           [2, 2, 2, IGNORE],
                           [2, 2, 2, IGNORE]]])
    expected = torch.tensor([[0, 1, 1, 0],
                             [1, 1, 1, 1],
                             [1, 1, 1, 1],
                             [0, 0, 1, 1]], dtype=torch.float32)
    m = semantic_edge_mask(label)
    assert m.shape == (1, 1, 4, 4)
    assert torch.equal(m[0, 0], expected)  # the ignore region's border is an edge too
    # radius: the two boundary columns of a vertical boundary widen by one pixel to the left
    lab = torch.zeros(1, 5, 5, dtype=torch.long)
    lab[:, :, 4] = 1
    assert torch.equal(semantic_edge_mask(lab)[0, 0, 0], torch.tensor([0.0, 0, 0, 1, 1]))
    assert torch.equal(semantic_edge_mask(lab, radius=1)[0, 0, 0], torch.tensor([0.0, 0, 1, 1, 1]))
    assert semantic_edge_mask(torch.zeros(1, 3, 3, dtype=torch.long)).sum() == 0


def test_sobel_and_semantic_edge_loss_by_hand():
    step = torch.zeros(1, 3, 4, 4)
    step[..., 2:] = 1.0  # a vertical step between columns 1 and 2, in every channel
    mag = sobel_magnitude(step)[0, 0]
    # columns 1 and 2: gx = (1 + 2 + 1) * 1 per channel, gy = 0 -> sqrt(3 * 16); elsewhere 0 (+ eps)
    assert mag[:, 1:3].flatten().tolist() == pytest.approx([math.sqrt(48.0 + 1e-6)] * 8)
    assert mag[:, [0, 3]].flatten().tolist() == pytest.approx([1e-3] * 8)
    label = torch.zeros(1, 4, 4, dtype=torch.long)
    label[..., 2:] = 1
    flat = torch.full((1, 3, 4, 4), 0.5)  # the boundary has vanished in the "translation"
    # relative edges (map / its image mean): flat -> 1 everywhere; step -> 2a / (a + e) on the boundary
    a, e = math.sqrt(48 + 1e-6), 1e-3
    assert semantic_edge_loss(flat, step, label, "sobel").item() == pytest.approx(2 * a / (a + e) - 1, rel=1e-5)
    # a global change of contrast costs nothing: only where the edges are, relative to the image, counts
    assert semantic_edge_loss(0.2 + 0.3 * step, step, label, "sobel").item() == pytest.approx(0.0, abs=1e-3)
    assert semantic_edge_loss(flat, step, label, "pixel").item() == pytest.approx(0.5)
    assert semantic_edge_loss(step, step, label, "sobel").item() == 0.0
    # no boundary in the crop: 0 (and still differentiable)
    x = flat.clone().requires_grad_(True)
    loss = semantic_edge_loss(x, step, torch.zeros(1, 4, 4, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    with pytest.raises(UsageError, match="semantic-edge mode"):
        semantic_edge_loss(flat, step, label, "canny")


def test_generator_and_discriminator_shapes():
    torch.manual_seed(0)
    g = Generator(ngf=4, n_res=1)
    for shape in [(2, 3, 20, 28), (1, 3, 17, 23)]:  # any size: padded to a multiple of 4 inside
        y = g(torch.rand(shape))
        assert y.shape == shape and 0 <= y.min() and y.max() <= 1
    assert Generator(ngf=4, n_res=0, output="tanh", upsample="deconv")(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    x = torch.rand(1, 3, 16, 16)
    assert torch.allclose(Generator(ngf=4, n_res=1, residual=True)(x), x.clamp(1e-3, 1 - 1e-3), atol=1e-6)
    d = MultiScaleDiscriminator(ndf=4, layers=3, scales=2)
    outs = d(torch.rand(1, 3, 64, 64))
    # 70x70 PatchGAN: three stride-2 convs then two stride-1 4x4 convs: 64 -> 6; the pooled copy 32 -> 2
    assert [tuple(o.shape) for o in outs] == [(1, 1, 6, 6), (1, 1, 2, 2)]
    with pytest.raises(UsageError, match="output"):
        Generator(output="relu")
    with pytest.raises(UsageError, match="unknown generator setting .blocks."):
        build_generator({"ngf": 4, "blocks": 2})


def test_linear_decay_schedule_by_hand():
    assert decayed_lr(1.0, 0, 10, 0.5) == 1.0
    assert decayed_lr(1.0, 5, 10, 0.5) == 1.0
    assert decayed_lr(1.0, 6, 10, 0.5) == pytest.approx(0.8)
    assert decayed_lr(1.0, 9, 10, 0.5) == pytest.approx(0.2)
    assert decayed_lr(2e-4, 3, 4, 0.0) == pytest.approx(0.5e-4)


def _step_cfg(**loss):
    return {"generator": {"ngf": 8, "n_res": 1}, "discriminator": {"ndf": 4, "layers": 2, "scales": 1},
            "loss": {"adv_weight": 1.0, "cycle_weight": 10.0, "identity_weight": 0.0, "edge_weight": 1.0,
                     "edge_mode": "sobel", "edge_radius": 0, **loss},
            "optim": {"lr": 2e-3, "betas": [0.5, 0.999], "decay_start": 0.5}}


def test_training_steps_on_a_fixed_batch_lower_the_cycle_loss():
    torch.manual_seed(0)
    smooth = lambda t: F.interpolate(t, size=(16, 16), mode="bilinear", align_corners=False)  # noqa: E731
    xs, xt = smooth(torch.rand(2, 3, 4, 4)), smooth(torch.rand(2, 3, 4, 4)) * 0.5  # a darker "target" domain
    ys = (torch.arange(16).view(1, 1, 16) >= 8).long().expand(2, 16, 16)
    step = TranslatorStep(_step_cfg(identity_weight=0.5))  # a plain (non-residual) generator: starts far off
    logs = [step.step(xs, ys, xt) for _ in range(30)]
    assert set(logs[0]) == {"loss_g", "loss_adv", "loss_cycle", "loss_edge", "loss_identity", "loss_d"}
    first, last = logs[0]["loss_cycle"], logs[-1]["loss_cycle"]
    assert last < 0.5 * first, (first, last)  # measured: 0.45 -> 0.12
    assert all(math.isfinite(v) for rec in logs for v in rec.values())


def test_bad_translator_settings_are_one_line_usage_errors(tiny_bench, tmp_path):
    for extra, match in [(["loss.edge_mode=canny"], "edge_mode"), (["optim.betas=[0.5]"], "betas"),
                         (["loss.cycle_weight=-1"], "cycle_weight"),
                         (["data.crop=[32,32]", "discriminator.scales=2"], "too small"),
                         (["generator.ngf=0"], "generator.ngf must be in"), (["generator.output=relu"], "generator.output"),
                         (["discriminator.scales=two"], "discriminator.scales accepts")]:
        with pytest.raises(UsageError, match=match):
            _run(tiny_bench, tmp_path / "bad", 1, extra=extra)
    assert not (tmp_path / "bad").exists()  # refused before the run folder is touched
    for bench in ("synthetic", "gta5_cityscapes"):  # the packaged configs pass their own checks
        cfg = resolve_translator_config(f"{bench}/translator", [], None)
        assert cfg["optim"]["betas"] == [0.5, 0.999] and cfg["loss"]["cycle_weight"] == 10.0
    with pytest.raises(UsageError, match="unknown config key"):
        _run(tiny_bench, tmp_path / "bad", 1, extra=["loss.edge_wieght=1"])


def _run(bench, out, iters, **kw):
    return run_train_translator(config="synthetic/translator", source=bench / "source", target=bench / "target",
                                out=out, overrides=TINY + kw.pop("extra", []), iters=iters, **kw)


def _records(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_translator_resume_is_exact(tiny_bench, tmp_path, monkeypatch):
    extra = ["generator.residual=false"]
    _run(tiny_bench, tmp_path / "ref", 4, extra=extra)
    ref = [{k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS} for r in _records(tmp_path / "ref")]
    assert [r["iter"] for r in ref] == [0, 1, 2, 3]
    assert {"img_per_s", "eta_s"} <= set(_records(tmp_path / "ref")[0])  # the shared loop's clock fields

    original, calls = TranslatorStep.step, []

    def interrupted(self, xs, ys, xt):  # Ctrl-C during the forward pass of iteration 2
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, xs, ys, xt)

    monkeypatch.setattr(TranslatorStep, "step", interrupted)
    with pytest.raises(DataError, match="interrupted at iteration 2"):
        _run(tiny_bench, tmp_path / "cut", 4, extra=extra)
    monkeypatch.setattr(TranslatorStep, "step", original)
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["iteration"] == 2
    with pytest.raises(DataError, match="already holds a run"):
        _run(tiny_bench, tmp_path / "cut", 4, extra=extra)
    result = _run(tiny_bench, tmp_path / "cut", 4, extra=extra, resume=True)
    got = [{k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS} for r in _records(tmp_path / "cut")]
    assert got == ref  # identical, not merely close
    assert result["iterations"] == 4
    with pytest.raises(UsageError, match="different configuration"):
        _run(tiny_bench, tmp_path / "cut", 4, extra=extra + ["loss.edge_weight=2.0"], resume=True)


def test_translator_checkpoint_drives_diga_cdmix(tiny_bench, tmp_path):
    from segadapt.methods.diga import DigaWarmup, load_translator, translate
    from segadapt.pipeline import run_warmup

    run = tmp_path / "tr"
    res = _run(tiny_bench, run, 2)
    ckpt = load_checkpoint(run / "last.pt")
    assert res["iterations"] == 2 and ckpt["stage"] == "translator" and ckpt["iteration"] == 2
    assert set(ckpt["modules"]) == {"g_st", "g_ts", "d_t", "d_s"}

    torch.manual_seed(0)
    student = build_segmenter({"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 16, "pretrained": None}, 3)
    cfg = {"translator": str(run / "last.pt"), "cdmix": True, "skd_weight": 0.5, "skd_reverse_weight": 0.5,
           "photometric_blend": 0.4, "ce_on_mixed": True, "ema_alpha": 0.99}
    m = DigaWarmup(cfg, student, 3)
    assert m.target_batches is None  # the generator has learnt the target style: no target images needed
    assert "translator" not in m.modules()  # frozen, never checkpointed or optimised with the student
    assert not any(p.requires_grad for p in m.translator_net.parameters()) and not m.translator_net.training
    x = torch.rand(2, 3, 32, 32)
    translated = translate(x, None, m.cfg, net=m.translator_net)
    assert translated.shape == x.shape and (translated - x).abs().max() > 1e-4
    y = torch.zeros(2, 32, 32, dtype=torch.long)
    y[:, :, 16:] = 1
    y[:, :4] = IGNORE
    loss, logs = m.training_step({"source": {"image": x, "label": y}}, 0)
    loss.backward()
    assert math.isfinite(loss.item()) and {"loss_ce", "loss_ce_mixed", "loss_skd"} <= set(logs)

    # the warm-up stage through the config path, without --target
    overrides = ["data.crop=[32,32]", "data.batch_size=2", "model.feat_dim=16", f"diga.translator={run / 'last.pt'}"]
    out = run_warmup(config="synthetic/diga_warmup", source=tiny_bench / "source", target=None,
                     out=tmp_path / "warm", overrides=overrides, iters=2)
    assert out["iterations"] == 2 and math.isfinite(out["loss"])

    # a missing file or a checkpoint of another kind: one-line data errors
    with pytest.raises(DataError, match="neither fda, none nor an existing translator checkpoint"):
        load_translator(tmp_path / "nope.pt")
    with pytest.raises(DataError, match="not a translator checkpoint"):
        load_translator(tmp_path / "warm" / "last.pt")
