"""Raw dataset -> prepared folder converters (``segadapt prepare-data``).

Each converter lists its raw (image, label) pairs and a label-conversion function; the shared
engine in ``common`` does the rest. The folder format is read by ``segadapt.data.prepared``."""

from segadapt.data.prepare.cityscapes import prepare_cityscapes
from segadapt.data.prepare.common import RawItem, LutLabels, parse_resize, prepare
from segadapt.data.prepare.gta5 import prepare_gta5

# kind -> converter, for the CLI
CONVERTERS = {"gta5": prepare_gta5, "cityscapes": prepare_cityscapes}

__all__ = ["CONVERTERS", "LutLabels", "RawItem", "parse_resize", "prepare", "prepare_cityscapes", "prepare_gta5"]
