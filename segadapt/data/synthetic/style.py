"""The look of a domain: every appearance and layout parameter of one domain in one ``DomainStyle``.

Source ("GTA-like"): saturated clean colours, flat shading, hard sun shadows, sharp edges. Target
("Cityscapes-like"): overcast colour cast, low contrast, other colours per class, rougher textures,
haze, blur, sensor noise, vignetting, an ego-vehicle hood, a lower horizon and denser streets.
``shift`` in [0, 1] interpolates the target style between the two (``domain_styles``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from importlib import resources

import numpy as np
import yaml

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


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def _load_styles() -> dict[str, DomainStyle]:
    """The two styles, from styles.yaml beside this module (parameter data, not code)."""
    data = yaml.safe_load(resources.files(__package__).joinpath("styles.yaml").read_text())
    return {name: DomainStyle(**{k: _tuples(v) for k, v in values.items()}) for name, values in data.items()}


_STYLES = _load_styles()
SOURCE_STYLE = _STYLES["source"]
TARGET_STYLE = _STYLES["target"]


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
