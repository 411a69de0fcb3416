"""`segadapt export`: a checkpoint's segmentation model as ONNX, TorchScript or a safetensors folder.

ONNX and TorchScript exports hold the whole inference step, so a consumer needs nothing from segadapt:

- input ``image``: uint8 RGB, NCHW, values 0..255, any batch, height and width (dynamic axes);
- inside: ``x / 255``, then the ImageNet mean/std normalisation the model was trained with;
- output ``logits``: float32 (N, C, H, W) at the *input* resolution (bilinear, align_corners=False,
  exactly how `segadapt evaluate` upsamples), so ``argmax(1)`` is the trainId map.

The contract is written into the file (ONNX ``metadata_props``, TorchScript extra file
``segadapt.json``). A safetensors export is the folder huggingface_hub's ``save_pretrained`` writes
(``model.safetensors`` + ``config.json``); ``load_model`` and so `predict`/`evaluate`/`pseudo-label`
read it as ``--ckpt``.

Every export is checked before it is put in place: it is written to a temporary path, run beside the
PyTorch model (eval mode) on sample inputs, and only renamed to ``--out`` when argmax agreement is at
least ``MIN_AGREEMENT``."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segadapt import __version__
from segadapt.data.labelspace import LabelSpace
from segadapt.engine.checkpoint import file_sha256
from segadapt.engine.inference import load_model
from segadapt.errors import DataError, UsageError
from segadapt.models.base import INPUT_NORMS
from segadapt.models.segmenter import IMAGENET_MEAN, IMAGENET_STD

FORMATS = ("onnx", "torchscript", "safetensors")
MIN_AGREEMENT = 0.999  # argmax agreement below this fails the export (the bar)
EXPORT_FORMAT = "segadapt-export"  # config.json "format" of a safetensors folder
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
TORCHSCRIPT_META = "segadapt.json"  # the TorchScript extra file holding the metadata
MIN_SIDE = 32  # smallest input side an export is guaranteed for (the MiT reduction convs need >= 29)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

PIP_EXTRA = "pip install 'segadapt[export]'"
_EXTRA_MODULES = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "torchscript": (), "safetensors": ("safetensors",)}

# What the ONNX / TorchScript graph takes and gives (recorded in each file)
GRAPH_INPUT = {"name": "image", "layout": "NCHW", "channels": "RGB", "dtype": "uint8", "range": [0, 255],
               "dynamic": ["batch", "height", "width"], "min_side": MIN_SIDE,
               "normalisation": "inside the model: x / 255, then (x - mean) / std per channel",
               "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
GRAPH_OUTPUT = {"name": "logits", "layout": "NCHW", "dtype": "float32", "resolution": "input",
                "upsampling": "bilinear, align_corners=False, from the model's feature resolution",
                "argmax": "dimension 1 gives trainIds (indices into classes)"}
# What the safetensors weights expect: the Segmenter's own input (it normalises inside)
SEGMENTER_INPUT = {"layout": "NCHW", "channels": "RGB", "dtype": "float32", "range": [0.0, 1.0],
                   "normalisation": "inside the model (segadapt Segmenter): (x - mean) / std per channel",
                   "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
SEGMENTER_OUTPUT = {"name": "logits", "layout": "NCHW", "resolution": "feature",
                    "upsampling": "bilinear, align_corners=False, to the input size (as segadapt does)"}
OUTPUT_STRIDE = {"deeplabv2": 8, "deeplabv3plus": 4, "segformer": 4}  # feature map = ceil(input / stride)


class ExportedSegmenter(nn.Module):
    """The graph that is exported: uint8 RGB NCHW in, logits at input resolution out."""

    def __init__(self, segmenter: nn.Module):
        super().__init__()
        self.segmenter = segmenter

    @staticmethod
    def to_unit_range(image: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 -> float 0..1, the range segadapt's data code feeds the Segmenter."""
        return image.float() / 255.0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.segmenter(self.to_unit_range(image))["logits"]
        # the size comes from the input's shape, so tracing/exporting keeps it symbolic (dynamic H, W)
        return F.interpolate(logits.float(), size=image.shape[-2:], mode="bilinear", align_corners=False)


def require_extra(fmt: str) -> None:
    """A missing optional package is a usage error with the command that installs it (exit 2)."""
    for module in _EXTRA_MODULES[fmt]:
        try:
            __import__(module)
        except ImportError:
            raise UsageError(f"{fmt} export needs the '{module}' package: {PIP_EXTRA}") from None


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise DataError(f"{out} exists; use --force to replace it")
    if not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)


def _metadata(fmt: str, ckpt_path: Path, ckpt: dict, label_space: LabelSpace) -> dict:
    graph = fmt != "safetensors"
    return {
        "format": EXPORT_FORMAT, "version": 1, "export_format": fmt, "segadapt_version": __version__,
        "model_spec": {**ckpt["model_spec"], "pretrained": None},
        "label_space": label_space.to_dict(), "classes": list(label_space.classes),
        "palette": [list(c) for c in label_space.palette], "num_classes": label_space.num_classes,
        "input": _input_contract(GRAPH_INPUT if graph else SEGMENTER_INPUT, ckpt["model_spec"]),
        "output": GRAPH_OUTPUT if graph else {**SEGMENTER_OUTPUT, "stride": OUTPUT_STRIDE[ckpt["model_spec"]["arch"]]},
        "weights": ckpt["weights_used"], "stage": ckpt.get("stage"), "method": ckpt.get("method"),
        "iteration": ckpt.get("iteration"), "source_checkpoint": str(ckpt_path.resolve()),
        "source_sha256": file_sha256(ckpt_path),
    }


def _input_contract(base: dict, spec: dict) -> dict:
    """The input record with the model's own normalisation (``model.input_norm``: DiGA's and ProDA's
    Caffe-style networks are not fed ImageNet mean/std), applied inside the export to 0..1 RGB."""
    name = spec.get("input_norm", "imagenet")
    norm = INPUT_NORMS[name]
    what = "BGR channel order, then " if norm["bgr"] else ""
    return {**base, "input_norm": name, "mean": list(norm["mean"]), "std": list(norm["std"]),
            "normalisation": base["normalisation"].replace("(x - mean) / std per channel",
                                                           f"{what}(x - mean) / std per channel, on 0..1 values")}


# -- sample inputs -------------------------------------------------------------------------------
def generated_inputs(sizes, batch: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """Image-like uint8 batches (smooth colour fields plus noise), one per (H, W) in ``sizes``: smooth
    regions give the model confident, varied predictions instead of the near-ties of pure noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        coarse = torch.rand((batch, 3, max(2, h // 16), max(2, w // 16)), generator=g)
        x = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        x = x + 0.05 * torch.randn((batch, 3, h, w), generator=g)
        out.append((x.clamp(0, 1) * 255).round().to(torch.uint8))
    return out


def image_inputs(folder: Path, limit: int) -> list[torch.Tensor]:
    """Up to ``limit`` images of ``folder`` (recursive, sorted), each a batch of one at its own size."""
    from segadapt.data.io import read_image

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--check-images {folder} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:limit]
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    out = []
    for p in files:
        img = read_image(p)
        if min(img.shape[:2]) < MIN_SIDE:
            raise DataError(f"check image {p} is {img.shape[1]}x{img.shape[0]}; exports need sides >= {MIN_SIDE}")
        out.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].contiguous())
    return out


# -- the three writers: each writes `tmp` and returns a runner (uint8 batch -> logits numpy) ------------
@contextlib.contextmanager
def _quiet():
    """Exporters print progress and deprecation notes; stdout is reserved for the result."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _example(batch: int = 2, h: int = 96, w: int = 128) -> torch.Tensor:
    # batch > 1 and H != W: a size of 1 or two equal sizes would be specialised by the exporter
    return torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _write_onnx(wrapper: nn.Module, tmp: Path, meta: dict):
    import onnx
    import onnxruntime as ort

    dims = {0: torch.export.Dim("batch", min=1, max=1024), 2: torch.export.Dim("height", min=MIN_SIDE, max=16384),
            3: torch.export.Dim("width", min=MIN_SIDE, max=16384)}
    with _quiet():
        # the dynamo exporter (torch.export + onnxscript): torch's maintained path; the
        # TorchScript-based one is deprecated. Runs offline.
        program = torch.onnx.export(wrapper, (_example(),), None, dynamo=True, dynamic_shapes={"image": dims},
                                    input_names=["image"], output_names=["logits"], verbose=False)
    proto = program.model_proto
    proto.doc_string = "segadapt segmentation model: uint8 RGB NCHW image -> logits at input resolution"
    for key, value in _flat_metadata(meta).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save_model(proto, str(tmp))
    onnx.checker.check_model(str(tmp))
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    return lambda x: session.run(["logits"], {"image": x.numpy()})[0]


def _flat_metadata(meta: dict) -> dict[str, str]:
    """ONNX metadata_props are string pairs: the whole record as JSON under 'segadapt', plus the keys a
    reader wants without parsing it."""
    return {"segadapt": json.dumps(meta), "input": json.dumps(meta["input"]), "output": json.dumps(meta["output"]),
            "classes": json.dumps(meta["classes"]), "palette": json.dumps(meta["palette"])}


def read_onnx_metadata(path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    return json.loads(props["segadapt"])


def _write_torchscript(wrapper: nn.Module, tmp: Path, meta: dict):
    with _quiet(), torch.no_grad():
        # tracing records the shape reads as graph ops, so the upsampling size stays dynamic; the
        # check below runs other sizes than the example to prove it
        traced = torch.jit.trace(wrapper, (_example(),), check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
        loaded = torch.jit.load(str(tmp), map_location="cpu")

    def run(x):
        with torch.no_grad(), _quiet():
            return loaded(x).numpy()
    return run


def read_torchscript_metadata(path) -> dict:
    extra = {TORCHSCRIPT_META: ""}
    with _quiet():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[TORCHSCRIPT_META])


def _write_safetensors(wrapper: ExportedSegmenter, tmp: Path, meta: dict):
    from safetensors.torch import save_file

    tmp.mkdir()
    # own, contiguous copies: safetensors refuses tensors that share storage
    state = {k: v.detach().cpu().contiguous().clone() for k, v in wrapper.segmenter.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})  # "pt": what save_pretrained records
    (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    # read back through load_model, the path predict/evaluate take, so the check covers that loader too
    model, _, _ = load_model(tmp, meta["weights"])
    loaded = ExportedSegmenter(model).eval()

    def run(x):
        with torch.no_grad():
            return loaded(x).numpy()
    return run


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript, "safetensors": _write_safetensors}


# -- checking ------------------------------------------------------------------------------------
def compare(reference: np.ndarray, exported: np.ndarray) -> dict:
    """Max |logit difference| and the share of pixels whose argmax agrees."""
    if reference.shape != exported.shape:
        raise DataError(f"the export returned shape {list(exported.shape)}, PyTorch {list(reference.shape)}")
    diff = float(np.abs(reference.astype(np.float64) - exported).max())
    agree = reference.argmax(1) == exported.argmax(1)
    # classes_predicted: how varied the reference is (agreement on a one-class map would prove little)
    return {"max_abs_diff": diff, "agreement": float(agree.mean()), "pixels": int(agree.size),
            "agreeing": int(agree.sum()), "classes_predicted": int(np.unique(reference.argmax(1)).size)}


class ExportCheckError(DataError):
    """The export disagrees with PyTorch; ``report`` holds the numbers."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _put_in_place(tmp: Path, out: Path) -> None:
    """Rename the checked export to ``out``; an existing ``out`` (only with --force) is moved aside
    first and deleted after, so a failure never leaves neither."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [tmp, *tmp.iterdir()] if tmp.is_dir() else [tmp]:  # temp files are private; an export is for sharing
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    _remove(old)


def export_model(ckpt_path, fmt: str, out, weights: str = "student", check_images=None, force: bool = False,
                 check_sizes=((256, 320), (193, 257)), check_batch: int = 2, check_count: int = 4) -> dict:
    """Export, check against PyTorch, then put at ``out``. Returns the report (format, out, metadata,
    per-input checks, overall max |diff| and agreement, seconds). Raises ExportCheckError (exit 1, nothing
    left at ``out``) when agreement < MIN_AGREEMENT."""
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    require_extra(fmt)
    ckpt_path, out = Path(ckpt_path), Path(out)
    _check_out(out, force)
    model, label_space, ckpt = load_model(ckpt_path, weights, torch.device("cpu"))  # in eval mode
    wrapper = ExportedSegmenter(model).eval()
    meta = _metadata(fmt, ckpt_path, ckpt, label_space)
    inputs = image_inputs(check_images, check_count) if check_images else generated_inputs(check_sizes, check_batch)

    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp_dir:
        tmp = Path(tmp_dir) / out.name  # same file system as out, so the final rename is atomic
        t0 = time.time()
        run = _WRITERS[fmt](wrapper, tmp, meta)
        export_seconds = time.time() - t0
        t0 = time.time()
        checks = []
        for x in inputs:
            with torch.no_grad():
                reference = wrapper(x).numpy()
            checks.append({"shape": list(x.shape), **compare(reference, run(x))})
        agreement = sum(c["agreeing"] for c in checks) / sum(c["pixels"] for c in checks)
        report = {"format": fmt, "out": str(out), "checkpoint": str(ckpt_path), "weights": meta["weights"],
                  "input": meta["input"], "output": meta["output"], "num_classes": label_space.num_classes,
                  "checks": checks, "check_inputs": str(check_images) if check_images else "generated",
                  "max_abs_diff": max(c["max_abs_diff"] for c in checks), "agreement": agreement,
                  "min_agreement": MIN_AGREEMENT, "export_seconds": round(export_seconds, 3),
                  "check_seconds": round(time.time() - t0, 3), "ok": agreement >= MIN_AGREEMENT}
        if not report["ok"]:
            raise ExportCheckError(f"the {fmt} export agrees with PyTorch on {100 * agreement:.3f} % of pixels "
                                   f"(< {100 * MIN_AGREEMENT:.1f} %, max |logit diff| {report['max_abs_diff']:.3g}); "
                                   f"nothing written to {out}", report)
        _put_in_place(tmp, out)
    return report


def format_report(report: dict) -> str:
    inp, outp = report["input"], report["output"]
    lines = [f"exported {report['format']} to {report['out']} ({report['weights']} weights, "
             f"{report['export_seconds']:.1f} s)",
             f"input: {inp['dtype']} {inp['channels']} {inp['layout']} {inp['range'][0]}..{inp['range'][1]}; "
             f"output: logits at {outp['resolution']} resolution"]
    for c in report["checks"]:
        lines.append(f"check {'x'.join(map(str, c['shape']))}: max |logit diff| {c['max_abs_diff']:.3g}, "
                     f"argmax agreement {100 * c['agreement']:.4f} % ({c['classes_predicted']} classes predicted)")
    lines.append(f"overall: max |logit diff| {report['max_abs_diff']:.3g}, argmax agreement "
                 f"{100 * report['agreement']:.4f} % (>= {100 * report['min_agreement']:.1f} % required)")
    return "\n".join(lines)



# -- running an export (segadapt predict --model) ------------------------------------------------


class ExportedRunner(nn.Module):
    """An ONNX or TorchScript export behind the Segmenter's interface, so `infer` (scales, flip,
    sliding window) runs it unchanged: takes segadapt's float 0..1 RGB batch, feeds the graph its uint8
    contract (``round(x * 255)``: exact for images read from 8-bit files, within half a grey level after
    an --input-size resize), returns ``{"logits": ...}`` at input resolution (no "feat": exports hold none)."""

    def __init__(self, run, device: torch.device):
        super().__init__()
        self.run, self.device = run, device

    def forward(self, x: torch.Tensor) -> dict:
        image = (x.float() * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        return {"logits": torch.as_tensor(self.run(image)).to(x.device)}


def load_exported(path, device: torch.device):
    """(runner, label space, metadata) of an `.onnx` or TorchScript export made by `segadapt export`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"exported model {path} does not exist (make one with segadapt export)")
    if path.suffix.lower() == ".onnx":
        require_extra("onnx")
        import onnxruntime as ort

        try:
            meta = read_onnx_metadata(path)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file: one line, whatever the parser says
            raise DataError(f"{path} is not a segadapt ONNX export: {str(e).splitlines()[0][:200]}") from None
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"]
                     if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
                     else ["CPUExecutionProvider"])
        session = ort.InferenceSession(str(path), providers=providers)
        run = lambda u8: session.run(["logits"], {"image": u8.cpu().numpy()})[0]  # noqa: E731
    else:
        try:
            meta = read_torchscript_metadata(path)
            with _quiet():
                module = torch.jit.load(str(path), map_location=device)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{path} is neither an .onnx file nor a segadapt TorchScript export: "
                            f"{str(e).splitlines()[0][:200]}") from None

        def run(u8):
            with _quiet():
                return module(u8.to(device))
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise DataError(f"{path} carries no segadapt export metadata (make it with segadapt export)")
    meta = {**meta, "weights_used": meta.get("weights")}
    return ExportedRunner(run, device).eval(), LabelSpace.from_dict(meta["label_space"]), meta
