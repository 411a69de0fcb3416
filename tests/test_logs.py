"""Logs people can watch: throughput / ETA of each logging window (hand-computed clock), the
TensorBoard mirror of metrics.jsonl (read back from the event files: each step once, the log's
values, also across a resume that re-runs logged steps), and the usage errors of the log section."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from segadapt.engine import runlog
from segadapt.engine.loop import run_iterations
from segadapt.engine.runlog import WALL_CLOCK_KEYS, WindowMeter, check_log_config
from segadapt.errors import DataError, UsageError

from conftest import TINY_OVERRIDES, run_cli


def test_window_meter_throughput_and_eta_from_a_fake_clock(monkeypatch):
    clock = iter([100.0, 102.0, 110.0])
    monkeypatch.setattr(runlog.time, "perf_counter", lambda: next(clock))
    meter = WindowMeter(start=4, iters=10, batch_size=2)  # resumed at iteration 4 of 10, global batch 2
    # iterations 4 and 5 in 2 s: 2 x 2 images / 2 s; 1 s per iteration, iterations 6..9 left
    assert meter.window(5) == {"img_per_s": 2.0, "eta_s": 4.0}
    # iterations 6..9 in 8 s: 4 x 2 / 8; the last record: nothing left
    assert meter.window(9) == {"img_per_s": 1.0, "eta_s": 0.0}


def test_window_meter_peak_gpu_memory_is_per_window(monkeypatch):
    """No GPU here: torch.cuda's counters are replaced by a fake that keeps a peak and resets it."""
    import torch

    peak, resets = [0], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: peak[0])
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: (resets.append(device),
                                                                                   peak.__setitem__(0, 0)))
    meter = WindowMeter(start=0, iters=4, batch_size=1, device="cuda:0")
    assert resets == [torch.device("cuda:0")]  # the first window starts clean
    peak[0] = 3 * 2**20 + 2**19  # 3.5 MiB
    assert meter.window(1)["gpu_mem_peak_mib"] == 3.5
    peak[0] = max(peak[0], 2**20)  # the counter was reset: the next window sees its own 1 MiB only
    assert meter.window(3)["gpu_mem_peak_mib"] == 1.0 and len(resets) == 3
    assert "gpu_mem_peak_mib" not in WindowMeter(0, 4, 1, device="cpu").window(0)


def test_log_section_errors(monkeypatch):
    check_log_config({"log": {"tensorboard": False}})
    check_log_config({})  # configs from before the log section
    with pytest.raises(UsageError, match="true or false"):
        check_log_config({"log": {"tensorboard": "yes"}})
    with pytest.raises(UsageError, match="must be a section"):
        check_log_config({"log": True})
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    with pytest.raises(UsageError, match=r"segadapt\[tensorboard\]") as e:
        check_log_config({"log": {"tensorboard": True}})
    assert "\n" not in str(e.value)


def test_missing_tensorboard_is_a_usage_error_before_training(tiny_bench, tmp_path):
    fake = tmp_path / "no_tb"  # a tensorboard package that cannot be imported, ahead of the real one
    (fake / "tensorboard").mkdir(parents=True)
    (fake / "tensorboard" / "__init__.py").write_text("raise ImportError(\"No module named 'tensorboard'\")\n")
    import os

    env = {"PYTHONPATH": os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli("warmup", "-c", "synthetic/source_only", "--source", tiny_bench / "source", "--out",
                   tmp_path / "run", "--iters", 2, "--set", "log.tensorboard=true", check=False, env=env)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "segadapt[tensorboard]" in proc.stderr
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# -- reading the event files back -------------------------------------------------------------------

def _raw_events(folder):
    """(tag, step, value) of every scalar in every event file of ``folder``, as stored."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

    out = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():  # the records as written, no conversion
            for v in event.summary.value:
                assert v.WhichOneof("value") == "simple_value"
                out.append((v.tag, event.step, v.simple_value))
    return out


def _accumulated(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _assert_mirrors(run):
    """Each (tag, step) once in the files and in TensorBoard's reader, with metrics.jsonl's value."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    expected = {(k, r["iter"]): np.float32(v) for r in records for k, v in r.items()
                if k != "iter" and isinstance(v, (int, float))}
    raw = _raw_events(run / "tensorboard")
    assert len(raw) == len(expected) and {(t, s) for t, s, _ in raw} == set(expected)
    assert all(np.float32(v) == expected[(t, s)] for t, s, v in raw)
    acc = _accumulated(run / "tensorboard")
    assert sorted(acc) == sorted({k for k, _ in expected})
    for tag, points in acc.items():
        assert [s for s, _ in points] == sorted(s for t, s in expected if t == tag)
        assert all(np.float32(v) == expected[(tag, s)] for s, v in points)
    return records


def _fake_step(fail_at=None):
    def step(it, _stop):
        if it == fail_at:
            raise RuntimeError("killed")  # as a crash: no save, records up to it - 1 are in the log
        return 0.1 / (it + 1), {"loss": 1.0 / (it + 3), "loss_aux": float(it) ** 0.5}, False
    return step


def test_tensorboard_mirror_has_each_step_once_across_a_resume_that_repeats_steps(tmp_path):
    pytest.importorskip("tensorboard")
    kw = dict(iters=8, save=lambda it: None, log_every=1, ckpt_every=100, label="t", info=lambda g: "",
              in_update=lambda: False, batch_size=4, tensorboard=True)
    with pytest.raises(RuntimeError):
        run_iterations(_fake_step(fail_at=6), start=0, out=tmp_path, **kw)
    assert [s for t, s, _ in _raw_events(tmp_path / "tensorboard") if t == "loss"] == [0, 1, 2, 3, 4, 5]
    # the last checkpoint was at iteration 3: steps 3, 4, 5 run (and are logged) a second time
    run_iterations(_fake_step(), start=3, out=tmp_path, **kw)
    records = _assert_mirrors(tmp_path)
    assert [r["iter"] for r in records] == list(range(8))
    assert [r["loss"] for r in records] == [1.0 / (i + 3) for i in range(8)]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert all(r["img_per_s"] > 0 and r["eta_s"] >= 0 for r in records)
    assert records[-1]["eta_s"] == 0.0
    # a fresh start (start 0, as --force) drops the old curves with the old log
    run_iterations(_fake_step(), start=0, out=tmp_path, **{**kw, "iters": 2})
    assert [r["iter"] for r in _assert_mirrors(tmp_path)] == [0, 1]
    # and so does a fresh start with the mirror off: no curves of another run stay beside the log
    run_iterations(_fake_step(), start=0, out=tmp_path, **{**kw, "iters": 2, "tensorboard": False})
    assert not list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_warmup_switches_tensorboard_on_at_resume_and_back_fills_it(tiny_bench, tmp_path, monkeypatch):
    """A run started without TensorBoard (or by an older version) may resume with it: the log settings
    are not part of the resume check, and the mirror starts with the records already logged."""
    pytest.importorskip("tensorboard")
    from segadapt.engine.trainer import Trainer
    from segadapt.pipeline import run_warmup

    kw = dict(config="synthetic/source_only", source=tiny_bench / "source", target=None, out=tmp_path / "run",
              iters=4)
    original = Trainer._step

    def interrupted(self, batch, it):
        if it == 3:
            raise KeyboardInterrupt  # Ctrl-C in the forward pass: iterations 0..2 are saved
        return original(self, batch, it)

    monkeypatch.setattr(Trainer, "_step", interrupted)
    with pytest.raises(DataError, match="interrupted at iteration 3"):
        run_warmup(overrides=TINY_OVERRIDES, **kw)
    monkeypatch.setattr(Trainer, "_step", original)
    assert not (tmp_path / "run" / "tensorboard").exists()
    run_warmup(overrides=TINY_OVERRIDES + ["log.tensorboard=true"], resume=True, **kw)
    records = _assert_mirrors(tmp_path / "run")
    assert [r["iter"] for r in records] == [0, 1, 2, 3]
    assert set(WALL_CLOCK_KEYS) - {"gpu_mem_peak_mib"} <= set(records[0])  # no CUDA here
