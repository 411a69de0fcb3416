"""Training and inference datasets over prepared folders and pseudo-label folders.

Images reach the model as float RGB in [0, 1] (C, H, W); normalisation happens inside the model so
that photometric augmentation always acts on real colours (a defect of DiGA's published code was to
jitter mean-subtracted BGR tensors). Labels are int64 trainIds with 255 = ignore.

Training crops (``TrainCrops``) leave the loader as uint8, image and label alike, and
``batch_to_device`` converts them on the device: a quarter of the image bytes (an eighth of the label
bytes) cross the worker processes' shared memory and the host -> GPU copy, and the float conversion
runs on the GPU instead of a loader core. The values are those of ``to_tensor``.
"""

from __future__ import annotations


import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from segadapt.data.io import read_image, read_label
from segadapt.data.labelspace import IGNORE
from segadapt.data.pseudo_labels import CONF_SCALE, stored_confidence
from segadapt.errors import DataError


def unit_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [0, 1]: the one conversion every model input goes through (training
    batches, ``to_tensor``, inference), so a trained model sees the same values everywhere."""
    return x.float().div_(255.0)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [0, 1]. The channel transpose is done on the uint8 array
    (a quarter of the bytes of a float one): ~2.5x faster per 512x896 crop than converting a permuted
    view, same values."""
    return unit_float(uint8_chw(image))


def uint8_chw(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) uint8 tensor (contiguous; the transpose is done on the uint8 bytes)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def batch_to_device(batch: dict, device, channels_last: bool = False) -> dict:
    """A collated ``TrainCrops`` batch on ``device`` as the methods take it: ``image`` uint8 -> float in
    [0, 1] (``to_tensor``'s values), ``label`` uint8 -> int64, other tensors as they are; 4-d tensors in
    channels_last when asked. The conversion follows the copy, so it runs on the device."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=True)
            if k == "image" and v.dtype == torch.uint8:
                v = unit_float(v)
            elif k == "label" and v.dtype == torch.uint8:
                v = v.long()
            if channels_last and v.dim() == 4:
                v = v.contiguous(memory_format=torch.channels_last)
        out[k] = v
    return out


class TrainCrops(Dataset):
    """Random-scale, random-crop, random-flip crops of (image, label) pairs.

    ``items``: list of (id, image_path, label_path or None), or (id, image_path, label_path,
    confidence_path) for pseudo-labels with their confidence map (uint16 PNG, see
    :mod:`segadapt.data.pseudo_labels`, whose ``PseudoLabelFolder.items`` makes these items): the
    confidence then goes through the same resize / crop / flip as the label and the sample carries it
    as ``confidence`` (float32 in [0, 1], 0 on padding). Indexed by (index, seed) pairs from
    :class:`segadapt.data.sampling.IterationBatchSampler`, so augmentation is reproducible.
    Images without labels get an all-ignore label (target images used without labels). ``image`` (3, H, W)
    and ``label`` (H, W) are uint8 tensors: ``batch_to_device`` makes the model's float image and int64
    label of a collated batch."""

    def __init__(self, items, crop: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0), flip: bool = True,
                 resize: tuple[int, int] | None = None, label_lut: np.ndarray | None = None):
        self.items = list(items)
        self.label_lut = label_lut  # maps stored ids into the training label space (source -> target classes)
        self.crop = (int(crop[0]), int(crop[1]))  # (H, W)
        self.scale = (float(scale[0]), float(scale[1]))
        self.flip = flip
        # (H, W) every image is first resized to (data.source_resize / target_resize), e.g. GTA5 -> 720x1280
        self.resize = (int(resize[0]), int(resize[1])) if resize is not None else None

    def __len__(self) -> int:
        return len(self.items)

    def _load(self, idx: int):
        _id, img_path, lab_path = self.items[idx][:3]
        image = read_image(img_path)
        if lab_path is not None:
            label = read_label(lab_path)
            if self.label_lut is not None:
                label = self.label_lut[label]
            if label.shape[:2] != image.shape[:2]:
                label = cv2.resize(label, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
        else:
            label = None  # all-ignore: made at crop size in __getitem__ (resizing a constant map is wasted work)
        if self.resize is not None and image.shape[:2] != self.resize:
            wh = (self.resize[1], self.resize[0])  # cv2 takes (W, H)
            image = cv2.resize(image, wh, interpolation=cv2.INTER_AREA)
            if label is not None:
                label = cv2.resize(label, wh, interpolation=cv2.INTER_NEAREST)
        return image, label

    def _load_confidence(self, idx: int, shape) -> np.ndarray | None:
        """The item's confidence map (uint16) at the label's (already resized) shape, or None."""
        if len(self.items[idx]) < 4 or self.items[idx][3] is None:
            return None
        conf = read_label(self.items[idx][3])
        if conf.dtype != np.uint16:
            raise DataError(f"confidence map {self.items[idx][3]} is {conf.dtype}; "
                            f"expected uint16 (conf * {CONF_SCALE})")
        if conf.shape[:2] != tuple(shape):  # nearest: stored values stay exact, as for the label
            conf = cv2.resize(conf, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        return conf

    def __getitem__(self, key):
        idx, seed = key
        rng = np.random.default_rng(seed)
        image, label = self._load(idx)
        unlabeled = label is None
        if unlabeled:  # a zero-stride view carries the shape through scale and crop; filled below
            label = np.broadcast_to(np.uint8(IGNORE), image.shape[:2])
        conf = self._load_confidence(idx, label.shape)
        extra = () if conf is None else (conf,)  # transformed exactly like the label
        s = rng.uniform(*self.scale)
        if abs(s - 1.0) > 1e-6:
            h, w = label.shape
            size = (max(1, round(w * s)), max(1, round(h * s)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            label = (np.broadcast_to(np.uint8(IGNORE), (size[1], size[0])) if unlabeled
                     else cv2.resize(label, size, interpolation=cv2.INTER_NEAREST))
            extra = tuple(cv2.resize(e, size, interpolation=cv2.INTER_NEAREST) for e in extra)
        image, label, *extra = random_crop(image, label, self.crop, rng, *extra)
        if unlabeled:
            label = np.full(label.shape, IGNORE, np.uint8)
        if self.flip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
            extra = [e[:, ::-1] for e in extra]
        out = {"image": uint8_chw(image), "label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.uint8)),
               "index": idx}
        if extra:
            # thresholds built with the same expression compare exactly
            out["confidence"] = torch.from_numpy(stored_confidence(np.ascontiguousarray(extra[0])))
        return out


def random_crop(image: np.ndarray, label: np.ndarray, crop: tuple[int, int], rng: np.random.Generator, *extras):
    """Crop image, label and any ``extras`` (per-pixel maps such as confidence, padded with 0) at one
    random position; returns (image, label, *extras)."""
    ch, cw = crop
    h, w = label.shape
    if h < ch or w < cw:  # pad: image with 0, label with ignore, so padding never trains
        ph, pw = max(0, ch - h), max(0, cw - w)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)))
        label = np.pad(label, ((0, ph), (0, pw)), constant_values=IGNORE)
        extras = tuple(np.pad(e, ((0, ph), (0, pw))) for e in extras)
        h, w = label.shape
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return (image[y:y + ch, x:x + cw], label[y:y + ch, x:x + cw], *(e[y:y + ch, x:x + cw] for e in extras))


class InferenceImages(Dataset):
    """Whole images (and labels when present) for inference, evaluation and pseudo-labelling."""

    def __init__(self, items, base_size: tuple[int, int] | None = None):
        self.items = list(items)
        self.base_size = base_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int):
        _id, img_path, lab_path = self.items[idx]
        image = read_image(img_path)
        out = {"id": _id, "index": idx, "size": torch.tensor(image.shape[:2])}
        if self.base_size is not None and (image.shape[1], image.shape[0]) != tuple(self.base_size):
            image = cv2.resize(image, tuple(self.base_size), interpolation=cv2.INTER_AREA)
        out["image"] = to_tensor(image)
        if lab_path is not None:
            out["label"] = torch.from_numpy(read_label(lab_path).astype(np.int64))
        return out
