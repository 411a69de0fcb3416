"""Render prediction panels for N images of a split, from a checkpoint, a prediction folder or a
pseudo-label folder (whose confidence maps are shown too)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segadapt.data.io import read_image, read_label, write_png
from segadapt.data.pseudo_labels import PseudoLabelFolder
from segadapt.engine.inference import Protocol, infer, load_model
from segadapt.errors import DataError, UsageError
from segadapt.viz.panels import legend, make_panel, stack_panels


def render_panels(dataset, split: str, out: Path, n: int, ckpt=None, pred_dir=None, pseudo_labels=None,
                  weights="student", device=torch.device("cpu"), protocol: Protocol | None = None,
                  size: tuple[int, int] | None = None) -> list[Path]:
    """``size`` (W, H): run the model on the image resized to it (as it was trained); the panel shows the
    prediction at image resolution."""
    if sum(x is not None for x in (ckpt, pred_dir, pseudo_labels)) > 1:
        raise UsageError("give at most one of --ckpt, --pred-dir, --pseudo-labels")
    if n <= 0:
        raise UsageError("--n must be positive")
    items = dataset.items(split)[:n]
    model = None
    if ckpt is not None:
        model, ls, _ = load_model(ckpt, weights, device)
        if ls.classes != dataset.label_space.classes:
            raise DataError(f"checkpoint label space '{ls.name}' differs from the data's '{dataset.label_space.name}'")
    protocol = protocol or Protocol()
    ls = dataset.label_space
    out = Path(out)
    written, panels, present = [], [], set()
    pl = PseudoLabelFolder(pseudo_labels) if pseudo_labels is not None else None
    for _id, img_path, lab_path in items:
        image = read_image(img_path)
        label = read_label(lab_path) if lab_path is not None else None
        pred = conf = None
        if model is not None:
            small = image
            if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
                small = cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA)  # as evaluate does
            x = torch.from_numpy(np.ascontiguousarray(small)).permute(2, 0, 1)[None].float().div(255).to(device)
            logits, _ = infer(model, x, protocol, ls.num_classes)
            if logits.shape[-2:] != image.shape[:2]:
                logits = F.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
            prob = logits.softmax(1)
            c, p = prob.max(1)
            pred, conf = p[0].cpu().numpy().astype(np.uint8), c[0].cpu().numpy()
        elif pred_dir is not None or pseudo_labels is not None:
            f = Path(pred_dir) / f"{_id}.png" if pl is None else pl.label_path(_id)
            if not f.exists():
                raise DataError(f"no prediction {f}")
            pred = read_label(f)
            if pl is not None:
                conf = pl.confidence(_id)
        for arr in (label, pred):
            if arr is not None:
                present.update(int(v) for v in np.unique(arr) if v < ls.num_classes)
        panel = make_panel(image, label, pred, conf, ls)
        write_png(out / f"{_id}.png", panel)
        written.append(out / f"{_id}.png")
        panels.append(panel)
    if panels:
        sheet = stack_panels(panels + [legend(ls, sorted(present))])
        write_png(out / "panels.png", sheet)
        written.append(out / "panels.png")
    return written
