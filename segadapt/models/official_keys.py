"""Official checkpoints -> segadapt model specs and ``Segmenter`` state dicts, key for key.

Every key of the official file is either mapped or named here as deliberately skipped; anything else is a
one-line DataError naming the file and the key, and so is a key the model needs that the file lacks (the
final check is :func:`segadapt.models.caffe_resnet.load_exact`). Layouts, from the official code:

- ``diga``: DiGA's ``save_models`` writes ``student.pth`` / ``teacher.pth``, each a plain
  ``SegModel.state_dict()`` (``domain_adaptation/GTA5/model/model_noaux.py``): ``layer0.0`` (conv1),
  ``layer0.1`` (bn1), ``layer1`` ... ``layer4`` (the Caffe-style ResNet-101), ``final.*`` (ProDA's
  ``Classifier_Module2``: ``final.conv2d_list.{0-4}.{0,1}``, ``final.bottleneck.0.se.{0,2}``,
  ``final.bottleneck.{1,2}``, ``final.head.1.weight``). Input: BGR minus the Caffe mean, / 128.
- ``proda``: ProDA's ``train.py`` saves ``{"ResNet101": {"model_state": ..., "objective_vectors": ...},
  "FCDiscriminator": {...}, "iter", "best_iou"}`` (``*_best_model.pkl``); ``model_state`` has the
  ``ResNet101`` names: ``conv1``, ``bn1``, ``layer1`` ... ``layer4``, ``layer5.*`` (the same head as
  DiGA's ``final.*``), plus ``bn_pretrain.*`` where trained with ``bn_clr`` (stages 2-3; segadapt's
  ``post_backbone_bn``). The discriminator and prototypes are not the segmenter and are skipped. Input: RGB
  in [0, 1].
- ``daformer``: an mmseg checkpoint ``{"meta", "state_dict", "optimizer"}`` of DAFormer's UDA wrapper,
  whose ``state_dict`` holds ``model.*`` (the student), ``ema_model.*`` (the teacher) and, with the
  ImageNet feature distance, ``imnet_model.*`` (a frozen ImageNet copy, skipped); or a plain
  EncoderDecoder state dict (``backbone.*``, ``decode_head.*``). Backbone keys are NVlabs' MiT names
  (DAFormer's ``mix_transformer.py``; mmseg-converted ``layers.*`` names are mapped back), the decode head
  is ``DAFormerHead`` (``embed_layers``, ``fuse_layer``) with ``conv_seg`` as the classifier. Input: the
  ImageNet mean/std.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from segadapt.errors import DataError
from segadapt.models.segformer import guess_variant, mmseg_to_official

SOURCES = ("diga", "proda", "daformer")


# -- DeepLab-v2 (DiGA, ProDA) ------------------------------------------------------------------------


# ProDA's ``Classifier_Module2`` (official names) <-> segadapt's ``proda`` head (under ``net.``), one row a
# parameter family; both directions read this one table.
_HEAD_NAMES = (("conv2d_list.{n}.{k}.{p}", "head.branches.{n}.{k}.{p}"),
               ("bottleneck.0.se.0.{p}", "head.se.fc1.{p}"),
               ("bottleneck.0.se.2.{p}", "head.se.fc2.{p}"),
               ("bottleneck.1.{p}", "head.fuse.{p}"),
               ("bottleneck.2.{p}", "head.fuse_norm.{p}"),
               ("head.1.weight", "classifier.weight"))
_HEAD_FIELDS = {"n": r"\d+", "k": "[01]", "p": "weight|bias"}


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, field, literal, field, ...
    return re.compile("".join(re.escape(x) if i % 2 == 0 else f"(?P<{x}>{_HEAD_FIELDS[x]})"
                              for i, x in enumerate(parts)))


def _head_name(key: str, official_to_ours: bool) -> str | None:
    """A head key in one naming -> the other naming, or None when no row of ``_HEAD_NAMES`` matches."""
    for official, ours in _HEAD_NAMES:
        src, dst = (official, ours) if official_to_ours else (ours, official)
        if m := _template_regex(src).fullmatch(key):
            return dst.format(**m.groupdict())
    return None


_RESNET_KEY = re.compile(r"layer[1-4]\.\d+\.(conv[123]\.weight|bn[123]\.\w+|downsample\.[01]\.\w+)")


def _deeplab_key(key: str, source: str) -> str | None:
    """An official DeepLab-v2 key -> the segadapt ``Segmenter`` key, or None when it is not one of the layout's."""
    stem = {"diga": {"layer0.0.": "conv1.", "layer0.1.": "bn1."}, "proda": {"conv1.": "conv1.", "bn1.": "bn1."}}[source]
    head_prefix = "final." if source == "diga" else "layer5."
    for old, new in stem.items():
        if key.startswith(old):
            return f"net.backbone.{new}{key[len(old):]}"
    if _RESNET_KEY.fullmatch(key):
        return f"net.backbone.{key}"
    if key.startswith(head_prefix) and (mapped := _head_name(key[len(head_prefix):], official_to_ours=True)):
        return f"net.{mapped}"
    if m := re.fullmatch(r"bn_pretrain\.(\w+)", key):  # the bn_clr BatchNorm after layer4
        return f"net.post_backbone_bn.{m[1]}"
    return None


def _check_deeplab_file(state: Mapping[str, torch.Tensor], source: str, origin: str) -> None:
    """Files that are DeepLab-v2 but not a trained model of this layout, named with their fix."""
    if any(k.startswith("Scale.") for k in state):
        raise DataError(f"{origin} is AdaptSegNet's ImageNet DeepLab init, not a trained {source} model; "
                        "use it as model.pretrained of backbone resnet101_caffe")


def _deeplab_state(state: Mapping[str, torch.Tensor], source: str, origin: str) -> dict[str, torch.Tensor]:
    _check_deeplab_file(state, source, origin)
    out = {}
    for key, value in state.items():
        mapped = _deeplab_key(key, source)
        if mapped is None:
            raise DataError(f"{origin}: unexpected key {key!r} for a {source} DeepLab-v2 checkpoint; "
                            f"{_other_source_hint(state, source)}")
        out[mapped] = value
    return out


def _other_source_hint(state, source: str) -> str:
    keys = list(state)
    if any(k.startswith("final.") or k.startswith("layer0.") for k in keys):
        guess = "diga"
    elif any(k.startswith("layer5.") for k in keys):
        guess = "proda"
    elif any(k.startswith(("backbone.", "decode_head.", "model.", "ema_model.")) for k in keys):
        guess = "daformer"
    else:
        return "the file is of another architecture (import supports DiGA/ProDA DeepLab-v2 and DAFormer MiT)"
    if guess == source:
        return "the file is of another architecture or version than the official one"
    return f"the file looks like a {guess} checkpoint: pass --from {guess}"


def _deeplab_num_classes(state, source: str, origin: str) -> int:
    key = "final.head.1.weight" if source == "diga" else "layer5.head.1.weight"
    if key not in state:
        raise DataError(f"{origin}: missing key {key!r} (the classifier of the official {source} head); "
                        f"{_other_source_hint(state, source)}")
    return int(state[key].shape[0])


# -- DAFormer (mmseg) ----------------------------------------------------------------------------------


def _daformer_state(state: Mapping[str, torch.Tensor], origin: str) -> dict[str, torch.Tensor]:
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if any(k.startswith("layers.") for k in backbone):
        backbone = mmseg_to_official(backbone)  # mmseg-converted MiT names -> NVlabs' (segformer.py)
    out = {f"net.backbone.{k}": v for k, v in backbone.items()}
    for key, value in state.items():
        if key.startswith("backbone."):
            continue
        if key.startswith("decode_head.conv_seg."):
            out[f"net.classifier.{key[len('decode_head.conv_seg.'):]}"] = value
        elif key.startswith(("decode_head.embed_layers.", "decode_head.fuse_layer.")):
            out[f"net.{key}"] = value  # segadapt's DAFormerHead mirrors mmseg's module names
        else:
            raise DataError(f"{origin}: unexpected key {key!r} for DAFormer (MiT + DAFormerHead); "
                            f"{_other_source_hint(state, 'daformer')}")
    return out


def _daformer_spec(state: Mapping[str, torch.Tensor], origin: str) -> tuple[dict, int]:
    backbone = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if any(k.startswith("layers.") for k in backbone):
        backbone = mmseg_to_official(backbone)
    variant = guess_variant(backbone)
    if variant is None:
        raise DataError(f"{origin}: the backbone is not a MiT-B0..B5 encoder (DAFormer's); "
                        f"{_other_source_hint(state, 'daformer')}")
    embed = state.get("decode_head.embed_layers.0.proj.weight")
    cls = state.get("decode_head.conv_seg.weight")
    if embed is None or cls is None:
        missing = "decode_head.embed_layers.0.proj.weight" if embed is None else "decode_head.conv_seg.weight"
        raise DataError(f"{origin}: missing key {missing!r}: the decode head is not DAFormer's (only the "
                        "DAFormer head is supported)")
    spec = {"arch": "segformer", "backbone": variant, "head": "daformer", "feat_dim": int(embed.shape[0])}
    return spec, int(cls.shape[0])


def official_name(key: str, source: str) -> str:
    """A segadapt ``Segmenter`` key -> how the official file of ``source`` spells it (for error messages)."""
    key = key[len("net."):] if key.startswith("net.") else key
    if source == "daformer":
        if key.startswith("classifier."):
            return "decode_head.conv_seg." + key[len("classifier."):]
        return key  # backbone.* and decode_head.* keep their names
    if key.startswith("backbone."):
        key = key[len("backbone."):]
        if source == "diga" and key.startswith(("conv1.", "bn1.")):
            return ("layer0.0." if key.startswith("conv1.") else "layer0.1.") + key.split(".", 1)[1]
        return key
    if key.startswith("post_backbone_bn."):
        return "bn_pretrain." + key[len("post_backbone_bn."):]
    if (official := _head_name(key, official_to_ours=False)) is not None:
        return ("final." if source == "diga" else "layer5.") + official
    return key


# -- entry point -------------------------------------------------------------------------------------------


def split_official(obj, source: str, origin: str) -> dict[str, tuple[str, Mapping[str, torch.Tensor]]]:
    """The segmenter weights inside an official file: ``{"student": (prefix, state), "teacher": ...}`` (the
    teacher only where the file has one; ``prefix`` is how the file prefixed those keys, for messages)."""
    if source not in SOURCES:
        raise DataError(f"unknown checkpoint source {source!r}; choose one of {', '.join(SOURCES)}")
    if source == "proda":
        if not (isinstance(obj, Mapping) and isinstance(obj.get("ResNet101"), Mapping)
                and isinstance(obj["ResNet101"].get("model_state"), Mapping)):
            raise DataError(f"{origin} is not a ProDA checkpoint (no ['ResNet101']['model_state']); "
                            f"{_other_source_hint(_flat(obj), source)}")
        return {"student": ("", obj["ResNet101"]["model_state"])}
    if source == "daformer" and isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    state = _flat(obj)
    if not state:
        raise DataError(f"{origin} holds no state dict (a mapping of parameter names to tensors)")
    wrapper = ""
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state, wrapper = {k[len("module."):]: v for k, v in state.items()}, "module."
    if source == "daformer" and any(k.startswith("model.") for k in state):
        parts: dict[str, dict] = {"student": {}, "teacher": {}}
        for key, value in state.items():
            if key.startswith("model."):
                parts["student"][key[len("model."):]] = value
            elif key.startswith("ema_model."):
                parts["teacher"][key[len("ema_model."):]] = value
            elif not key.startswith("imnet_model."):  # the frozen ImageNet model of the feature distance
                raise DataError(f"{origin}: unexpected key {key!r} in a DAFormer UDA checkpoint "
                                "(known: model.*, ema_model.*, imnet_model.*)")
        prefixes = {"student": "model.", "teacher": "ema_model."}
        return {k: (wrapper + prefixes[k], v) for k, v in parts.items() if v}
    return {"student": (wrapper, state)}


def _flat(obj) -> dict:
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj)
    return {}


def official_spec(state: Mapping[str, torch.Tensor], source: str, origin: str) -> tuple[dict, int]:
    """The segadapt model spec (without num_classes) and the number of classes of an official state dict."""
    if source == "daformer":
        return _daformer_spec(state, origin)
    _check_deeplab_file(state, source, origin)
    n = _deeplab_num_classes(state, source, origin)
    spec = {"arch": "deeplabv2", "backbone": "resnet101_caffe", "head": "proda", "feat_dim": 256,
            "aspp_rates": [6, 12, 18, 24], "input_norm": source,
            "post_backbone_bn": any(k.startswith("bn_pretrain.") for k in state)}
    return spec, n


def to_segadapt(state: Mapping[str, torch.Tensor], source: str, origin: str) -> dict[str, torch.Tensor]:
    """Rename an official state dict to ``Segmenter`` keys (unknown keys are a DataError)."""
    if source == "daformer":
        return _daformer_state(state, origin)
    return _deeplab_state(state, source, origin)
