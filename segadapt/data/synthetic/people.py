"""People: pedestrians, and cyclists or motorcyclists (or a parked bicycle without its rider)."""

from __future__ import annotations

import numpy as np

from segadapt.data.synthetic.labels import BICYCLE, MOTORCYCLE, PERSON, RIDER
from segadapt.data.synthetic.raster import M_FLAT, M_PAINT, Painter
from segadapt.data.synthetic.style import jitter, pick


def person(pen: Painter, X: float, Z: float, label: int = PERSON) -> None:
    rng, st, cam, cv = pen.rng, pen.st, pen.cam, pen.cv
    s = cam.scale(Z)
    x, yg = cam.p(X, 0, Z)
    hp = rng.uniform(1.55, 1.92) * s
    skin = jitter(rng, pick(rng, st.skin), st, 0.4)
    top = jitter(rng, pick(rng, st.clothes), st)
    legs = jitter(rng, pick(rng, st.clothes[1::2]), st)  # trousers: the darker half of the palette
    hair = jitter(rng, (40, 30, 25), st, 0.5)
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
                jitter(rng, pick(rng, st.clothes), st), label, M_PAINT, Z)


def cyclist(pen: Painter, X: float, Z: float, motor: bool = False, rider: bool = True) -> None:
    """A bicycle or motorcycle, seen from the side foreshortened by ``c``, with or without its rider."""
    rng, st, cam, cv = pen.rng, pen.st, pen.cam, pen.cv
    s = cam.scale(Z)
    x, yg = cam.p(X, 0, Z)
    d = 1 if rng.random() < 0.5 else -1  # heading left or right on screen
    c = rng.uniform(0.45, 1.0)
    label = MOTORCYCLE if motor else BICYCLE
    r = (0.32 if motor else 0.34) * s
    half = (0.7 if motor else 0.52) * s * c
    frame = jitter(rng, pick(rng, st.bikes), st)
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
    top = jitter(rng, pick(rng, st.clothes), st)
    legs = jitter(rng, pick(rng, st.clothes[1::2]), st)
    skin = jitter(rng, pick(rng, st.skin), st, 0.4)
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
        cv.ellipse((head[0], head[1] - 0.04 * s), 0.12 * s, 0.09 * s, jitter(rng, pick(rng, st.bikes), st), RIDER,
                   M_PAINT, Z)
