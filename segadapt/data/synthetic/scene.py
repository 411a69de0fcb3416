"""One street scene: which objects stand where, drawn far to near onto the canvas.

The scene is built from the street's cross-section (``street``), what lines it (``roadside``), and
the objects on it (``vehicles``, ``people``, ``furniture``); every random draw comes from the
scene's one RNG, in a fixed order, so a (seed, domain, index) always gives the same scene.
"""

from __future__ import annotations

import numpy as np

from segadapt.data.synthetic import furniture, people, roadside, vehicles
from segadapt.data.synthetic.raster import Camera, Canvas, Painter
from segadapt.data.synthetic.street import Street, draw_background, draw_ground
from segadapt.data.synthetic.style import DomainStyle


def build_scene(cv: Canvas, cam: Camera, st: DomainStyle, rng: np.random.Generator) -> None:
    """Draw the primitives of one street scene on ``cv``, far to near."""
    pen = Painter(cv, cam, st, rng)
    street = Street.sample(rng, st)
    draw_background(pen)
    zcross = draw_ground(pen, street)
    roadside.draw_buildings(pen, street)
    roadside.draw_barriers(pen, street)
    for _z, _k, fn in sorted(plan_street_objects(pen, street, zcross), key=lambda o: (-o[0], o[1])):
        fn()
    if st.hood_height > 0.005:
        vehicles.draw_hood(pen)


def poisson_positions(rng, rate_per_50m: float, z0: float, z1: float, min_gap: float) -> list[float]:
    """Sorted positions along a line with a minimum spacing (objects do not overlap)."""
    n = rng.poisson(rate_per_50m * (z1 - z0) / 50.0)
    zs = np.sort(rng.uniform(z0, z1, n))
    out: list[float] = []
    for z in zs:
        if not out or z - out[-1] >= min_gap:
            out.append(float(z))
    return out


def plan_street_objects(pen: Painter, street: Street, zcross: float | None) -> list[tuple[float, int, object]]:
    """Vehicles, people, poles and street trees: (distance, order, draw function) each, to draw far to near."""
    objs: list[tuple[float, int, object]] = []
    rng, st = pen.rng, pen.st
    add = lambda z, fn: objs.append((z, len(objs), fn))  # noqa: E731
    zmax = min(street.zfar - 5, 90.0)
    # moving traffic: same direction in the camera lane, oncoming lanes to the left
    lanes = [(0.0, False)] + [(-1.75 - 3.5 * k - 1.75, True) for k in range(2) if 3.5 * (k + 1) < street.rl - 0.8]
    taken: list[tuple[float, float]] = []  # (lane, z) of moving vehicles, so that they do not overlap
    for xc, oncoming in lanes:
        for z in poisson_positions(rng, st.car_density, 4.0, zmax, 8.0):
            xj = xc + rng.normal(0, 0.25)
            taken.append((xc, z))
            r = rng.random()
            if r < st.p_truck * 0.4:
                add(z, lambda xj=xj, z=z, o=oncoming: vehicles.truck(pen, xj, z, o))
            elif r < (st.p_truck + st.p_bus) * 0.4:
                add(z, lambda xj=xj, z=z, o=oncoming: vehicles.bus(pen, xj, z, o))
            else:
                add(z, lambda xj=xj, z=z, o=oncoming: vehicles.car(pen, xj, z, o))
    # rare large vehicles get an extra chance per image, where their lane is free
    for p, fn in ((st.p_truck, vehicles.truck), (st.p_bus, vehicles.bus)):
        if rng.random() < p:
            xc, oncoming = lanes[int(rng.integers(len(lanes)))]
            z = rng.uniform(10, max(min(60, zmax), 11))
            if all(abs(z - zt) > 14 for xt, zt in taken if xt == xc):
                taken.append((xc, z))
                add(z, lambda xc=xc, z=z, o=oncoming, fn=fn: fn(pen, xc, z, o))
    # parked cars along the curbs, where they leave the outermost lane free
    lane_extent = {1: 0.95, -1: max(-x for x, _ in lanes) + 0.95}
    for s in (1, -1):
        if street.edge[s] - 2.1 > lane_extent[s] + 0.2:
            xc = s * (street.edge[s] - 1.1)
            for z in poisson_positions(rng, st.parked_density, 2.0, zmax, 5.5):
                add(z, lambda xc=xc, z=z: vehicles.car(pen, xc, z, bool(rng.random() < 0.3)))
    # pedestrians on the sidewalks, some crossing
    for s in (1, -1):
        for z in poisson_positions(rng, st.person_density, 2.5, min(zmax, 60.0), 0.8):
            x = s * (street.edge[s] + rng.uniform(0.4, street.sw[s] - 0.3))
            add(z, lambda x=x, z=z: people.person(pen, x, z))
    if zcross is not None or rng.random() < 0.2:
        zc = zcross + 1.5 if zcross is not None else rng.uniform(6, 30)
        for _ in range(int(rng.integers(1, 5))):
            x = rng.uniform(-street.rl, street.rr)
            z = zc + rng.normal(0, 0.5)
            add(z, lambda x=x, z=z: people.person(pen, x, z))
    # cyclists: along the right edge or crossing; parked bicycles on sidewalks
    for _ in range(rng.poisson(st.cyclist_rate)):
        z = rng.uniform(4, 40)
        x = street.rr - rng.uniform(0.5, 1.2) if rng.random() < 0.7 else rng.uniform(-street.rl, street.rr)
        add(z, lambda x=x, z=z: people.cyclist(pen, x, z, motor=bool(rng.random() < 0.2)))
    if rng.random() < 0.3:
        s = 1 if rng.random() < 0.5 else -1
        z0 = rng.uniform(4, 30)
        for i in range(int(rng.integers(1, 4))):
            x, z = s * (street.outer[s] - 0.5), z0 + 0.7 * i
            add(z, lambda x=x, z=z: people.cyclist(pen, x, z, rider=False))
    # street furniture on the curb: poles (lamps, traffic lights, signs) and trees
    for s in (1, -1):
        xp = s * (street.edge[s] + 0.45)
        for z in np.arange(rng.uniform(2, 15), zmax, 15.0):
            if rng.random() < st.pole_rate:
                kind = rng.choice(3, p=[0.45, 0.25, 0.30])
                zz = float(z + rng.uniform(-3, 3))
                add(zz, lambda xp=xp, zz=zz, kind=kind: furniture.pole(pen, xp, zz, kind))
        xt = s * (street.edge[s] + 0.2 + street.lawn[s] / 2 if street.lawn[s] else street.outer[s] - 0.6)
        for z in np.arange(rng.uniform(1, 10), zmax, 10.0):
            if rng.random() < st.tree_rate:
                zz = float(z + rng.uniform(-2, 2))
                add(zz, lambda xt=xt, zz=zz: roadside.tree(pen, xt, zz))
    return objs
