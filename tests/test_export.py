"""`segadapt export`: the exported graphs compute what PyTorch computes at other sizes and batches than
the one exported with, the uint8 input is normalised as segadapt's data code does, a safetensors folder
evaluates like its checkpoint, and bad input fails with one line."""

import builtins
import importlib.util
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from segadapt.data.labelspace import CITYSCAPES19
from segadapt.engine import export as X
from segadapt.engine.checkpoint import save_checkpoint
from segadapt.engine.inference import load_model
from segadapt.errors import DataError, UsageError
from segadapt.models.segmenter import build_segmenter

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
HAS_SAFETENSORS = importlib.util.find_spec("safetensors") is not None
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="the export extra (onnx, onnxscript, onnxruntime) is absent")
needs_safetensors = pytest.mark.skipif(not HAS_SAFETENSORS, reason="the export extra (safetensors) is absent")

SIZES = [(64, 96), (75, 133)]  # neither is the size the graph is exported with (96x128)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_segmenter({"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 16}, CITYSCAPES19.num_classes)
    teacher = build_segmenter(model.spec, CITYSCAPES19.num_classes)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"stage": "warmup", "method": "source_only", "iteration": 2, "model": model.state_dict(),
                           "teacher": teacher.state_dict(), "model_spec": model.spec,
                           "label_space": CITYSCAPES19.to_dict()})
    return path


def reference_logits(ckpt, image_u8: torch.Tensor) -> torch.Tensor:
    """What the export must compute, written out here: /255, ImageNet mean/std, network, upsampling."""
    model, _, _ = load_model(ckpt)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model.net((image_u8.double() / 255 - mean.double()).div(std.double()).float())["logits"]
    return F.interpolate(logits, size=image_u8.shape[-2:], mode="bilinear", align_corners=False)


def assert_matches(ref: np.ndarray, got: np.ndarray, atol: float = 1e-4):
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=atol, rtol=0)
    # argmax equal, except where the top two PyTorch logits are closer than the tolerance (a true tie)
    top2 = np.sort(ref, axis=1)[:, -2:]
    differ = ref.argmax(1) != got.argmax(1)
    assert not (differ & (top2[:, 1] - top2[:, 0] > 2 * atol)).any()


def batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (2, 3, h, w), dtype=torch.uint8, generator=g) for h, w in SIZES]


@pytest.mark.slow  # the dynamo exporter takes ~10 s even for the tiny model
@needs_onnx
def test_onnx_matches_pytorch_at_two_sizes_and_batch_2(tiny_ckpt, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "tiny.onnx"
    report = X.export_model(tiny_ckpt, "onnx", out, check_sizes=SIZES)
    assert report["ok"] and report["agreement"] >= 0.999 and [c["shape"][2:] for c in report["checks"]] == \
        [list(s) for s in SIZES]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)"
    for x in batches():
        got = session.run(["logits"], {"image": x.numpy()})[0]
        assert_matches(reference_logits(tiny_ckpt, x).numpy(), got)
    meta = X.read_onnx_metadata(out)
    assert meta["input"]["dtype"] == "uint8" and meta["input"]["range"] == [0, 255]
    assert meta["output"]["resolution"] == "input" and meta["classes"] == list(CITYSCAPES19.classes)
    assert meta["palette"][0] == [128, 64, 128] and meta["weights"] == "student"


def test_torchscript_matches_pytorch_and_records_its_contract(tiny_ckpt, tmp_path):
    out = tmp_path / "tiny.pt"
    X.export_model(tiny_ckpt, "torchscript", out, check_sizes=SIZES, weights="teacher")
    with X._quiet():
        loaded = torch.jit.load(str(out))
    teacher, _, _ = load_model(tiny_ckpt, "teacher")
    for x in batches():
        with torch.no_grad():
            got = loaded(x).numpy()
            ref = F.interpolate(teacher(x.float() / 255)["logits"], size=x.shape[-2:], mode="bilinear",
                                align_corners=False).numpy()
        assert_matches(ref, got, atol=1e-5)
    meta = X.read_torchscript_metadata(out)
    assert meta["weights"] == "teacher" and meta["input"]["dtype"] == "uint8" and meta["num_classes"] == 19


def test_uint8_input_is_normalised_as_the_data_code_does(tiny_ckpt, tmp_path):
    """An image read by segadapt's data code (read_image, to_tensor) and normalised by hand gives the
    same logits as the export's uint8 path on the raw pixels."""
    from segadapt.data.datasets import to_tensor
    from segadapt.data.io import read_image

    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), rgb[:, :, ::-1])
    as_data = to_tensor(read_image(tmp_path / "a.png"))[None]  # float 0..1, what training and evaluate feed
    u8 = torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous()
    assert torch.equal(X.ExportedSegmenter.to_unit_range(u8), as_data)
    model, _, _ = load_model(tiny_ckpt)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        by_hand = F.interpolate(model.net((as_data - mean) / std)["logits"], size=(40, 56), mode="bilinear",
                                align_corners=False)
        exported = X.ExportedSegmenter(model).eval()(u8)
    torch.testing.assert_close(exported, by_hand, atol=1e-5, rtol=0)


@needs_safetensors
def test_safetensors_folder_evaluates_like_the_checkpoint(tiny_ckpt, tiny_bench, tmp_path):
    from segadapt.data.prepared import PreparedDataset
    from segadapt.engine.evaluate import evaluate_checkpoint
    from segadapt.engine.inference import Protocol

    folder = tmp_path / "tiny-hf"
    X.export_model(tiny_ckpt, "safetensors", folder, check_sizes=SIZES[:1])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["model_spec"]["backbone"] == "tiny" and config["classes"] == list(CITYSCAPES19.classes)
    assert config["input"]["dtype"] == "float32" and config["output"]["stride"] == 8

    data = PreparedDataset(tiny_bench / "target")
    scores = [evaluate_checkpoint(c, data, "val", Protocol(), "student", torch.device("cpu")) for c in (tiny_ckpt, folder)]
    assert scores[1]["miou"] == scores[0]["miou"] and scores[1]["per_class"] == scores[0]["per_class"]
    assert scores[1]["protocol"]["iteration"] == 2 and scores[1]["protocol"]["weights"] == "student"
    with pytest.raises(DataError, match="student weights only"):
        load_model(folder, "teacher")

    # pseudo-labels from the folder: the same label maps, and a manifest naming the folder's hash
    from segadapt.data.io import read_label
    from segadapt.engine.checkpoint import file_sha256
    from segadapt.engine.pseudo_label import generate

    for name, c in (("a", tiny_ckpt), ("b", folder)):
        generate(c, data, "train", tmp_path / name, Protocol(), "student", torch.device("cpu"), limit=2)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["checkpoint_sha256"] == file_sha256(folder) != file_sha256(tiny_ckpt)
    labels = sorted((tmp_path / "a" / "labels").glob("*.png"))
    assert len(labels) == 2
    for p in labels:
        assert np.array_equal(read_label(p), read_label(tmp_path / "b" / "labels" / p.name))


def test_missing_extra_is_a_usage_error_with_the_pip_command(tiny_ckpt, tmp_path, monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.split(".")[0] == "onnxruntime":
            raise ImportError("No module named 'onnxruntime'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(UsageError, match=r"pip install 'segadapt\[export\]'") as e:
        X.export_model(tiny_ckpt, "onnx", tmp_path / "m.onnx")
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_low_agreement_fails_and_leaves_nothing(tiny_ckpt, tmp_path, monkeypatch):
    """An export whose argmax disagrees on more than 0.1 % of pixels is an error and is not put in place."""
    real = X._write_torchscript

    def broken(wrapper, tmp, meta):
        run = real(wrapper, tmp, meta)
        return lambda x: np.roll(run(x), 1, axis=1)  # every pixel's class shifted by one

    monkeypatch.setitem(X._WRITERS, "torchscript", broken)
    with pytest.raises(X.ExportCheckError, match="nothing written") as e:
        X.export_model(tiny_ckpt, "torchscript", tmp_path / "m.pt", check_sizes=SIZES[:1])
    assert e.value.report["agreement"] < 0.05 and not e.value.report["ok"]
    assert list(tmp_path.iterdir()) == []


def test_translator_checkpoint_existing_out_and_bad_format_are_refused(tiny_ckpt, tmp_path):
    tr = tmp_path / "translator.pt"
    save_checkpoint(tr, {"stage": "translator", "method": "cyclegan", "iteration": 1, "nets": {}})
    with pytest.raises(DataError, match="translator checkpoint .* not a segmentation model"):
        X.export_model(tr, "torchscript", tmp_path / "m.pt")
    out = tmp_path / "keep.pt"
    out.write_bytes(b"keep me")
    with pytest.raises(DataError, match="exists; use --force"):
        X.export_model(tiny_ckpt, "torchscript", out)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(UsageError, match="onnx, torchscript, safetensors"):
        X.export_model(tiny_ckpt, "tflite", tmp_path / "m.tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.pt", "translator.pt"]


@pytest.mark.slow
def test_cli_one_line_errors_force_json_and_check_images(tiny_ckpt, tmp_path):
    tr = tmp_path / "translator.pt"
    save_checkpoint(tr, {"stage": "translator", "method": "cyclegan", "iteration": 1, "nets": {}})
    proc = run_cli("export", "--ckpt", tr, "--format", "torchscript", "--out", tmp_path / "m.pt", check=False)
    assert proc.returncode == 1 and "translator" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1

    out = tmp_path / "tiny.pt"
    out.write_bytes(b"old")
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a.png": (48, 64), "sub/b.jpg": (57, 41)}.items():
        cv2.imwrite(str(images / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    proc = run_cli("export", "--ckpt", tiny_ckpt, "--format", "torchscript", "--out", out, "--force", "--json",
                   "--check-images", images)
    report = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert report["ok"] and [c["shape"] for c in report["checks"]] == [[1, 3, 48, 64], [1, 3, 57, 41]]
    assert report["max_abs_diff"] < 1e-4 and report["check_inputs"] == str(images)
    assert out.read_bytes()[:2] == b"PK"  # the TorchScript zip replaced the old file


@pytest.mark.slow  # exports ONNX (~10 s) and runs predict three times
@needs_onnx
def test_predict_runs_onnx_and_torchscript_exports_like_the_checkpoint(tiny_ckpt, tmp_path):
    from segadapt.data.io import read_label

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):  # 8-bit files: round(x * 255) gives the export exactly the pixels read
        cv2.imwrite(str(images / f"f{i}.png"), rng.integers(0, 256, (48 + 8 * i, 80, 3), dtype=np.uint8))
    X.export_model(tiny_ckpt, "onnx", tmp_path / "m.onnx", check_sizes=SIZES)
    X.export_model(tiny_ckpt, "torchscript", tmp_path / "m.ts", check_sizes=SIZES)
    # scale 1 with flip: the export sees exactly the pixels read (another scale resizes the float image,
    # and the uint8 contract then rounds it to within half a grey level)
    run_cli("predict", "--ckpt", tiny_ckpt, "--input", images, "--out", tmp_path / "ref", "--flip")
    for name in ("m.onnx", "m.ts"):
        out = tmp_path / f"pred_{name}"
        proc = run_cli("predict", "--model", tmp_path / name, "--input", images, "--out", out, "--flip", "--json")
        assert json.loads(proc.stdout)["images"] == 3
        for i in range(3):
            ref, got = read_label(tmp_path / "ref" / "labels" / f"f{i}.png"), read_label(out / "labels" / f"f{i}.png")
            assert (ref == got).mean() >= 0.999  # the same network; float ties may split differently
    bad = run_cli("predict", "--ckpt", tiny_ckpt, "--model", tmp_path / "m.onnx", "--input", images,
                  "--out", tmp_path / "x", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    bad = run_cli("predict", "--model", tmp_path / "junk.onnx", "--input", images, "--out", tmp_path / "y", check=False)
    assert bad.returncode == 1 and "not a segadapt ONNX export" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_export_records_and_applies_a_caffe_style_input_norm(tmp_path):
    torch.manual_seed(0)
    model = build_segmenter({"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 16, "input_norm": "diga"},
                            CITYSCAPES19.num_classes)
    ckpt = tmp_path / "diga_norm.pt"
    save_checkpoint(ckpt, {"stage": "warmup", "method": "diga", "iteration": 1, "model": model.state_dict(),
                           "teacher": None, "model_spec": model.spec, "label_space": CITYSCAPES19.to_dict()})
    X.export_model(ckpt, "torchscript", tmp_path / "m.ts", check_sizes=SIZES)
    meta = X.read_torchscript_metadata(tmp_path / "m.ts")
    # DiGA's loaders: BGR 0..255 minus the Caffe mean (104.008, 116.669, 122.675), divided by 128
    assert meta["input"]["input_norm"] == "diga" and "BGR" in meta["input"]["normalisation"]
    assert meta["input"]["mean"] == pytest.approx([104.00698793 / 255, 116.66876762 / 255, 122.67891434 / 255])
    x = batches()[0]
    net, _, _ = load_model(ckpt)
    bgr = x.flip(1).double()
    caffe = torch.tensor([104.00698793, 116.66876762, 122.67891434], dtype=torch.float64).view(1, 3, 1, 1)
    with torch.no_grad(), X._quiet():
        ref = net.net(((bgr - caffe) / 128).float())["logits"]
        ref = F.interpolate(ref, size=x.shape[-2:], mode="bilinear", align_corners=False).numpy()
        got = torch.jit.load(str(tmp_path / "m.ts"))(x).numpy()
    assert_matches(ref, got, atol=1e-4)


def test_cli_format_choices_are_the_engines():
    from segadapt.cli.export_cmds import ExportFormat
    from segadapt.engine.export import FORMATS

    assert tuple(f.value for f in ExportFormat) == FORMATS
