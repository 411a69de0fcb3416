"""Procedural street scenes in two domains: the toolkit's embedded, licence-free benchmark.

One scene grammar (a perspective street: sky, road with markings, sidewalks, terrain strips, building
blocks with windows, walls, fences, hedges, trees, poles with traffic lights and signs, cars, trucks,
buses, pedestrians, cyclists) rendered in two styles:

* source, "GTA-like": saturated clean colours, flat shading, hard sun shadows, sharp edges;
* target, "Cityscapes-like": overcast colour cast, low contrast, other colours per class (darker bluish
  vegetation, grey cars, ...), rougher textures, haze, blur, sensor noise, vignetting, an ego-vehicle
  hood, a lower horizon and denser streets.

Every appearance and layout parameter of a domain lives in one ``DomainStyle``; ``shift`` in [0, 1]
interpolates the target style between the source style (0) and the full target style (1).

``generate_raw`` writes the RAW layouts of the real datasets (GTA5 palette labels, Cityscapes
``leftImg8bit``/``gtFine`` labelIds), so the real converters are exercised on it.

Rendering: every primitive (polygon, circle, ellipse) is rasterised once, without antialiasing, into
an *instance map*; the label map and the image are both looked up from it, so they agree exactly.
The image then gets per-material textures, fog, shadows and the camera model of its domain.
"""

from __future__ import annotations

import io
import math
import multiprocessing as mp
from dataclasses import dataclass, fields, replace
from pathlib import Path

import cv2
import numpy as np

from segadapt.data.io import write_bytes, write_png
from segadapt.data.labelspace import CITYSCAPES19, CITYSCAPES_LABELID_TO_TRAINID
from segadapt.errors import UsageError

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

TRAIN_CITIES = ("altwerk", "brennhof", "corvale", "dunmark")
VAL_CITIES = ("elmshafen", "fernau")

Color = tuple[float, float, float]


@dataclass(frozen=True)
class DomainStyle:
    """Everything that distinguishes one domain from the other. Colours are RGB in 0..255.

    Lists of colours are *aligned* between the two styles (same length, the i-th entry is "the same
    kind" of object), so that ``blend`` can move each of them gradually."""

    # --- per-class colours; every object varies around its class colour
    sky_top: Color  # zenith colour of the sky gradient
    sky_horizon: Color  # colour at the horizon; also the fog colour
    cloud: Color  # colour of clouds
    cloud_amount: float  # 0 = clear sky, 1 = fully covered
    road: Color
    marking: Color  # lane markings and crossings (labelled road)
    sidewalk: Color
    curb: Color
    terrain: Color
    vegetation: tuple[Color, ...]  # foliage tones
    trunk: Color
    facades: tuple[Color, ...]  # building materials
    window: Color
    wall: Color
    fence: Color
    pole: Color
    light_box: Color  # traffic-light housing
    sign_colors: tuple[Color, ...]  # red, blue, white, yellow sign faces
    cars: tuple[Color, ...]
    trucks: tuple[Color, ...]
    buses: tuple[Color, ...]
    glass: Color  # vehicle windows
    clothes: tuple[Color, ...]
    skin: tuple[Color, ...]
    bikes: tuple[Color, ...]
    hood: Color  # ego-vehicle hood
    color_jitter: float  # per-object colour std, fraction of 255 (per channel)
    brightness_jitter: float  # per-object brightness factor range +-
    # --- lighting
    sun_contrast: float  # shading difference between sun-lit and shaded faces (0 = overcast)
    sun_shadow: float  # darkness of building shadows cast on the street (0 = none)
    p_sun_shadow: float  # probability that a street has a building shadow
    contact_shadow: float  # darkness under vehicles
    fog_distance: float  # metres; haze weight = 1 - exp(-depth / fog_distance)
    # --- texture statistics (multiplicative amplitudes)
    asphalt_noise: float  # fine grain of the road
    asphalt_patches: float  # low-frequency repairs / wet patches on the road
    tile_size: float  # sidewalk paving size in metres
    tile_lines: float  # darkness of paving joints
    grass_noise: float
    leaf_noise: float  # high-frequency foliage texture
    leaf_blotch: float  # low-frequency foliage variation
    facade_noise: float  # dirt / material grain on buildings
    paint_noise: float  # grain on vehicles, poles, signs, people
    # --- camera
    gain: Color  # per-channel gain (white balance / colour cast)
    offset: Color  # per-channel offset in 0..255 (haze lift lowers contrast)
    contrast: float  # around mid grey
    saturation: float  # 1 = unchanged
    gamma: float  # > 1 darkens mid tones
    global_jitter: float  # per-image random variation of gain / offset / gamma (fraction)
    vignette: float  # corner darkening
    light_gradient: float  # left-right / top-bottom illumination gradient amplitude
    blur_sigma: float  # optical blur in pixels (at 256 px width; scales with the width)
    noise_sigma: float  # sensor noise std in 0..255
    hood_height: float  # ego-vehicle hood, fraction of the image height (0 = none)
    # --- layout
    horizon: tuple[float, float]  # horizon row range as a fraction of the height
    camera_height: tuple[float, float]  # metres
    focal: tuple[float, float]  # focal length as a fraction of the width
    car_density: float  # expected cars per 50 m of lane
    parked_density: float  # expected parked cars per 50 m of curb
    person_density: float  # expected pedestrians per 50 m of sidewalk
    cyclist_rate: float  # expected cyclists per image
    tree_rate: float  # probability of a street tree every ~10 m
    pole_rate: float  # probability of a pole every ~15 m
    p_truck: float
    p_bus: float
    p_building_gap: float  # probability of a gap between building blocks (trees / sky behind)
    building_height: tuple[float, float]  # metres
    p_terrain_strip: float  # probability of a grass strip per side
    p_barrier: float  # probability of a wall / fence / hedge segment along a sidewalk

    def blend(self, other: "DomainStyle", t: float) -> "DomainStyle":
        """The style ``(1 - t) * self + t * other``, field by field."""

        def mix(a, b):
            if isinstance(a, tuple):
                return tuple(mix(x, y) for x, y in zip(a, b))
            return float(a + (b - a) * t)

        return replace(self, **{f.name: mix(getattr(self, f.name), getattr(other, f.name)) for f in fields(self)})


SOURCE_STYLE = DomainStyle(
    sky_top=(55, 125, 235), sky_horizon=(175, 215, 250), cloud=(250, 250, 255), cloud_amount=0.25,
    road=(100, 100, 106), marking=(240, 240, 230), sidewalk=(190, 175, 160), curb=(215, 215, 210),
    terrain=(105, 195, 55),
    vegetation=((45, 150, 30), (75, 170, 40), (30, 120, 35), (95, 160, 30)), trunk=(110, 75, 40),
    facades=((215, 180, 130), (185, 85, 65), (160, 160, 165), (235, 225, 200), (120, 135, 165), (220, 150, 80)),
    window=(70, 110, 160), wall=(200, 190, 160), fence=(150, 110, 60), pole=(125, 125, 130),
    light_box=(45, 45, 35), sign_colors=((225, 25, 25), (25, 80, 215), (245, 245, 245), (250, 205, 0)),
    cars=((210, 20, 20), (20, 60, 210), (245, 205, 20), (245, 245, 245), (30, 30, 30), (180, 180, 185),
          (30, 150, 60), (245, 120, 20)),
    trucks=((235, 235, 235), (210, 40, 30), (40, 80, 180), (240, 185, 30)),
    buses=((235, 195, 30), (210, 40, 30), (40, 125, 210), (240, 240, 240)),
    glass=(40, 60, 90),
    clothes=((210, 30, 30), (30, 30, 170), (245, 245, 245), (30, 30, 30), (40, 160, 60), (245, 185, 20),
             (140, 60, 170), (95, 60, 40)),
    skin=((245, 205, 170), (205, 150, 110), (145, 95, 65), (95, 62, 42)),
    bikes=((210, 30, 30), (30, 30, 30), (30, 90, 210), (225, 225, 225)),
    hood=(40, 40, 45),
    color_jitter=0.05, brightness_jitter=0.12,
    sun_contrast=0.4, sun_shadow=0.45, p_sun_shadow=0.7, contact_shadow=0.55, fog_distance=600.0,
    asphalt_noise=0.03, asphalt_patches=0.03, tile_size=1.0, tile_lines=0.18, grass_noise=0.06,
    leaf_noise=0.08, leaf_blotch=0.12, facade_noise=0.02, paint_noise=0.01,
    gain=(1.0, 1.0, 1.0), offset=(0.0, 0.0, 0.0), contrast=1.05, saturation=1.25, gamma=0.95,
    global_jitter=0.03, vignette=0.0, light_gradient=0.0, blur_sigma=0.0, noise_sigma=0.0, hood_height=0.0,
    horizon=(0.36, 0.46), camera_height=(2.0, 2.4), focal=(0.75, 0.9),
    car_density=1.5, parked_density=2.5, person_density=1.5, cyclist_rate=0.5, tree_rate=0.35,
    pole_rate=0.6, p_truck=0.2, p_bus=0.15, p_building_gap=0.25, building_height=(7.0, 30.0),
    p_terrain_strip=0.35, p_barrier=0.3,
)

TARGET_STYLE = DomainStyle(
    sky_top=(128, 148, 182), sky_horizon=(200, 206, 214), cloud=(172, 176, 186), cloud_amount=0.6,
    road=(82, 80, 88), marking=(200, 200, 196), sidewalk=(150, 128, 135), curb=(160, 158, 160),
    terrain=(125, 130, 80),
    vegetation=((56, 92, 54), (70, 104, 70), (44, 78, 60), (86, 102, 58)), trunk=(72, 62, 55),
    facades=((165, 152, 140), (125, 100, 92), (112, 112, 118), (185, 178, 166), (92, 98, 112), (150, 132, 112)),
    window=(38, 42, 52), wall=(150, 145, 138), fence=(90, 95, 92), pole=(85, 90, 95),
    light_box=(30, 32, 30), sign_colors=((175, 45, 45), (45, 75, 150), (215, 215, 210), (200, 175, 50)),
    cars=((62, 62, 68), (30, 36, 62), (115, 35, 35), (205, 205, 210), (22, 22, 24), (150, 152, 158),
          (52, 72, 58), (125, 112, 96)),
    trucks=((190, 190, 192), (150, 60, 50), (60, 80, 120), (175, 150, 80)),
    buses=((180, 165, 90), (150, 60, 55), (70, 110, 150), (210, 210, 208)),
    glass=(25, 28, 34),
    clothes=((120, 40, 45), (40, 45, 80), (190, 190, 185), (25, 25, 28), (55, 80, 60), (160, 130, 70),
             (90, 60, 100), (80, 62, 50)),
    skin=((225, 190, 165), (185, 140, 110), (130, 92, 70), (85, 60, 45)),
    bikes=((140, 40, 40), (25, 25, 28), (45, 70, 130), (180, 180, 180)),
    hood=(28, 30, 34),
    color_jitter=0.07, brightness_jitter=0.15,
    sun_contrast=0.08, sun_shadow=0.0, p_sun_shadow=0.1, contact_shadow=0.35, fog_distance=140.0,
    asphalt_noise=0.08, asphalt_patches=0.12, tile_size=0.45, tile_lines=0.08, grass_noise=0.16,
    leaf_noise=0.25, leaf_blotch=0.15, facade_noise=0.07, paint_noise=0.04,
    gain=(0.84, 0.92, 1.08), offset=(12.0, 14.0, 22.0), contrast=0.8, saturation=0.7, gamma=1.2,
    global_jitter=0.06, vignette=0.35, light_gradient=0.18, blur_sigma=0.7, noise_sigma=4.0, hood_height=0.07,
    horizon=(0.42, 0.52), camera_height=(1.6, 2.0), focal=(0.8, 0.95),
    car_density=1.8, parked_density=3.0, person_density=2.2, cyclist_rate=0.8, tree_rate=0.55,
    pole_rate=0.8, p_truck=0.12, p_bus=0.1, p_building_gap=0.3, building_height=(8.0, 24.0),
    p_terrain_strip=0.45, p_barrier=0.4,
)


def domain_styles(shift: float = 1.0) -> tuple[DomainStyle, DomainStyle]:
    """(source style, target style) with the target moved ``shift`` of the way from source to full target."""
    if not 0.0 <= shift <= 1.0:
        raise UsageError(f"shift must lie in [0, 1], got {shift}")
    return SOURCE_STYLE, SOURCE_STYLE.blend(TARGET_STYLE, shift)


# ----------------------------------------------------------------------------------------- rendering

# materials select the texture applied after the flat colour fill
M_FLAT, M_SKY, M_ASPHALT, M_TILES, M_GRASS, M_LEAVES, M_FACADE, M_SLATS, M_PAINT = range(9)
# depth modes: how the per-pixel distance (for haze and world-anchored textures) is found
D_CONST, D_GROUND, D_XPLANE, D_SKY = range(4)
_Z_MIN = 0.3  # metres; nothing is projected nearer, so coordinates stay finite


class _Cam:
    """Pinhole camera at height ``h`` looking along +Z (X right, Y up)."""

    def __init__(self, w: int, hgt: int, f: float, h: float, xv: float, yh: float):
        self.w, self.hgt, self.f, self.h, self.xv, self.yh = w, hgt, f, h, xv, yh

    def p(self, X, Y, Z) -> np.ndarray:
        X, Y, Z = np.broadcast_arrays(np.asarray(X, float), np.asarray(Y, float), np.maximum(Z, _Z_MIN))
        return np.stack([self.xv + self.f * X / Z, self.yh + self.f * (self.h - Y) / Z], -1)

    def scale(self, Z):
        """Pixels per metre at distance Z."""
        return self.f / np.maximum(Z, _Z_MIN)


class _Canvas:
    """Instance-map rasteriser. Each primitive gets an id; colour, label, material and depth are per id."""

    SHIFT, ONE = 2, 4  # quarter-pixel vertex precision

    def __init__(self, w: int, h: int):
        self.w, self.h = w, h
        self.inst = np.zeros((h, w), np.int32)
        self.shadow = np.ones((h, w), np.float32)  # multiplies ground pixels only
        self.color: list[Color] = [(0.0, 0.0, 0.0)]
        self.label: list[int] = [UNLABELED]
        self.mat: list[int] = [M_FLAT]
        self.dmode: list[int] = [D_SKY]
        self.dval: list[float] = [0.0]

    def _visible(self, pts: np.ndarray) -> bool:
        lo, hi = pts.min(0), pts.max(0)
        return hi[0] >= -1 and lo[0] <= self.w and hi[1] >= -1 and lo[1] <= self.h

    def _new(self, color, label, mat, depth) -> int:
        if isinstance(depth, tuple):  # ("x", X): a vertical plane parallel to the street
            mode, val = D_XPLANE, depth[1]
        elif depth == "ground":
            mode, val = D_GROUND, 0.0
        elif depth == "sky":
            mode, val = D_SKY, 0.0
        else:
            mode, val = D_CONST, float(depth)
        self.color.append(tuple(float(c) for c in color))
        self.label.append(label)
        self.mat.append(mat)
        self.dmode.append(mode)
        self.dval.append(val)
        return len(self.color) - 1

    def _fix(self, pts) -> np.ndarray:
        # no clipping needed: Z >= _Z_MIN bounds every projected coordinate far below the int32 range
        return np.round(np.asarray(pts) * self.ONE).astype(np.int32)

    def poly(self, pts, color, label, mat=M_FLAT, depth=10.0) -> None:
        pts = np.asarray(pts, float).reshape(-1, 2)
        if not self._visible(pts):
            return
        i = self._new(color, label, mat, depth)
        cv2.fillPoly(self.inst, [self._fix(pts)], i, cv2.LINE_8, self.SHIFT)

    def polys(self, pts_list, color, label, mat=M_FLAT, depth=10.0) -> None:
        """Several non-overlapping polygons sharing one colour (e.g. the windows of a facade)."""
        pts_list = [np.asarray(p, float).reshape(-1, 2) for p in pts_list]
        pts_list = [p for p in pts_list if self._visible(p)]
        if pts_list:
            i = self._new(color, label, mat, depth)
            cv2.fillPoly(self.inst, [self._fix(p) for p in pts_list], i, cv2.LINE_8, self.SHIFT)

    def ellipse(self, c, ax, ay, color, label, mat=M_FLAT, depth=10.0, thickness=-1) -> None:
        c = np.asarray(c, float)
        if c[0] + ax < -1 or c[0] - ax > self.w or c[1] + ay < -1 or c[1] - ay > self.h:
            return
        i = self._new(color, label, mat, depth)
        axes = (max(int(round(ax * self.ONE)), 0), max(int(round(ay * self.ONE)), 0))
        cv2.ellipse(self.inst, tuple(int(v) for v in self._fix(c)), axes, 0, 0, 360, i, thickness, cv2.LINE_8,
                    self.SHIFT)

    def bar(self, p0, p1, width, color, label, mat=M_PAINT, depth=10.0) -> None:
        """A thick line as a polygon (sub-pixel widths still draw one pixel: thin poles never vanish)."""
        p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
        d = p1 - p0
        n = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-6) * width / 2
        self.poly([p0 + n, p1 + n, p1 - n, p0 - n], color, label, mat, depth)

    def shade_ground(self, pts, value: float) -> None:
        pts = np.asarray(pts, float).reshape(-1, 2)
        if value < 0.999 and self._visible(pts):
            cv2.fillPoly(self.shadow, [self._fix(pts)], float(value), cv2.LINE_8, self.SHIFT)


def _jit(rng: np.random.Generator, base, st: DomainStyle, scale: float = 1.0) -> np.ndarray:
    """A colour varied around ``base``: per-channel noise plus a brightness factor."""
    c = np.asarray(base, float) + rng.normal(0.0, st.color_jitter * 255 * scale, 3)
    c = c * rng.uniform(1 - st.brightness_jitter * scale, 1 + st.brightness_jitter * scale)
    return np.clip(c, 0, 255)


def _pick(rng: np.random.Generator, colors) -> tuple:
    return colors[int(rng.integers(len(colors)))]


def _poisson_positions(rng, rate_per_50m: float, z0: float, z1: float, min_gap: float) -> list[float]:
    """Sorted positions along a line with a minimum spacing (objects do not overlap)."""
    n = rng.poisson(rate_per_50m * (z1 - z0) / 50.0)
    zs = np.sort(rng.uniform(z0, z1, n))
    out: list[float] = []
    for z in zs:
        if not out or z - out[-1] >= min_gap:
            out.append(float(z))
    return out


# ------------------------------------------------------------------------------------ scene objects

class _Scene:
    """Builds the primitives of one street scene on a canvas, far to near."""

    def __init__(self, cv: _Canvas, cam: _Cam, st: DomainStyle, rng: np.random.Generator):
        self.cv, self.cam, self.st, self.rng = cv, cam, st, rng
        self.sun = 1 if rng.random() < 0.5 else -1  # the sun is on this side of the street

    # shading of a face by its normal: faces turned toward the sun are lit
    def face(self, color, nx: float = 0.0, top: bool = False) -> np.ndarray:
        c = self.st.sun_contrast
        if top:
            k = 1 + 0.15 * c
        elif nx == 0:
            k = 1 - 0.45 * c  # faces toward the camera
        else:
            k = 1.0 if nx == self.sun else 1 - c
        return np.clip(np.asarray(color, float) * k, 0, 255)

    def quad_x(self, X, y0, y1, z0, z1):
        return self.cam.p([X, X, X, X], [y0, y0, y1, y1], [z0, z1, z1, z0])

    def quad_z(self, Z, x0, x1, y0, y1):
        return self.cam.p([x0, x1, x1, x0], [y0, y0, y1, y1], [Z, Z, Z, Z])

    def quad_y(self, Y, x0, x1, z0, z1):
        return self.cam.p([x0, x1, x1, x0], [Y, Y, Y, Y], [z0, z0, z1, z1])

    # ---------------------------------------------------------------------------------- build
    def build(self) -> None:
        rng, st = self.rng, self.st
        # street cross-section (metres from the camera; the camera drives in the right lane)
        self.rr = rng.uniform(1.8, 5.0)
        self.rl = rng.uniform(3.5, 9.0)
        self.sw = {1: rng.uniform(1.5, 4.0), -1: rng.uniform(1.5, 4.0)}
        self.lawn = {s: (rng.uniform(0.8, 1.6) if rng.random() < 0.3 else 0.0) for s in (1, -1)}
        self.strip = {s: (rng.uniform(1.0, 5.0) if rng.random() < st.p_terrain_strip else 0.0) for s in (1, -1)}
        self.edge = {1: self.rr, -1: self.rl}  # road edge distance per side
        self.outer = {s: self.edge[s] + self.sw[s] for s in (1, -1)}  # outer sidewalk edge
        self.bline = {s: self.outer[s] + self.strip[s] + rng.uniform(0.0, 1.5) for s in (1, -1)}
        self.zend = rng.uniform(60, 160) if rng.random() < 0.6 else None
        self.zfar = self.zend if self.zend else 2000.0

        self.draw_background()
        self.draw_ground()
        self.draw_buildings()
        self.draw_barriers()
        objs: list[tuple[float, int, object]] = []
        self.plan_street_objects(objs)
        for _z, _k, fn in sorted(objs, key=lambda o: (-o[0], o[1])):
            fn()
        if st.hood_height > 0.005:
            self.draw_hood()

    # ---------------------------------------------------------------------------- background
    def draw_background(self) -> None:
        cv, w, h = self.cv, self.cv.w, self.cv.h
        cv.poly([(0, 0), (w, 0), (w, h), (0, h)], (0, 0, 0), SKY, M_SKY, "sky")
        yh = self.cam.yh
        cv.poly([(-w, yh), (2 * w, yh), (2 * w, h + 2), (-w, h + 2)], _jit(self.rng, self.st.terrain, self.st),
                TERRAIN, M_GRASS, "ground")

    def draw_ground(self) -> None:
        rng, st, cv = self.rng, self.st, self.cv
        zn, zf = 0.5, self.zfar

        def strip(x0, x1, color, label, mat, z0=zn, z1=zf):
            cv.poly(self.quad_y(0.0, x0, x1, z0, z1), color, label, mat, "ground")

        strip(-self.rl, self.rr, _jit(rng, st.road, st, 0.5), ROAD, M_ASPHALT)
        for s in (1, -1):
            e, o = self.edge[s], self.outer[s]
            strip(*sorted((s * e, s * o)), _jit(rng, st.sidewalk, st, 0.6), SIDEWALK, M_TILES)
            strip(*sorted((s * e, s * (e + 0.2))), _jit(rng, st.curb, st, 0.5), SIDEWALK, M_FLAT)
            if self.lawn[s]:
                strip(*sorted((s * (e + 0.2), s * (e + 0.2 + self.lawn[s]))), _jit(rng, st.terrain, st), TERRAIN,
                      M_GRASS)
            if self.strip[s]:
                strip(*sorted((s * o, s * (o + self.strip[s]))), _jit(rng, st.terrain, st), TERRAIN, M_GRASS)
        # lane markings: dashed lane separators, sometimes solid edge lines
        mark = _jit(rng, st.marking, st, 0.3)
        lanes = [-1.75 - 3.5 * k for k in range(3) if 1.75 + 3.5 * k < self.rl - 1.0]
        period, dash, phase = rng.uniform(8, 12), rng.uniform(2.5, 4), rng.uniform(0, 12)
        for x in lanes:
            pts = [self.quad_y(0.0, x - 0.07, x + 0.07, z, z + dash) for z in np.arange(phase - 12, 55, period)
                   if z + dash > 0.5]
            cv.polys(pts, mark, ROAD, M_FLAT, "ground")
        if rng.random() < 0.5:
            for x in (self.rr - 0.35, -self.rl + 0.35):
                strip(x - 0.07, x + 0.07, mark, ROAD, M_FLAT, zn, min(zf, 200.0))
        # zebra crossing
        self.zcross = None
        if rng.random() < 0.3:
            zc = rng.uniform(7, 30)
            self.zcross = zc
            xs = np.arange(-self.rl + 0.5, self.rr - 0.5, 1.0)
            cv.polys([self.quad_y(0.0, x, x + 0.5, zc, zc + 3.0) for x in xs], mark, ROAD, M_FLAT, "ground")
        # the building shadow on the sun side covers part of the street
        if st.sun_shadow > 0.01 and rng.random() < st.p_sun_shadow:
            s = self.sun
            width = rng.uniform(0.3, 1.0) * (self.bline[s] + self.edge[-s])
            x0, x1 = sorted((s * self.bline[s], s * (self.bline[s] - width)))
            z0 = rng.uniform(0.5, 40)
            cv.shade_ground(self.quad_y(0.0, x0, x1, z0, zf), 1 - st.sun_shadow)

    # ----------------------------------------------------------------------------- buildings
    def draw_buildings(self) -> None:
        rng, st = self.rng, self.st
        items: list[tuple[float, int, object]] = []
        zmax = self.zend if self.zend else 180.0
        if self.zend:  # a row of buildings or trees closing the street
            zc = self.zend
            if rng.random() < 0.7:
                hgt = rng.uniform(*st.building_height)
                items.append((zc + 1, 0, lambda: self.block_front(zc, -80, 80, hgt)))
            else:
                items.append((zc + 1, 0, lambda: self.tree_row(zc)))
        k = 1
        for s in (1, -1):
            z = rng.uniform(-8, 2)
            while z < zmax:
                if rng.random() < st.p_building_gap:
                    length = rng.uniform(5, 18)
                    z0 = z
                    for zt in np.arange(z0 + 2, z0 + length, rng.uniform(4, 8)):
                        xt = s * (self.bline[s] + rng.uniform(1, 5))
                        items.append((zt, k, lambda xt=xt, zt=zt: self.tree(xt, zt, big=True)))
                        k += 1
                else:
                    length = rng.uniform(8, 30)
                    x = s * (self.bline[s] + (rng.uniform(0, 2.5) if rng.random() < 0.3 else 0.0))
                    hgt = rng.uniform(*st.building_height)
                    z0, z1 = z, min(z + length, zmax)
                    items.append((z1, k, lambda x=x, z0=z0, z1=z1, hgt=hgt: self.block(x, z0, z1, hgt)))
                    k += 1
                z += length
        for _z, _k, fn in sorted(items, key=lambda o: (-o[0], o[1])):
            fn()

    def facade_color(self):
        return _jit(self.rng, _pick(self.rng, self.st.facades), self.st)

    def block(self, x: float, z0: float, z1: float, hgt: float) -> None:
        """A building block along the street: its facade, its near end face and a grid of windows."""
        rng, st, cam, cv = self.rng, self.st, self.cam, self.cv
        s = 1 if x > 0 else -1
        col = self.facade_color()
        zn = max(z0, 0.5)
        if zn >= z1:
            return
        cv.poly(self.quad_x(x, 0, hgt, zn, z1), self.face(col, -s), BUILDING, M_FACADE, ("x", x))
        if z0 > 0.5:  # end face toward the camera, seen where the nearer block is lower or set back
            cv.poly(self.quad_z(z0, x, x + s * 20, 0, hgt), self.face(col, 0), BUILDING, M_FACADE, z0)
        # windows: skip blocks too far away for them to be more than a pixel or two
        floor_h, col_w = rng.uniform(2.8, 3.6), rng.uniform(2.2, 3.5)
        if cam.scale(max(zn, 1.0)) * floor_h < 3.0:
            return
        win = _jit(rng, st.window, st, 0.6)
        ww, wh = rng.uniform(0.4, 0.65) * col_w, rng.uniform(0.45, 0.6) * floor_h
        ys = np.arange(1.0 + 0.3 * floor_h, hgt - floor_h * 0.7, floor_h)
        zs = np.arange(z0 + 0.5, z1 - ww, col_w)
        zs = zs[(zs > 0.5) & (cam.scale(np.maximum(zs, 0.5)) * floor_h >= 2.5)]
        if len(ys) == 0 or len(zs) == 0:
            return
        Y0, Z0 = np.meshgrid(ys, zs)
        Y0, Z0 = Y0.ravel(), Z0.ravel()
        X = np.full_like(Y0, x)
        corners = np.stack([cam.p(X, Y0, Z0), cam.p(X, Y0, Z0 + ww), cam.p(X, Y0 + wh, Z0 + ww),
                            cam.p(X, Y0 + wh, Z0)], 1)
        lit = rng.random(len(corners)) < 0.15  # some windows reflect the sky
        cv.polys(list(corners[~lit]), self.face(win, -s), BUILDING, M_FLAT, ("x", x))
        cv.polys(list(corners[lit]), self.face(win * 1.6 + 30, -s), BUILDING, M_FLAT, ("x", x))

    def block_front(self, z: float, x0: float, x1: float, hgt: float) -> None:
        col = self.facade_color()
        self.cv.poly(self.quad_z(z, x0, x1, 0, hgt), self.face(col, 0), BUILDING, M_FACADE, z)
        # a second, taller row behind breaks the skyline
        for xa in np.arange(x0, x1, 14.0):
            h2 = hgt + self.rng.uniform(-4, 8)
            if self.rng.random() < 0.4 and h2 > hgt:
                self.cv.poly(self.quad_z(z + 10, xa, xa + 12, 0, h2), self.face(self.facade_color(), 0), BUILDING,
                             M_FACADE, z + 10)

    def tree_row(self, z: float) -> None:
        for xt in np.arange(-40, 40, 5.0):
            self.tree(xt + self.rng.uniform(-2, 2), z + self.rng.uniform(0, 5), big=True)

    # ------------------------------------------------------------------------------ vegetation
    def tree(self, X: float, Z: float, big: bool = False) -> None:
        rng, st, cam, cv = self.rng, self.st, self.cam, self.cv
        s = cam.scale(Z)
        x, yg = cam.p(X, 0, Z)
        trunk_h = rng.uniform(1.8, 3.0) * (1.3 if big else 1.0)
        crown = rng.uniform(1.4, 2.6) * (1.5 if big else 1.0)
        trunk = _jit(rng, st.trunk, st, 0.6)
        tw = rng.uniform(0.25, 0.4) * s
        cv.bar((x, yg), (x, yg - (trunk_h + crown) * s), tw, trunk, VEGETATION, M_FLAT, Z)
        cy = yg - (trunk_h + crown) * s
        base = _pick(rng, st.vegetation)
        for _ in range(int(rng.integers(4, 8))):
            dx, dy = rng.normal(0, 0.45 * crown, 2)
            r = rng.uniform(0.45, 0.8) * crown
            col = _jit(rng, base, st, 0.6) * (0.8 if dy > 0 else 1.0)  # lower blobs are in the crown's shade
            cv.ellipse((x + dx * s, cy + dy * s), r * s, r * s * rng.uniform(0.8, 1.1), col, VEGETATION, M_LEAVES, Z)

    def hedge(self, x: float, z0: float, z1: float) -> None:
        s = 1 if x > 0 else -1
        hgt = self.rng.uniform(0.8, 1.5)
        col = _jit(self.rng, _pick(self.rng, self.st.vegetation), self.st, 0.7)
        self.cv.poly(self.quad_y(hgt, x, x + s * 0.8, z0, z1), self.face(col, 0, top=True), VEGETATION, M_LEAVES,
                     z0)
        self.cv.poly(self.quad_x(x, 0, hgt, z0, z1), self.face(col, -s) * 0.9, VEGETATION, M_LEAVES, ("x", x))

    # -------------------------------------------------------------------------- walls, fences
    def draw_barriers(self) -> None:
        rng, st = self.rng, self.st
        items = []
        for s in (1, -1):
            z = rng.uniform(0, 10)
            while z < 90:
                length = rng.uniform(5, 25)
                if rng.random() < st.p_barrier:
                    kind = rng.choice(3, p=[0.35, 0.4, 0.25])
                    x = s * (self.outer[s] + (0.0 if self.strip[s] == 0 else self.strip[s] * rng.uniform(0, 1)))
                    items.append((z + length, len(items), kind, x, max(z, 0.5)))
                z += length + rng.uniform(0, 15)
        for z1, _k, kind, x, z0 in sorted(items, key=lambda o: (-o[0], o[1])):
            if kind == 0:
                self.wall(x, z0, z1)
            elif kind == 1:
                self.fence(x, z0, z1)
            else:
                self.hedge(x, z0, z1)

    def wall(self, x: float, z0: float, z1: float) -> None:
        s = 1 if x > 0 else -1
        hgt, th = self.rng.uniform(0.8, 2.5), 0.3
        col = _jit(self.rng, self.st.wall, self.st)
        self.cv.poly(self.quad_y(hgt, x, x + s * th, z0, z1), self.face(col, 0, top=True), WALL, M_FACADE, z0)
        self.cv.poly(self.quad_x(x, 0, hgt, z0, z1), self.face(col, -s), WALL, M_FACADE, ("x", x))
        self.cv.poly(self.quad_z(z0, x, x + s * th, 0, hgt), self.face(col, 0), WALL, M_FACADE, z0)

    def fence(self, x: float, z0: float, z1: float) -> None:
        s = 1 if x > 0 else -1
        hgt = self.rng.uniform(1.0, 2.0)
        col = _jit(self.rng, self.st.fence, self.st)
        self.cv.poly(self.quad_x(x, 0, hgt, z0, z1), self.face(col, -s), FENCE, M_SLATS, ("x", x))
        for zp in np.arange(z0, z1, 2.5):  # posts
            self.cv.poly(self.quad_x(x, 0, hgt + 0.1, zp, zp + 0.12), self.face(col, -s) * 0.7, FENCE, M_FLAT,
                         ("x", x))

    # ----------------------------------------------------------------------- street objects
    def plan_street_objects(self, objs: list) -> None:
        rng, st = self.rng, self.st
        add = lambda z, fn: objs.append((z, len(objs), fn))  # noqa: E731
        zmax = min(self.zfar - 5, 90.0)
        # moving traffic: same direction in the camera lane, oncoming lanes to the left
        lanes = [(0.0, False)] + [(-1.75 - 3.5 * k - 1.75, True) for k in range(2) if 3.5 * (k + 1) < self.rl - 0.8]
        taken: list[tuple[float, float]] = []  # (lane, z) of moving vehicles, so that they do not overlap
        for xc, oncoming in lanes:
            for z in _poisson_positions(rng, st.car_density, 4.0, zmax, 8.0):
                xj = xc + rng.normal(0, 0.25)
                taken.append((xc, z))
                r = rng.random()
                if r < st.p_truck * 0.4:
                    add(z, lambda xj=xj, z=z, o=oncoming: self.truck(xj, z, o))
                elif r < (st.p_truck + st.p_bus) * 0.4:
                    add(z, lambda xj=xj, z=z, o=oncoming: self.bus(xj, z, o))
                else:
                    add(z, lambda xj=xj, z=z, o=oncoming: self.car(xj, z, o))
        # rare large vehicles get an extra chance per image, where their lane is free
        for p, fn in ((st.p_truck, self.truck), (st.p_bus, self.bus)):
            if rng.random() < p:
                xc, oncoming = lanes[int(rng.integers(len(lanes)))]
                z = rng.uniform(10, max(min(60, zmax), 11))
                if all(abs(z - zt) > 14 for xt, zt in taken if xt == xc):
                    taken.append((xc, z))
                    add(z, lambda xc=xc, z=z, o=oncoming, fn=fn: fn(xc, z, o))
        # parked cars along the curbs, where they leave the outermost lane free
        lane_extent = {1: 0.95, -1: max(-x for x, _ in lanes) + 0.95}
        for s in (1, -1):
            if self.edge[s] - 2.1 > lane_extent[s] + 0.2:
                xc = s * (self.edge[s] - 1.1)
                for z in _poisson_positions(rng, st.parked_density, 2.0, zmax, 5.5):
                    add(z, lambda xc=xc, z=z: self.car(xc, z, bool(rng.random() < 0.3)))
        # pedestrians on the sidewalks, some crossing
        for s in (1, -1):
            for z in _poisson_positions(rng, st.person_density, 2.5, min(zmax, 60.0), 0.8):
                x = s * (self.edge[s] + rng.uniform(0.4, self.sw[s] - 0.3))
                add(z, lambda x=x, z=z: self.person(x, z))
        if self.zcross is not None or rng.random() < 0.2:
            zc = self.zcross + 1.5 if self.zcross is not None else rng.uniform(6, 30)
            for _ in range(int(rng.integers(1, 5))):
                x = rng.uniform(-self.rl, self.rr)
                z = zc + rng.normal(0, 0.5)
                add(z, lambda x=x, z=z: self.person(x, z))
        # cyclists: along the right edge or crossing; parked bicycles on sidewalks
        for _ in range(rng.poisson(st.cyclist_rate)):
            z = rng.uniform(4, 40)
            x = self.rr - rng.uniform(0.5, 1.2) if rng.random() < 0.7 else rng.uniform(-self.rl, self.rr)
            add(z, lambda x=x, z=z: self.cyclist(x, z, motor=bool(rng.random() < 0.2)))
        if rng.random() < 0.3:
            s = 1 if rng.random() < 0.5 else -1
            z0 = rng.uniform(4, 30)
            for i in range(int(rng.integers(1, 4))):
                x, z = s * (self.outer[s] - 0.5), z0 + 0.7 * i
                add(z, lambda x=x, z=z: self.cyclist(x, z, rider=False))
        # street furniture on the curb: poles (lamps, traffic lights, signs) and trees
        for s in (1, -1):
            xp = s * (self.edge[s] + 0.45)
            for z in np.arange(rng.uniform(2, 15), zmax, 15.0):
                if rng.random() < st.pole_rate:
                    kind = rng.choice(3, p=[0.45, 0.25, 0.30])
                    zz = float(z + rng.uniform(-3, 3))
                    add(zz, lambda xp=xp, zz=zz, kind=kind: self.pole(xp, zz, kind))
            xt = s * (self.edge[s] + 0.2 + self.lawn[s] / 2 if self.lawn[s] else self.outer[s] - 0.6)
            for z in np.arange(rng.uniform(1, 10), zmax, 10.0):
                if rng.random() < st.tree_rate:
                    zz = float(z + rng.uniform(-2, 2))
                    add(zz, lambda xt=xt, zz=zz: self.tree(xt, zz))

    # --------------------------------------------------------------------------------- poles
    def pole(self, X: float, Z: float, kind: int) -> None:
        rng, st, cam, cv = self.rng, self.st, self.cam, self.cv
        s = cam.scale(Z)
        x, yg = cam.p(X, 0, Z)
        col = _jit(rng, st.pole, st, 0.5)
        hgt = (rng.uniform(5, 8), rng.uniform(3.2, 4.5), rng.uniform(2.2, 3.2))[kind]
        width = rng.uniform(0.12, 0.2) * s
        cv.bar((x, yg), (x, yg - hgt * s), width, col, POLE, M_PAINT, Z)
        side = -1 if X > 0 else 1  # toward the road
        if kind == 0:  # street lamp: an arm over the road and a lamp head
            arm = rng.uniform(1.0, 2.0)
            tip = (x + side * arm * s, yg - (hgt + 0.3) * s)
            cv.bar((x, yg - hgt * s), tip, width * 0.8, col, POLE, M_PAINT, Z)
            cv.poly([(tip[0] - 0.3 * s, tip[1]), (tip[0] + 0.3 * s, tip[1]), (tip[0] + 0.2 * s, tip[1] + 0.15 * s),
                     (tip[0] - 0.2 * s, tip[1] + 0.15 * s)], col * 0.8, POLE, M_PAINT, Z)
        elif kind == 1:  # traffic light, on the pole or hanging from an arm over the road
            if rng.random() < 0.35:
                arm = rng.uniform(2.5, 4.5)
                cv.bar((x, yg - hgt * s), (x + side * arm * s, yg - hgt * s), width * 0.8, col, POLE, M_PAINT, Z)
                self.traffic_light(x + side * arm * s, yg - (hgt - 0.1) * s, s, Z)
            else:
                self.traffic_light(x, yg - (hgt - 0.9) * s, s, Z)
        else:  # traffic sign
            self.sign(x, yg - hgt * s, s, Z)

    def traffic_light(self, x: float, ytop: float, s: float, Z: float) -> None:
        rng, st, cv = self.rng, self.st, self.cv
        bw, bh = 0.35 * s, 0.95 * s
        box = _jit(rng, st.light_box, st, 0.4)
        cv.poly([(x - bw / 2, ytop), (x + bw / 2, ytop), (x + bw / 2, ytop + bh), (x - bw / 2, ytop + bh)], box, LIGHT,
                M_PAINT, Z)
        on = int(rng.integers(3))
        lamps = ((230, 40, 30), (240, 180, 20), (40, 220, 90))
        for i, lc in enumerate(lamps):
            c = np.asarray(lc, float) * (1.0 if i == on else 0.3)
            cv.ellipse((x, ytop + bh * (0.18 + 0.32 * i)), 0.11 * s, 0.11 * s, c, LIGHT, M_FLAT, Z)

    def sign(self, x: float, yc: float, s: float, Z: float) -> None:
        rng, st, cv = self.rng, self.st, self.cv
        red, blue, white, yellow = (_jit(rng, c, st, 0.4) for c in st.sign_colors)
        kind = int(rng.integers(4))
        r = rng.uniform(0.3, 0.4) * s
        if kind == 0:  # prohibitory: red ring, white centre
            cv.ellipse((x, yc), r, r, red, SIGN, M_PAINT, Z)
            cv.ellipse((x, yc), r * 0.72, r * 0.72, white, SIGN, M_PAINT, Z)
        elif kind == 1:  # mandatory: blue disc with a white arrow
            cv.ellipse((x, yc), r, r, blue, SIGN, M_PAINT, Z)
            cv.bar((x, yc + r * 0.5), (x, yc - r * 0.5), r * 0.3, white, SIGN, M_PAINT, Z)
        elif kind == 2:  # warning: red triangle, white inside
            tri = np.array([(0, -1.1), (1, 0.7), (-1, 0.7)])
            cv.poly(tri * r + (x, yc), red, SIGN, M_PAINT, Z)
            cv.poly(tri * r * 0.62 + (x, yc + 0.1 * r), white, SIGN, M_PAINT, Z)
        else:  # information: blue or yellow rectangle
            cv.poly([(x - r, yc - r), (x + r, yc - r), (x + r, yc + r * 0.8), (x - r, yc + r * 0.8)],
                    blue if rng.random() < 0.6 else yellow, SIGN, M_PAINT, Z)

    # ------------------------------------------------------------------------------ vehicles
    def _box_vehicle(self, xc, zb, w, length, y0, y1, col, label, mat=M_PAINT):
        """Visible side face and rear (or front) face of a box; returns the side face's X (or None)."""
        cv = self.cv
        x0, x1 = xc - w / 2, xc + w / 2
        xs = x0 if x0 > 0 else (x1 if x1 < 0 else None)
        if xs is not None:
            nx = -1 if xs == x0 else 1
            cv.poly(self.quad_x(xs, y0, y1, zb, zb + length), self.face(col, nx), label, mat, ("x", xs))
        return xs

    def _wheels(self, xc, zb, w, length, r, label, xs, col=(25, 25, 28)) -> None:
        cam, cv = self.cam, self.cv
        col = np.asarray(col, float)
        for z in (zb + length - 0.9, zb + 0.9):
            if xs is not None:
                c = cam.p(xs, r, z)
                cv.ellipse(c, r * cam.scale(z) * 0.45, r * cam.scale(z), col, label, M_FLAT, z)
        for x in (xc - w / 2 + 0.05, xc + w / 2 - 0.3):  # the near wheels peeking under the body
            cv.poly(self.quad_z(zb + 0.6, x, x + 0.25, 0, 0.35), col, label, M_FLAT, zb + 0.6)

    def _contact_shadow(self, xc, zb, w, length) -> None:
        self.cv.shade_ground(self.quad_y(0.0, xc - w / 2 - 0.15, xc + w / 2 + 0.15, zb - 0.3, zb + length),
                             1 - self.st.contact_shadow)

    def car(self, xc: float, zb: float, front: bool) -> None:
        rng, st, cv = self.rng, self.st, self.cv
        w, length = rng.uniform(1.65, 1.95), rng.uniform(3.8, 4.9)
        kind = int(rng.integers(4))  # sedan, hatchback, van, SUV
        hb = (rng.uniform(0.9, 1.0), rng.uniform(0.9, 1.0), rng.uniform(1.1, 1.3), rng.uniform(1.0, 1.15))[kind]
        hr = (rng.uniform(1.4, 1.5), rng.uniform(1.45, 1.55), rng.uniform(1.85, 2.0), rng.uniform(1.65, 1.8))[kind]
        cab0 = zb + (0.3, 0.1, 0.05, 0.15)[kind] * length + 0.4  # where the roof starts
        cab1 = zb + (0.75, 0.7, 0.95, 0.8)[kind] * length
        col = _jit(rng, _pick(rng, st.cars), st)
        glass = _jit(rng, st.glass, st, 0.5)
        self._contact_shadow(xc, zb, w, length)
        xs = self._box_vehicle(xc, zb, w, length, 0.25, hb, col, CAR)
        if xs is not None:
            nx = -1 if xs < xc else 1
            xg = xs - nx * 0.1
            cv.poly(self.cam.p([xg] * 4, [hb, hb, hr, hr], [cab0 - 0.5, cab1 + 0.3, cab1, cab0]),
                    self.face(glass, nx), CAR, M_FLAT, ("x", xg))
        self._wheels(xc, zb, w, length, 0.33, CAR, xs)
        x0, x1 = xc - w / 2, xc + w / 2
        if cab0 - 0.5 > zb:
            cv.poly(self.quad_y(hb, x0, x1, zb, cab0 - 0.5), self.face(col, top=True), CAR, M_PAINT, zb)
        cv.poly(self.quad_y(hr, x0 + 0.15, x1 - 0.15, cab0, cab1), self.face(col, top=True), CAR, M_PAINT, cab0)
        cv.poly(self.cam.p([x0 + 0.08, x1 - 0.08, x1 - 0.15, x0 + 0.15], [hb, hb, hr, hr],
                           [cab0 - 0.5, cab0 - 0.5, cab0, cab0]), glass, CAR, M_FLAT, zb)
        cv.poly(self.quad_z(zb, x0, x1, 0.25, hb), self.face(col, 0), CAR, M_PAINT, zb)
        cv.poly(self.quad_z(zb, x0, x1, 0.25, 0.42), self.face(col, 0) * 0.55, CAR, M_FLAT, zb)  # bumper
        lamp = (250, 250, 225) if front else (220, 25, 20)
        for lx in (x0 + 0.05, x1 - 0.35):
            cv.poly(self.quad_z(zb, lx, lx + 0.3, hb - 0.3, hb - 0.12), lamp, CAR, M_FLAT, zb)
        cv.poly(self.quad_z(zb, xc - 0.26, xc + 0.26, 0.45, 0.57), (235, 235, 230), CAR, M_FLAT, zb)

    def truck(self, xc: float, zb: float, front: bool) -> None:
        rng, st, cv = self.rng, self.st, self.cv
        w, length, hgt = 2.45, rng.uniform(6.5, 9.0), rng.uniform(3.0, 3.8)
        col = _jit(rng, _pick(rng, st.trucks), st)
        cab = _jit(rng, _pick(rng, st.trucks), st)
        self._contact_shadow(xc, zb, w, length)
        if front:  # cab toward the camera: windscreen over a grille
            xs = self._box_vehicle(xc, zb + 2.2, w, length - 2.2, 0.7, hgt, col, TRUCK)
            self._box_vehicle(xc, zb, w, 2.2, 0.5, 2.9, cab, TRUCK)
            self._wheels(xc, zb, w, length, 0.5, TRUCK, xs)
            cv.poly(self.quad_z(zb + 2.2, xc - w / 2, xc + w / 2, 2.9, hgt), self.face(col, 0), TRUCK, M_PAINT, zb + 2)
            cv.poly(self.quad_z(zb, xc - w / 2, xc + w / 2, 0.5, 2.9), self.face(cab, 0), TRUCK, M_PAINT, zb)
            cv.poly(self.quad_z(zb, xc - w / 2 + 0.15, xc + w / 2 - 0.15, 1.7, 2.7), _jit(rng, st.glass, st, 0.5),
                    TRUCK, M_FLAT, zb)
        else:  # cargo box from behind
            xs = self._box_vehicle(xc, zb, w, length, 0.7, hgt, col, TRUCK)
            self._wheels(xc, zb, w, length, 0.5, TRUCK, xs)
            cv.poly(self.quad_z(zb, xc - w / 2, xc + w / 2, 0.7, hgt), self.face(col, 0), TRUCK, M_PAINT, zb)
            cv.poly(self.quad_z(zb, xc - 0.03, xc + 0.03, 0.8, hgt - 0.1), self.face(col, 0) * 0.6, TRUCK, M_FLAT, zb)
            cv.poly(self.quad_z(zb, xc - w / 2, xc + w / 2, 0.45, 0.7), (35, 35, 35), TRUCK, M_FLAT, zb)

    def bus(self, xc: float, zb: float, front: bool) -> None:
        rng, st, cv = self.rng, self.st, self.cv
        w, length, hgt = 2.5, rng.uniform(10, 13), rng.uniform(2.9, 3.2)
        col = _jit(rng, _pick(rng, st.buses), st)
        glass = _jit(rng, st.glass, st, 0.5)
        self._contact_shadow(xc, zb, w, length)
        xs = self._box_vehicle(xc, zb, w, length, 0.35, hgt, col, BUS)
        if xs is not None:  # the band of side windows
            nx = -1 if xs < xc else 1
            cv.poly(self.quad_x(xs, 1.3, hgt - 0.35, zb + 0.5, zb + length - 0.5), self.face(glass, nx), BUS, M_FLAT,
                    ("x", xs))
        self._wheels(xc, zb, w, length, 0.5, BUS, xs)
        cv.poly(self.quad_z(zb, xc - w / 2, xc + w / 2, 0.35, hgt), self.face(col, 0), BUS, M_PAINT, zb)
        y0 = 1.0 if front else 1.6  # a windscreen is larger than a rear window
        cv.poly(self.quad_z(zb, xc - w / 2 + 0.12, xc + w / 2 - 0.12, y0, hgt - 0.3), glass, BUS, M_FLAT, zb)

    # -------------------------------------------------------------------------------- people
    def person(self, X: float, Z: float, label: int = PERSON) -> None:
        rng, st, cam, cv = self.rng, self.st, self.cam, self.cv
        s = cam.scale(Z)
        x, yg = cam.p(X, 0, Z)
        hp = rng.uniform(1.55, 1.92) * s
        skin = _jit(rng, _pick(rng, st.skin), st, 0.4)
        top = _jit(rng, _pick(rng, st.clothes), st)
        legs = _jit(rng, _pick(rng, st.clothes[1::2]), st)  # trousers: the darker half of the palette
        hair = _jit(rng, (40, 30, 25), st, 0.5)
        stride = rng.uniform(0.0, 0.16) * hp
        hip = yg - 0.5 * hp
        for d in (-1, 1):  # legs
            cv.bar((x + d * 0.05 * hp, hip), (x + d * stride, yg), 0.1 * hp, legs, label, M_PAINT, Z)
        sh = yg - 0.81 * hp
        torso = [(x - 0.13 * hp, sh), (x + 0.13 * hp, sh), (x + 0.11 * hp, hip + 0.04 * hp),
                 (x - 0.11 * hp, hip + 0.04 * hp)]
        cv.poly(torso, top, label, M_PAINT, Z)
        for d in (-1, 1):  # arms
            cv.bar((x + d * 0.13 * hp, sh + 0.02 * hp), (x + d * (0.15 * hp + stride * 0.3), hip), 0.06 * hp, top * 0.9,
                   label, M_PAINT, Z)
        hr = 0.065 * hp
        cv.ellipse((x, sh - 0.09 * hp), hr * 0.85, hr, skin, label, M_FLAT, Z)
        cv.ellipse((x, sh - 0.09 * hp - hr * 0.35), hr * 0.85, hr * 0.7, hair, label, M_FLAT, Z)
        if rng.random() < 0.25:  # a bag
            d = 1 if rng.random() < 0.5 else -1
            cv.poly([(x + d * 0.12 * hp, hip - 0.12 * hp), (x + d * 0.24 * hp, hip - 0.12 * hp),
                     (x + d * 0.24 * hp, hip + 0.02 * hp), (x + d * 0.12 * hp, hip + 0.02 * hp)],
                    _jit(rng, _pick(rng, st.clothes), st), label, M_PAINT, Z)

    def cyclist(self, X: float, Z: float, motor: bool = False, rider: bool = True) -> None:
        """A bicycle or motorcycle, seen from the side foreshortened by ``c``, with or without its rider."""
        rng, st, cam, cv = self.rng, self.st, self.cam, self.cv
        s = cam.scale(Z)
        x, yg = cam.p(X, 0, Z)
        d = 1 if rng.random() < 0.5 else -1  # heading left or right on screen
        c = rng.uniform(0.45, 1.0)
        label = MOTORCYCLE if motor else BICYCLE
        r = (0.32 if motor else 0.34) * s
        half = (0.7 if motor else 0.52) * s * c
        frame = _jit(rng, _pick(rng, st.bikes), st)
        tyre = np.array([25.0, 25.0, 28.0])
        rear, fore = (x - d * half, yg - r), (x + d * half, yg - r)
        seat = (x - d * 0.2 * half, yg - (0.85 if motor else 0.95) * s)
        bar_ = (x + d * 0.75 * half, yg - 1.0 * s)
        bb = (x, yg - 0.3 * s)
        thick = max(1, int(round((0.1 if motor else 0.05) * s)))
        for hub in (rear, fore):
            cv.ellipse(hub, r * c, r, tyre, label, M_FLAT, Z, thickness=thick)
        if motor:  # engine and tank fill the frame
            cv.poly([rear, (seat[0], seat[1] + 0.1 * s), (bar_[0], bar_[1] + 0.25 * s), (fore[0], fore[1] - 0.1 * s),
                     bb], frame, label, M_PAINT, Z)
        else:
            for p0, p1 in ((rear, bb), (bb, seat), (seat, rear), (bb, bar_), (bar_, fore), (seat, bar_)):
                cv.bar(p0, p1, 0.05 * s, frame, label, M_PAINT, Z)
        if not rider:
            return
        top = _jit(rng, _pick(rng, st.clothes), st)
        legs = _jit(rng, _pick(rng, st.clothes[1::2]), st)
        skin = _jit(rng, _pick(rng, st.skin), st, 0.4)
        hip = (seat[0], seat[1] - 0.05 * s)
        shoulder = (seat[0] + d * 0.25 * s * c, seat[1] - 0.55 * s)
        knee = (bb[0] + d * 0.2 * s * c, bb[1] - 0.35 * s)
        cv.bar(hip, knee, 0.14 * s, legs, RIDER, M_PAINT, Z)
        cv.bar(knee, (bb[0], bb[1] + 0.05 * s), 0.11 * s, legs, RIDER, M_PAINT, Z)
        cv.bar(hip, shoulder, 0.3 * s, top, RIDER, M_PAINT, Z)
        cv.bar(shoulder, bar_, 0.08 * s, top * 0.9, RIDER, M_PAINT, Z)
        head = (shoulder[0] + d * 0.05 * s, shoulder[1] - 0.17 * s)
        cv.ellipse(head, 0.1 * s, 0.11 * s, skin, RIDER, M_FLAT, Z)
        if motor or rng.random() < 0.5:  # helmet
            cv.ellipse((head[0], head[1] - 0.04 * s), 0.12 * s, 0.09 * s, _jit(rng, _pick(rng, st.bikes), st), RIDER,
                       M_PAINT, Z)

    def draw_hood(self) -> None:
        """The ego-vehicle's bonnet at the bottom, labelled 'ego vehicle' (ignored) as in Cityscapes."""
        cv, w, h = self.cv, self.cv.w, self.cv.h
        hh = self.st.hood_height * h * self.rng.uniform(0.8, 1.2)
        col = _jit(self.rng, self.st.hood, self.st, 0.4)
        cv.ellipse((w / 2, h + hh * 1.6), w * 0.75, hh * 2.6, col, EGO, M_PAINT, 0.5)


# ------------------------------------------------------------------------------------ compositing

def _lowfreq(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth unit-variance noise with features of about ``cell`` pixels."""
    g = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(g, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)[cell:cell + h, cell:cell + w]


def _compose(cv: _Canvas, cam: _Cam, st: DomainStyle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = cv.h, cv.w
    inst = cv.inst
    label = np.asarray(cv.label, np.uint8)[inst]
    img = np.asarray(cv.color, np.float32)[inst]
    mat = np.asarray(cv.mat, np.uint8)[inst]
    dmode = np.asarray(cv.dmode, np.uint8)[inst]
    dval = np.asarray(cv.dval, np.float32)[inst]

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy += 0.5
    xx += 0.5
    # per-pixel distance: ground rows from the horizon, street-parallel planes from their X, objects constant
    zg = cam.f * cam.h / np.maximum(yy - cam.yh, 1e-2)
    depth = dval.copy()
    ground = dmode == D_GROUND
    depth[ground] = zg[ground]
    xplane = dmode == D_XPLANE
    depth[xplane] = cam.f * np.abs(dval[xplane]) / np.maximum(np.abs(xx[xplane] - cam.xv), 1e-2)
    depth[dmode == D_SKY] = 0.0
    np.minimum(depth, 5000.0, out=depth)

    # textures, each evaluated only on the pixels of its material
    hf = rng.standard_normal((h, w)).astype(np.float32)
    lf = _lowfreq(rng, h, w, max(4, w // 24))
    lf2 = _lowfreq(rng, h, w, max(2, w // 64))
    leaf = cv2.GaussianBlur(hf, (0, 0), 0.7) * 2.0  # blobs of a few pixels, like foliage
    tex = np.ones((h, w), np.float32)
    for m in np.unique(mat):
        k = mat == m
        if m == M_ASPHALT:
            tex[k] = 1 + st.asphalt_noise * hf[k] + st.asphalt_patches * lf[k]
        elif m == M_TILES:  # paving joints anchored on the ground plane, so they follow the perspective
            gz = zg[k]
            gx = (xx[k] - cam.xv) * gz / cam.f
            near_joint = lambda v: np.abs((v / st.tile_size + 0.5) % 1 - 0.5) < 0.06  # noqa: E731
            joint = near_joint(gx) | near_joint(gz)
            tex[k] = (1 - st.tile_lines * joint) * (1 + 0.5 * st.asphalt_noise * hf[k])
        elif m == M_GRASS:
            tex[k] = 1 + st.grass_noise * hf[k] + 0.5 * st.grass_noise * lf2[k]
        elif m == M_LEAVES:
            tex[k] = 1 + st.leaf_noise * leaf[k] + st.leaf_blotch * lf2[k]
        elif m == M_FACADE:
            tex[k] = 1 + st.facade_noise * (hf[k] + lf[k])
        elif m == M_SLATS:  # vertical boards along the fence, from the distance along the street
            slats = np.abs((depth[k] / 0.25) % 1 - 0.5) < 0.2
            tex[k] = (1 - 0.25 * slats) * (1 + st.paint_noise * hf[k])
        elif m == M_PAINT:
            tex[k] = 1 + st.paint_noise * hf[k]
    tex[ground] *= cv.shadow[ground]
    img *= np.clip(tex, 0.2, 2.0)[..., None]

    # sky: vertical gradient with clouds
    sky = mat == M_SKY
    t = np.clip(yy / max(cam.yh, 1.0), 0, 1)[..., None] ** 1.5
    grad = np.asarray(st.sky_top, np.float32) * (1 - t) + np.asarray(st.sky_horizon, np.float32) * t
    cloud = np.clip((_lowfreq(rng, h, w, max(4, w // 16)) + 1.6 * st.cloud_amount - 0.8) * 1.5, 0, 1)[..., None]
    grad = grad * (1 - cloud) + np.asarray(st.cloud, np.float32) * cloud * (1 + 0.05 * lf[..., None])
    img = np.where(sky[..., None], grad, img)

    # haze toward the horizon colour
    fog = (1 - np.exp(-depth / st.fog_distance))[..., None] * (~sky)[..., None]
    img = img * (1 - fog) + np.asarray(st.sky_horizon, np.float32) * fog

    # illumination gradient and vignetting
    ang = rng.uniform(0, 2 * math.pi)
    ramp = ((xx / w - 0.5) * math.cos(ang) + (yy / h - 0.5) * math.sin(ang)) * 2
    r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2
    img *= ((1 + st.light_gradient * ramp) * (1 - st.vignette * r2))[..., None]

    # camera response: white balance, haze lift, contrast, saturation, gamma (with per-image variation)
    j = st.global_jitter
    gain = np.asarray(st.gain, np.float32) * (1 + rng.normal(0, j, 3)).astype(np.float32)
    offset = np.asarray(st.offset, np.float32) + rng.normal(0, j * 100, 3).astype(np.float32)
    x = img / 255.0 * gain + offset / 255.0
    x = (x - 0.5) * st.contrast * (1 + rng.normal(0, j)) + 0.5
    lum = x @ np.array([0.299, 0.587, 0.114], np.float32)
    x = lum[..., None] + (x - lum[..., None]) * st.saturation
    x = np.clip(x, 0, 1) ** (st.gamma * (1 + rng.normal(0, j)))
    x *= 255.0
    if st.blur_sigma > 0.05:
        x = cv2.GaussianBlur(x, (0, 0), st.blur_sigma * w / 256)
    if st.noise_sigma > 0.01:  # sensor noise: per-pixel luminance plus weaker chroma noise
        x += rng.normal(0, st.noise_sigma, (h, w, 1)).astype(np.float32)
        x += rng.normal(0, st.noise_sigma * 0.4, (h, w, 3)).astype(np.float32)
    return np.clip(np.round(x), 0, 255).astype(np.uint8), label


def render_scene(rng: np.random.Generator, style: DomainStyle, width: int = 256, height: int = 128
                 ) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (RGB image uint8 (H, W, 3), Cityscapes labelIds uint8 (H, W))."""
    f = rng.uniform(*style.focal) * width
    cam = _Cam(width, height, f, rng.uniform(*style.camera_height), width * (0.5 + rng.uniform(-0.06, 0.06)),
               height * rng.uniform(*style.horizon))
    cv = _Canvas(width, height)
    _Scene(cv, cam, style, rng).build()
    return _compose(cv, cam, style, rng)


# ------------------------------------------------------------------------------------- raw layouts

_DOMAINS = {"source": 0, "target_train": 1, "target_val": 2}


def _palette_png(label: np.ndarray) -> bytes:
    from PIL import Image

    im = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label).tobytes())
    pal = [v for c in LABELID_PALETTE for v in c]
    im.putpalette(pal + [0] * (768 - len(pal)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _job(args) -> tuple[str, np.ndarray]:
    domain, index, seed, style, width, height, img_path, lab_path = args
    rng = np.random.default_rng([seed, _DOMAINS[domain], index])
    img, lab = render_scene(rng, style, width, height)
    write_png(img_path, img, rgb=True)
    if domain == "source":
        write_bytes(lab_path, _palette_png(lab))
    else:
        write_png(lab_path, lab, rgb=False)
    return domain, np.bincount(lab.ravel(), minlength=256)


def _cityscapes_jobs(root: Path, split: str, cities, n: int):
    """(image path, label path) per index; images spread over the cities in contiguous runs."""
    out, seq = [], dict.fromkeys(cities, 0)
    for i in range(n):
        city = cities[i * len(cities) // n]
        stem = f"{city}_{seq[city]:06d}_{19:06d}"  # frame 19 is the annotated frame of a Cityscapes snippet
        seq[city] += 1
        out.append((root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                    root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"))
    return out


def generate_raw(out_raw: Path, *, seed: int = 0, n_source: int = 500, n_target_train: int = 300,
                 n_target_val: int = 100, width: int = 256, height: int = 128, shift: float = 1.0,
                 workers: int = 0) -> dict:
    """Write the synthetic benchmark in the raw GTA5 and Cityscapes layouts under ``out_raw``.

    ``out_raw/gta5/{images,labels}/00001.png`` (labels: palette PNGs indexed by labelId) and
    ``out_raw/cityscapes/{leftImg8bit,gtFine}/{train,val}/<city>/...``. Every image has its own RNG
    seeded from (seed, domain, index), so the output does not depend on ``workers``.
    Returns counts and the pixel fraction of each trainId class per domain."""
    from segadapt.console import progress

    if min(n_source, n_target_train, n_target_val) < 0:
        raise UsageError("image counts must be >= 0")
    if width < 32 or height < 16:
        raise UsageError(f"image size {width}x{height} is too small (minimum 32x16)")
    if workers < 0:
        raise UsageError("workers must be >= 0")
    src_style, tgt_style = domain_styles(shift)
    out_raw = Path(out_raw)
    jobs = []
    for i in range(n_source):
        jobs.append(("source", i, seed, src_style, width, height, out_raw / "gta5" / "images" / f"{i + 1:05d}.png",
                     out_raw / "gta5" / "labels" / f"{i + 1:05d}.png"))
    cs = out_raw / "cityscapes"
    for domain, split, cities, n in (("target_train", "train", TRAIN_CITIES, n_target_train),
                                     ("target_val", "val", VAL_CITIES, n_target_val)):
        for i, (ip, lp) in enumerate(_cityscapes_jobs(cs, split, cities, n)):
            jobs.append((domain, i, seed, tgt_style, width, height, ip, lp))

    hist = {d: np.zeros(256, np.int64) for d in _DOMAINS}
    with progress(len(jobs), "synthetic scenes") as advance:
        if workers > 0 and len(jobs) > 1:
            with mp.get_context("spawn").Pool(workers) as pool:
                for domain, hcount in pool.imap_unordered(_job, jobs, chunksize=8):
                    hist[domain] += hcount
                    advance(1)
        else:
            for job in jobs:
                domain, hcount = _job(job)
                hist[domain] += hcount
                advance(1)

    to_train = CITYSCAPES_LABELID_TO_TRAINID
    summary = {"seed": seed, "shift": shift, "width": width, "height": height,
               "counts": {"source": n_source, "target_train": n_target_train, "target_val": n_target_val},
               "class_fraction": {}}
    for domain, hc in hist.items():
        total = max(int(hc.sum()), 1)
        summary["class_fraction"][domain] = {
            name: round(float(hc[[lid for lid, t in to_train.items() if t == k]].sum()) / total, 6)
            for k, name in enumerate(CITYSCAPES19.classes)}
    return summary
