"""Evaluation speed against the official cityscapesScripts evaluator on the same files.

Writes Cityscapes-size (2048x1024) ground-truth and prediction files for two frame counts (--small,
--large), then times whole processes: `segadapt evaluate --pred-dir` (with the decoded-label cache
warm, and with --no-label-cache) and cityscapesScripts' evaluateImgLists. The marginal per-frame time
is (t_large - t_small) / (large - small), so interpreter start-up and imports cancel out. Runs are
interleaved and repeated; the estimate is the difference of the fastest run of each count (load only
ever adds time), with the median of the per-repeat differences beside it. Every class IoU is checked
against cityscapesScripts (1e-6), and the decode floor is printed: the time to decode a frame's two
PNGs with the fastest decoder installed, one thread; and Pillow's, which cityscapesScripts uses: a
lower bound of its per-frame time even with its optional C extension (CSUPPORT), which its PyPI
wheel does not ship.

cityscapesScripts is timed twice: as pip installs it (pure Python: np.unique over an int32 code of
every pixel), and with its C counting switched on the way its extension does it. The extension
(addToConfusionMatrix, Cython over a C loop) adds 1 to confMatrix[gt, pred] for every pixel; here the
same loop is compiled with the system C compiler (-O3) at start, loaded with ctypes and registered as
that module, so evaluatePair takes its CSUPPORT branch unchanged. Skipped (said so) without a compiler.

    python benchmarks/evaluator_speed.py [--small 20 --large 60 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import parity_data  # noqa: E402

CS_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {here!r})
import parity_data
root = Path({root!r})
ids = sorted(p.stem for p in (root / "pred_labelids").glob("*.png"))
print(json.dumps(parity_data.cityscapesscripts_iou(root, ids)))
"""


CS_C_SCRIPT = """
import ctypes, json, sys, types
from pathlib import Path
import numpy as np
sys.path.insert(0, {here!r})
lib = ctypes.CDLL({so!r})
lib.add_to_confusion_matrix.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                                        ctypes.c_uint]
def cEvaluatePair(prediction, ground_truth, conf_matrix, eval_labels):
    pred = np.ascontiguousarray(prediction, dtype=np.uint8)
    gt = np.ascontiguousarray(ground_truth, dtype=np.uint8)
    conf = np.ascontiguousarray(conf_matrix, dtype=np.uint64)
    lib.add_to_confusion_matrix(pred.ctypes.data, gt.ctypes.data, pred.size, conf.ctypes.data, conf.shape[0])
    return conf
mod = types.ModuleType("cityscapesscripts.evaluation.addToConfusionMatrix")
mod.cEvaluatePair = cEvaluatePair
sys.modules[mod.__name__] = mod
import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs
assert cs.CSUPPORT, "the C counting was not picked up"
import parity_data
root = Path({root!r})
ids = sorted(p.stem for p in (root / "pred_labelids").glob("*.png"))
print(json.dumps(parity_data.cityscapesscripts_iou(root, ids)))
"""

# the per-pixel loop of cityscapesScripts' addToConfusionMatrix extension (our own code, same work)
C_COUNT = r"""
#include <stddef.h>
void add_to_confusion_matrix(const unsigned char *pred, const unsigned char *gt, size_t n,
                             unsigned long long *conf, unsigned int dim) {
    for (size_t i = 0; i < n; ++i) conf[(size_t)dim * gt[i] + pred[i]] += 1u;
}
"""


def build_c_counting(folder: Path) -> Path | None:
    """The compiled counting loop (a shared library), or None without a working C compiler."""
    src, so = folder / "count.c", folder / "count.so"
    src.write_text(C_COUNT)
    for cc in (os.environ.get("CC", "cc"), "gcc", "clang"):
        try:
            subprocess.run([cc, "-O3", "-shared", "-fPIC", "-o", str(so), str(src)], check=True,
                           capture_output=True)
            return so
        except (OSError, subprocess.CalledProcessError):
            continue
    return None


def _run(cmd) -> tuple[float, str]:
    env = {**os.environ, "SEGADAPT_QUIET": "1"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - t0, out


def _ours(root: Path, cache: bool):
    return [sys.executable, "-m", "segadapt", "evaluate", "--data", str(root / "prepared"), "--split", "val",
            "--pred-dir", str(root / "pred"), "--json"] + ([] if cache else ["--no-label-cache"])


def _theirs(root: Path):
    return [sys.executable, "-c", CS_SCRIPT.format(here=str(HERE), root=str(root))]


def _theirs_c(root: Path, so: Path):
    return [sys.executable, "-c", CS_C_SCRIPT.format(here=str(HERE), root=str(root), so=str(so))]


def decode_floor(root: Path, pillow: bool = False) -> tuple[float, str]:
    """ms per frame to decode the prediction and the ground-truth PNG with the fastest decoder here
    (``pillow``: with Pillow, on the files cityscapesScripts reads)."""
    import io

    import cv2
    import numpy as np
    from PIL import Image

    try:
        import pyspng

        name, dec = "libspng (pyspng)", lambda b: pyspng.load(b, format="L")
    except ImportError:
        name, dec = "OpenCV", lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED)
    preds = sorted((root / "pred").glob("*.png"))
    gts = [root / "prepared/labels/val" / p.name for p in preds]
    if pillow:
        name, dec = "Pillow", lambda b: np.array(Image.open(io.BytesIO(b)))
        preds = sorted((root / "pred_labelids").glob("*.png"))
        gts = sorted((root / "raw/gtFine/val").rglob("*_gtFine_labelIds.png"))
    files = [f.read_bytes() for pair in zip(preds, gts) for f in pair]
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        for b in files:
            dec(b)
        best = min(best, time.perf_counter() - t0)
    return 1000 * best / len(preds), name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=20)
    ap.add_argument("--large", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=1024)
    a = ap.parse_args()
    if not 0 < a.small < a.large:
        raise SystemExit("need 0 < --small < --large")

    from segadapt.data.prepare import prepare_cityscapes

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        roots = {}
        for n in (a.small, a.large):
            roots[n] = Path(tmp) / f"n{n}"
            parity_data.make(roots[n], n, a.width, a.height, seed=0)
            prepare_cityscapes(roots[n] / "raw", roots[n] / "prepared", workers=0)
        cold = {}
        for n, r in roots.items():  # first run: decodes the PNGs and builds labels/val.labelcache
            cold[n], _ = _run(_ours(r, cache=True))
        for n, r in roots.items():  # warm the file cache for cityscapesScripts alike
            _run(_theirs(r))
        sides = {"segadapt, label cache": lambda r: _ours(r, True),
                 "segadapt, --no-label-cache": lambda r: _ours(r, False),
                 "cityscapesScripts": _theirs}
        so = build_c_counting(Path(tmp))
        if so is not None:
            sides["cityscapesScripts + C count"] = lambda r: _theirs_c(r, so)
        else:
            print("no C compiler: cityscapesScripts is timed without its C counting only", file=sys.stderr)
        times = {k: {n: [] for n in roots} for k in sides}
        outs = {}
        for rep in range(a.repeats):  # interleaved, so a burst of load hits every side alike
            print(f"repeat {rep + 1}/{a.repeats}, load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
            for n, r in roots.items():
                for k, cmd in sides.items():
                    t, outs[k, n] = _run(cmd(r))
                    times[k][n].append(t)
        floor_ms, decoder = decode_floor(roots[a.large])
        pil_ms, _ = decode_floor(roots[a.large], pillow=True)
        import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_mod
    load1 = os.getloadavg()

    frames = a.large - a.small
    per_frame = {k: (min(v[a.large]) - min(v[a.small])) / frames * 1000 for k, v in times.items()}
    medians = {k: statistics.median((tl - ts) / frames * 1000 for ts, tl in zip(v[a.small], v[a.large]))
               for k, v in times.items()}
    ours = json.loads(outs["segadapt, label cache", a.large])["per_class"]
    ours_nc = json.loads(outs["segadapt, --no-label-cache", a.large])["per_class"]
    theirs = json.loads(outs["cityscapesScripts", a.large])
    worst = max(abs(v / 100 - theirs[k]) for d in (ours, ours_nc) for k, v in d.items() if v is not None)
    same_undefined = all((v is None) == math.isnan(theirs[k]) for d in (ours, ours_nc) for k, v in d.items())
    if ("cityscapesScripts + C count", a.large) in outs:  # the C branch must give the same IoUs
        theirs_c = json.loads(outs["cityscapesScripts + C count", a.large])
        worst = max(worst, max(abs(v - theirs_c[k]) for k, v in theirs.items() if not math.isnan(v)))
        same_undefined = same_undefined and all(math.isnan(v) == math.isnan(theirs_c[k]) for k, v in theirs.items())

    cs = per_frame["cityscapesScripts"]
    print(f"{a.width}x{a.height} frames, marginal per frame = (min t[{a.large}] - min t[{a.small}]) / {frames} over "
          f"{a.repeats} interleaved repeats of whole processes (median of per-repeat differences in brackets)")
    print(f"cpu cores {os.cpu_count()}, load average before {load0[0]:.1f}, after {load1[0]:.1f}")
    for k, ms in per_frame.items():
        raw = ", ".join(f"{(tl - ts) / frames * 1000:.1f}" for ts, tl in zip(times[k][a.small], times[k][a.large]))
        def diffs(key):
            return [tl - ts for ts, tl in zip(times[key][a.small], times[key][a.large])]

        per_rep = statistics.median(c / o if o > 0 else math.inf
                                    for c, o in zip(diffs("cityscapesScripts"), diffs(k)))
        ratio = ("" if k.startswith("cityscapesScripts")
                 else f"  {cs / ms:5.1f}x cityscapesScripts (median per-repeat {per_rep:.1f}x)")
        if k.startswith("segadapt") and "cityscapesScripts + C count" in per_frame:
            per_rep_c = statistics.median(c / o if o > 0 else math.inf
                                          for c, o in zip(diffs("cityscapesScripts + C count"), diffs(k)))
            ratio += (f", {per_frame['cityscapesScripts + C count'] / ms:.1f}x with its C count "
                      f"(median per-repeat {per_rep_c:.1f}x)")
        print(f"{k:28s}: {ms:7.2f} ms/frame{ratio}   [{medians[k]:.1f}; repeats: {raw}]")
    print(f"first run (builds the cache) : {(cold[a.large] - cold[a.small]) / frames * 1000:7.2f} ms/frame")
    print(f"decode floor, 2 PNGs/frame   : {floor_ms:7.2f} ms/frame ({decoder}, one thread)")
    print(f"Pillow decode, 2 PNGs/frame  : {pil_ms:7.2f} ms/frame (cityscapesScripts' own decode; its C extension "
          f"is {'installed' if cs_mod.CSUPPORT else 'not installed here'}: with it, its time is at least this, "
          f"{pil_ms / per_frame['segadapt, label cache']:.1f}x ours)")
    print(f"largest class-IoU difference : {worst:.2e} (undefined classes agree: {same_undefined})")
    if worst > 1e-6 or not same_undefined:
        raise SystemExit("class IoUs differ from cityscapesScripts")


if __name__ == "__main__":
    main()
