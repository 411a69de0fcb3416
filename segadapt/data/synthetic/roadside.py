"""What lines the street: building blocks with windows, trees, hedges, walls and fences."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from segadapt.data.synthetic.labels import BUILDING, FENCE, VEGETATION, WALL
from segadapt.data.synthetic.raster import M_FACADE, M_FLAT, M_LEAVES, M_SLATS, Painter
from segadapt.data.synthetic.style import jitter, pick

if TYPE_CHECKING:
    from segadapt.data.synthetic.street import Street


def draw_buildings(pen: Painter, street: Street) -> None:
    """Blocks (or gaps with trees) along both building lines, and what closes the street; far to near."""
    rng, st = pen.rng, pen.st
    items: list[tuple[float, int, object]] = []
    zmax = street.zend if street.zend else 180.0
    if street.zend:  # a row of buildings or trees closing the street
        zc = street.zend
        if rng.random() < 0.7:
            hgt = rng.uniform(*st.building_height)
            items.append((zc + 1, 0, lambda: block_front(pen, zc, -80, 80, hgt)))
        else:
            items.append((zc + 1, 0, lambda: tree_row(pen, zc)))
    k = 1
    for s in (1, -1):
        z = rng.uniform(-8, 2)
        while z < zmax:
            if rng.random() < st.p_building_gap:
                length = rng.uniform(5, 18)
                z0 = z
                for zt in np.arange(z0 + 2, z0 + length, rng.uniform(4, 8)):
                    xt = s * (street.bline[s] + rng.uniform(1, 5))
                    items.append((zt, k, lambda xt=xt, zt=zt: tree(pen, xt, zt, big=True)))
                    k += 1
            else:
                length = rng.uniform(8, 30)
                x = s * (street.bline[s] + (rng.uniform(0, 2.5) if rng.random() < 0.3 else 0.0))
                hgt = rng.uniform(*st.building_height)
                z0, z1 = z, min(z + length, zmax)
                items.append((z1, k, lambda x=x, z0=z0, z1=z1, hgt=hgt: block(pen, x, z0, z1, hgt)))
                k += 1
            z += length
    for _z, _k, fn in sorted(items, key=lambda o: (-o[0], o[1])):
        fn()


def facade_color(pen: Painter):
    return jitter(pen.rng, pick(pen.rng, pen.st.facades), pen.st)


def block(pen: Painter, x: float, z0: float, z1: float, hgt: float) -> None:
    """A building block along the street: its facade, its near end face and a grid of windows."""
    rng, st, cam, cv = pen.rng, pen.st, pen.cam, pen.cv
    s = 1 if x > 0 else -1
    col = facade_color(pen)
    zn = max(z0, 0.5)
    if zn >= z1:
        return
    cv.poly(pen.quad_x(x, 0, hgt, zn, z1), pen.face(col, -s), BUILDING, M_FACADE, ("x", x))
    if z0 > 0.5:  # end face toward the camera, seen where the nearer block is lower or set back
        cv.poly(pen.quad_z(z0, x, x + s * 20, 0, hgt), pen.face(col, 0), BUILDING, M_FACADE, z0)
    # windows: skip blocks too far away for them to be more than a pixel or two
    floor_h, col_w = rng.uniform(2.8, 3.6), rng.uniform(2.2, 3.5)
    if cam.scale(max(zn, 1.0)) * floor_h < 3.0:
        return
    win = jitter(rng, st.window, st, 0.6)
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
    cv.polys(list(corners[~lit]), pen.face(win, -s), BUILDING, M_FLAT, ("x", x))
    cv.polys(list(corners[lit]), pen.face(win * 1.6 + 30, -s), BUILDING, M_FLAT, ("x", x))


def block_front(pen: Painter, z: float, x0: float, x1: float, hgt: float) -> None:
    col = facade_color(pen)
    pen.cv.poly(pen.quad_z(z, x0, x1, 0, hgt), pen.face(col, 0), BUILDING, M_FACADE, z)
    # a second, taller row behind breaks the skyline
    for xa in np.arange(x0, x1, 14.0):
        h2 = hgt + pen.rng.uniform(-4, 8)
        if pen.rng.random() < 0.4 and h2 > hgt:
            pen.cv.poly(pen.quad_z(z + 10, xa, xa + 12, 0, h2), pen.face(facade_color(pen), 0), BUILDING,
                        M_FACADE, z + 10)


def tree_row(pen: Painter, z: float) -> None:
    for xt in np.arange(-40, 40, 5.0):
        tree(pen, xt + pen.rng.uniform(-2, 2), z + pen.rng.uniform(0, 5), big=True)


def tree(pen: Painter, X: float, Z: float, big: bool = False) -> None:
    rng, st, cam, cv = pen.rng, pen.st, pen.cam, pen.cv
    s = cam.scale(Z)
    x, yg = cam.p(X, 0, Z)
    trunk_h = rng.uniform(1.8, 3.0) * (1.3 if big else 1.0)
    crown = rng.uniform(1.4, 2.6) * (1.5 if big else 1.0)
    trunk = jitter(rng, st.trunk, st, 0.6)
    tw = rng.uniform(0.25, 0.4) * s
    cv.bar((x, yg), (x, yg - (trunk_h + crown) * s), tw, trunk, VEGETATION, M_FLAT, Z)
    cy = yg - (trunk_h + crown) * s
    base = pick(rng, st.vegetation)
    for _ in range(int(rng.integers(4, 8))):
        dx, dy = rng.normal(0, 0.45 * crown, 2)
        r = rng.uniform(0.45, 0.8) * crown
        col = jitter(rng, base, st, 0.6) * (0.8 if dy > 0 else 1.0)  # lower blobs are in the crown's shade
        cv.ellipse((x + dx * s, cy + dy * s), r * s, r * s * rng.uniform(0.8, 1.1), col, VEGETATION, M_LEAVES, Z)


def hedge(pen: Painter, x: float, z0: float, z1: float) -> None:
    s = 1 if x > 0 else -1
    hgt = pen.rng.uniform(0.8, 1.5)
    col = jitter(pen.rng, pick(pen.rng, pen.st.vegetation), pen.st, 0.7)
    pen.cv.poly(pen.quad_y(hgt, x, x + s * 0.8, z0, z1), pen.face(col, 0, top=True), VEGETATION, M_LEAVES, z0)
    pen.cv.poly(pen.quad_x(x, 0, hgt, z0, z1), pen.face(col, -s) * 0.9, VEGETATION, M_LEAVES, ("x", x))


def draw_barriers(pen: Painter, street: Street) -> None:
    """Walls, fences and hedges along the sidewalks; far to near."""
    rng, st = pen.rng, pen.st
    items = []
    for s in (1, -1):
        z = rng.uniform(0, 10)
        while z < 90:
            length = rng.uniform(5, 25)
            if rng.random() < st.p_barrier:
                kind = rng.choice(3, p=[0.35, 0.4, 0.25])
                x = s * (street.outer[s] + (0.0 if street.strip[s] == 0 else street.strip[s] * rng.uniform(0, 1)))
                items.append((z + length, len(items), kind, x, max(z, 0.5)))
            z += length + rng.uniform(0, 15)
    for z1, _k, kind, x, z0 in sorted(items, key=lambda o: (-o[0], o[1])):
        if kind == 0:
            wall(pen, x, z0, z1)
        elif kind == 1:
            fence(pen, x, z0, z1)
        else:
            hedge(pen, x, z0, z1)


def wall(pen: Painter, x: float, z0: float, z1: float) -> None:
    s = 1 if x > 0 else -1
    hgt, th = pen.rng.uniform(0.8, 2.5), 0.3
    col = jitter(pen.rng, pen.st.wall, pen.st)
    pen.cv.poly(pen.quad_y(hgt, x, x + s * th, z0, z1), pen.face(col, 0, top=True), WALL, M_FACADE, z0)
    pen.cv.poly(pen.quad_x(x, 0, hgt, z0, z1), pen.face(col, -s), WALL, M_FACADE, ("x", x))
    pen.cv.poly(pen.quad_z(z0, x, x + s * th, 0, hgt), pen.face(col, 0), WALL, M_FACADE, z0)


def fence(pen: Painter, x: float, z0: float, z1: float) -> None:
    s = 1 if x > 0 else -1
    hgt = pen.rng.uniform(1.0, 2.0)
    col = jitter(pen.rng, pen.st.fence, pen.st)
    pen.cv.poly(pen.quad_x(x, 0, hgt, z0, z1), pen.face(col, -s), FENCE, M_SLATS, ("x", x))
    for zp in np.arange(z0, z1, 2.5):  # posts
        pen.cv.poly(pen.quad_x(x, 0, hgt + 0.1, zp, zp + 0.12), pen.face(col, -s) * 0.7, FENCE, M_FLAT,
                    ("x", x))
