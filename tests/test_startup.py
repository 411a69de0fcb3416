"""CLI start-up: --help, --version and usage errors import no torch or torchvision, and a tiny-backbone
model is built without torchvision (each of these costs seconds per CLI call). cv2 (about 0.1 s) may
load: the converter registry that generates prepare-data's subcommands imports the converters."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "torchvision", "timm", "onnx", "onnxruntime")

# Runs the CLI in-process as `python -m segadapt ARGS` would, then reports the heavy modules loaded.
PROBE = """
import json, sys
sys.argv = ["segadapt", *json.loads(sys.argv[1])]
from segadapt.cli.main import run
code = None
try:
    run()
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "loaded": sorted(m for m in sys.modules if m.split(".")[0] in %r)}),
      file=sys.__stderr__)
""" % (HEAVY,)


def _probe(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(list(args))], capture_output=True, text=True,
                          timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


def test_help_version_and_usage_errors_import_nothing_heavy():
    for args, code in ((["--help"], 0), (["evaluate", "--help"], 0), (["predict", "--help"], 0),
                       (["warmup", "--help"], 0), (["export", "--help"], 0), (["--version"], 0),
                       (["no-such-command"], 2), (["evaluate", "--data"], 2),
                       # the commands' own argument checks come before their imports
                       (["evaluate", "--data", "d"], 2), (["predict", "--out", "o"], 2),
                       (["export", "--ckpt", "c", "--format", "onnx", "--out", "o", "--check-count", "0"], 2)):
        got = _probe(*args)
        assert got == {"code": code, "loaded": []}, (args, got)


def test_tiny_model_is_built_without_torchvision():
    code = ("import sys; from segadapt.models import build_model; build_model({'backbone': 'tiny'}, 5); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'timm')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.strip() == "[]"
