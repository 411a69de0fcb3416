"""The look of a domain: every appearance and layout parameter of one domain in one ``DomainStyle``.

Source ("GTA-like"): saturated clean colours, flat shading, hard sun shadows, sharp edges. Target
("Cityscapes-like"): overcast colour cast, low contrast, other colours per class, rougher textures,
haze, blur, sensor noise, vignetting, an ego-vehicle hood, a lower horizon and denser streets.
``shift`` in [0, 1] interpolates the target style between the two (``domain_styles``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np

from segadapt.errors import UsageError

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



def jitter(rng: np.random.Generator, base, st: DomainStyle, scale: float = 1.0) -> np.ndarray:
    """A colour varied around ``base``: per-channel noise plus a brightness factor."""
    c = np.asarray(base, float) + rng.normal(0.0, st.color_jitter * 255 * scale, 3)
    c = c * rng.uniform(1 - st.brightness_jitter * scale, 1 + st.brightness_jitter * scale)
    return np.clip(c, 0, 255)


def pick(rng: np.random.Generator, colors) -> tuple:
    return colors[int(rng.integers(len(colors)))]
