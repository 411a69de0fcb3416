"""Procedural street scenes in two domains: the toolkit's embedded, licence-free benchmark.

One scene grammar (a perspective street: sky, road with markings, sidewalks, terrain strips, building
blocks with windows, walls, fences, hedges, trees, poles with traffic lights and signs, cars, trucks,
buses, pedestrians, cyclists) rendered in two styles:

* source, "GTA-like": saturated clean colours, flat shading, hard sun shadows, sharp edges;
* target, "Cityscapes-like": overcast colour cast, low contrast, other colours per class (darker bluish
  vegetation, grey cars, ...), rougher textures, haze, blur, sensor noise, vignetting, an ego-vehicle
  hood, a lower horizon and denser streets.

One module per concern:

* ``style``: every appearance and layout parameter of a domain in one ``DomainStyle``; ``shift`` in
  [0, 1] interpolates the target style between the source style (0) and the full target style (1);
* ``labels``: the Cityscapes labelIds the generator draws and their palette;
* ``raster``: the camera, the instance-map canvas and the painter every scene object draws with.
  Every primitive is rasterised once, without antialiasing, into an *instance map*; the label map and
  the image are both looked up from it, so they agree exactly;
* ``scene`` (with ``street``, ``roadside``, ``furniture``, ``vehicles``, ``people``): what stands
  where in one scene, drawn far to near;
* ``composition``: the frame: per-material textures, sky, fog, shadows and the camera model of its
  domain (``render_scene``);
* ``raw_layout``: ``generate_raw`` writes the RAW layouts of the real datasets (GTA5 palette labels,
  Cityscapes ``leftImg8bit``/``gtFine`` labelIds), so the real converters are exercised on it.
"""

from segadapt.data.synthetic.composition import render_scene
from segadapt.data.synthetic.labels import (BICYCLE, BUILDING, BUS, CAR, EGO, FENCE, LABEL_IDS, LABELID_PALETTE, LIGHT,
                                            MOTORCYCLE, PERSON, POLE, RIDER, ROAD, SIDEWALK, SIGN, SKY, TERRAIN,
                                            TRUCK, UNLABELED, VEGETATION, WALL)
from segadapt.data.synthetic.raw_layout import TRAIN_CITIES, VAL_CITIES, generate_raw
from segadapt.data.synthetic.style import SOURCE_STYLE, TARGET_STYLE, DomainStyle, domain_styles

__all__ = [
    "BICYCLE", "BUILDING", "BUS", "CAR", "EGO", "FENCE", "LABEL_IDS", "LABELID_PALETTE", "LIGHT", "MOTORCYCLE",
    "PERSON", "POLE", "RIDER", "ROAD", "SIDEWALK", "SIGN", "SKY", "TERRAIN", "TRUCK", "UNLABELED", "VEGETATION",
    "WALL", "SOURCE_STYLE", "TARGET_STYLE", "DomainStyle", "domain_styles", "render_scene", "TRAIN_CITIES",
    "VAL_CITIES", "generate_raw",
]
