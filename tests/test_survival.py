"""Surviving crashes: kill -9 at any moment (also inside a checkpoint write) then --resume gives the
uninterrupted run's losses exactly; a lock stops two runs writing into one folder; torchrun with 2
CPU processes evaluates exactly like 1 process and trains the same global batch along the same loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from segadapt.engine.checkpoint import RunLock, load_checkpoint
from segadapt.pipeline import run_warmup

from conftest import TINY_OVERRIDES, TINY_SET, run_cli

ITERS = 6


def _losses(run):
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _kw(tiny_bench):
    return dict(config="synthetic/diga_warmup", source=tiny_bench / "source", target=tiny_bench / "target",
                overrides=TINY_OVERRIDES, iters=ITERS)


def _cli_args(tiny_bench, out):
    return ["warmup", "-c", "synthetic/diga_warmup", "--source", tiny_bench / "source", "--target",
            tiny_bench / "target", "--out", out, "--iters", ITERS, *TINY_SET]


# Runs the CLI in a child process after patching the checkpoint writer to SIGKILL itself during the
# second checkpoint save: half-way through the bytes ("write") or after the bytes, before the rename.
_KILLER = r"""
import io, os, signal, sys, torch
import segadapt.engine.checkpoint as ck
where, saves, real_save, real_replace = sys.argv[1], [0], torch.save, os.replace

def save(obj, f, *a, **k):
    buf = io.BytesIO(); real_save(obj, buf, *a, **k); data = buf.getvalue()
    saves[0] += 1
    if where == "write" and saves[0] == 2:
        f.write(data[: len(data) // 2]); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
    f.write(data)

def replace(src, dst):
    if where == "rename" and str(dst).endswith("last.pt") and saves[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

ck.torch.save, ck.os.replace = save, replace
from segadapt.cli.main import run
sys.argv = ["segadapt", *sys.argv[2:]]
run()
"""


@pytest.fixture(scope="module")
def reference(tiny_bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run_warmup(out=out, **_kw(tiny_bench))
    return _losses(out)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["write", "rename"])
def test_kill_9_inside_a_checkpoint_write_then_resume_is_exact(tiny_bench, tmp_path, reference, where):
    out = tmp_path / "run"
    env = dict(os.environ, SEGADAPT_QUIET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _KILLER, where, *map(str, _cli_args(tiny_bench, out))],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == -signal.SIGKILL
    # the first checkpoint (iteration 2) survived intact; the cut second one left only a temporary file
    assert load_checkpoint(out / "last.pt")["iteration"] == 2
    assert list(out.glob(".last.pt.*.tmp"))
    run_warmup(out=out, resume=True, **_kw(tiny_bench))
    assert _losses(out) == reference
    assert not list(out.glob(".last.pt.*.tmp"))


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_resume_is_exact(tiny_bench, tmp_path, reference):
    out = tmp_path / "run"
    env = dict(os.environ, SEGADAPT_QUIET="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "segadapt", *map(str, _cli_args(tiny_bench, out))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        log = out / "metrics.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    run_warmup(out=out, resume=True, **_kw(tiny_bench))
    assert _losses(out) == reference


def test_a_second_run_into_a_locked_folder_is_refused(tiny_bench, tmp_path):
    out = tmp_path / "run"
    # another process holds the lock (flock locks are per open file, so a child process is the other run)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom segadapt.engine.checkpoint import "
                               "RunLock\nRunLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(60)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = run_cli(*_cli_args(tiny_bench, out), check=False)
        assert proc.returncode == 1
        assert "another segadapt run (host" in proc.stderr and "is writing into" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (out / "last.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died (as after kill -9): its lock died with it
    lock = RunLock(out).acquire()
    lock.release()


def _torchrun(*args, port):
    env = dict(os.environ, SEGADAPT_QUIET="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "-m", "segadapt", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)  # a hung group fails
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_processes_evaluate_exactly_and_train_along_the_same_loss(tiny_bench, tmp_path):
    kw = _kw(tiny_bench)
    kw["overrides"] = TINY_OVERRIDES + ["data.batch_size=4"]
    run_warmup(out=tmp_path / "one", **kw)
    one = _losses(tmp_path / "one")
    port = 29500 + os.getpid() % 500
    _torchrun(*_cli_args(tiny_bench, tmp_path / "two"), "--set", "data.batch_size=4", port=port)
    two = _losses(tmp_path / "two")
    assert len(two) == len(one) == ITERS
    # same global batch (2 crops per process), same start: the curves agree to a fraction of a percent
    # (BatchNorm statistics are per process without SyncBN, and each process draws its own mixing masks)
    assert two[0] == pytest.approx(one[0], rel=5e-3)
    assert two[-1] == pytest.approx(one[-1], rel=2e-2)
    assert two[-1] < two[0]

    ckpt = tmp_path / "one" / "last.pt"
    args = ["evaluate", "--ckpt", ckpt, "--data", tiny_bench / "target", "--split", "train", "--json"]
    single = json.loads(run_cli(*args).stdout)
    double = json.loads(_torchrun(*args, port=port + 1).stdout)
    assert double["per_class"] == single["per_class"] and double["miou"] == single["miou"]
    assert double["num_images"] == single["num_images"] == 8

    # pseudo-labelling split over 2 processes: the same files and the same prototypes
    pl = ["pseudo-label", "--ckpt", ckpt, "--data", tiny_bench / "target", "--split", "train"]
    run_cli(*pl, "--out", tmp_path / "pl1")
    _torchrun(*pl, "--out", tmp_path / "pl2", port=port + 2)
    names = sorted(p.name for p in (tmp_path / "pl1/labels").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "pl2/labels").iterdir()) and len(names) == 8
    for n in names:
        for sub in ("labels", "confidence"):
            assert (tmp_path / "pl1" / sub / n).read_bytes() == (tmp_path / "pl2" / sub / n).read_bytes()
    import torch

    p1 = torch.load(tmp_path / "pl1/prototypes.pt", weights_only=True)
    p2 = torch.load(tmp_path / "pl2/prototypes.pt", weights_only=True)
    assert torch.equal(p1["counts"], p2["counts"]) and torch.equal(p1["images"], p2["images"])
    assert torch.allclose(p1["prototypes"], p2["prototypes"], atol=1e-6)
    m1 = json.loads((tmp_path / "pl1/manifest.json").read_text())
    m2 = json.loads((tmp_path / "pl2/manifest.json").read_text())
    assert m2["complete"] and m1["class_pixels"] == m2["class_pixels"]
