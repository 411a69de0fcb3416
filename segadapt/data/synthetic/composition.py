"""Putting a frame together: the instance map becomes the label map and the image, which gets
per-material textures, the sky, haze, shadows and the camera model of its domain."""

from __future__ import annotations

import math

import cv2
import numpy as np

from segadapt.data.synthetic.raster import (D_GROUND, D_SKY, D_XPLANE, M_ASPHALT, M_FACADE, M_GRASS, M_LEAVES,
                                            M_PAINT, M_SKY, M_SLATS, M_TILES, Camera, Canvas)
from segadapt.data.synthetic.scene import build_scene
from segadapt.data.synthetic.style import DomainStyle


def lowfreq(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth unit-variance noise with features of about ``cell`` pixels."""
    g = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(g, (w + 2 * cell, h + 2 * cell), interpolation=cv2.INTER_CUBIC)[cell:cell + h, cell:cell + w]


def compose(cv: Canvas, cam: Camera, st: DomainStyle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3), labelIds uint8 (H, W)) of a drawn canvas; draws its noise from ``rng``."""
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
    lf = lowfreq(rng, h, w, max(4, w // 24))
    lf2 = lowfreq(rng, h, w, max(2, w // 64))
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
    cloud = np.clip((lowfreq(rng, h, w, max(4, w // 16)) + 1.6 * st.cloud_amount - 0.8) * 1.5, 0, 1)[..., None]
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
    cam = Camera(width, height, f, rng.uniform(*style.camera_height), width * (0.5 + rng.uniform(-0.06, 0.06)),
                 height * rng.uniform(*style.horizon))
    cv = Canvas(width, height)
    build_scene(cv, cam, style, rng)
    return compose(cv, cam, style, rng)

