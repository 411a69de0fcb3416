"""Vehicles as boxes in world space: cars, trucks and buses, and the ego-vehicle's hood."""

from __future__ import annotations

import numpy as np

from segadapt.data.synthetic.labels import BUS, CAR, EGO, TRUCK
from segadapt.data.synthetic.raster import M_FLAT, M_PAINT, Painter
from segadapt.data.synthetic.style import jitter, pick


def _box_vehicle(pen: Painter, xc, zb, w, length, y0, y1, col, label, mat=M_PAINT):
    """Visible side face and rear (or front) face of a box; returns the side face's X (or None)."""
    cv = pen.cv
    x0, x1 = xc - w / 2, xc + w / 2
    xs = x0 if x0 > 0 else (x1 if x1 < 0 else None)
    if xs is not None:
        nx = -1 if xs == x0 else 1
        cv.poly(pen.quad_x(xs, y0, y1, zb, zb + length), pen.face(col, nx), label, mat, ("x", xs))
    return xs


def _wheels(pen: Painter, xc, zb, w, length, r, label, xs, col=(25, 25, 28)) -> None:
    cam, cv = pen.cam, pen.cv
    col = np.asarray(col, float)
    for z in (zb + length - 0.9, zb + 0.9):
        if xs is not None:
            c = cam.p(xs, r, z)
            cv.ellipse(c, r * cam.scale(z) * 0.45, r * cam.scale(z), col, label, M_FLAT, z)
    for x in (xc - w / 2 + 0.05, xc + w / 2 - 0.3):  # the near wheels peeking under the body
        cv.poly(pen.quad_z(zb + 0.6, x, x + 0.25, 0, 0.35), col, label, M_FLAT, zb + 0.6)


def _contact_shadow(pen: Painter, xc, zb, w, length) -> None:
    pen.cv.shade_ground(pen.quad_y(0.0, xc - w / 2 - 0.15, xc + w / 2 + 0.15, zb - 0.3, zb + length),
                        1 - pen.st.contact_shadow)


def car(pen: Painter, xc: float, zb: float, front: bool) -> None:
    rng, st, cv = pen.rng, pen.st, pen.cv
    w, length = rng.uniform(1.65, 1.95), rng.uniform(3.8, 4.9)
    kind = int(rng.integers(4))  # sedan, hatchback, van, SUV
    hb = (rng.uniform(0.9, 1.0), rng.uniform(0.9, 1.0), rng.uniform(1.1, 1.3), rng.uniform(1.0, 1.15))[kind]
    hr = (rng.uniform(1.4, 1.5), rng.uniform(1.45, 1.55), rng.uniform(1.85, 2.0), rng.uniform(1.65, 1.8))[kind]
    cab0 = zb + (0.3, 0.1, 0.05, 0.15)[kind] * length + 0.4  # where the roof starts
    cab1 = zb + (0.75, 0.7, 0.95, 0.8)[kind] * length
    col = jitter(rng, pick(rng, st.cars), st)
    glass = jitter(rng, st.glass, st, 0.5)
    _contact_shadow(pen, xc, zb, w, length)
    xs = _box_vehicle(pen, xc, zb, w, length, 0.25, hb, col, CAR)
    if xs is not None:
        nx = -1 if xs < xc else 1
        xg = xs - nx * 0.1
        cv.poly(pen.cam.p([xg] * 4, [hb, hb, hr, hr], [cab0 - 0.5, cab1 + 0.3, cab1, cab0]),
                pen.face(glass, nx), CAR, M_FLAT, ("x", xg))
    _wheels(pen, xc, zb, w, length, 0.33, CAR, xs)
    x0, x1 = xc - w / 2, xc + w / 2
    if cab0 - 0.5 > zb:
        cv.poly(pen.quad_y(hb, x0, x1, zb, cab0 - 0.5), pen.face(col, top=True), CAR, M_PAINT, zb)
    cv.poly(pen.quad_y(hr, x0 + 0.15, x1 - 0.15, cab0, cab1), pen.face(col, top=True), CAR, M_PAINT, cab0)
    cv.poly(pen.cam.p([x0 + 0.08, x1 - 0.08, x1 - 0.15, x0 + 0.15], [hb, hb, hr, hr],
                       [cab0 - 0.5, cab0 - 0.5, cab0, cab0]), glass, CAR, M_FLAT, zb)
    cv.poly(pen.quad_z(zb, x0, x1, 0.25, hb), pen.face(col, 0), CAR, M_PAINT, zb)
    cv.poly(pen.quad_z(zb, x0, x1, 0.25, 0.42), pen.face(col, 0) * 0.55, CAR, M_FLAT, zb)  # bumper
    lamp = (250, 250, 225) if front else (220, 25, 20)
    for lx in (x0 + 0.05, x1 - 0.35):
        cv.poly(pen.quad_z(zb, lx, lx + 0.3, hb - 0.3, hb - 0.12), lamp, CAR, M_FLAT, zb)
    cv.poly(pen.quad_z(zb, xc - 0.26, xc + 0.26, 0.45, 0.57), (235, 235, 230), CAR, M_FLAT, zb)


def truck(pen: Painter, xc: float, zb: float, front: bool) -> None:
    rng, st, cv = pen.rng, pen.st, pen.cv
    w, length, hgt = 2.45, rng.uniform(6.5, 9.0), rng.uniform(3.0, 3.8)
    col = jitter(rng, pick(rng, st.trucks), st)
    cab = jitter(rng, pick(rng, st.trucks), st)
    _contact_shadow(pen, xc, zb, w, length)
    if front:  # cab toward the camera: windscreen over a grille
        xs = _box_vehicle(pen, xc, zb + 2.2, w, length - 2.2, 0.7, hgt, col, TRUCK)
        _box_vehicle(pen, xc, zb, w, 2.2, 0.5, 2.9, cab, TRUCK)
        _wheels(pen, xc, zb, w, length, 0.5, TRUCK, xs)
        cv.poly(pen.quad_z(zb + 2.2, xc - w / 2, xc + w / 2, 2.9, hgt), pen.face(col, 0), TRUCK, M_PAINT, zb + 2)
        cv.poly(pen.quad_z(zb, xc - w / 2, xc + w / 2, 0.5, 2.9), pen.face(cab, 0), TRUCK, M_PAINT, zb)
        cv.poly(pen.quad_z(zb, xc - w / 2 + 0.15, xc + w / 2 - 0.15, 1.7, 2.7), jitter(rng, st.glass, st, 0.5),
                TRUCK, M_FLAT, zb)
    else:  # cargo box from behind
        xs = _box_vehicle(pen, xc, zb, w, length, 0.7, hgt, col, TRUCK)
        _wheels(pen, xc, zb, w, length, 0.5, TRUCK, xs)
        cv.poly(pen.quad_z(zb, xc - w / 2, xc + w / 2, 0.7, hgt), pen.face(col, 0), TRUCK, M_PAINT, zb)
        cv.poly(pen.quad_z(zb, xc - 0.03, xc + 0.03, 0.8, hgt - 0.1), pen.face(col, 0) * 0.6, TRUCK, M_FLAT, zb)
        cv.poly(pen.quad_z(zb, xc - w / 2, xc + w / 2, 0.45, 0.7), (35, 35, 35), TRUCK, M_FLAT, zb)


def bus(pen: Painter, xc: float, zb: float, front: bool) -> None:
    rng, st, cv = pen.rng, pen.st, pen.cv
    w, length, hgt = 2.5, rng.uniform(10, 13), rng.uniform(2.9, 3.2)
    col = jitter(rng, pick(rng, st.buses), st)
    glass = jitter(rng, st.glass, st, 0.5)
    _contact_shadow(pen, xc, zb, w, length)
    xs = _box_vehicle(pen, xc, zb, w, length, 0.35, hgt, col, BUS)
    if xs is not None:  # the band of side windows
        nx = -1 if xs < xc else 1
        cv.poly(pen.quad_x(xs, 1.3, hgt - 0.35, zb + 0.5, zb + length - 0.5), pen.face(glass, nx), BUS, M_FLAT,
                ("x", xs))
    _wheels(pen, xc, zb, w, length, 0.5, BUS, xs)
    cv.poly(pen.quad_z(zb, xc - w / 2, xc + w / 2, 0.35, hgt), pen.face(col, 0), BUS, M_PAINT, zb)
    y0 = 1.0 if front else 1.6  # a windscreen is larger than a rear window
    cv.poly(pen.quad_z(zb, xc - w / 2 + 0.12, xc + w / 2 - 0.12, y0, hgt - 0.3), glass, BUS, M_FLAT, zb)


def draw_hood(pen: Painter) -> None:
    """The ego-vehicle's bonnet at the bottom, labelled 'ego vehicle' (ignored) as in Cityscapes."""
    cv, w, h = pen.cv, pen.cv.w, pen.cv.h
    hh = pen.st.hood_height * h * pen.rng.uniform(0.8, 1.2)
    col = jitter(pen.rng, pen.st.hood, pen.st, 0.4)
    cv.ellipse((w / 2, h + hh * 1.6), w * 0.75, hh * 2.6, col, EGO, M_PAINT, 0.5)
