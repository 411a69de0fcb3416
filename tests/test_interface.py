"""The written-down pieces of the structure: the pseudo-label folder object (what it reads back from a real
pseudo-label run, against values the test computes from the files and the model), the method registry and
the method interface's defaults (a method that overrides nothing but ``training_step`` runs through the
pipeline), and MethodState's checkpoint behaviour."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segadapt.data.datasets import TrainCrops
from segadapt.data.io import read_label
from segadapt.data.prepared import PreparedDataset
from segadapt.data.pseudo_labels import (CONF_BINS, CONF_SCALE, FORMAT_VERSION, PseudoLabelFolder, bin_floor,
                                         confidence_bins, quantize_confidence, stored_confidence)
from segadapt.engine import pseudo_label as PL
from segadapt.engine.checkpoint import load_checkpoint
from segadapt.engine.inference import Protocol
from segadapt.errors import DataError, UsageError
from segadapt.methods import SELF_TRAIN_METHODS, WARMUP_METHODS, method_class
from segadapt.methods.base import Method, MethodState, register_method
from segadapt.methods.diga import DigaSelfTrain
from segadapt.models import ARCHS
from segadapt.models.segmenter import build_segmenter
from segadapt.pipeline import run_self_train, run_warmup
from segadapt.registry import Registry

from conftest import fixed_tiny_checkpoint, TINY_OVERRIDES

CPU = torch.device("cpu")


# -- the pseudo-label folder ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def made(tiny_bench, tmp_path_factory):
    """A fixed random tiny DeepLab-v2 saved as a checkpoint, and its single-scale pseudo-labels of the
    whole target train split."""
    d = tmp_path_factory.mktemp("iface")
    ds = PreparedDataset(tiny_bench / "target")
    model, ckpt = fixed_tiny_checkpoint(ds, d)
    PL.generate(ckpt, ds, "train", d / "pl", Protocol(scales=[1.0]), "student", CPU)
    return model, ds, d / "pl"


def _forward(model, path):
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        return x, model(x)


def test_folder_reads_back_the_prototypes_the_model_gives(made):
    model, ds, root = made
    folder = PseudoLabelFolder.open(root, ds, "train")
    c = ds.label_space.num_classes
    sums, images = torch.zeros(c, 8, dtype=torch.float64), torch.zeros(c)
    for _id, path, _ in ds.items("train"):
        _, out = _forward(model, path)
        feat, pred = out["feat"][0].double(), out["logits"][0].argmax(0)  # feature resolution
        for k in range(c):
            sel = pred == k
            if sel.sum() >= 5:  # calc_centroids' per-image minimum
                sums[k] += feat[:, sel].mean(1)
                images[k] += 1
    expected = (sums / images.clamp(min=1)[:, None]).float()
    got = folder.prototypes()
    assert got.shape == (c, 8) and (images > 0).any()
    assert torch.allclose(got, expected, atol=1e-5)
    assert folder.manifest()["version"] == FORMAT_VERSION and folder.manifest()["complete"]


def test_folder_reads_back_the_histogram_and_confidence_of_its_files(made):
    model, ds, root = made
    folder = PseudoLabelFolder(root)
    c = ds.label_space.num_classes
    ref = np.zeros((c, CONF_BINS), np.int64)
    for _id, path, _ in ds.items("train"):
        lab = cv2.imread(str(root / "labels" / f"{_id}.png"), cv2.IMREAD_UNCHANGED).astype(np.int64)
        u16 = cv2.imread(str(root / "confidence" / f"{_id}.png"), cv2.IMREAD_UNCHANGED)
        assert u16.dtype == np.uint16
        b = np.minimum(u16.astype(np.int64) * CONF_BINS // 65535, CONF_BINS - 1)  # floor(conf * bins)
        np.add.at(ref, (lab.reshape(-1), b.reshape(-1)), 1)
        # the stored confidence is the model's max softmax probability at image resolution
        x, out = _forward(model, path)
        prob = F.interpolate(out["logits"], size=x.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
        conf = folder.confidence(_id)
        assert conf.dtype == np.float32
        np.testing.assert_array_equal(conf, u16.astype(np.float32) / np.float32(65535))
        assert np.abs(conf - prob.max(1).values[0].numpy()).max() <= 0.5 / 65535 + 1e-6
    assert np.array_equal(folder.histogram(), ref)
    assert folder.confidence("no-such-image") is None


def test_folder_items_are_what_training_reads(made):
    _model, ds, root = made
    folder = PseudoLabelFolder(root)
    target = ds.items("train")[:2]
    items = folder.items(target, with_confidence=True)
    assert [it[:2] for it in items] == [it[:2] for it in target]
    assert [it[2] for it in items] == [root / "labels" / f"{i}.png" for i, _, _ in target]
    assert [it[3] for it in items] == [root / "confidence" / f"{i}.png" for i, _, _ in target]
    assert folder.items(target) == [it[:3] for it in items]
    crop = TrainCrops(items, (48, 96), flip=False)[(0, 0)]  # the whole image: no padding
    np.testing.assert_array_equal(crop["label"].numpy(), read_label(items[0][2]))
    np.testing.assert_array_equal(crop["confidence"].numpy(), read_label(items[0][3]) / np.float32(65535))


def test_open_refuses_what_training_cannot_use(made, tmp_path):
    _model, ds, root = made
    with pytest.raises(DataError, match="does not exist"):
        PseudoLabelFolder.open(tmp_path / "none", ds, "train")
    import shutil

    part = tmp_path / "part"
    shutil.copytree(root, part)
    next(iter(sorted((part / "labels").glob("*.png")))).unlink()
    with pytest.raises(DataError, match="1 target images have no pseudo-label"):
        PseudoLabelFolder.open(part, ds, "train")
    man = json.loads((part / "manifest.json").read_text())
    (part / "manifest.json").write_text(json.dumps({**man, "complete": False}))
    with pytest.raises(DataError, match="incomplete"):
        PseudoLabelFolder.open(part, ds, "train")


def test_prepare_keeps_a_matching_folder_and_clears_another_only_with_force(made, tmp_path):
    _model, _ds, root = made
    import shutil

    copy = tmp_path / "pl"
    shutil.copytree(root, copy)
    folder = PseudoLabelFolder(copy)
    manifest = folder.manifest()
    n_labels = len(list(folder.labels_dir.glob("*.png")))
    folder.prepare(dict(manifest), force=False)  # the same run: kept, to be resumed
    assert len(list(folder.labels_dir.glob("*.png"))) == n_labels and folder.log_path().exists()
    other = {**manifest, "weights": "teacher"}
    with pytest.raises(DataError, match="another weights"):
        PseudoLabelFolder(copy).prepare(other, force=False)
    PseudoLabelFolder(copy).prepare(other, force=True)
    assert not any(folder.labels_dir.glob("*.png")) and folder.labels_dir.is_dir()
    assert not folder.manifest_path.exists() and not folder.prototypes_path.exists() and not folder.all_logs()


def test_the_confidence_encoding_by_hand():
    assert quantize_confidence(torch.tensor([0.0, 0.25, 0.9, 1.0])).tolist() == [0, 16384, 58982, 65535]
    assert stored_confidence(np.array([58982], np.uint16))[0] == np.float32(58982) / np.float32(65535)
    assert CONF_SCALE == 65535
    # bin b's floor is the smallest stored value in bin b: 900 -> ceil(900 * 65.535) = 58982
    assert bin_floor(900) == float(np.float32(58982) / np.float32(65535))
    b = np.arange(1, CONF_BINS)
    floors = -(-b * CONF_SCALE // CONF_BINS)
    assert (confidence_bins(torch.from_numpy(floors)).numpy() == b).all()
    assert (confidence_bins(torch.from_numpy(floors - 1)).numpy() == b - 1).all()


# -- registries ----------------------------------------------------------------------------------------

def test_method_registry_registers_once_and_rejects_a_duplicate():
    assert method_class("self-train", "diga") is DigaSelfTrain
    assert (DigaSelfTrain.name, DigaSelfTrain.stage) == ("diga", "self-train")
    assert set(WARMUP_METHODS.names()) == {"source-only", "diga", "plca", "dacs", "oracle"}
    assert {"diga", "t2s", "dacs", "threshold"} <= set(SELF_TRAIN_METHODS.names())
    with pytest.raises(ValueError, match="registered twice"):
        register_method("self-train", "diga")(type("Other", (Method,), {}))
    assert method_class("self-train", "diga") is DigaSelfTrain  # the refused class did not replace it
    with pytest.raises(UsageError, match=r"unknown self-train method 'dgia' \(did you mean: diga\?\)"):
        method_class("self-train", "dgia")
    reg = Registry("widget")
    reg.register("a")(int)
    reg.register("a")(int)  # the same object again is not a duplicate
    with pytest.raises(ValueError):
        reg.register("a")(float)


def test_arch_registry_holds_each_arch_once():
    assert ARCHS.names() == ["deeplabv2", "deeplabv3plus", "segformer"]
    arch = ARCHS.get("deeplabv2")
    assert "backbone" in arch.keys and arch.resolve_spec({})["backbone"] == "resnet101"
    with pytest.raises(UsageError, match=r"unknown model arch 'segfromer' \(did you mean: segformer\?\)"):
        ARCHS.get("segfromer")


# -- the method interface ------------------------------------------------------------------------------

EXAMPLE = Path(__file__).parent / "example_method"  # one module, one config file: a whole new method

# Runs the CLI as `segadapt ARGS` would with tests/example_method on the methods package's path, as if
# pseudo_ce.py were a file of segadapt/methods/ (a subprocess: the test run's registries stay as shipped)
_WITH_EXAMPLE = """
import sys
import segadapt.methods as M
M.__path__.append(sys.argv[1])
M.discover()
from segadapt.cli.main import run
sys.argv = ["segadapt", *sys.argv[2:]]
run()
"""


def _with_example(*args):
    return subprocess.run([sys.executable, "-c", _WITH_EXAMPLE, str(EXAMPLE), *args], capture_output=True,
                          text=True, timeout=300)


def test_a_new_method_is_one_file_one_config(tiny_bench, tmp_path):
    """tests/example_method/pseudo_ce.py (overriding nothing but training_step) with its config file
    pseudo_ce.yaml runs through the CLI: its losses equal threshold self-training at threshold 0 (which
    keeps every pseudo-label), to the last digit, so the interface's defaults (no folder use, no
    confidence, student only) change nothing; and its typed section refuses a typo like any method's."""
    small = TINY_OVERRIDES + ["data.crop=[32,32]", "data.batch_size=1"]
    run_warmup(config="synthetic/source_only", source=tiny_bench / "source", target=None, out=tmp_path / "wu",
               iters=1, overrides=small)
    ds = PreparedDataset(tiny_bench / "target")
    PL.generate(tmp_path / "wu" / "last.pt", ds, "train", tmp_path / "pl", Protocol(scales=[1.0]), "student", CPU)
    kw = dict(ckpt=tmp_path / "wu" / "last.pt", pseudo_labels=tmp_path / "pl", source=tiny_bench / "source",
              target=tiny_bench / "target", iters=2)
    args = ["self-train", "-c", str(EXAMPLE / "pseudo_ce.yaml"), "--ckpt", str(kw["ckpt"]), "--pseudo-labels",
            str(kw["pseudo_labels"]), "--source", str(kw["source"]), "--target", str(kw["target"]), "--iters", "2",
            *[a for o in small for a in ("--set", o)]]
    typo = _with_example(*args, "--out", str(tmp_path / "typo"), "--set", "pseudo-ce.target_wieght=2")
    assert typo.returncode == 2 and "did you mean: target_weight" in typo.stderr, typo.stderr
    done = _with_example(*args, "--out", str(tmp_path / "plain"))
    assert done.returncode == 0, done.stderr
    run_self_train(config="synthetic/threshold", out=tmp_path / "thr",
                   overrides=small + ["threshold.mode=fixed", "threshold.threshold=0.0"], **kw)
    logs = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    plain, thr = logs(tmp_path / "plain"), logs(tmp_path / "thr")
    assert len(plain) == 2
    assert [r["loss"] for r in plain] == [r["loss"] for r in thr]
    assert [r["loss_tgt"] for r in plain] == [r["loss_tgt"] for r in thr]
    ckpt = load_checkpoint(tmp_path / "plain" / "last.pt")
    assert (ckpt["method"], ckpt["stage"]) == ("pseudo-ce", "self-train")
    assert ckpt["method_state"] == {} and ckpt["teacher"] is None and ckpt["modules"] == {}
    assert ckpt["config"]["pseudo-ce"] == {"target_weight": 1.0}


def test_diga_takes_its_prototypes_from_the_folder(tmp_path):
    student = build_segmenter({"arch": "deeplabv2", "backbone": "tiny", "feat_dim": 8, "pretrained": None}, 2)
    m = DigaSelfTrain({"translator": "none"}, student, 2)
    with pytest.raises(UsageError, match="prototypes.pt"):  # dps without prototypes
        m.use_pseudo_labels(PseudoLabelFolder(tmp_path))
    p0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    PseudoLabelFolder(tmp_path).write_prototypes({"prototypes": p0})
    m.use_pseudo_labels(PseudoLabelFolder(tmp_path))
    assert m.prototypes.dtype == torch.float32 and m.prototypes.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert torch.equal(m.modules()["method_state"].state_dict()["prototypes"], m.prototypes)  # checkpointed
    assert not DigaSelfTrain({"translator": "none", "selection": "none"}, student, 2).needs_confidence


def test_method_state_is_checkpointed_as_buffers():
    s = MethodState(known=torch.tensor([1.0, 2.0]), later=None)
    assert list(s.state_dict()) == ["known"]  # nothing known yet is not saved
    s.load_state_dict({"known": torch.tensor([3.0, 4.0]), "later": torch.tensor([5])})  # fills the unknown
    assert s["known"].tolist() == [3.0, 4.0] and s["later"].tolist() == [5]
    old = MethodState(known=torch.zeros(2), later=None)
    old.load_state_dict({"known": torch.ones(2), "later": None})  # a checkpoint that had nothing there
    assert old["later"] is None and old["known"].tolist() == [1.0, 1.0]
    with pytest.raises(RuntimeError, match="Missing key"):
        MethodState(known=torch.zeros(2)).load_state_dict({})
    with pytest.raises(KeyError):
        s["typo"] = torch.zeros(1)
