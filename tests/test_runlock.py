"""The run lock (filelock, portable): a folder held by a live process is refused with a one-line
error naming the folder and the holder; a holder killed with SIGKILL blocks nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from segadapt.engine.checkpoint import RunLock
from segadapt.errors import DataError

_HOLDER = ("import sys, time\nfrom segadapt.engine.checkpoint import RunLock\n"
           "RunLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(60)")


def _hold(folder):
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_live_holder_refuses_a_second_run_and_a_killed_one_does_not(tmp_path):
    out = tmp_path / "run"
    holder = _hold(out)
    try:
        with pytest.raises(DataError) as e:
            RunLock(out).acquire()
        msg = str(e.value)
        assert "\n" not in msg and str(out) in msg
        assert f"pid {holder.pid})" in msg  # names who holds it
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up code runs: the lock file and holder record stay behind
        holder.wait()
    assert (out / ".lock").exists() or sys.platform == "win32"
    lock = RunLock(out).acquire()  # the OS lock died with the process
    assert (out / ".lock.holder").read_text().endswith(f"pid {os.getpid()}")
    # held by this process: a second acquire is the same lock (stages nest), a second process is refused
    assert RunLock(out).acquire() is lock
    probe = subprocess.run([sys.executable, "-c", "import sys\nfrom segadapt.engine.checkpoint import RunLock\n"
                            "RunLock(sys.argv[1]).acquire()", str(out)], capture_output=True, text=True)
    assert probe.returncode != 0 and "another segadapt run" in probe.stderr
    lock.release()
    assert not (out / ".lock.holder").exists()
    RunLock(out).acquire().release()  # released: free again
