"""DeepLab-v3+ and SegFormer/DAFormer models: output shapes and strides, parameter counts per MiT
variant, weight loading (NVlabs and mmseg key layouts, torchvision ResNets), clear errors for wrong
files and specs, frozen BN, the param-group split, and the packaged configs that use them."""

import json
import re

import pytest
import torch
import torchvision

from segadapt import config as C
from segadapt.errors import DataError, UsageError
from segadapt.models import ARCHS, build_model, model_signature, resolve_spec
from segadapt.models.segformer import VARIANTS, build_mit
from segadapt.models.segmenter import build_segmenter
from segadapt.pipeline import resolve_train_config

torch.set_num_threads(2)

B0 = {"arch": "segformer", "backbone": "mit_b0"}
DLV3P = {"arch": "deeplabv3plus", "backbone": "resnet18", "feat_dim": 32}


def _model(spec, num_classes=5, seed=0):
    torch.manual_seed(seed)
    return build_model(spec, num_classes)


def test_registry():
    assert set(ARCHS.names()) == {"deeplabv2", "deeplabv3plus", "segformer"}


@pytest.mark.parametrize("spec,feat_dim", [
    ({**B0, "head": "segformer"}, 256),
    ({**B0, "head": "daformer", "feat_dim": 64}, 64),
    (DLV3P, 32),
    ({**DLV3P, "output_stride": 16}, 32),
    ({"arch": "deeplabv3plus", "backbone": "resnet50"}, 256),
])
def test_output_stride_4(spec, feat_dim):
    model = _model(spec, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 65))
        stages = model.backbone(torch.randn(1, 3, 64, 64))
    assert out["logits"].shape == (1, 7, 17, 17)  # ceil(65 / 4)
    assert out["feat"].shape == (1, feat_dim, 17, 17)
    assert torch.isfinite(out["logits"]).all()
    sizes = [s.shape[-1] for s in stages]
    if spec["arch"] == "segformer":
        assert sizes == [16, 8, 4, 2] and [s.shape[1] for s in stages] == [32, 64, 160, 256]
    else:
        assert sizes == ([16, 8, 8, 8] if model.spec["output_stride"] == 8 else [16, 8, 4, 4])


def test_mit_variants_and_parameter_counts():
    # Paper (Table 1 / 6): encoder parameters 3.4M (B0) ... 81.4M (B5).
    assert sum(p.numel() for p in build_mit("mit_b0").parameters()) == 3_319_392
    with torch.device("meta"):  # shapes only: no memory, no 81M-parameter initialisation
        b5 = build_mit("mit_b5")
    assert sum(p.numel() for p in b5.parameters()) == 81_443_008
    assert [len(getattr(b5, f"block{i}")) for i in range(1, 5)] == [3, 6, 40, 3]
    assert b5.stage_channels == (64, 128, 320, 512)
    # Stochastic depth: linear from 0 to 0.1 over all 52 blocks.
    assert b5.block4[-1].drop_path.p == pytest.approx(0.1) and isinstance(b5.block1[0].drop_path, torch.nn.Identity)
    # Efficient self-attention: reduction 8, 4, 2 by a strided conv; none in the last stage.
    assert [getattr(b5, f"block{i}")[0].attn.sr.stride for i in (1, 2, 3)] == [(8, 8), (4, 4), (2, 2)]
    assert not hasattr(b5.block4[0].attn, "sr")
    assert b5.patch_embed1.proj.kernel_size == (7, 7) and b5.patch_embed1.proj.stride == (4, 4)
    assert b5.patch_embed2.proj.kernel_size == (3, 3) and b5.patch_embed2.proj.stride == (2, 2)
    assert b5.block1[0].mlp.dwconv.dwconv.groups == 256  # Mix-FFN: depthwise 3x3 on the 4x hidden width
    assert VARIANTS["mit_b3"]["depths"] == (3, 4, 18, 3) and VARIANTS["mit_b4"]["depths"] == (3, 8, 27, 3)


def test_daformer_head_layout():
    head = _model({**B0, "head": "daformer"}).decode_head
    assert sorted(head.embed_layers) == ["0", "1", "2", "3"]
    branches = head.fuse_layer.aspp_modules
    assert branches[0].conv.kernel_size == (1, 1)
    assert [b.depthwise_conv.conv.dilation for b in branches[1:]] == [(6, 6), (12, 12), (18, 18)]
    assert all(b.depthwise_conv.conv.groups == 4 * 256 for b in branches[1:])
    assert head.fuse_layer.bottleneck.conv.kernel_size == (3, 3)


def _perturbed(module, seed=3):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return {k: v.clone() for k, v in module.state_dict().items()}


def _to_mmseg(state):
    """mmseg's tools/model_converters/mit2mmseg.py, rewritten for the test."""
    out = {}
    for k, v in state.items():
        if m := re.match(r"patch_embed(\d)\.(.*)", k):
            out[f"layers.{int(m[1]) - 1}.0.{m[2].replace('proj.', 'projection.')}"] = v
        elif m := re.match(r"norm(\d)\.(.*)", k):
            out[f"layers.{int(m[1]) - 1}.2.{m[2]}"] = v
        elif m := re.match(r"block(\d)\.(\d+)\.(.*)", k):
            p, rest = f"layers.{int(m[1]) - 1}.1.{m[2]}.", m[3]
            if rest.startswith("attn.q."):
                kind = rest.split(".")[-1]
                out[p + f"attn.attn.in_proj_{kind}"] = torch.cat([v, state[k.replace("attn.q.", "attn.kv.")]])
            elif rest.startswith("attn.kv."):
                continue
            elif rest.startswith("attn.proj."):
                out[p + "attn.attn.out_proj." + rest.split(".")[-1]] = v
            elif rest.startswith("mlp."):
                idx = {"fc1": "0", "dwconv": "1", "fc2": "4"}[rest.split(".")[1]]
                out[p + f"ffn.layers.{idx}.{rest.split('.')[-1]}"] = v[..., None, None] if (
                    idx in "04" and rest.endswith("weight")) else v
            else:
                out[p + rest] = v
    return out


@pytest.mark.parametrize("layout", ["official", "mmseg"])
def test_load_mit_weights(tmp_path, layout):
    state = _perturbed(build_mit("mit_b0"))
    assert {"patch_embed1.proj.weight", "block1.0.attn.q.weight", "block1.0.attn.kv.weight",
            "block1.0.attn.sr.weight", "block1.0.mlp.dwconv.dwconv.weight", "norm1.weight"} <= set(state)
    if layout == "official":
        # NVlabs' files also hold the ImageNet classifier, which is ignored.
        obj = {**state, "head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)}
    else:
        obj = {"state_dict": {f"backbone.{k}": v for k, v in _to_mmseg(state).items()}}
        assert "backbone.layers.0.1.0.attn.attn.in_proj_weight" in obj["state_dict"]
    torch.save(obj, tmp_path / "mit_b0.pth")
    model = _model({**B0, "head": "daformer", "pretrained": str(tmp_path / "mit_b0.pth")})
    loaded = model.backbone.state_dict()
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    assert model.spec["pretrained"] == str(tmp_path / "mit_b0.pth")


def test_bad_mit_files(tmp_path):
    state = build_mit("mit_b0").state_dict()
    wrong = {k.replace("attn.q.", "attn.query."): v for k, v in state.items()}
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(DataError, match=r"missing: block1\.0\.attn\.q\.weight") as exc:
        _model({**B0, "pretrained": str(tmp_path / "wrong.pth")})
    msg = str(exc.value)
    assert "unexpected: block1.0.attn.query.weight" in msg and "more)" in msg and "\n" not in msg

    torch.save(state, tmp_path / "b0.pth")  # another variant's file: shapes differ, and we say which it is
    with pytest.raises(DataError, match=r"shape mismatch: patch_embed1\.proj\.weight.*looks like mit_b0"):
        _model({"arch": "segformer", "backbone": "mit_b1", "pretrained": str(tmp_path / "b0.pth")})
    with pytest.raises(DataError, match="not found"):
        _model({**B0, "pretrained": str(tmp_path / "absent.pth")})
    with pytest.raises(UsageError, match="local file"):
        _model({**B0, "pretrained": "IMAGENET1K_V1"})


def test_deeplabv3plus_loads_torchvision_resnet(tmp_path):
    net = torchvision.models.resnet18(weights=None)
    state = _perturbed(net)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "r18.pth")
    for os_ in (8, 16):  # same weights at either output stride
        model = _model({**DLV3P, "output_stride": os_, "pretrained": str(tmp_path / "r18.pth")})
        for key in ("conv1.weight", "layer4.1.conv2.weight", "layer1.0.bn1.running_mean"):
            assert torch.equal(model.backbone.state_dict()[key], state[key]), key
    assert model.backbone.layer4[0].conv1.dilation == (2, 2) and model.backbone.layer3[0].conv1.stride == (2, 2)


@pytest.mark.parametrize("arch", ["deeplabv2", "deeplabv3plus"])
def test_freeze_bn_keeps_statistics(arch):
    spec = {"arch": arch, "backbone": "resnet18", "feat_dim": 16}
    model = _model({**spec, "freeze_bn": True}).train()
    head_bns = [m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                and not n.startswith("backbone.")]
    assert not model.backbone.bn1.training and not model.backbone.bn1.weight.requires_grad
    assert head_bns and all(m.training for m in head_bns)  # the head's BN still trains
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = head_bns[0].running_mean.clone()
    model(torch.randn(2, 3, 32, 32) * 3 + 1)["logits"].sum().backward()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(head_bns[0].running_mean, head_before)
    assert model.backbone.bn1.weight.grad is None and model.backbone.conv1.weight.grad is not None
    assert model.spec["freeze_bn"] is True
    # Without it the backbone statistics move.
    free = _model(spec).train()
    mean = free.backbone.bn1.running_mean.clone()
    free(torch.randn(2, 3, 32, 32) * 3 + 1)
    assert not torch.equal(free.backbone.bn1.running_mean, mean)


@pytest.mark.parametrize("spec", [B0, {**B0, "head": "daformer", "feat_dim": 32}, DLV3P])
def test_param_groups_partition(spec):
    model = _model(spec)
    groups = model.param_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert set(groups) == {"backbone", "head"} and len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in model.backbone.parameters()}
    head = {id(p) for p in groups["head"]}
    assert id(model.classifier.weight) in head
    decoder = model.decode_head if spec["arch"] == "segformer" else model.aspp
    assert all(id(p) in head for p in decoder.parameters())


def test_segmenter_classify_and_training_step():
    seg = build_segmenter({**B0, "head": "daformer", "feat_dim": 32}, 4).eval()
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        out = seg(x)
        torch.testing.assert_close(seg.classify(out["feat"]), out["logits"])
        assert out["logits"].shape == (2, 4, 8, 12)
        # Below 32 px the first stage is smaller than its 8x8 reduction kernel: padded, not an error.
        assert seg(torch.rand(1, 3, 24, 40))["logits"].shape == (1, 4, 6, 10)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            amp = seg(x)
    assert amp["logits"].dtype == torch.bfloat16
    assert torch.cosine_similarity(amp["logits"].float().flatten(), out["logits"].flatten(), dim=0) > 0.95
    seg.train()  # drop path and dropout active; a batch of one trains (no BN over one pooled value)
    seg(x[:1])["logits"].logsumexp(1).mean().backward()
    grad = seg.net.backbone.patch_embed1.proj.weight.grad
    assert grad is not None and torch.isfinite(grad).all()
    with torch.no_grad():
        build_segmenter(DLV3P, 4).train()(x[:1])  # v3+'s image pooling works at batch 1 too


def test_specs_defaults_signature_and_errors():
    assert resolve_spec({"arch": "segformer"})["backbone"] == "mit_b5"
    assert resolve_spec({"arch": "segformer", "backbone": "mit_b2"})["feat_dim"] == 768  # SegFormer's C_e
    assert resolve_spec({**B0, "head": "daformer"})["feat_dim"] == 256
    r = resolve_spec({"arch": "deeplabv3plus"})
    assert (r["backbone"], r["output_stride"], r["aspp_rates"]) == ("resnet101", 8, [12, 24, 36])
    assert resolve_spec({"arch": "deeplabv3plus", "output_stride": 16})["aspp_rates"] == [6, 12, 18]

    model = _model({**B0, "head": "daformer"}, num_classes=19)
    json.dumps(model.spec)
    again = build_model(model.spec, 19)
    assert again.spec == model.spec
    again.load_state_dict(model.state_dict())
    sig = model_signature(model.spec)
    assert sig == model_signature({**B0, "head": "daformer", "drop_path": 0.3, "dropout": 0.0, "num_classes": 19})
    assert sig != model_signature({**B0, "num_classes": 19})  # other head, other weights

    for spec, pattern in [
        ({"arch": "segformer", "backbone": "resnet50"}, "mit_b0"),
        ({**B0, "head": "upernet"}, "head"),
        ({**B0, "width": 8}, "'width'"),
        ({**B0, "freeze_bn": True}, "LayerNorm"),
        ({**B0, "drop_path": 1.0}, "drop_path"),
        ({**B0, "feat_dim": 0}, "feat_dim"),
        ({"arch": "deeplabv3plus", "backbone": "tiny"}, "resnet18"),
        ({"arch": "deeplabv3plus", "output_stride": 32}, "output_stride"),
        ({"arch": "deeplabv3plus", "head": "daformer"}, "'head'"),
        ({"arch": "deeplabv3plus", "aspp_rates": []}, "aspp_rates"),
        ({"arch": "pspnet"}, "arch"),
    ]:
        with pytest.raises(UsageError, match=pattern) as exc:
            resolve_spec(spec)
        assert "\n" not in str(exc.value)


def test_packaged_configs_for_new_models():
    names = C.packaged_configs()
    synthia = {"base", "source_only", "diga_warmup", "diga_self_train", "diga_warmup_daformer",
               "diga_self_train_daformer"}
    assert synthia <= {n.split("/")[1] for n in names if n.startswith("synthia_cityscapes/")}
    for bench in ("gta5_cityscapes", "synthia_cityscapes"):
        for stage in ("diga_warmup_daformer", "diga_self_train_daformer"):
            cfg = C.load_config(f"{bench}/{stage}")
            spec = resolve_spec(cfg["model"], 19)
            assert (spec["arch"], spec["backbone"], spec["head"], spec["feat_dim"]) == ("segformer", "mit_b5",
                                                                                        "daformer", 256)
            o = cfg["optim"]
            assert (o["name"], o["lr"], o["head_lr_mult"], o["weight_decay"], o["warmup_iters"]) == (
                "adamw", 6e-5, 10, 0.01, 1500)
            assert cfg["method"] == "diga"
    for name in synthia:
        cfg = C.load_config(f"synthia_cityscapes/{name}")
        resolve_spec(cfg["model"], 19)
        assert cfg["data"]["source_resize"] == [760, 1280]
        if "diga" in name:  # the YAML with the code defaults
            cfg = resolve_train_config(f"synthia_cityscapes/{name}", [], None, None,
                                       "self-train" if "self_train" in name else "warmup")
            assert cfg["diga"]["skd_weight"] == 0.25 and cfg["diga"]["skd_reverse_weight"] == 0.25
    assert C.load_config("synthia_cityscapes/diga_self_train_daformer")["model"]["pretrained"] is None
