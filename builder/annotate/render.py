"""Render point clouds to a few shaded views, on the CPU with numpy, deterministically.

A 3D sample reaches the language model as K views (Anomaly-OV uses 4 or 9). Each view is an
orthographic camera on a ring of azimuths and elevations around the cloud's centroid, framed
so that the object fills the image. The renderer is a point splatter over a z-buffer:

1. project every point once per view (one 3×3 matrix product);
2. give each point a 64-bit key, nearness in the high bits and its index in the low bits, and
   keep the smallest key per pixel with `np.minimum.at` (so ties resolve by index: the result
   never depends on the order of operations);
3. splat: a pixel takes the smallest key within `splat_radius` pixels, a min-filter over the
   H×W key image, which equals drawing every point as a small disc with a depth test but costs
   H×W per offset instead of N;
4. shade by nearness, optionally lit through normals estimated from the depth image.

The same z-buffer gives the training image (grey, or the points' own colours), a highlight
image with the anomalous points in a distinct colour (for the describer only: training images
must never show the answer) and the view's anomaly mask (pixels whose visible point is
anomalous), whose geometry yields per-view location words.

`depth_image` turns MVTec 3D-AD's organised xyz into a depth picture aligned pixel for pixel
with its rgb image and ground-truth mask.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from adinstruct.builder.annotate.pointcloud import valid_points

#: Where renders go, relative to DIR/images/<source>/.
RENDERS_DIR = "renders"
BACKGROUND = (255, 255, 255)
#: Points without their own colour.
SURFACE = (205, 205, 205)
#: Anomalous points in highlight images: a saturated red that shading keeps red.
HIGHLIGHT = (235, 30, 30)
#: Light from the upper left, in front of the object (camera coordinates: x right, y up,
#: z toward the viewer).
LIGHT = np.array([-0.45, 0.55, 0.70]) / np.linalg.norm([-0.45, 0.55, 0.70])
#: MVTec 3D-AD's clouds are in the sensor's frame (z away from it): "up" points at the sensor.
SENSOR_UP = (0.0, 0.0, -1.0)
_EMPTY = np.iinfo(np.int64).max


@dataclass(frozen=True, slots=True)
class Viewpoint:
    """A direction from the centroid to the camera: azimuth around `up`, elevation above its
    horizontal plane, in degrees."""

    azimuth: float
    elevation: float


#: Anomaly-OV's view counts. 4: a ring at 30°. 9: straight above, four at 55°, four at 20°
#: between them.
VIEWPOINTS: dict[int, tuple[Viewpoint, ...]] = {
    4: tuple(Viewpoint(azimuth, 30.0) for azimuth in (0.0, 90.0, 180.0, 270.0)),
    9: (
        Viewpoint(0.0, 90.0),
        *(Viewpoint(azimuth, 55.0) for azimuth in (0.0, 90.0, 180.0, 270.0)),
        *(Viewpoint(azimuth, 20.0) for azimuth in (45.0, 135.0, 225.0, 315.0)),
    ),
}


def viewpoints(count: int) -> tuple[Viewpoint, ...]:
    """The preset for 4 or 9 views; other counts spread over the upper hemisphere (Fibonacci)."""
    if count < 1:
        raise ValueError(f"a render needs at least one view, got {count}")
    if count in VIEWPOINTS:
        return VIEWPOINTS[count]
    golden = math.pi * (3.0 - math.sqrt(5.0))
    views = []
    for index in range(count):
        height = 1.0 - (index + 0.5) / count  # from near the pole down to near the horizon
        views.append(
            Viewpoint(math.degrees(index * golden) % 360.0, math.degrees(math.asin(height)))
        )
    return tuple(views)


@dataclass(frozen=True)
class Camera:
    """An orthographic camera: rows of `rotation` are the image's right, down and the direction
    toward the camera; `scale` is pixels per unit; `offset` is where `center` lands (x, y)."""

    rotation: np.ndarray
    center: np.ndarray
    scale: float
    offset: tuple[float, float]
    size: tuple[int, int]

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel columns, rows (int64, possibly outside the image) and nearness of points.

        The same arithmetic as the renderer's, so a point lands on the pixel it was drawn at.
        """
        centered = (np.asarray(points, dtype=np.float64) - self.center).astype(np.float32)
        local = self.local(np.ascontiguousarray(centered.T))
        cols, rows = self.pixels(local)
        return cols, rows, local[2]

    def local(self, planar: np.ndarray) -> np.ndarray:
        """Camera coordinates (3, N) float32 of points minus `center`, given as (3, N) float32.

        Planar (3, N) arrays keep every coordinate contiguous: the matrix product and the
        per-axis reductions run several times faster than on (N, 3).
        """
        return np.ascontiguousarray(self.rotation, dtype=np.float32) @ planar

    def pixels(self, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cols = np.floor(local[0] * self.scale + self.offset[0]).astype(np.int64)
        rows = np.floor(local[1] * self.scale + self.offset[1]).astype(np.int64)
        return cols, rows


@dataclass
class View:
    viewpoint: Viewpoint
    camera: Camera
    #: H×W×3 uint8: what training records show.
    image: np.ndarray
    #: H×W bool: pixels showing the object.
    coverage: np.ndarray
    #: H×W×3 uint8 with the anomalous points in HIGHLIGHT, for the describer only.
    highlight: np.ndarray | None = None
    #: H×W bool: pixels whose visible point is anomalous.
    anomaly_mask: np.ndarray | None = None


def camera_rotation(viewpoint: Viewpoint, up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Rows: image right, image down, toward the camera; a right-handed camera frame."""
    up_axis = _unit(np.asarray(up, dtype=np.float64))
    # Two horizontal axes: the x axis made perpendicular to up (y when up is near x).
    reference = np.array([1.0, 0.0, 0.0]) if abs(up_axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    first = _unit(reference - reference.dot(up_axis) * up_axis)
    second = np.cross(up_axis, first)
    azimuth, elevation = math.radians(viewpoint.azimuth), math.radians(viewpoint.elevation)
    horizontal = math.cos(azimuth) * first + math.sin(azimuth) * second
    toward = math.cos(elevation) * horizontal + math.sin(elevation) * up_axis
    screen_up = up_axis - toward.dot(up_axis) * toward
    if np.linalg.norm(screen_up) < 1e-6:
        # Looking straight down `up`: the image's top is the second horizontal axis, which for
        # MVTec 3D-AD's sensor frame keeps the rgb image's orientation.
        screen_up = second
    screen_up = _unit(screen_up)
    right = np.cross(screen_up, toward)
    return np.stack([right, -screen_up, toward])


def frame_camera(
    points: np.ndarray, rotation: np.ndarray, size: tuple[int, int], margin: float = 0.04
) -> Camera:
    """The camera on `rotation` that fits the points into the image, `margin` on each side."""
    points = np.asarray(points, dtype=np.float64)
    center = points.mean(axis=0)
    unframed = Camera(rotation, center, 1.0, (0.0, 0.0), size)
    planar = np.ascontiguousarray((points - center).astype(np.float32).T)
    return _framed(unframed.local(planar), unframed, margin)


def _framed(local: np.ndarray, camera: Camera, margin: float) -> Camera:
    width, height = camera.size
    low = np.array([local[0].min(), local[1].min()], dtype=np.float64)
    high = np.array([local[0].max(), local[1].max()], dtype=np.float64)
    extent = np.maximum(high - low, 1e-12)
    scale = float(min(width * (1 - 2 * margin) / extent[0], height * (1 - 2 * margin) / extent[1]))
    middle = (low + high) / 2
    offset = (float(width / 2 - middle[0] * scale), float(height / 2 - middle[1] * scale))
    return Camera(camera.rotation, camera.center, scale, offset, camera.size)


def render_views(
    points: np.ndarray,
    count: int | Sequence[Viewpoint] = 4,
    *,
    labels: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    size: int | tuple[int, int] = 512,
    splat_radius: int = 1,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    margin: float = 0.04,
    lighting: float = 0.6,
    background: tuple[int, int, int] = BACKGROUND,
) -> list[View]:
    """Shaded views of an (N, 3) cloud; `labels` (N,) bool marks anomalous points.

    When `labels` marks any point, each view also carries `highlight` and `anomaly_mask`.
    `colors` (N, 3) uint8 paints the points (e.g. MVTec 3D-AD's rgb); grey otherwise.
    `lighting` in [0, 1] mixes normal-based light into the depth shading (0: depth only).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"render needs an (N, 3) cloud of at least one point, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("render needs finite points; drop missing ones first")
    if not 0 <= splat_radius <= 8:
        raise ValueError(f"splat_radius must lie in [0, 8], got {splat_radius}")
    dims = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    views = viewpoints(count) if isinstance(count, int) else tuple(count)
    anomalous = None
    if labels is not None:
        anomalous = np.asarray(labels, dtype=bool)
        if anomalous.shape != (len(points),):
            raise ValueError(f"labels must have one entry per point, got {anomalous.shape}")
        if not anomalous.any():
            anomalous = None
    palette = _palette(colors, len(points))
    # One centred planar float32 copy of the cloud serves every view.
    center = points.mean(axis=0)
    planar = np.ascontiguousarray((points - center).astype(np.float32).T)
    index_bits = max(1, (len(points) - 1).bit_length())
    rendered = []
    for viewpoint in views:
        unframed = Camera(camera_rotation(viewpoint, up), center, 1.0, (0.0, 0.0), dims)
        local = unframed.local(planar)
        camera = _framed(local, unframed, margin)
        keys, depth_span = _zbuffer(local, camera, index_bits)
        keys = _splat(keys, splat_radius)
        del local
        rendered.append(
            _shade(
                viewpoint,
                camera,
                keys,
                index_bits,
                palette,
                anomalous,
                lighting,
                background,
                relief=depth_span * camera.scale,
            )
        )
    return rendered


#: Nearness is quantised to 24 bits: the float32 it is computed in holds no more.
NEAR_BITS = 24


def _zbuffer(local: np.ndarray, camera: Camera, index_bits: int) -> tuple[np.ndarray, float]:
    """H×W int64 keys: per pixel the smallest (farness, index) of the points landing on it;
    and the depth range the farness spans.

    Farness takes the high bits and the point's index the low ones, so keys are unique and a
    pixel's winner is the nearest point, ties going to the lowest index, in any order of work.
    """
    width, height = camera.size
    cols, rows = camera.pixels(local)
    np.clip(cols, 0, width - 1, out=cols)
    np.clip(rows, 0, height - 1, out=rows)
    pixel = rows * width
    pixel += cols
    del cols, rows
    nearness = local[2]
    near, far = float(nearness.max()), float(nearness.min())
    steps = (1 << NEAR_BITS) - 1
    # In [0, steps] up to float32 rounding (at most steps + 1, which the shift still holds).
    farness = ((near - nearness) * np.float32(steps / max(near - far, 1e-12))).astype(np.int64)
    farness <<= index_bits
    farness |= np.arange(len(farness), dtype=np.int64)
    flat = np.full(width * height, _EMPTY, dtype=np.int64)
    np.minimum.at(flat, pixel, farness)
    return flat.reshape(height, width), near - far


def _splat(keys: np.ndarray, radius: int) -> np.ndarray:
    """Min-filter over a disc: every point drawn as a disc of `radius` pixels, depth-tested."""
    if radius == 0:
        return keys
    height, width = keys.shape
    result = keys.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dx, dy) == (0, 0) or dx * dx + dy * dy > radius * radius + 1:
                continue
            # result[y, x] = min(result[y, x], keys[y + dy, x + dx]) where both exist.
            target = result[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
            source = keys[max(0, dy) : height + min(0, dy), max(0, dx) : width + min(0, dx)]
            np.minimum(target, source, out=target)
    return result


def _shade(
    viewpoint: Viewpoint,
    camera: Camera,
    keys: np.ndarray,
    index_bits: int,
    palette: np.ndarray,
    anomalous: np.ndarray | None,
    lighting: float,
    background: tuple[int, int, int],
    relief: float,
) -> View:
    flat = keys.ravel()
    covered = np.flatnonzero(flat != _EMPTY)
    kept = flat[covered]
    winners = (kept & ((1 << index_bits) - 1)).astype(np.intp)
    coverage = np.zeros(keys.shape, dtype=bool)
    coverage.ravel()[covered] = True
    farness = np.zeros(keys.shape, dtype=np.float32)
    farness.ravel()[covered] = (kept >> index_bits).astype(np.float32) / ((1 << NEAR_BITS) - 1)
    intensity = _intensity(farness, coverage, covered, lighting, relief)
    colours = palette[winners]
    view = View(viewpoint, camera, _paint(colours, intensity, covered, keys.shape, background),
                coverage)  # fmt: skip
    if anomalous is not None:
        marked = anomalous[winners]
        mask = np.zeros(keys.shape, dtype=bool)
        mask.ravel()[covered[marked]] = True
        colours = colours.copy()
        colours[marked] = HIGHLIGHT
        view.highlight = _paint(colours, intensity, covered, keys.shape, background)
        view.anomaly_mask = mask
    return view


def _intensity(
    farness: np.ndarray, coverage: np.ndarray, covered: np.ndarray, lighting: float, relief: float
) -> np.ndarray:
    """Per covered pixel (flat indices), in (0, 1): nearer is brighter, lit through normals
    estimated from the depth image."""
    depth_term = 1.0 - 0.55 * np.minimum(farness.ravel()[covered], 1.0)
    if lighting <= 0:
        return 0.9 * depth_term
    lambert = _depth_lambert(farness, coverage, relief).ravel()[covered]
    return 0.9 * depth_term * ((1 - lighting) + lighting * (0.3 + 0.7 * lambert))


def _depth_lambert(depth: np.ndarray, coverage: np.ndarray, relief: float) -> np.ndarray:
    """n·l per pixel of a depth image (larger = farther; `relief` pixels per unit of it),
    normals by smoothed central differences."""
    weight = coverage.astype(np.float32)
    smooth = _box3(depth * weight) / np.maximum(_box3(weight), 1e-6)
    relief = smooth * relief  # in pixels, like the image axes: true slopes
    gx = np.zeros_like(relief)
    gy = np.zeros_like(relief)
    gx[:, 1:-1] = (relief[:, 2:] - relief[:, :-2]) / 2
    gy[1:-1, :] = (relief[2:, :] - relief[:-2, :]) / 2
    # Camera frame: x right, y up (rows go down), z toward the viewer; farther = -z.
    normal_x, normal_y = gx, -gy
    norm = np.sqrt(normal_x * normal_x + normal_y * normal_y + 1.0)
    lambert = (normal_x * LIGHT[0] + normal_y * LIGHT[1] + LIGHT[2]) / norm
    return np.clip(lambert, 0.0, 1.0)


def _box3(values: np.ndarray) -> np.ndarray:
    """Sum over each pixel's 3×3 neighbourhood (zero outside), separably."""
    rows = values.copy()
    rows[1:] += values[:-1]
    rows[:-1] += values[1:]
    total = rows.copy()
    total[:, 1:] += rows[:, :-1]
    total[:, :-1] += rows[:, 1:]
    return total


def _palette(colors: np.ndarray | None, count: int) -> np.ndarray:
    if colors is None:
        return np.broadcast_to(np.array(SURFACE, dtype=np.uint8), (count, 3))
    palette = np.asarray(colors)
    if palette.shape != (count, 3):
        raise ValueError(f"colors must be (N, 3) with N = {count}, got {palette.shape}")
    return palette.astype(np.uint8, copy=False)


def _paint(
    colours: np.ndarray,
    intensity: np.ndarray,
    covered: np.ndarray,
    shape: tuple[int, ...],
    background: tuple[int, int, int],
) -> np.ndarray:
    # Channel by channel: scattering whole 3-byte rows is several times slower.
    channels = []
    for channel in range(3):
        plane = np.full(shape[0] * shape[1], background[channel], dtype=np.uint8)
        shaded = colours[:, channel] * intensity + np.float32(0.5)
        plane[covered] = shaded.astype(np.uint8)  # intensity < 1: never above 255
        channels.append(plane.reshape(shape))
    return np.stack(channels, axis=-1)


# -- MVTec 3D-AD: a depth picture aligned with the rgb image -------------------------------


def depth_image(xyz: np.ndarray, *, lighting: float = 0.5) -> np.ndarray:
    """H×W uint8 of an organised cloud: nearer (smaller z) is brighter, missing points are 0.

    Aligned pixel for pixel with the rgb image and its ground-truth mask. With `lighting`,
    normals from the organised grid (cross product of neighbouring points) shade the relief.
    """
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f"an organised cloud is H×W×3, got {xyz.shape}")
    valid = valid_points(xyz)
    image = np.zeros(xyz.shape[:2], dtype=np.uint8)
    if not valid.any():
        return image
    z = xyz[..., 2].astype(np.float64)
    near, far = float(z[valid].min()), float(z[valid].max())
    nearness = (far - z[valid]) / max(far - near, 1e-12)
    value = 0.25 + 0.75 * nearness
    if lighting > 0:
        lambert = _grid_lambert(np.where(valid[..., None], xyz, 0).astype(np.float64), valid)
        value = value * ((1 - lighting) + lighting * (0.3 + 0.7 * lambert[valid]))
    image[valid] = np.clip(np.rint(value * 255), 1, 255).astype(np.uint8)
    return image


def _grid_lambert(xyz: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """n·l of an organised cloud in the sensor frame (x right, y down, z away)."""
    du = np.zeros_like(xyz)
    dv = np.zeros_like(xyz)
    du[:, 1:-1] = xyz[:, 2:] - xyz[:, :-2]
    dv[1:-1, :] = xyz[2:, :] - xyz[:-2, :]
    both_u = np.zeros_like(valid)
    both_v = np.zeros_like(valid)
    both_u[:, 1:-1] = valid[:, 2:] & valid[:, :-2]
    both_v[1:-1, :] = valid[2:, :] & valid[:-2, :]
    du[~both_u] = 0
    dv[~both_v] = 0
    normal = np.cross(du, dv)  # x right × y down = z away: flip to face the sensor
    normal = -normal
    length = np.linalg.norm(normal, axis=-1)
    ok = length > 0
    # The light in the sensor frame: camera-style LIGHT with y and z flipped.
    light = np.array([LIGHT[0], -LIGHT[1], -LIGHT[2]])
    lambert = np.full(valid.shape, LIGHT[2])  # flat-on where no normal can be estimated
    lambert[ok] = (normal[ok] @ light) / length[ok]
    return np.clip(lambert, 0.0, 1.0)


# -- files ------------------------------------------------------------------------------


def render_folder(cloud_relative: str) -> str:
    """Where one sample's renders go, relative to DIR/images/<source>/: beside the cloud's
    category folder, `<category>/renders/<rest of the cloud path, no suffix>`
    (`airplane/test/4_bulge.pcd` -> `airplane/renders/test/4_bulge`). The category stays the
    first folder, as benchmark paths `<source>/<class>/...` need it (Anomaly-OV's test script
    reads the class there); a cloud at the root gets `renders/<stem>`."""
    parts = PurePosixPath(cloud_relative).with_suffix("").parts
    if len(parts) == 1:
        return f"{RENDERS_DIR}/{parts[0]}"
    return "/".join((parts[0], RENDERS_DIR, *parts[1:]))


def view_names(count: int, kind: str = "view") -> list[str]:
    """File names of K views: view_00.png ...; kind 'highlight' or 'mask' for the others."""
    return [f"{kind}_{index:02d}.png" for index in range(count)]


def write_png(path: Path, pixels: np.ndarray) -> Path:
    """Write an image atomically (temporary file, then rename); the same pixels, same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    array = np.asarray(pixels)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    Image.fromarray(array).save(temporary, format="PNG")
    os.replace(temporary, path)
    return path


def write_views(views: Sequence[View], folder: Path) -> dict[str, list[str]]:
    """Write a render's files into `folder`; names by kind ('view', 'highlight', 'mask')."""
    written: dict[str, list[str]] = {"view": [], "highlight": [], "mask": []}
    names = {kind: view_names(len(views), kind) for kind in written}
    for index, view in enumerate(views):
        written["view"].append(write_png(folder / names["view"][index], view.image).name)
        if view.highlight is not None and view.anomaly_mask is not None:
            write_png(folder / names["highlight"][index], view.highlight)
            write_png(folder / names["mask"][index], view.anomaly_mask)
            written["highlight"].append(names["highlight"][index])
            written["mask"].append(names["mask"][index])
    return written


def _unit(vector: np.ndarray) -> np.ndarray:
    length = float(np.linalg.norm(vector))
    if length == 0:
        raise ValueError("the up vector must not be zero")
    return vector / length
