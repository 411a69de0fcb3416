"""benchmarks/gpu_check.sh: the CPU dry run goes through every step (so the script cannot rot between
GPU sessions), and without CUDA it refuses with one line and exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(out, **env):
    e = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **env)
    return subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True, env=e, timeout=900)


def test_without_cuda_it_refuses_with_one_line(tmp_path):
    proc = _run(tmp_path / "out")  # DEVICE defaults to cuda; this machine has none
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gpu_check: no CUDA GPU is visible here; run it on a GPU machine, or DEVICE=cpu TINY=1 for the CPU dry run"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cpu_dry_run_measures_every_step(tmp_path):
    out = tmp_path / "out"
    proc = _run(out, DEVICE="cpu", TINY="1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    # model 1: 4 methods in fp32 and bf16 + channels_last, and one compiled; model 2: one method in
    # fp32 and bf16 + channels_last
    got = {(r["arch"], r["method"], r["amp"], r["channels_last"], r["compile"]) for r in rows}
    for amp, cl in (("off", False), ("bf16", True)):
        for m in ("warmup:diga", "self-train:diga", "warmup:plca", "self-train:t2s"):
            assert ("deeplabv2", m, amp, cl, False) in got
    assert ("deeplabv2", "warmup:diga", "bf16", True, "aot_eager") in got
    assert {g for g in got if g[0] == "segformer"} == {("segformer", "warmup:diga", "off", False, False),
                                                       ("segformer", "warmup:diga", "bf16", True, False)}
    assert len(rows) == 11
    assert all(r["s_per_step"] > 0 and r["images_per_s"] == pytest.approx(r["batch"] / r["s_per_step"])
               and r["peak_gib"] > 0 for r in rows)
    infer = json.loads((out / "infer.json").read_text())
    for stage in ("pseudo_label", "evaluate"):
        assert infer[stage]["images"] == 4 and infer[stage]["size"] == "256x128"
        assert infer[stage]["images_per_s"] == pytest.approx(4 / infer[stage]["seconds"])
    # the printed table has one line per measured row, and names the skipped multi-GPU check
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "x 2 |" in line]
    assert len(table) == len(rows)
    assert "torchrun 2 processes (NCCL): skipped" in proc.stdout
