"""Label spaces: class names, palettes and raw-id -> trainId tables.

A label space is plain data so that checkpoints can record it and compatibility checks can
compare it. ``IGNORE`` (255) marks pixels that are neither trained on nor scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = 255


@dataclass(frozen=True)
class LabelSpace:
    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]  # RGB per trainId

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> dict:
        return {"name": self.name, "classes": list(self.classes), "palette": [list(c) for c in self.palette]}

    @staticmethod
    def from_dict(d: dict) -> "LabelSpace":
        return LabelSpace(d["name"], tuple(d["classes"]), tuple(tuple(c) for c in d["palette"]))

    def colorize(self, label: np.ndarray) -> np.ndarray:
        """trainId map (H, W) -> RGB uint8 (H, W, 3); ignore is black."""
        lut = np.zeros((256, 3), np.uint8)
        lut[: self.num_classes] = np.asarray(self.palette, np.uint8)
        return np.take(lut, label, axis=0)  # the same as lut[label], ~4x faster (predict colours every frame)


CITYSCAPES19 = LabelSpace(
    "cityscapes19",
    (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    ),
    (
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ),
)

# Cityscapes labelIds (also GTA5's palette indices) -> trainIds; every other id is ignored.
CITYSCAPES_LABELID_TO_TRAINID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}


def labelid_lut(mapping: dict[int, int], size: int = 256) -> np.ndarray:
    """A lookup table that maps every raw id to its trainId (IGNORE when unmapped)."""
    lut = np.full(size, IGNORE, np.uint8)
    for raw, train in mapping.items():
        lut[raw] = train
    return lut


# CamVid, SegNet's 11-class version (raw value = class index, 11 = void). Colours: SegNet's
# Scripts/camvid11.png.
CAMVID11 = LabelSpace(
    "camvid11",
    ("sky", "building", "pole", "road", "sidewalk", "tree", "sign symbol", "fence", "car", "pedestrian",
     "bicyclist"),
    ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
     (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),
)

LABEL_SPACES = {CITYSCAPES19.name: CITYSCAPES19, CAMVID11.name: CAMVID11}

# Evaluation protocols: the subset of a label space's classes that is scored. SYNTHIA -> Cityscapes
# papers train a 19-class model and report mIoU over the 16 classes SYNTHIA has, and over 13 of them
# (without wall, fence, pole), both computed from the same confusion matrix.
SYNTHIA16 = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
             "vegetation", "sky", "person", "rider", "car", "bus", "motorcycle", "bicycle")
SYNTHIA13 = tuple(c for c in SYNTHIA16 if c not in ("wall", "fence", "pole"))
PROTOCOLS = {"19": None, "16": SYNTHIA16, "13": SYNTHIA13}


def protocol_indices(space: LabelSpace, protocol: str) -> list[int]:
    """Class indices scored by ``protocol``: 'all' = every class of the space, '19' = the Cityscapes
    classes, '16' / '13' = the SYNTHIA subsets."""
    from segadapt.errors import UsageError

    if protocol == "all":
        return list(range(space.num_classes))
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown evaluation protocol '{protocol}' (known: all, {', '.join(PROTOCOLS)})")
    names = PROTOCOLS[protocol] or CITYSCAPES19.classes
    missing = [c for c in names if c not in space.classes]
    if missing:
        raise UsageError(f"protocol {protocol} needs classes that label space '{space.name}' lacks: "
                         f"{', '.join(missing)}")
    return [space.classes.index(c) for c in names]


def class_map_lut(source: LabelSpace, target: LabelSpace, mapping: dict) -> np.ndarray:
    """Source trainId -> target trainId table from ``{source class: target class or null}``.

    Every source class must be named: a class silently dropped or merged would train the wrong
    thing, so a forgotten class is an error and ``null`` (ignore) has to be written out."""
    from segadapt.errors import UsageError

    if not isinstance(mapping, dict):
        raise UsageError("the source label map must be a mapping {source class: target class or null}")
    unknown = [k for k in mapping if k not in source.classes]
    if unknown:
        raise UsageError(f"source label map names classes that '{source.name}' lacks: {', '.join(map(str, unknown))}")
    bad = [str(v) for v in mapping.values() if v is not None and v not in target.classes]
    if bad:
        raise UsageError(f"source label map targets classes that '{target.name}' lacks: {', '.join(bad)}")
    missing = [c for c in source.classes if c not in mapping]
    if missing:
        raise UsageError(f"source label map does not say where '{source.name}' classes go: {', '.join(missing)} "
                         "(map each to a target class or to null)")
    lut = np.full(256, IGNORE, np.uint8)
    for i, c in enumerate(source.classes):
        if mapping[c] is not None:
            lut[i] = target.classes.index(mapping[c])
    return lut


def get_label_space(name) -> LabelSpace:
    """A built-in label space by name, or one described as a dict (``LabelSpace.to_dict``), as written
    into dataset.json for a user's own ``folder`` data."""
    from segadapt.errors import UsageError

    if isinstance(name, LabelSpace):
        return name
    if isinstance(name, dict):
        try:
            space = LabelSpace.from_dict(name)
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"malformed label space description ({e})") from None
        if len(space.palette) != space.num_classes or not 1 <= space.num_classes <= 255:
            raise UsageError(f"label space '{space.name}': needs 1..255 classes, one colour each")
        return space
    if name not in LABEL_SPACES:
        raise UsageError(f"unknown label space '{name}' (known: {', '.join(sorted(LABEL_SPACES))})")
    return LABEL_SPACES[name]
