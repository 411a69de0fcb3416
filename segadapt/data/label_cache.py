"""Decoded ground truth of a prepared split, cached next to its labels for repeated evaluation.

Scoring saved predictions has to inflate two PNGs per image; the ground truth is the same every
time, so the first ``evaluate --pred-dir`` stores each decoded label map as one zlib stream of its raw
uint8 bytes (no PNG filters: ~2 ms to inflate a 2048x1024 map with ISA-L, ~4 ms with zlib, against
~7-15 ms for the PNG) in ``labels/<split>.labelcache``. The file is one atomic write (temp file +
os.replace), so a crash leaves the old cache or none. Each entry records its label file's size,
mtime, ctime and inode; an entry whose file changed, or a split whose ids changed, makes the whole
cache stale, and the next evaluation decodes the PNGs again and rewrites it.

Layout: ``MAGIC``, an 8-byte little-endian header length, a JSON header ({"version", "split",
"entries": {id: [offset, nbytes, height, width, size, mtime_ns, ctime_ns, ino]}}), then the streams.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from segadapt.data.io import write_bytes

try:  # ISA-L writes and reads the same zlib streams several times faster (optional extra `fast`)
    from isal import isal_zlib as _zlib

    LEVEL = 2  # ISA-L level 2: ~1 ms per 2048x1024 map to write, ~2 ms to read back
except ImportError:  # pragma: no cover
    _zlib = zlib
    LEVEL = 1  # zlib level 1: ~5 ms to write; higher levels cost 3x more for little

MAGIC = b"SEGADAPT-LABELCACHE\n"
VERSION = 1


def cache_path(root: Path, split: str) -> Path:
    return Path(root) / "labels" / f"{split}.labelcache"


def file_stamp(path: Path) -> list[int]:
    """What identifies a label file's version: size, mtime, ctime (changed by any write) and inode
    (changed by an atomic replace)."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def encode(label: np.ndarray) -> bytes:
    return _zlib.compress(np.ascontiguousarray(label, dtype=np.uint8).tobytes(), LEVEL)


class LabelCache:
    """Read side: ``get(id)`` returns the decoded uint8 map. Open with :func:`open_cache`."""

    def __init__(self, path: Path, entries: dict, buf: mmap.mmap, base: int):
        self.path, self._entries, self._buf, self._base = path, entries, buf, base

    def get(self, id: str) -> np.ndarray:
        off, n, h, w = self._entries[id][:4]
        start = self._base + off
        raw = _zlib.decompress(self._buf[start:start + n])
        return np.frombuffer(raw, np.uint8).reshape(h, w)

    def close(self) -> None:
        self._buf.close()


def open_cache(root: Path, split: str, items) -> LabelCache | None:
    """The split's cache when it exists and is current for every (id, _, label_path) of ``items``;
    None when missing, unreadable or stale (the caller then decodes the PNGs and may ``write_cache``)."""
    path = cache_path(root, split)
    try:
        with open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                return None
            (hlen,) = struct.unpack("<Q", f.read(8))
            if hlen > os.fstat(f.fileno()).st_size:
                return None  # a truncated or foreign file
            header = json.loads(f.read(hlen))
            base = len(MAGIC) + 8 + hlen
            if header.get("version") != VERSION or header.get("split") != split:
                return None
            entries = header["entries"]
            if set(entries) != {i for i, _, _ in items}:
                return None
            for i, _, lab in items:
                if entries[i][4:] != file_stamp(lab):
                    return None
            size = os.fstat(f.fileno()).st_size
            if any(base + e[0] + e[1] > size for e in entries.values()):
                return None  # truncated
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError, KeyError, TypeError, IndexError, OverflowError, struct.error):
        return None
    return LabelCache(path, entries, buf, base)


def write_cache(root: Path, split: str, blobs: dict[str, tuple[bytes, tuple[int, int], list[int]]]) -> bool:
    """Write the cache from {id: (encode(label), (h, w), file_stamp taken BEFORE the label was read)}.
    Returns False (and writes nothing) when the folder is not writable: the cache is only a speed-up."""
    entries, off, parts = {}, 0, []
    for i, (blob, (h, w), stamp) in blobs.items():
        entries[i] = [off, len(blob), int(h), int(w), *stamp]
        parts.append(blob)
        off += len(blob)
    header = json.dumps({"version": VERSION, "split": split, "entries": entries}).encode()
    try:
        write_bytes(cache_path(root, split), b"".join([MAGIC, struct.pack("<Q", len(header)), header, *parts]))
    except OSError:
        return False
    return True
