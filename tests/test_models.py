"""Segmentation models: shapes, output stride, feature/classifier split, param groups, frozen BN,
weight loading from local files, spec validation, and that the tiny model learns."""

import json

import pytest
import torch
import torch.nn.functional as F
import torchvision

from segadapt.errors import DataError, UsageError
from segadapt.models import build_model, model_signature, resolve_spec

torch.set_num_threads(2)


def _model(spec, num_classes=5, seed=0):
    torch.manual_seed(seed)
    return build_model(spec, num_classes)


@pytest.mark.parametrize("backbone,feat_dim", [("resnet18", 32), ("resnet50", 256), ("resnet101", 32)])
def test_resnet_output_stride_8(backbone, feat_dim):
    model = _model({"backbone": backbone, "feat_dim": feat_dim}, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 65))
    # ceil(65 / 8) = 9, as for a 65x65 crop in DeepLab.
    assert out["logits"].shape == (1, 7, 9, 9)
    assert out["feat"].shape == (1, feat_dim, 9, 9)
    assert torch.isfinite(out["logits"]).all()
    expected_channels = 512 if backbone == "resnet18" else 2048
    assert model.backbone.out_channels == expected_channels


def test_resnet18_dilation_pattern():
    bb = _model({"backbone": "resnet18", "feat_dim": 16}).backbone
    for layer, d in ((bb.layer3, 2), (bb.layer4, 4)):
        for block in layer:
            assert block.conv1.stride == (1, 1) and block.conv1.dilation == (d, d)
            assert block.conv2.dilation == (d, d) and block.conv2.padding == (d, d)
        assert layer[0].downsample[0].stride == (1, 1)
    assert bb.layer2[0].conv1.stride == (2, 2)  # layer2 still downsamples: stride 8 overall


def test_tiny_shapes_and_size():
    model = _model({"backbone": "tiny"}, num_classes=11)
    out = model(torch.randn(1, 3, 64, 128))  # train mode, batch of one still works
    assert out["logits"].shape == (1, 11, 8, 16)
    assert out["feat"].shape == (1, 64, 8, 16)
    n = sum(p.numel() for p in model.parameters())
    assert 300_000 < n < 1_000_000
    wide = _model({"backbone": "tiny", "width": 8, "feat_dim": 32}, num_classes=3)
    out = wide(torch.randn(2, 3, 40, 72))
    assert out["logits"].shape == (2, 3, 5, 9) and out["feat"].shape == (2, 32, 5, 9)
    assert wide.backbone.out_channels == 64


def test_classify_matches_forward_in_eval():
    model = _model({"backbone": "tiny"}).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
        again = model.classify(out["feat"])
    torch.testing.assert_close(again, out["logits"])
    # In train mode dropout is active in classify (channel dropout, p=0.1): outputs differ.
    model.train()
    torch.manual_seed(1)
    with torch.no_grad():
        dropped = model.classify(out["feat"])
    assert not torch.allclose(dropped, out["logits"])


@pytest.mark.parametrize("spec", [{"backbone": "tiny"}, {"backbone": "resnet18", "feat_dim": 16, "freeze_bn": True}])
def test_param_groups_partition(spec):
    model = _model(spec)
    groups = model.param_groups()
    assert set(groups) == {"backbone", "head"}
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in model.backbone.parameters()}
    assert id(model.classifier.weight) in {id(p) for p in groups["head"]}


def test_freeze_bn_keeps_backbone_statistics():
    model = _model({"backbone": "resnet18", "feat_dim": 16, "freeze_bn": True})
    model.train()
    bn = model.backbone.bn1
    assert not bn.training and not bn.weight.requires_grad
    assert model.aspp_bn.training  # the head's BN still trains
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_mean = model.aspp_bn.running_mean.clone()
    out = model(torch.randn(2, 3, 65, 65) * 3 + 1)
    out["logits"].sum().backward()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(model.aspp_bn.running_mean, head_mean)
    assert bn.weight.grad is None
    assert model.backbone.conv1.weight.grad is not None

    # Without freeze_bn the running stats do move.
    free = _model({"backbone": "resnet18", "feat_dim": 16}).train()
    mean = free.backbone.bn1.running_mean.clone()
    free(torch.randn(2, 3, 65, 65) * 3 + 1)
    assert not torch.equal(free.backbone.bn1.running_mean, mean)


def _perturbed_resnet18_state():
    torch.manual_seed(3)
    net = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
    return net.state_dict()


@pytest.mark.parametrize("wrap", ["module", "state_dict"])
def test_load_local_pretrained(tmp_path, wrap):
    state = _perturbed_resnet18_state()
    if wrap == "module":
        obj = {f"module.{k}": v for k, v in state.items()}
    else:
        obj = {"state_dict": {f"backbone.{k}": v for k, v in state.items()}, "iteration": 5}
    path = tmp_path / "r18.pth"
    torch.save(obj, path)
    model = _model({"backbone": "resnet18", "feat_dim": 16, "pretrained": str(path)})
    bb = model.backbone.state_dict()
    for key in ("conv1.weight", "layer3.1.conv2.weight", "layer4.0.downsample.1.running_mean", "bn1.bias"):
        assert torch.equal(bb[key], state[key]), key
    assert model.spec["pretrained"] == str(path)


def test_load_pretrained_without_num_batches_tracked(tmp_path):
    # Old checkpoints lack BN's num_batches_tracked buffers; that is not an error.
    state = {k: v for k, v in _perturbed_resnet18_state().items() if "num_batches_tracked" not in k}
    torch.save(state, tmp_path / "old.pt")
    model = _model({"backbone": "resnet18", "feat_dim": 16, "pretrained": str(tmp_path / "old.pt")})
    assert torch.equal(model.backbone.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_bad_pretrained_files(tmp_path):
    state = _perturbed_resnet18_state()
    wrong = {k.replace("layer", "stage"): v for k, v in state.items()}
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(DataError, match="missing: .*layer1.0.conv1.weight") as exc:
        _model({"backbone": "resnet18", "pretrained": str(tmp_path / "wrong.pth")})
    assert "unexpected: " in str(exc.value) and "\n" not in str(exc.value)

    shaped = dict(state)
    shaped["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(shaped, tmp_path / "shape.pth")
    with pytest.raises(DataError, match=r"shape mismatch: conv1.weight \(64, 3, 3, 3\) vs \(64, 3, 7, 7\)"):
        _model({"backbone": "resnet18", "pretrained": str(tmp_path / "shape.pth")})

    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        _model({"backbone": "resnet18", "pretrained": str(tmp_path / "junk.pth")})
    with pytest.raises(DataError, match="not found"):
        _model({"backbone": "resnet18", "pretrained": str(tmp_path / "absent.pth")})
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DataError, match="state_dict"):
        _model({"backbone": "resnet18", "pretrained": str(tmp_path / "list.pt")})


def test_spec_errors():
    with pytest.raises(UsageError, match="'featdim'"):
        build_model({"backbone": "tiny", "featdim": 32}, 5)
    with pytest.raises(UsageError, match="backbone"):
        build_model({"backbone": "vgg16"}, 5)
    with pytest.raises(UsageError, match="arch"):
        build_model({"arch": "pspnet"}, 5)
    with pytest.raises(UsageError, match="tiny"):
        build_model({"backbone": "tiny", "pretrained": "IMAGENET1K_V1"}, 5)
    with pytest.raises(UsageError, match="freeze_bn"):
        build_model({"backbone": "tiny", "freeze_bn": True}, 5)
    with pytest.raises(UsageError, match="width"):
        build_model({"backbone": "resnet18", "width": 8}, 5)
    with pytest.raises(UsageError, match="aspp_rates"):
        build_model({"backbone": "tiny", "aspp_rates": [1, 0]}, 5)
    with pytest.raises(UsageError, match="dropout"):
        build_model({"backbone": "tiny", "dropout": 1.5}, 5)
    with pytest.raises(UsageError, match="num_classes"):
        build_model({"backbone": "tiny", "num_classes": 19}, 16)
    # A weights name torchvision does not know is refused before any download is attempted.
    with pytest.raises(UsageError, match="IMAGENET1K_V1"):
        build_model({"backbone": "resnet18", "feat_dim": 16, "pretrained": "IMAGENET22K"}, 5)


def test_spec_and_signature():
    model = _model({"backbone": "tiny", "dropout": 0.2}, num_classes=19)
    assert model.spec == {"arch": "deeplabv2", "backbone": "tiny", "head": "aspp_sum", "feat_dim": 64,
                          "aspp_rates": [1, 2, 3, 4], "dropout": 0.2, "pretrained": None, "freeze_bn": False,
                          "width": 16, "input_norm": "imagenet", "post_backbone_bn": False, "num_classes": 19}
    json.dumps(model.spec)  # checkpoints store it
    again = build_model(model.spec, 19)  # round trip
    assert again.spec == model.spec
    again.load_state_dict(model.state_dict())

    sig = model_signature(model.spec)
    assert sig == model_signature({"backbone": "tiny", "num_classes": 19})  # defaults and dropout don't matter
    assert json.loads(sig)["feat_dim"] == 64 and "pretrained" not in json.loads(sig)
    assert sig != model_signature({"backbone": "tiny", "num_classes": 16})
    assert sig != model_signature({"backbone": "tiny", "width": 8, "num_classes": 19})
    r50 = resolve_spec({"backbone": "resnet50"})
    assert r50["feat_dim"] == 256 and r50["aspp_rates"] == [6, 12, 18, 24] and "num_classes" not in r50
    assert model_signature({"backbone": "resnet50", "pretrained": "x.pth"}) == model_signature({"backbone": "resnet50"})


def test_channels_last_and_autocast():
    model = _model({"backbone": "tiny"}).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        cl_model = _model({"backbone": "tiny"}).eval().to(memory_format=torch.channels_last)
        cl = cl_model(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(cl["logits"], ref["logits"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(cl["feat"], ref["feat"], atol=1e-4, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = model(x)
    assert amp["logits"].dtype == torch.bfloat16 and amp["logits"].shape == ref["logits"].shape
    assert (amp["logits"].float().argmax(1) == ref["logits"].argmax(1)).float().mean() > 0.9
    # Training step under autocast: gradients reach the backbone.
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x)["logits"].float().logsumexp(1).mean()
    loss.backward()
    assert model.backbone.conv1.weight.grad is not None and torch.isfinite(model.backbone.conv1.weight.grad).all()


def test_tiny_learns_fixed_batch():
    torch.manual_seed(0)
    model = build_model({"backbone": "tiny"}, 4)
    x = torch.randn(4, 3, 64, 64)
    # A label map the input determines: quadrants of a smoothed image channel.
    y = torch.zeros(4, 64, 64, dtype=torch.long)
    y[:, :32, 32:] = 1
    y[:, 32:, :32] = 2
    y[:, 32:, 32:] = 3
    x[:, 0] += y.float()  # make the classes visible in the red channel
    groups = model.param_groups()
    opt = torch.optim.SGD([{"params": groups["backbone"], "lr": 0.01},
                           {"params": groups["head"], "lr": 0.1}], momentum=0.9)

    def loss_fn():
        logits = F.interpolate(model(x)["logits"], size=(64, 64), mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, y)

    losses = []
    for _ in range(15):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(4.0)).item(), abs=0.1)  # near-uniform start
    assert losses[-1] < 0.25 * losses[0]


def test_tiny_basic_block_matches_torchvision(monkeypatch):
    """The tiny backbone's own BasicBlock (so that building it needs no torchvision import) is
    torchvision's: from one seed the same parameters, and in training mode the same outputs, gradients
    and BN running statistics, bit for bit."""
    from torchvision.models.resnet import BasicBlock as TorchvisionBlock

    from segadapt.models import backbones

    def run(block_cls):
        monkeypatch.setattr(backbones, "BasicBlock", block_cls)
        torch.manual_seed(0)
        net = backbones.TinyBackbone(width=8).train()
        x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
        outs = net(x)
        sum(o.square().mean() for o in outs).backward()
        return net, outs

    ours, ours_out = run(backbones.BasicBlock)
    ref, ref_out = run(TorchvisionBlock)
    assert sum(isinstance(m, TorchvisionBlock) for m in ref.modules()) == 7  # (2, 2, 2, 1) blocks
    assert not any(isinstance(m, TorchvisionBlock) for m in ours.modules())
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # weights after init and BN running stats after a step
    assert all(torch.equal(o, r) for o, r in zip(ours_out, ref_out))
    grads = {n: p.grad for n, p in ref.named_parameters()}
    assert all(torch.equal(p.grad, grads[n]) for n, p in ours.named_parameters())
