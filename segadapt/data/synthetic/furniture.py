"""Street furniture on the curb: poles (street lamps, traffic lights, traffic signs)."""

from __future__ import annotations

import numpy as np

from segadapt.data.synthetic.labels import LIGHT, POLE, SIGN
from segadapt.data.synthetic.raster import M_FLAT, M_PAINT, Painter
from segadapt.data.synthetic.style import jitter


def pole(pen: Painter, X: float, Z: float, kind: int) -> None:
    rng, st, cam, cv = pen.rng, pen.st, pen.cam, pen.cv
    s = cam.scale(Z)
    x, yg = cam.p(X, 0, Z)
    col = jitter(rng, st.pole, st, 0.5)
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
            traffic_light(pen, x + side * arm * s, yg - (hgt - 0.1) * s, s, Z)
        else:
            traffic_light(pen, x, yg - (hgt - 0.9) * s, s, Z)
    else:  # traffic sign
        sign(pen, x, yg - hgt * s, s, Z)


def traffic_light(pen: Painter, x: float, ytop: float, s: float, Z: float) -> None:
    rng, st, cv = pen.rng, pen.st, pen.cv
    bw, bh = 0.35 * s, 0.95 * s
    box = jitter(rng, st.light_box, st, 0.4)
    cv.poly([(x - bw / 2, ytop), (x + bw / 2, ytop), (x + bw / 2, ytop + bh), (x - bw / 2, ytop + bh)], box, LIGHT,
            M_PAINT, Z)
    on = int(rng.integers(3))
    lamps = ((230, 40, 30), (240, 180, 20), (40, 220, 90))
    for i, lc in enumerate(lamps):
        c = np.asarray(lc, float) * (1.0 if i == on else 0.3)
        cv.ellipse((x, ytop + bh * (0.18 + 0.32 * i)), 0.11 * s, 0.11 * s, c, LIGHT, M_FLAT, Z)


def sign(pen: Painter, x: float, yc: float, s: float, Z: float) -> None:
    rng, st, cv = pen.rng, pen.st, pen.cv
    red, blue, white, yellow = (jitter(rng, c, st, 0.4) for c in st.sign_colors)
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
