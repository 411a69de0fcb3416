"""Drawing primitives: a pinhole camera, the instance-map canvas, and the painter the scene objects use.

Every primitive (polygon, circle, ellipse) is rasterised once, without antialiasing, into an
*instance map*; the label map and the image are both looked up from it (``composition``), so they
agree exactly.
"""

from __future__ import annotations

import cv2
import numpy as np

from segadapt.data.synthetic.labels import UNLABELED
from segadapt.data.synthetic.style import Color, DomainStyle

# materials select the texture applied after the flat colour fill
M_FLAT, M_SKY, M_ASPHALT, M_TILES, M_GRASS, M_LEAVES, M_FACADE, M_SLATS, M_PAINT = range(9)
# depth modes: how the per-pixel distance (for haze and world-anchored textures) is found
D_CONST, D_GROUND, D_XPLANE, D_SKY = range(4)
Z_MIN = 0.3  # metres; nothing is projected nearer, so coordinates stay finite


class Camera:
    """Pinhole camera at height ``h`` looking along +Z (X right, Y up)."""

    def __init__(self, w: int, hgt: int, f: float, h: float, xv: float, yh: float):
        self.w, self.hgt, self.f, self.h, self.xv, self.yh = w, hgt, f, h, xv, yh

    def p(self, X, Y, Z) -> np.ndarray:
        X, Y, Z = np.broadcast_arrays(np.asarray(X, float), np.asarray(Y, float), np.maximum(Z, Z_MIN))
        return np.stack([self.xv + self.f * X / Z, self.yh + self.f * (self.h - Y) / Z], -1)

    def scale(self, Z):
        """Pixels per metre at distance Z."""
        return self.f / np.maximum(Z, Z_MIN)


class Canvas:
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
        # no clipping needed: Z >= Z_MIN bounds every projected coordinate far below the int32 range
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


class Painter:
    """What every scene object draws with: the canvas, the camera, the domain style, the scene's RNG and
    the side of the street the sun is on, plus world-space quads and faces shaded by their normal."""

    def __init__(self, cv: Canvas, cam: Camera, st: DomainStyle, rng: np.random.Generator):
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

    # axis-aligned rectangles in world space, projected: in the plane X, Z or Y = constant
    def quad_x(self, X, y0, y1, z0, z1):
        return self.cam.p([X, X, X, X], [y0, y0, y1, y1], [z0, z1, z1, z0])

    def quad_z(self, Z, x0, x1, y0, y1):
        return self.cam.p([x0, x1, x1, x0], [y0, y0, y1, y1], [Z, Z, Z, Z])

    def quad_y(self, Y, x0, x1, z0, z1):
        return self.cam.p([x0, x1, x1, x0], [Y, Y, Y, Y], [z0, z0, z1, z1])
