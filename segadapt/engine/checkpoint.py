"""Checkpoints: one `.pt` file per save, readable with ``torch.load(weights_only=True)``, written
atomically (temporary file, fsync, rename) so a kill during a save never leaves a broken file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

from segadapt.errors import DataError

FORMAT = "segadapt-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    with _atomic_file(path) as f:
        torch.save(payload, f)


@contextlib.contextmanager
def _atomic_file(path: Path):
    """Binary file object whose content replaces ``path`` only once it is complete and on disk (a kill
    mid-write leaves ``path`` as it was, plus a ``.NAME.*.tmp`` that the next run removes)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DataError(f"{path} is not a segadapt checkpoint")
    return ckpt


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file; of a safetensors export folder, of its weights then its config."""
    if Path(path).is_dir():
        h = hashlib.sha256()
        for name in ("model.safetensors", "config.json"):
            h.update(file_sha256(Path(path) / name, chunk).encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def copy_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Copy a written checkpoint (``iter_N.pt`` next to ``last.pt``) atomically, as ``save_checkpoint`` writes."""
    with _atomic_file(Path(dst)) as f, open(src, "rb") as s:
        shutil.copyfileobj(s, f, 1 << 20)


def rng_state() -> dict:
    """What the next iterations' arithmetic depends on besides weights and optimiser: the RNG states, and
    torch's CPU thread count and version (a reduction split over another number of threads, or another
    release's kernel, rounds differently: measured in issue 15, 1 vs 2 threads differ after 6 iterations)."""
    state = {"torch": torch.get_rng_state(), "threads": torch.get_num_threads(), "torch_version": str(torch.__version__)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()``; a resumed run also takes the thread count the run was started with, so
    that it continues bit for bit (on the same machine type and torch release)."""
    from segadapt.console import log

    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    threads = int(state.get("threads") or 0)
    if threads and threads != torch.get_num_threads():
        log(f"note: resuming with {threads} CPU threads, as the run was started (not {torch.get_num_threads()}), "
            "so that it continues bit for bit")
        torch.set_num_threads(threads)
    version = state.get("torch_version")
    if version and version != str(torch.__version__):
        log(f"note: the run was started under torch {version}, it resumes under {torch.__version__}: "
            "the continuation may differ from an uninterrupted run in the last digits")


class RunLock:
    """An exclusive lock on an output folder (``OUT/.lock``), held while a stage writes there.

    ``filelock`` takes an OS lock on the file (``flock`` on Linux/macOS, ``msvcrt.locking`` on
    Windows); such locks die with their process, so a run killed with ``kill -9`` leaves no stale
    lock to clean up, while a second run started on the same folder is refused at once instead of
    interleaving checkpoints with the first. The holder's host and pid go to ``OUT/.lock.holder``
    for the message (not into the lock file: Windows forbids reading a locked region)."""

    _held: dict[str, "RunLock"] = {}  # locks this process holds, until the stage ends (``release_folder``)

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.holder_path = Path(folder) / ".lock.holder"
        self.lock = None

    def _file_lock(self):
        import filelock

        try:  # no silent switch to an existence-file lock, which a killed run would leave behind (filelock >= 3.30)
            return filelock.FileLock(str(self.path), timeout=0, fallback_to_soft=False)
        except TypeError:
            return filelock.FileLock(str(self.path), timeout=0)

    def acquire(self) -> "RunLock":
        import socket

        import filelock

        key = str(self.path.resolve())
        if key in RunLock._held:
            return RunLock._held[key]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = self._file_lock()
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            try:
                holder = self.holder_path.read_text(errors="replace").strip()[:200] or "unknown"
            except OSError:
                holder = "unknown"
            raise DataError(f"another segadapt run ({holder}) is writing into {self.path.parent}; "
                            "wait for it to finish or stop it first") from None
        except OSError as e:  # a file system without locks (some NFS set-ups): run unprotected rather than not at all
            from segadapt.console import log

            log(f"note: cannot lock {self.path} ({e.strerror or e}); make sure no other run writes there")
            return self
        from segadapt.data.io import write_text

        write_text(self.holder_path, f"host {socket.gethostname()} pid {os.getpid()}")
        self.lock = lock
        RunLock._held[key] = self
        return self

    @classmethod
    def release_folder(cls, folder: Path) -> None:
        """Release this process's lock on ``folder``, if it holds one (end of a stage run in-process)."""
        held = cls._held.get(str((Path(folder) / ".lock").resolve()))
        if held is not None:
            held.release()

    def release(self) -> None:
        if self.lock is not None:
            self.holder_path.unlink(missing_ok=True)  # before the unlock: never deletes the next holder's record
            self.lock.release()
            RunLock._held.pop(str(self.path.resolve()), None)
            self.lock = None
