"""The embedded synthetic benchmark: generate raw GTA5-layout source and Cityscapes-layout target
scenes, then prepare them with the same converters real data goes through.

OUT/raw/{gta5,cityscapes}  raw layouts    OUT/source, OUT/target  prepared folders
"""

from __future__ import annotations

from pathlib import Path

from segadapt.console import log
from segadapt.data.io import read_json, write_json
from segadapt.data.prepare.cityscapes import prepare_cityscapes
from segadapt.data.prepare.common import FORCE, WORKERS, ConverterOption, converter, parse_image_size
from segadapt.data.prepare.gta5 import prepare_gta5
from segadapt.errors import DataError


def prepare_synthetic(out, *, seed=0, n_source=500, n_target_train=300, n_target_val=100, width=256, height=128,
                      shift=1.0, workers=0, force=False) -> dict:
    from segadapt.data.synthetic import generate_raw

    out = Path(out)
    params = {"seed": seed, "n_source": n_source, "n_target_train": n_target_train, "n_target_val": n_target_val,
              "width": width, "height": height, "shift": shift}
    marker = out / "synthetic.json"
    if marker.exists():
        old = read_json(marker)
        if old.get("params") != params and not force:
            raise DataError(f"{out} holds a synthetic benchmark made with other settings; use --force to replace it")
    raw = out / "raw"
    if force or not marker.exists() or read_json(marker).get("params") != params:
        if out.exists() and any(out.iterdir()) and not marker.exists() and not force:
            raise DataError(f"{out} is not empty and holds no synthetic benchmark; use another --out or --force")
        summary = generate_raw(raw, seed=seed, n_source=n_source, n_target_train=n_target_train,
                               n_target_val=n_target_val, width=width, height=height, shift=shift, workers=workers)
        write_json(marker, {"params": params, "summary": summary})
        force_convert = True
    else:
        log(f"synthetic scenes in {raw} already generated; converting")
        force_convert = False
    src = prepare_gta5(raw / "gta5", out / "source", workers=workers, force=force or force_convert)
    tgt = prepare_cityscapes(raw / "cityscapes", out / "target", workers=workers, force=force or force_convert)
    kept = {"source": src["kept"], "target": tgt["kept"]}
    return {"kept": kept, "skipped": len(src["skipped"]) + len(tgt["skipped"])}


@converter("synthetic",
           ConverterOption("out", "--out", Path, "Folder to write: raw/, source/, target/.", ...),
           ConverterOption("seed", "--seed", int, "Scene seed.", 0),
           ConverterOption("n_source", "--n-source", int, "Source images.", 500),
           ConverterOption("n_target_train", "--n-target-train", int, "Target train images.", 300),
           ConverterOption("n_target_val", "--n-target-val", int, "Target val images.", 100),
           ConverterOption("image_size", "--image-size", str, "Image size HxW (height first).", "128x256",
                           parse_image_size),
           ConverterOption("shift", "--shift", float, "Appearance shift strength in [0, 1].", 1.0),
           WORKERS, FORCE,
           help="The embedded synthetic benchmark: generate raw GTA5-layout source and Cityscapes-layout target "
                "scenes and prepare them (OUT/raw, OUT/source, OUT/target).")
def prepare_synthetic_benchmark(out, *, image_size=(128, 256), **settings) -> dict:
    """``prepare_synthetic`` with the size as (H, W), the order of every size on the command line."""
    height, width = parse_image_size(image_size)
    return prepare_synthetic(out, width=width, height=height, **settings)
