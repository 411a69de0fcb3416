"""The label vocabulary of the generator: the Cityscapes labelIds it draws, and their colours."""

from __future__ import annotations

# Cityscapes labelIds used by the generator (also GTA5's palette indices).
UNLABELED, EGO = 0, 1
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN = 7, 8, 11, 12, 13, 17, 19, 20
VEGETATION, TERRAIN, SKY, PERSON, RIDER, CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE = 21, 22, 23, 24, 25, 26, 27, 28, 32, 33
#: every labelId the generator can write (1 = ego-vehicle hood, target only; ignored like in Cityscapes)
LABEL_IDS = (EGO, ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY,
             PERSON, RIDER, CAR, TRUCK, BUS, MOTORCYCLE, BICYCLE)

# The official Cityscapes labelId colours (cityscapesscripts labels.py), used as the GTA5 label palette.
LABELID_PALETTE = (
    (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0), (111, 74, 0), (81, 0, 81), (128, 64, 128),
    (244, 35, 232), (250, 170, 160), (230, 150, 140), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (180, 165, 180), (150, 100, 100), (150, 120, 90), (153, 153, 153), (153, 153, 153), (250, 170, 30),
    (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142),
    (0, 0, 70), (0, 60, 100), (0, 0, 90), (0, 0, 110), (0, 80, 100), (0, 0, 230), (119, 11, 32),
)
