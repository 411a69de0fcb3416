"""DiGA's network (ProDA head on the Caffe-style ResNet-101), its AdaptSegNet initialisation, and
`import-checkpoint` of DiGA / ProDA / DAFormer files.

The reference networks below are written out from the official definitions (DiGA's
``model/seg_model_noaux.py`` + ``model_noaux.py``, ProDA's ``models/deeplabv2.py``, DAFormer's
``daformer_head.py``): same module names, so their ``state_dict()`` has the official key names and shapes,
and their forward is the official one. An imported model must reproduce the reference's output on the
reference's own input normalisation."""

import numpy as np
import pytest
import torch
from torch import nn

from segadapt.engine.checkpoint import load_checkpoint
from segadapt.engine.import_ckpt import import_checkpoint
from segadapt.engine.inference import load_model
from segadapt.errors import DataError, UsageError
from segadapt.models import build_model
from segadapt.models.caffe_resnet import CaffeResNet101, load_caffe_init
from segadapt.models.segmenter import build_segmenter
from tests.conftest import run_cli

torch.set_num_threads(2)
CAFFE_MEAN_BGR = np.array((104.00698793, 116.66876762, 122.67891434), np.float32)


# -- the official networks, as their code defines them -------------------------------------------------


class RefBottleneck(nn.Module):
    def __init__(self, inplanes, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=dilation, bias=False, dilation=dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.downsample(x) if self.downsample is not None else x
        return self.relu(out + residual)


class RefSEBlock(nn.Module):
    def __init__(self, inplanes, r=16):
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.se = nn.Sequential(nn.Linear(inplanes, inplanes // r), nn.ReLU(), nn.Linear(inplanes // r, inplanes),
                                nn.Sigmoid())

    def forward(self, x):
        xx = self.global_pool(x).flatten(1)
        return x * self.se(xx)[:, :, None, None]


class RefClassifierModule2(nn.Module):
    def __init__(self, inplanes, dilations, num_classes, droprate=0.1):
        super().__init__()
        self.conv2d_list = nn.ModuleList([nn.Sequential(
            nn.Conv2d(inplanes, 256, 1, bias=True), nn.GroupNorm(32, 256), nn.ReLU())])
        for d in dilations:
            self.conv2d_list.append(nn.Sequential(
                nn.Conv2d(inplanes, 256, 3, padding=d, dilation=d, bias=True), nn.GroupNorm(32, 256), nn.ReLU()))
        n = 256 * (len(dilations) + 1)
        self.bottleneck = nn.Sequential(RefSEBlock(n), nn.Conv2d(n, 256, 3, padding=1, bias=True),
                                        nn.GroupNorm(32, 256))
        self.head = nn.Sequential(nn.Dropout2d(droprate), nn.Conv2d(256, num_classes, 1, bias=False))

    def forward(self, x):
        out = torch.cat([m(x) for m in self.conv2d_list], 1)
        feat = self.head[0](self.bottleneck(out))
        return {"feat": feat, "out": self.head[1](feat)}


def _ref_layer(inplanes, planes, blocks, stride=1, dilation=1):
    downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                               nn.BatchNorm2d(planes * 4))
    layers = [RefBottleneck(inplanes, planes, stride, dilation, downsample)]
    layers += [RefBottleneck(planes * 4, planes, dilation=dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class RefProDAResNet101(nn.Module):
    """ProDA's ``ResNet101``: conv1, bn1, layer1..4, (bn_pretrain with bn_clr), layer5."""

    def __init__(self, num_classes, bn_clr=False):
        super().__init__()
        self.bn_clr = bn_clr
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = _ref_layer(64, 64, 3)
        self.layer2 = _ref_layer(256, 128, 4, stride=2)
        self.layer3 = _ref_layer(512, 256, 23, dilation=2)
        self.layer4 = _ref_layer(1024, 512, 3, dilation=4)
        self.layer5 = RefClassifierModule2(2048, [6, 12, 18, 24], num_classes)
        if bn_clr:
            self.bn_pretrain = nn.BatchNorm2d(2048)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        if self.bn_clr:
            x = self.bn_pretrain(x)
        return self.layer5(x)


class RefDiGASegModel(nn.Module):
    """DiGA's ``SegModel``: layer0 = (conv1, bn1, relu, maxpool), layer1..4, final."""

    def __init__(self, num_classes):
        super().__init__()
        r = RefProDAResNet101(num_classes)
        self.layer0 = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4
        self.final = r.layer5

    def forward(self, x):
        return self.final(self.layer4(self.layer3(self.layer2(self.layer1(self.layer0(x))))))


def _randomise(model: nn.Module, seed: int) -> nn.Module:
    """Weights and BN statistics that keep activations O(1) through 101 layers (the official N(0, 0.01)
    init would make every output ~0 and the comparison vacuous)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.data = torch.randn(m.weight.shape, generator=g) * (1.0 / fan_in) ** 0.5
            if m.bias is not None:
                m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=g) * 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=g) * 0.1
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean = torch.randn(m.running_mean.shape, generator=g) * 0.1
                m.running_var = 0.5 + torch.rand(m.running_var.shape, generator=g)
    return model.eval()


def _diga_input(x):  # DiGA's CityLoader: BGR 0..255 minus the Caffe mean, / 128
    bgr = x.flip(1) * 255.0
    return (bgr - torch.from_numpy(CAFFE_MEAN_BGR).view(1, 3, 1, 1)) / 128.0


def _proda_input(x):  # ProDA's loaders: RGB / 255 (mean 0)
    return x


@pytest.fixture(scope="module")
def diga_file(tmp_path_factory):
    ref = _randomise(RefDiGASegModel(19), seed=1)
    path = tmp_path_factory.mktemp("diga") / "student.pth"
    torch.save(ref.state_dict(), path)  # what DiGA's save_models writes
    return ref, path


def _close(a, b):
    scale = b.abs().max().item()
    assert scale > 1e-2  # a meaningful signal, not all zeros
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * scale)


# -- network ---------------------------------------------------------------------------------------------


def test_diga_import_reproduces_the_official_forward(diga_file, tmp_path):
    ref, path = diga_file
    out = tmp_path / "run" / "last.pt"
    summary = import_checkpoint("diga", path, out)
    assert summary["model_spec"]["head"] == "proda" and summary["model_spec"]["backbone"] == "resnet101_caffe"
    model, space, ckpt = load_model(out)
    assert space.num_classes == 19 and ckpt["stage"] == "imported" and ckpt["teacher"] is None
    assert ckpt["model_spec"]["input_norm"] == "diga"
    # 32 x 48: conv1 gives 16 x 24, which the ceil-mode max-pool takes to 9 x 13 (floor: 8 x 12)
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine = model(x)
        official = ref(_diga_input(x))
    assert mine["logits"].shape == (1, 19, 5, 7)
    _close(mine["logits"], official["out"])
    _close(mine["feat"], official["feat"])  # the 256-d map before the classifier


@pytest.mark.parametrize("source,ref_cls,kw", [("diga", "RefDiGASegModel", {}), ("proda", "RefProDAResNet101", {}),
                                               ("proda", "RefProDAResNet101", {"bn_clr": True})])
def test_official_key_sets_map_onto_the_model_exactly(source, ref_cls, kw):
    from segadapt.models import official_keys as OK

    with torch.device("meta"):  # key names and shapes only: no memory, no initialisation
        ref = globals()[ref_cls](19, **kw)
        mine = build_segmenter(OK.official_spec(ref.state_dict(), source, "f")[0], 19)
    mapped = OK.to_segadapt(ref.state_dict(), source, "f")
    assert set(mapped) == set(mine.state_dict())
    assert all(mapped[k].shape == v.shape for k, v in mine.state_dict().items())
    assert all(OK.official_name(k, source) in ref.state_dict() for k in mine.state_dict())
    assert mine.spec["post_backbone_bn"] == bool(kw)


@pytest.mark.slow
def test_proda_import_reproduces_the_official_forward(tmp_path):
    ref = _randomise(RefProDAResNet101(19, bn_clr=True), seed=2)  # a stage-2/3 model (SimCLR init, bn_clr)
    path = tmp_path / "from_gta5_to_cityscapes_on_deeplabv2_best_model.pkl"
    torch.save({"ResNet101": {"model_state": ref.state_dict(), "objective_vectors": torch.zeros(19, 256)},
                "FCDiscriminator": {"model_state": {"conv1.weight": torch.zeros(1)}}, "iter": 5,
                "best_iou": np.float64(0.4)}, path)  # ProDA stores the numpy mIoU
    out = tmp_path / "last.pt"
    import_checkpoint("proda", path, out)
    model, _, ckpt = load_model(out)
    assert ckpt["model_spec"]["input_norm"] == "proda" and ckpt["model_spec"]["post_backbone_bn"]
    x = torch.rand(1, 3, 30, 44, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        _close(model(x)["logits"], ref(_proda_input(x))["out"])


def test_proda_head_structure_and_training_behaviour():
    torch.manual_seed(0)
    model = build_model({"backbone": "tiny", "head": "proda"}, 5)  # feat_dim 64 on tiny
    head = model.head
    assert [b[0].kernel_size for b in head.branches] == [(1, 1)] + [(3, 3)] * 4
    assert [b[0].dilation for b in head.branches][1:] == [(1, 1), (2, 2), (3, 3), (4, 4)]  # tiny's rates
    assert all(isinstance(b[1], nn.GroupNorm) and b[1].num_groups == 32 for b in head.branches)
    assert head.se.fc1.out_features == 5 * 64 // 16 and head.fuse.out_channels == 64
    assert model.classifier.bias is None
    # official init: every conv N(0, 0.01) (std measured on the big fuse conv), fuse bias 0
    assert abs(head.fuse.weight.std().item() - 0.01) < 5e-4 and not head.fuse.bias.any()
    x = torch.rand(2, 3, 32, 32)
    model.train()
    torch.manual_seed(1)
    out = model(x)
    # feat is the dropped-out map (whole channels zeroed, the rest scaled by 1/0.9) and the logits
    # are the bias-free classifier of exactly that map
    zeroed = (out["feat"].abs().sum((2, 3)) == 0)
    assert zeroed.any() and not zeroed.all()
    torch.testing.assert_close(out["logits"], model.classifier(out["feat"]))
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
    torch.testing.assert_close(a["logits"], b["logits"])


def test_caffe_backbone_bn_affine_frozen_and_freeze_bn():
    net = build_model({"backbone": "resnet101_caffe", "head": "proda"}, 3)
    bns = [m for m in net.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 1 + 3 * (3 + 4 + 23 + 3) + 4  # stem, 3 per block, one per shortcut
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    net.train()
    assert all(m.training for m in bns)  # freeze_bn false: batch statistics, as DiGA's student.train()
    frozen = build_model({"backbone": "resnet101_caffe", "head": "proda", "freeze_bn": True}, 3).train()
    assert not any(m.training for m in frozen.backbone.modules() if isinstance(m, nn.BatchNorm2d))
    assert frozen.head.training
    groups = net.param_groups()
    assert sum(p.numel() for p in groups["backbone"]) + sum(p.numel() for p in groups["head"]) == \
        sum(p.numel() for p in net.parameters())
    assert all(any(p is q for q in groups["head"]) for p in net.head.parameters())


def test_caffe_backbone_strides_differ_from_torchvision():
    net = CaffeResNet101()
    assert net.layer2[0].conv1.stride == (2, 2) and net.layer2[0].conv2.stride == (1, 1)
    assert net.layer3[0].conv2.dilation == (2, 2) and net.layer4[0].conv2.dilation == (4, 4)
    assert net.maxpool.ceil_mode


def _init_file(tmp_path, drop=None, extra=None):
    src = CaffeResNet101()
    g = torch.Generator().manual_seed(5)
    state = {"Scale." + k: torch.randn(v.shape, generator=g) for k, v in src.state_dict().items()
             if not k.endswith("num_batches_tracked")}  # the 2017 file has no such counters
    for i in range(4):  # its own 21-class summed ASPP, skipped
        state[f"Scale.layer5.conv2d_list.{i}.weight"] = torch.zeros(21, 2048, 3, 3)
        state[f"Scale.layer5.conv2d_list.{i}.bias"] = torch.zeros(21)
    if drop:
        del state[drop]
    state.update(extra or {})
    path = tmp_path / "DeepLab_resnet_pretrained_init-f81d91e8.pth"
    torch.save(state, path)
    return path, state


def test_caffe_init_loads_by_published_names(tmp_path):
    path, state = _init_file(tmp_path)
    model = build_model({"backbone": "resnet101_caffe", "head": "proda", "pretrained": str(path)}, 19)
    got = model.backbone.state_dict()
    assert torch.equal(got["conv1.weight"], state["Scale.conv1.weight"])
    assert torch.equal(got["layer3.22.bn3.running_var"], state["Scale.layer3.22.bn3.running_var"])
    assert torch.equal(got["layer4.0.downsample.1.bias"], state["Scale.layer4.0.downsample.1.bias"])


@pytest.mark.parametrize("drop,extra,message", [
    ("Scale.layer1.0.bn1.running_mean", None, "missing key 'Scale.layer1.0.bn1.running_mean'"),
    (None, {"Scale.layer4.3.conv1.weight": torch.zeros(1)}, "unexpected key 'Scale.layer4.3.conv1.weight'"),
    (None, {"Scale.conv1.weight": torch.zeros(64, 3, 3, 3)}, "'Scale.conv1.weight' has shape (64, 3, 3, 3)"),
])
def test_caffe_init_strict(tmp_path, drop, extra, message):
    path, _ = _init_file(tmp_path, drop, extra)
    with pytest.raises(DataError) as e:
        load_caffe_init(CaffeResNet101(), str(path))
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_caffe_init_refuses_a_torchvision_file(tmp_path):
    path = tmp_path / "resnet101.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 2048)}, path)
    with pytest.raises(DataError, match="torchvision ResNet: use backbone resnet101"):
        load_caffe_init(CaffeResNet101(), str(path))
    with pytest.raises(UsageError, match="loads a local file"):
        build_model({"backbone": "resnet101_caffe", "pretrained": "IMAGENET1K_V1"}, 3)


def test_input_norms():
    spec = {"backbone": "tiny", "head": "proda", "input_norm": "diga"}
    seg = build_segmenter(spec, 3)
    x = torch.rand(1, 3, 8, 8)
    seen = {}
    seg.net.forward = lambda t: seen.setdefault("x", t)
    seg(x)
    torch.testing.assert_close(seen["x"], _diga_input(x))
    with pytest.raises(UsageError, match="input_norm must be one of"):
        build_model({"backbone": "tiny", "input_norm": "bgr"}, 3)
    assert build_model({"backbone": "resnet101_caffe"}, 3).spec["input_norm"] == "caffe"


# -- DAFormer ----------------------------------------------------------------------------------------------

# DAFormerHead's parameters as DAFormer's config builds them (embed_cfg mlp, fusion aspp sep=True,
# dilations (1, 6, 12, 18), BN + ReLU ConvModules), mmcv's ConvModule names (conv, bn) and
# BaseDecodeHead's classifier conv_seg.
def _daformer_head_keys():
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = [f"decode_head.embed_layers.{i}.proj.{p}" for i in range(4) for p in ("weight", "bias")]
    keys += ["decode_head.fuse_layer.aspp_modules.0.conv.weight"]
    keys += [f"decode_head.fuse_layer.aspp_modules.0.bn.{p}" for p in bn]
    for i in (1, 2, 3):
        for part in ("depthwise_conv", "pointwise_conv"):
            keys += [f"decode_head.fuse_layer.aspp_modules.{i}.{part}.conv.weight"]
            keys += [f"decode_head.fuse_layer.aspp_modules.{i}.{part}.bn.{p}" for p in bn]
    keys += ["decode_head.fuse_layer.bottleneck.conv.weight"]
    keys += [f"decode_head.fuse_layer.bottleneck.bn.{p}" for p in bn]
    return keys + ["decode_head.conv_seg.weight", "decode_head.conv_seg.bias"]


def _official_daformer_state(model):
    """An mmseg EncoderDecoder state dict from a segadapt model: backbone.* are NVlabs' MiT names (which
    segadapt's encoder uses too), the decode head must match the list written out above."""
    out = {}
    for k, v in model.state_dict().items():
        k = k[len("net."):]
        out["decode_head.conv_seg." + k[len("classifier."):] if k.startswith("classifier.") else k] = v.clone()
    assert sorted(k for k in out if k.startswith("decode_head.")) == sorted(_daformer_head_keys())
    return out


def test_daformer_uda_checkpoint_imports_student_and_teacher(tmp_path):
    spec = {"arch": "segformer", "backbone": "mit_b0", "head": "daformer", "feat_dim": 64}
    torch.manual_seed(0)
    student, teacher = build_segmenter(spec, 19).eval(), build_segmenter(spec, 19).eval()
    state = {f"model.{k}": v for k, v in _official_daformer_state(student).items()}
    state |= {f"ema_model.{k}": v for k, v in _official_daformer_state(teacher).items()}
    state["imnet_model.backbone.patch_embed1.proj.weight"] = torch.zeros(1)  # the frozen ImageNet model: skipped
    path = tmp_path / "latest.pth"
    torch.save({"meta": {"iter": 40000}, "state_dict": state}, path)
    out = tmp_path / "run" / "last.pt"
    summary = import_checkpoint("daformer", path, out)
    assert summary["teacher"] and summary["model_spec"]["backbone"] == "mit_b0"
    x = torch.rand(1, 3, 40, 56)
    for weights, ref in (("student", student), ("teacher", teacher)):
        model, _, _ = load_model(out, weights)
        with torch.no_grad():
            _close(model(x)["logits"], ref(x)["logits"])


# -- bad files ---------------------------------------------------------------------------------------------


def test_bad_files_one_line_and_nothing_written(diga_file, tmp_path):
    out = tmp_path / "run" / "last.pt"
    full = diga_file[0].state_dict()
    missing = dict(full)
    del missing["layer3.5.bn2.running_var"]
    # a few official keys are enough where the error comes before the model is built
    small = {"layer0.0.weight": full["layer0.0.weight"], "final.head.1.weight": full["final.head.1.weight"]}
    cases = [
        ("diga", missing, "missing key 'layer3.5.bn2.running_var'"),
        ("diga", dict(full, **{"final.bottleneck.1.weight": torch.zeros(256, 1280, 1, 1)}),
         "'final.bottleneck.1.weight' has shape (256, 1280, 1, 1), the model needs (256, 1280, 3, 3)"),
        ("diga", dict(small, **{"final.head.2.weight": torch.zeros(1)}), "unexpected key 'final.head.2.weight'"),
        ("proda", small, "pass --from diga"),  # a DiGA file given as ProDA's
        ("daformer", small, "pass --from diga"),
        ("diga", dict(small, **{"final.head.1.weight": torch.zeros(16, 256, 1, 1)}),
         "predicts 16 classes, label space 'cityscapes19' has 19; pass the --label-space"),
        ("diga", {"Scale.conv1.weight": torch.zeros(64, 3, 7, 7)}, "AdaptSegNet's ImageNet DeepLab init"),
    ]
    for source, bad, message in cases:
        path = tmp_path / "bad.pth"
        torch.save(bad, path)
        with pytest.raises(DataError) as e:
            import_checkpoint(source, path, out)
        assert message in str(e.value), (message, str(e.value))
        assert "\n" not in str(e.value) and str(path) in str(e.value)
        assert not out.exists()


def test_cli_exit_codes_and_force(tmp_path):
    # a small plain mmseg EncoderDecoder file (no UDA wrapper): the CLI paths do not depend on the size
    model = build_segmenter({"arch": "segformer", "backbone": "mit_b0", "head": "daformer", "feat_dim": 32}, 19)
    path = tmp_path / "iter_4000.pth"
    torch.save({"meta": {}, "state_dict": _official_daformer_state(model)}, path)
    out = tmp_path / "run" / "last.pt"
    r = run_cli("import-checkpoint", "--from", "mmseg", "--weights", path, "--out", out, check=False)
    assert r.returncode == 2 and "--from must be one of diga, proda, daformer" in r.stderr
    r = run_cli("import-checkpoint", "--from", "daformer", "--weights", path, "--out", out)
    assert r.returncode == 0 and out.is_file()
    ckpt = load_checkpoint(out)
    assert ckpt["imported_from"]["source"] == "daformer" and ckpt["teacher"] is None
    torch.testing.assert_close(ckpt["model"]["net.classifier.weight"], model.state_dict()["net.classifier.weight"])
    r = run_cli("import-checkpoint", "--from", "daformer", "--weights", path, "--out", out, check=False)
    assert r.returncode == 1 and "already exists; pass --force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    before = out.stat().st_mtime_ns
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="cannot read"):
        import_checkpoint("daformer", junk, out, force=True)
    assert out.stat().st_mtime_ns == before  # a failed import leaves the old file alone
    import_checkpoint("daformer", path, out, force=True)
    assert not list(out.parent.glob(".*.tmp"))  # the atomic write left no temporary file


@pytest.mark.parametrize("bench", ["gta5_cityscapes", "synthia_cityscapes"])
def test_diga_paper_configs_use_the_official_network(bench):
    from segadapt import config as C
    from segadapt.models import resolve_spec

    for stage in ("diga_warmup", "diga_self_train"):
        spec = resolve_spec(C.load_config(f"{bench}/{stage}")["model"], 19)
        assert (spec["backbone"], spec["head"], spec["input_norm"], spec["freeze_bn"], spec["feat_dim"],
                spec["aspp_rates"], spec["dropout"]) == ("resnet101_caffe", "proda", "diga", False, 256,
                                                         [6, 12, 18, 24], 0.1)
    warm = C.load_config(f"{bench}/diga_warmup")["model"]["pretrained"]
    assert warm.endswith("DeepLab_resnet_pretrained_init-f81d91e8.pth")


@pytest.mark.slow
def test_imported_daformer_warmup_evaluates_and_self_trains(tiny_bench, tmp_path):
    import json

    src, tgt = tiny_bench / "source", tiny_bench / "target"
    model = build_segmenter({"arch": "segformer", "backbone": "mit_b0", "head": "daformer", "feat_dim": 32}, 19)
    path = tmp_path / "latest.pth"
    torch.save({"state_dict": {f"model.{k}": v for k, v in _official_daformer_state(model).items()}}, path)
    ckpt = tmp_path / "wu" / "last.pt"
    run_cli("import-checkpoint", "--from", "daformer", "--weights", path, "--out", ckpt)
    ev = json.loads(run_cli("evaluate", "--ckpt", ckpt, "--data", tgt, "--split", "val", "--json").stdout)
    assert ev["num_images"] == 4 and len(ev["per_class"]) == 19
    run_cli("pseudo-label", "--ckpt", ckpt, "--data", tgt, "--out", tmp_path / "pl")
    st = json.loads(run_cli("self-train", "-c", "synthetic/diga_self_train", "--ckpt", ckpt, "--pseudo-labels",
                            tmp_path / "pl", "--source", src, "--target", tgt, "--out", tmp_path / "st",
                            "--iters", 2, "--set", "data.crop=[48,48]", "--set", "data.batch_size=2").stdout
                    .strip().splitlines()[-1])
    assert st["iterations"] == 2
    assert load_checkpoint(tmp_path / "st" / "last.pt")["model_spec"]["backbone"] == "mit_b0"
