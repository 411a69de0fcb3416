"""Evaluation speed against the official cityscapesScripts evaluator on the same files.

Writes N Cityscapes-size (2048x1024) ground-truth and prediction files, scores them with
`segadapt evaluate --pred-dir` (in-process) and with cityscapesScripts' evaluateImgLists, checks that
every class IoU agrees to 1e-6 and prints frames per second of both and the speed-up.

    python benchmarks/evaluator_speed.py [--n 30] [--width 2048 --height 1024]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import parity_data  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--height", type=int, default=1024)
    a = ap.parse_args()

    import os

    os.environ.setdefault("SEGADAPT_QUIET", "1")
    from segadapt.data.prepare import prepare_cityscapes
    from segadapt.data.prepared import PreparedDataset
    from segadapt.engine.evaluate import evaluate_predictions

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ids = parity_data.make(root, a.n, a.width, a.height, seed=0)
        prepare_cityscapes(root / "raw", root / "prepared", workers=0)
        ds = PreparedDataset(root / "prepared")
        evaluate_predictions(root / "pred", ds, "val")  # warm the file cache for both sides alike
        t0 = time.perf_counter()
        ours = evaluate_predictions(root / "pred", ds, "val")
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        theirs = parity_data.cityscapesscripts_iou(root, ids)
        t_theirs = time.perf_counter() - t0

    worst = max(abs(v / 100 - theirs[k]) for k, v in ours["per_class"].items() if v is not None)
    same_undefined = all((v is None) == math.isnan(theirs[k]) for k, v in ours["per_class"].items())
    print(f"{a.n} images {a.width}x{a.height}")
    print(f"segadapt evaluate --pred-dir : {a.n / t_ours:8.1f} images/s  ({t_ours:.2f} s)")
    print(f"cityscapesScripts            : {a.n / t_theirs:8.1f} images/s  ({t_theirs:.2f} s)")
    print(f"speed-up                     : {t_theirs / t_ours:8.1f} x")
    print(f"largest class-IoU difference : {worst:.2e} (undefined classes agree: {same_undefined})")


if __name__ == "__main__":
    main()
