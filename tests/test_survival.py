"""Surviving crashes: kill -9 at any moment (also inside a checkpoint write) then --resume gives the
uninterrupted run's losses exactly, and for every training method and stage a final checkpoint whose
every tensor equals the uninterrupted run's (torch.equal); a lock stops two runs writing into one
folder; torchrun with 2 CPU processes evaluates exactly like 1 process and trains the same global batch
along the same loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from segadapt.engine.checkpoint import RunLock, load_checkpoint
from segadapt.engine.runlog import WALL_CLOCK_KEYS
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


# Runs the CLI in a child process that SIGKILLs itself at a chosen moment (argv: WHERE N, then the CLI
# arguments): "write" half-way through the bytes of the N-th checkpoint save, "rename" after its bytes and
# before the rename, "step" right after the N-th optimiser step (mid-iteration: before the EMA update, the
# metrics record and the checkpoint of that iteration).
_KILLER = r"""
import io, os, signal, sys, torch
import segadapt.engine.checkpoint as ck
where, n, saves, steps = sys.argv[1], int(sys.argv[2]), [0], [0]
real_save, real_replace = torch.save, os.replace

def save(obj, f, *a, **k):
    buf = io.BytesIO(); real_save(obj, buf, *a, **k); data = buf.getvalue()
    saves[0] += 1
    if where == "write" and saves[0] == n:
        f.write(data[: len(data) // 2]); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
    f.write(data)

def replace(src, dst):
    if where == "rename" and str(dst).endswith("last.pt") and saves[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)

def stepped(optimizer, args, kwargs):
    steps[0] += 1
    if where == "step" and steps[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)

from torch.optim.optimizer import register_optimizer_step_post_hook
ck.torch.save, ck.os.replace = save, replace
register_optimizer_step_post_hook(stepped)
from segadapt.cli.main import run
sys.argv = ["segadapt", *sys.argv[3:]]
run()
"""


def run_killed(where: str, n: int, args) -> subprocess.CompletedProcess:
    """The CLI with ``args``, SIGKILLed by itself at ``where`` ``n`` (see _KILLER); asserts it died so.
    The child uses as many threads as this process, so its arithmetic is the same as an in-process run's."""
    env = dict(os.environ, SEGADAPT_QUIET="1", OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run([sys.executable, "-c", _KILLER, where, str(n), *map(str, args)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return proc


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds spin-waiting on a busy machine (see test_plca.py).
    The killed children get the same count (run_killed), so their arithmetic is this process's."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tiny_bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    run_warmup(out=out, **_kw(tiny_bench))
    return _losses(out)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["write", "rename"])
def test_kill_9_inside_a_checkpoint_write_then_resume_is_exact(tiny_bench, tmp_path, reference, where):
    out = tmp_path / "run"
    run_killed(where, 2, _cli_args(tiny_bench, out))
    # the first checkpoint (iteration 2) survived intact; the cut second one left only a temporary file
    assert load_checkpoint(out / "last.pt")["iteration"] == 2
    assert list(out.glob(".last.pt.*.tmp"))
    run_warmup(out=out, resume=True, **_kw(tiny_bench))
    assert _losses(out) == reference
    assert not list(out.glob(".last.pt.*.tmp"))


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_resume_is_exact(tiny_bench, tmp_path, reference):
    out = tmp_path / "run"
    env = dict(os.environ, SEGADAPT_QUIET="1", OMP_NUM_THREADS=str(torch.get_num_threads()))  # as the reference
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
    p1 = torch.load(tmp_path / "pl1/prototypes.pt", weights_only=True)
    p2 = torch.load(tmp_path / "pl2/prototypes.pt", weights_only=True)
    assert torch.equal(p1["counts"], p2["counts"]) and torch.equal(p1["images"], p2["images"])
    assert torch.allclose(p1["prototypes"], p2["prototypes"], atol=1e-6)
    m1 = json.loads((tmp_path / "pl1/manifest.json").read_text())
    m2 = json.loads((tmp_path / "pl2/manifest.json").read_text())
    assert m2["complete"] and m1["class_pixels"] == m2["class_pixels"]


# -- every training method and stage: SIGKILL at a seeded random moment, --resume, bit-identical weights --

# checkpoints after iterations 3 and 6 (ckpt_every=3) and the final one at 7. Odd on purpose: the EMA
# teacher's normalisation constants (issue 15) first drifted by rounding in the update after iteration 2,
# so a run resumed from iteration 2 or 4 could not show that they were lost
RESUME_ITERS, RESUME_EVERY = 7, 3
_SMALL = ["data.crop=[32,32]", "data.batch_size=2", "model.feat_dim=16", "train.log_every=1",
          f"train.ckpt_every={RESUME_EVERY}"]
_T2S_SMALL = ["t2s.num_queries=16", "t2s.num_negatives=8", "t2s.proj_dim=8"]
_TRANSLATOR_SMALL = ["data.crop=[32,32]", "generator.ngf=4", "generator.n_res=1", "discriminator.ndf=4",
                     "discriminator.scales=1", "train.log_every=1", f"train.ckpt_every={RESUME_EVERY}"]

# (stage, method, packaged config, extra overrides, data.workers of the killed and resumed run); the
# reference always runs with workers 0, so a case with 2 also checks that batches ignore the worker count
RESUME_CASES = [
    ("warmup", "source-only", "synthetic/source_only", [], 0),
    pytest.param("warmup", "diga", "synthetic/diga_warmup", [], 2, marks=pytest.mark.slow),
    ("warmup", "plca", "synthetic/plca", [], 0),
    ("warmup", "dacs", "synthetic/dacs", [], 0),
    ("warmup", "oracle", "synthetic/oracle", [], 0),
    ("self-train", "diga", "synthetic/diga_self_train", ["diga.selection=dps"], 0),  # prototypes move every step
    pytest.param("self-train", "t2s", "synthetic/t2s", _T2S_SMALL, 2, marks=pytest.mark.slow),
    ("self-train", "threshold", "synthetic/threshold", ["threshold.class_mix=true"], 0),
    ("self-train", "dacs", "synthetic/dacs", [], 0),
    ("translator", "cyclegan", "synthetic/translator", [], 0),
]


@pytest.mark.parametrize("arch", ["deeplabv2", "deeplabv3plus", "segformer"])
def test_a_teacher_rebuilt_from_its_state_dict_is_the_teacher(arch):
    """Resume rebuilds every module from its state dict, so nothing a module computes with may live
    outside it. Issue 15: the normalisation constants were non-persistent buffers, the EMA update averaged
    them (0.229 drifted by 1.5e-8 after 3 updates) and a resumed run got the exact constants back."""
    from segadapt.engine.ema import ema_alpha, ema_update, make_teacher
    from segadapt.models.segmenter import build_segmenter

    torch.manual_seed(0)
    backbone = {"deeplabv2": "tiny", "deeplabv3plus": "resnet18", "segformer": "mit_b0"}[arch]
    spec = {"arch": arch, "backbone": backbone, "feat_dim": 16, "pretrained": None}
    student = build_segmenter(spec, 3)
    teacher = make_teacher(student)
    x = torch.rand(2, 3, 32, 32)
    for it in range(3):  # BN statistics move, the EMA averages parameters and buffers
        student.train()
        with torch.no_grad():
            student(x)
            for p in student.parameters():
                p.mul_(1.01)
        ema_update(teacher, student, ema_alpha(it, 0.99))
    rebuilt = make_teacher(build_segmenter(spec, 3))
    rebuilt.load_state_dict(teacher.state_dict())
    state = dict(teacher.state_dict())
    for name, t in list(teacher.named_parameters()) + list(teacher.named_buffers()):
        assert name in state, f"{name} is not in the state dict: a resumed run would lose it"
        assert torch.equal(dict(rebuilt.named_parameters(), **dict(rebuilt.named_buffers()))[name], t), name
    teacher.eval(), rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(teacher(x)["logits"], rebuilt(x)["logits"])


def kill_moment(case: str, steps_per_iter: int = 1) -> tuple[str, int]:
    """A seeded "random" moment to die at, different per case: inside an iteration right after its
    (first) optimiser step, from iteration 3 on so that a checkpoint exists to resume from, or inside the
    2nd or the final checkpoint write (cut bytes, or complete bytes not yet renamed)."""
    import random

    rng = random.Random(case)
    where = rng.choice(["step", "step", "write", "rename"])
    if where == "step":
        return where, rng.randint(RESUME_EVERY * steps_per_iter + 1, RESUME_ITERS * steps_per_iter)
    return where, rng.randint(2, 3)


@pytest.fixture(scope="module")
def warm_and_pseudo(tiny_bench, tmp_path_factory):
    """A warm-up checkpoint and its pseudo-labels (labels, confidence, prototypes) for the self-training cases."""
    from segadapt.data.prepared import PreparedDataset
    from segadapt.engine import pseudo_label as PL
    from segadapt.engine.inference import Protocol

    d = tmp_path_factory.mktemp("selftrain")
    run_warmup(config="synthetic/source_only", source=tiny_bench / "source", target=None, out=d / "wu", iters=1,
               overrides=_SMALL)
    PL.generate(d / "wu" / "last.pt", PreparedDataset(tiny_bench / "target"), "train", d / "pl",
                Protocol(scales=[1.0]), "student", torch.device("cpu"))
    return d / "wu" / "last.pt", d / "pl"


def _stage_call(stage, method, config, overrides, bench, out, warm):
    """(in-process runner taking out/resume, CLI arguments) of one case."""
    from segadapt.pipeline import run_self_train
    from segadapt.translation.train import run_train_translator

    if stage == "translator":
        over = _TRANSLATOR_SMALL + overrides
        kw = dict(config=config, source=bench / "source", target=bench / "target", overrides=over,
                  iters=RESUME_ITERS)
        cli = ["train-translator", "-c", config, "--source", bench / "source", "--target", bench / "target"]
        fn = run_train_translator
    elif stage == "warmup":
        over = _SMALL + overrides
        source = bench / ("target" if method == "oracle" else "source")  # the oracle trains on target labels
        target = None if method in ("source-only", "oracle") else bench / "target"
        kw = dict(config=config, source=source, target=target, overrides=over, method=method, iters=RESUME_ITERS)
        cli = ["warmup", "-c", config, "--source", source, "--method", method]
        cli += ["--target", target] if target is not None else []
        fn = run_warmup
    else:
        ckpt, pl = warm
        over = _SMALL + overrides
        kw = dict(config=config, ckpt=ckpt, pseudo_labels=pl, source=bench / "source", target=bench / "target",
                  overrides=over, method=method, iters=RESUME_ITERS)
        cli = ["self-train", "-c", config, "--ckpt", ckpt, "--pseudo-labels", pl, "--source", bench / "source",
               "--target", bench / "target", "--method", method]
        fn = run_self_train
    cli += ["--out", out, "--iters", RESUME_ITERS, *[a for o in over for a in ("--set", o)]]
    return (lambda out, **more: fn(out=out, **kw, **more)), cli, over


def _tensors(ckpt: dict) -> dict:
    """Every tensor a checkpoint holds about the training state, by a dotted path."""
    flat = {}

    def walk(x, path):
        if isinstance(x, torch.Tensor):
            flat[path] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}.{k}")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")

    for key in ("model", "teacher", "modules", "method_state", "optimizer", "scaler", "rng"):
        walk(ckpt.get(key), key)
    return flat


def _records(run):
    """The run log without its wall-clock fields (time, throughput, ETA, GPU memory)."""
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK_KEYS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("stage,method,config,extra,workers", RESUME_CASES,
                         ids=[f"{v[0]}-{v[1]}{'-workers2' if v[4] else ''}"
                              for v in (getattr(c, "values", c) for c in RESUME_CASES)])
def test_sigkill_then_resume_gives_bit_identical_weights(tiny_bench, request, tmp_path, stage, method, config, extra,
                                                         workers):
    warm = request.getfixturevalue("warm_and_pseudo") if stage == "self-train" else None
    run, _, _ = _stage_call(stage, method, config, extra, tiny_bench, tmp_path / "ref", warm)
    run(tmp_path / "ref")  # the uninterrupted run, with data.workers 0
    ref = load_checkpoint(tmp_path / "ref" / "last.pt")

    extra = extra + [f"data.workers={workers}"]
    run, cli, _ = _stage_call(stage, method, config, extra, tiny_bench, tmp_path / "cut", warm)
    where, n = kill_moment(f"{stage}/{method}", steps_per_iter=2 if stage == "translator" else 1)
    run_killed(where, n, cli)
    killed_at = load_checkpoint(tmp_path / "cut" / "last.pt")["iteration"]
    assert killed_at in (RESUME_EVERY, 2 * RESUME_EVERY)  # an earlier checkpoint survived, whatever the kill cut
    run(tmp_path / "cut", resume=True)

    got = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert got["iteration"] == ref["iteration"] == RESUME_ITERS
    a, b = _tensors(ref), _tensors(got)
    assert a.keys() == b.keys() and any(k.startswith("model") or k.startswith("modules") for k in a)
    differ = [k for k in a if not (a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and torch.equal(a[k], b[k]))]
    assert not differ, f"killed at {where} {n} (resumed from {killed_at}); differ: {differ[:5]}"
    assert _records(tmp_path / "cut") == _records(tmp_path / "ref")
    assert not list((tmp_path / "cut").glob(".*.tmp"))


def test_resume_takes_the_thread_count_the_run_started_with(tmp_path):
    """1 and 2 CPU threads round differently (issue 15), so the RNG state a checkpoint carries holds the
    count and a resumed run takes it; stale temporaries of cut checkpoint copies are removed on resume."""
    from segadapt.engine.checkpoint import rng_state, set_rng_state
    from segadapt.engine.trainer import prepare_run_dir

    before = torch.get_num_threads()
    try:
        state = rng_state()
        assert state["threads"] == before and state["torch_version"] == str(torch.__version__)
        set_rng_state({**state, "threads": before + 1})
        assert torch.get_num_threads() == before + 1
        x = torch.rand(3)
        set_rng_state(state)  # the generator too: the same draws again
        assert torch.get_num_threads() == before and torch.equal(torch.rand(3), x)
    finally:
        torch.set_num_threads(before)
    (tmp_path / "last.pt").write_bytes(b"x")
    cut = [tmp_path / ".last.pt.ab12.tmp", tmp_path / ".iter_0000003.pt.cd34.tmp"]
    for f in cut:
        f.write_bytes(b"half")
    assert prepare_run_dir(tmp_path, resume=True, force=False)
    assert not any(f.exists() for f in cut) and (tmp_path / "last.pt").exists()
