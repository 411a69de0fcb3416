"""ONNX export of each architecture, checked against PyTorch at two input sizes (the issue's goal:
argmax agreement >= 99.9 %).

Each model is built with seed 0 and random weights (no ImageNet weights can be fetched here), saved as
a segadapt checkpoint and exported with `segadapt.engine.export.export_model` exactly as
`segadapt export --format onnx` does: one graph with dynamic batch/height/width, then ONNX Runtime
(CPU) beside PyTorch on generated image-like uint8 batches at both sizes. SegFormer uses MiT-B0 with
the DAFormer head (the papers use MiT-B5: same blocks, more of them and wider).

    python benchmarks/export_check.py [--models deeplabv2-tiny,deeplabv2-r101,...] [--batch 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from segadapt.data.labelspace import CITYSCAPES19
from segadapt.engine.checkpoint import save_checkpoint
from segadapt.engine.export import ExportCheckError, export_model, generated_inputs
from segadapt.models.segmenter import build_segmenter

# name -> (model spec, two (H, W) check sizes); the ResNet-101 models at small inputs to keep CPU time short
MODELS = {
    "deeplabv2-tiny": ({"arch": "deeplabv2", "backbone": "tiny"}, [(256, 512), (193, 385)]),
    "deeplabv2-r101": ({"arch": "deeplabv2", "backbone": "resnet101"}, [(160, 320), (129, 257)]),
    "deeplabv3plus-r101": ({"arch": "deeplabv3plus", "backbone": "resnet101"}, [(160, 320), (129, 257)]),
    "segformer-mitb0-daformer": ({"arch": "segformer", "backbone": "mit_b0", "head": "daformer"},
                                 [(256, 512), (193, 385)]),
}


def run(name: str, batch: int, work: Path) -> list[dict]:
    spec, sizes = MODELS[name]
    torch.manual_seed(0)
    model = build_segmenter(spec, CITYSCAPES19.num_classes)
    # BatchNorm statistics of a fresh net (mean 0, var 1) do not fit its activations, and a deep random
    # ResNet then predicts one class everywhere, which agrees trivially. A few train-mode passes over
    # image-like inputs set the statistics (as training would), so the maps have many classes.
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a plain average over the passes
    with torch.no_grad():
        for x in generated_inputs(sizes[:1] * 3, batch=2, seed=1):
            model(x.float() / 255)
    model.eval()
    ckpt = work / f"{name}.pt"
    save_checkpoint(ckpt, {"stage": "warmup", "method": "benchmark", "iteration": 0, "model": model.state_dict(),
                           "teacher": None, "model_spec": model.spec, "label_space": CITYSCAPES19.to_dict()})
    t0 = time.perf_counter()
    try:
        report = export_model(ckpt, "onnx", work / f"{name}.onnx", check_sizes=sizes, check_batch=batch)
        size_mb = (work / f"{name}.onnx").stat().st_size / 2**20
    except ExportCheckError as e:  # below the bar: keep the numbers for the table (nothing was written)
        report, size_mb = e.report, float("nan")
    total = time.perf_counter() - t0
    return [{"model": name, "size": f"{c['shape'][2]}x{c['shape'][3]}", "batch": c["shape"][0],
             "max_abs_diff": c["max_abs_diff"], "agreement": c["agreement"], "classes": c["classes_predicted"],
             "export_seconds": report["export_seconds"], "total_seconds": round(total, 1), "onnx_mb": round(size_mb, 1)}
            for c in report["checks"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {', '.join(MODELS)}")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    args = ap.parse_args()
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        ap.error(f"unknown models: {', '.join(unknown)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for row in run(name, args.batch, Path(tmp)):
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
                else:
                    print(f"  {name} {row['size']}: agreement {100 * row['agreement']:.4f} %", file=sys.stderr, flush=True)
    if not args.json:
        print(f"torch {torch.__version__}, batch {args.batch}, ONNX Runtime CPU\n")
        print("| model | input HxW | max abs logit diff | argmax agreement | classes predicted | export s | ONNX MB |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['size']} | {r['max_abs_diff']:.2e} | {100 * r['agreement']:.4f} % | {r['classes']} | "
                  f"{r['export_seconds']:.1f} | {r['onnx_mb']:.1f} |")
    return 0 if all(r["agreement"] >= 0.999 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
