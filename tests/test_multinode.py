"""Multi-node launches: ``torchrun --nnodes=2`` as two local agents (one process each, loopback only,
gloo) evaluate exactly like one process and train along the same losses as a single-node 2-process
run, with rank 0 of the whole job alone printing and writing into the shared output folder. Where the
GPU of a process comes from: LOCAL_RANK on its node, not the global RANK."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from segadapt.errors import UsageError
from segadapt.pipeline import run_warmup

from test_survival import ITERS, _cli_args, _kw, _losses, _torchrun

TIMEOUT_S = 240  # a hung rendezvous fails the test instead of hanging it (the whole test takes ~1 min)


def _free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 right now (all held open together, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _loopback_env() -> dict:
    env = dict(os.environ, SEGADAPT_QUIET="1", OMP_NUM_THREADS="1")
    names = {name for _, name in socket.if_nameindex()} if hasattr(socket, "if_nameindex") else set()
    for lo in ("lo", "lo0"):  # gloo's own connections on loopback too, not on the host name's address
        if lo in names:
            env["GLOO_SOCKET_IFNAME"] = lo
            break
    return env


def _children(pid: int) -> list[int]:
    found = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(x) for x in f.read_text().split()]
        except OSError:
            pass
    return found


class TwoNodes:
    """Two torchrun agents, node ranks 0 and 1, one process each, meeting on 127.0.0.1:port either
    through the c10d rendezvous (as on SLURM) or the static --master_addr/--master_port form."""

    def __init__(self, args, port: int, rendezvous: str, logs: Path):
        if rendezvous == "c10d":
            meet = ["--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=segadapt-test-{port}"]
        else:
            meet = ["--master_addr=127.0.0.1", f"--master_port={port}"]
        self.logs, self.agents = logs, []
        logs.mkdir(parents=True, exist_ok=True)
        env = _loopback_env()
        for r in (0, 1):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                   f"--node_rank={r}", *meet, "-m", "segadapt", *map(str, args)]
            with open(logs / f"node{r}.out", "w") as out, open(logs / f"node{r}.err", "w") as err:
                self.agents.append(subprocess.Popen(cmd, stdout=out, stderr=err, env=env))

    def _tails(self) -> str:
        return "\n".join(f"--- node {r} stderr:\n{(self.logs / f'node{r}.err').read_text()[-2000:]}" for r in (0, 1))

    def wait(self, timeout: float = TIMEOUT_S) -> list[str]:
        """Each agent's stdout once both exit 0; on a failure or a timeout both are killed first."""
        deadline = time.monotonic() + timeout
        while any(a.poll() is None for a in self.agents):
            failed = [a for a in self.agents if a.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                self.stop()
                why = f"exit {failed[0].returncode}" if failed else f"no result in {timeout:.0f} s (hung rendezvous?)"
                raise AssertionError(f"torchrun --nnodes=2: {why}\n{self._tails()}")
            time.sleep(0.2)
        if any(a.returncode != 0 for a in self.agents):
            raise AssertionError(f"torchrun --nnodes=2 failed {[a.returncode for a in self.agents]}\n{self._tails()}")
        return [(self.logs / f"node{r}.out").read_text() for r in (0, 1)]

    def stop(self) -> None:
        """Kill both agents and their workers (torchrun starts workers in sessions of their own, so
        killing the agent's process group would miss them)."""
        for a in self.agents:
            if a.poll() is None:
                workers = _children(a.pid)
                a.kill()
                for pid in workers:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                a.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _without_time(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "seconds"}


@pytest.mark.slow
def test_two_nodes_train_like_two_processes_and_evaluate_exactly(tiny_bench, tmp_path):
    """Training: the single-node 2-process run is the reference (it follows one process along the
    loss: test_survival); two nodes x 1 process hold the same ranks, the same data slices and the same
    all-reduces, so the same losses, to the last bit. Evaluate: the split's images sharded over the two
    nodes give one process's scores and confusion matrix exactly.

    The three launches and the one-process runs go at the same time (start-up, mostly importing
    torch, is most of a launch's cost), so the test costs about one launch."""
    from typer.testing import CliRunner

    from segadapt.cli.main import app

    kw = _kw(tiny_bench)
    kw["overrides"] = kw["overrides"] + ["data.batch_size=4"]
    bs4 = ["--set", "data.batch_size=4"]
    ev = ["evaluate", "--ckpt", tmp_path / "one" / "last.pt", "--data", tiny_bench / "target", "--split", "train",
          "--json", "--save-matrix"]
    p_single, p_train, p_eval = _free_ports(3)
    with ThreadPoolExecutor(1) as pool, \
            TwoNodes([*_cli_args(tiny_bench, tmp_path / "nodes"), *bs4], p_train, "c10d", tmp_path / "log_t") as train:
        single_node = pool.submit(_torchrun, *_cli_args(tiny_bench, tmp_path / "two"), *bs4, port=p_single)
        run_warmup(out=tmp_path / "one", **kw)  # one process, here, while the two launches start
        with TwoNodes([*ev, tmp_path / "m2.json"], p_eval, "static", tmp_path / "log_e") as evaluate:
            res = CliRunner().invoke(app, [*map(str, ev), str(tmp_path / "m1.json")])  # one process, here
            train_out, eval_out = train.wait(), evaluate.wait()
        single_node.result(timeout=TIMEOUT_S)

    one = _losses(tmp_path / "one")
    two, nodes = _losses(tmp_path / "two"), _losses(tmp_path / "nodes")
    assert len(nodes) == len(two) == ITERS
    assert nodes == two
    for key in ("loss_ce", "loss_ce_mixed", "loss_skd"):  # every term, not only the sum
        rows = [[json.loads(line)[key] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
                for run in ("nodes", "two")]
        assert rows[0] == rows[1]
    # and so along one process's loss (tolerances and why: test_survival)
    assert nodes[0] == pytest.approx(one[0], rel=5e-3) and nodes[-1] == pytest.approx(one[-1], rel=2e-2)
    # rank 0 of the job alone wrote (one run's files, no rank's temp files) and printed its result;
    # with c10d the rendezvous, not --node_rank, decides which agent holds rank 0
    assert sorted(p.name for p in (tmp_path / "nodes").iterdir()) == sorted(p.name for p in (tmp_path / "two").iterdir())
    printed = [o for o in train_out if o.strip()]
    assert len(printed) == 1 and json.loads(printed[0])["iterations"] == ITERS
    w_nodes = torch.load(tmp_path / "nodes/last.pt", weights_only=True)["model"]
    w_two = torch.load(tmp_path / "two/last.pt", weights_only=True)["model"]
    assert w_nodes.keys() == w_two.keys() and all(torch.equal(w_nodes[k], w_two[k]) for k in w_nodes)

    assert res.exit_code == 0, res.output
    single = json.loads(res.stdout.strip().splitlines()[-1])  # the last line (older click mixes in stderr)
    assert eval_out[1] == ""  # static rendezvous: node 0 holds rank 0; node 1 printed nothing
    double = json.loads(eval_out[0])
    assert double["num_images"] == single["num_images"] == 8
    assert double["per_class"] == single["per_class"] and double["miou"] == single["miou"]
    assert _without_time(double) == _without_time(single)
    m1, m2 = (json.loads((tmp_path / f"m{i}.json").read_text()) for i in (1, 2))
    assert m1["matrix"] == m2["matrix"] and m1["missed"] == m2["missed"] and sum(map(sum, m1["matrix"])) > 0


def test_the_gpu_comes_from_local_rank_not_the_global_rank(monkeypatch):
    """Second node of a 2 x 2 GPU job: RANK 3 is that node's process 1 and uses its GPU 1; a node
    given more processes than GPUs is a one-line usage error, not CUDA's 'invalid device ordinal'."""
    from segadapt.engine.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("GROUP_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(UsageError, match="LOCAL_RANK=2 but this node has 2 GPU"):
        resolve_device("auto")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(UsageError, match="LOCAL_RANK"):
        resolve_device("auto")
