"""train.compile: compiling the networks changes no loss and no weight; where compile cannot run, the
run warns once, trains uncompiled and says so in config.yaml."""

import json

import pytest
import torch
import yaml

from conftest import TINY_SET, run_cli
from segadapt.engine import device as dev
from segadapt.engine.runlog import WALL_CLOCK_KEYS
from segadapt.errors import UsageError


def _losses(run):
    """The run log without its wall-clock fields (time, throughput, ETA)."""
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK_KEYS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_compiled_training_gives_the_same_losses_and_weights(tiny_bench, tmp_path):
    # aot_eager: dynamo capture + AOT autograd of student and teacher, without inductor's C++ code
    # generation (minutes on a 2-core machine); the kernels are the eager ones, so the match is exact
    common = ["warmup", "-c", "synthetic/diga_warmup", "--source", tiny_bench / "source", "--target",
              tiny_bench / "target", "--iters", "3", *TINY_SET]
    run_cli(*common, "--out", tmp_path / "eager")
    run_cli(*common, "--out", tmp_path / "compiled", "--set", "train.compile=force",
            "--set", "train.compile_backend=aot_eager")
    assert _losses(tmp_path / "compiled") == _losses(tmp_path / "eager")
    a = torch.load(tmp_path / "eager" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "compiled" / "last.pt", weights_only=True)
    for part in ("model", "teacher"):
        assert a[part].keys() == b[part].keys()  # in-place compile keeps the plain state-dict keys
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    prov = yaml.safe_load((tmp_path / "compiled" / "config.yaml").read_text())["provenance"]
    assert prov["compile"] == "on (aot_eager)"


def test_compile_on_the_cpu_is_skipped_and_recorded(tiny_bench, tmp_path):
    run_cli("warmup", "-c", "synthetic/source_only", "--source", tiny_bench / "source", "--iters", "1",
            *TINY_SET, "--set", "train.compile=true", "--out", tmp_path / "run")
    prov = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["provenance"]
    assert prov["compile"].startswith("off (torch.compile is used on CUDA only")


def test_compile_unavailable_warns_and_stays_uncompiled(monkeypatch, capsys):
    monkeypatch.setattr(dev, "_compile_unavailable", lambda device: "triton is not installed")
    net = torch.nn.Conv2d(3, 4, 1)
    # a CUDA device object is only compared here, never used, so this runs without a GPU
    assert dev.compile_modules([net], True, torch.device("cuda")) == "off (triton is not installed)"
    assert "_compiled_call_impl" not in vars(net) or net._compiled_call_impl is None
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: train.compile asked for but unavailable (triton is not installed); training uncompiled"]


@pytest.mark.parametrize("setting,backend", [("yes please", "inductor"), (True, "tvm")])
def test_bad_compile_settings_are_usage_errors(setting, backend):
    with pytest.raises(UsageError):
        dev.compile_modules([torch.nn.Identity()], setting, torch.device("cuda"), backend)


def test_bad_compile_setting_from_the_cli_exits_2(tiny_bench, tmp_path):
    proc = run_cli("warmup", "-c", "synthetic/source_only", "--source", tiny_bench / "source", "--iters", "1",
                   *TINY_SET, "--set", "train.compile=maybe", "--out", tmp_path / "run", check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "train.compile" in proc.stderr
