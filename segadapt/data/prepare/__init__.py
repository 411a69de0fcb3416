"""Raw dataset -> prepared folder converters (``segadapt prepare-data``).

Each converter lists its raw (image, label) pairs and a label-conversion function; the shared
engine in ``common`` does the rest. Each registers itself in ``CONVERTERS`` with the options it
takes (``@converter(KIND, ROOT, OUT, ...)``); importing this package imports them all, so the
registry is full. The folder format is read by ``segadapt.data.prepared``."""

from segadapt.data.prepare.bdd100k import prepare_bdd100k
from segadapt.data.prepare.camvid import prepare_camvid
from segadapt.data.prepare.cityscapes import prepare_cityscapes
from segadapt.data.prepare.common import CONVERTERS, RawItem, LutLabels, parse_image_size, prepare
from segadapt.data.prepare.folder import prepare_folder
from segadapt.data.prepare.gta5 import prepare_gta5
from segadapt.data.prepare.mapillary import prepare_mapillary
from segadapt.data.prepare.synthetic import prepare_synthetic
from segadapt.data.prepare.synthia import prepare_synthia

__all__ = ["CONVERTERS", "LutLabels", "RawItem", "parse_image_size", "prepare", "prepare_bdd100k", "prepare_camvid",
           "prepare_cityscapes", "prepare_folder", "prepare_gta5", "prepare_mapillary", "prepare_synthetic",
           "prepare_synthia"]
