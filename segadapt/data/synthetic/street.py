"""The street itself: its cross-section (drawn once per scene), the sky and the ground surfaces on it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segadapt.data.synthetic.labels import ROAD, SIDEWALK, SKY, TERRAIN
from segadapt.data.synthetic.raster import M_ASPHALT, M_FLAT, M_GRASS, M_SKY, M_TILES, Painter
from segadapt.data.synthetic.style import DomainStyle, jitter


@dataclass(frozen=True)
class Street:
    """The street's cross-section, in metres from the camera (the camera drives in the right lane).
    Per-side values are keyed by side: 1 = right, -1 = left."""

    rr: float  # road edge on the right
    rl: float  # road edge on the left
    sw: dict[int, float]  # sidewalk width
    lawn: dict[int, float]  # grass between the curb and the sidewalk (0 = none)
    strip: dict[int, float]  # terrain strip beyond the sidewalk (0 = none)
    edge: dict[int, float]  # road edge distance
    outer: dict[int, float]  # outer sidewalk edge
    bline: dict[int, float]  # building line
    zend: float | None  # distance of the row of buildings or trees closing the street (None = open street)
    zfar: float  # where the ground ends

    @classmethod
    def sample(cls, rng: np.random.Generator, st: DomainStyle) -> "Street":
        rr = rng.uniform(1.8, 5.0)
        rl = rng.uniform(3.5, 9.0)
        sw = {1: rng.uniform(1.5, 4.0), -1: rng.uniform(1.5, 4.0)}
        lawn = {s: (rng.uniform(0.8, 1.6) if rng.random() < 0.3 else 0.0) for s in (1, -1)}
        strip = {s: (rng.uniform(1.0, 5.0) if rng.random() < st.p_terrain_strip else 0.0) for s in (1, -1)}
        edge = {1: rr, -1: rl}
        outer = {s: edge[s] + sw[s] for s in (1, -1)}
        bline = {s: outer[s] + strip[s] + rng.uniform(0.0, 1.5) for s in (1, -1)}
        zend = rng.uniform(60, 160) if rng.random() < 0.6 else None
        return cls(rr=rr, rl=rl, sw=sw, lawn=lawn, strip=strip, edge=edge, outer=outer, bline=bline, zend=zend,
                   zfar=zend if zend else 2000.0)


def draw_background(pen: Painter) -> None:
    """The sky (its gradient and clouds come with the composition) and the terrain under everything."""
    cv, w, h = pen.cv, pen.cv.w, pen.cv.h
    cv.poly([(0, 0), (w, 0), (w, h), (0, h)], (0, 0, 0), SKY, M_SKY, "sky")
    yh = pen.cam.yh
    cv.poly([(-w, yh), (2 * w, yh), (2 * w, h + 2), (-w, h + 2)], jitter(pen.rng, pen.st.terrain, pen.st),
            TERRAIN, M_GRASS, "ground")


def draw_ground(pen: Painter, street: Street) -> float | None:
    """Road, sidewalks, curbs, grass strips, lane markings and sun shadow; returns the zebra crossing's
    distance (None = no crossing), where pedestrians cross."""
    rng, st, cv = pen.rng, pen.st, pen.cv
    zn, zf = 0.5, street.zfar

    def strip(x0, x1, color, label, mat, z0=zn, z1=zf):
        cv.poly(pen.quad_y(0.0, x0, x1, z0, z1), color, label, mat, "ground")

    strip(-street.rl, street.rr, jitter(rng, st.road, st, 0.5), ROAD, M_ASPHALT)
    for s in (1, -1):
        e, o = street.edge[s], street.outer[s]
        strip(*sorted((s * e, s * o)), jitter(rng, st.sidewalk, st, 0.6), SIDEWALK, M_TILES)
        strip(*sorted((s * e, s * (e + 0.2))), jitter(rng, st.curb, st, 0.5), SIDEWALK, M_FLAT)
        if street.lawn[s]:
            strip(*sorted((s * (e + 0.2), s * (e + 0.2 + street.lawn[s]))), jitter(rng, st.terrain, st), TERRAIN,
                  M_GRASS)
        if street.strip[s]:
            strip(*sorted((s * o, s * (o + street.strip[s]))), jitter(rng, st.terrain, st), TERRAIN, M_GRASS)
    # lane markings: dashed lane separators, sometimes solid edge lines
    mark = jitter(rng, st.marking, st, 0.3)
    lanes = [-1.75 - 3.5 * k for k in range(3) if 1.75 + 3.5 * k < street.rl - 1.0]
    period, dash, phase = rng.uniform(8, 12), rng.uniform(2.5, 4), rng.uniform(0, 12)
    for x in lanes:
        pts = [pen.quad_y(0.0, x - 0.07, x + 0.07, z, z + dash) for z in np.arange(phase - 12, 55, period)
               if z + dash > 0.5]
        cv.polys(pts, mark, ROAD, M_FLAT, "ground")
    if rng.random() < 0.5:
        for x in (street.rr - 0.35, -street.rl + 0.35):
            strip(x - 0.07, x + 0.07, mark, ROAD, M_FLAT, zn, min(zf, 200.0))
    # zebra crossing
    zcross = None
    if rng.random() < 0.3:
        zc = rng.uniform(7, 30)
        zcross = zc
        xs = np.arange(-street.rl + 0.5, street.rr - 0.5, 1.0)
        cv.polys([pen.quad_y(0.0, x, x + 0.5, zc, zc + 3.0) for x in xs], mark, ROAD, M_FLAT, "ground")
    # the building shadow on the sun side covers part of the street
    if st.sun_shadow > 0.01 and rng.random() < st.p_sun_shadow:
        s = pen.sun
        width = rng.uniform(0.3, 1.0) * (street.bline[s] + street.edge[-s])
        x0, x1 = sorted((s * street.bline[s], s * (street.bline[s] - width)))
        z0 = rng.uniform(0.5, 40)
        cv.shade_ground(pen.quad_y(0.0, x0, x1, z0, zf), 1 - st.sun_shadow)
    return zcross
