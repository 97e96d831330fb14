"""Draw a sample's annotated mask as a thin outline on an RGB copy of its image, as PNG bytes.

The outline is drawn just outside the mask (a ring around each region), so that every defect
pixel stays visible to the model; only the ring changes. Bytes are deterministic: the same image
and mask always give the same PNG, so the request's cache key is stable across runs.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from adinstruct.builder.annotate.geometry import rle_decode
from adinstruct.schemas import RLE

#: 2 px reads as a line at high detail on a 1024 px image without hiding much of the texture.
OUTLINE_WIDTH = 2

#: Bright colours to choose from, by name (the prompt says which one was drawn), in order of
#: preference when several contrast equally well.
OUTLINE_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("magenta", (255, 0, 255)),
    ("lime green", (0, 255, 0)),
    ("yellow", (255, 255, 0)),
    ("cyan", (0, 255, 255)),
    ("red", (255, 0, 0)),
)

# Modes holding more than 8 bits per pixel (depth maps, 16-bit greyscale, float renders).
WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclass(frozen=True, slots=True)
class Outline:
    png: bytes
    #: Name of the colour drawn, for the prompt ("outlined in magenta").
    colour: str


def as_rgb_array(image: Image.Image) -> np.ndarray:
    """H×W×3 uint8 pixels of any PIL image; wide modes are stretched from their min to max."""
    if image.mode in WIDE_MODES:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        grey = np.rint(scaled).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def outline_ring(mask: np.ndarray, width: int = OUTLINE_WIDTH) -> np.ndarray:
    """Pixels outside `mask` within `width` pixels of it (chessboard distance)."""
    grown = mask.copy()
    # A square dilation is separable: grow along rows, then along columns.
    for axis in (0, 1):
        source = grown.copy()
        for shift in range(1, width + 1):
            _or_shifted(grown, source, shift, axis)
            _or_shifted(grown, source, -shift, axis)
    return grown & ~mask


def draw_outline(pixels: np.ndarray, mask: np.ndarray, width: int = OUTLINE_WIDTH) -> Outline:
    """Outline `mask` on a copy of RGB `pixels` in the listed colour that contrasts most."""
    if mask.shape != pixels.shape[:2]:
        raise ValueError(
            f"mask is {mask.shape[1]}×{mask.shape[0]} but the image is "
            f"{pixels.shape[1]}×{pixels.shape[0]}"
        )
    ring = outline_ring(mask, width)
    name, colour = _contrasting_colour(pixels[ring])
    drawn = pixels.copy()
    drawn[ring] = colour
    return Outline(png=encode_png(drawn), colour=name)


def render_outline(image: Image.Image, mask_rle: RLE, width: int = OUTLINE_WIDTH) -> Outline:
    """The annotation's mask outlined on an RGB copy of `image`."""
    return draw_outline(as_rgb_array(image), rle_decode(mask_rle), width)


def encode_png(pixels: np.ndarray) -> bytes:
    # Fixed options and no metadata, so the bytes depend on the pixels alone.
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _or_shifted(target: np.ndarray, source: np.ndarray, shift: int, axis: int) -> None:
    """target |= source moved by `shift` along `axis`, without wrapping around."""
    if abs(shift) >= source.shape[axis]:
        return
    into, out_of = [slice(None), slice(None)], [slice(None), slice(None)]
    into[axis] = slice(shift, None) if shift > 0 else slice(None, shift)
    out_of[axis] = slice(None, -shift) if shift > 0 else slice(-shift, None)
    target[tuple(into)] |= source[tuple(out_of)]


def _contrasting_colour(covered: np.ndarray) -> tuple[str, tuple[int, int, int]]:
    """The colour farthest, on average, from the pixels the outline will cover."""
    if covered.size == 0:
        return OUTLINE_COLOURS[0]
    mean = covered.reshape(-1, 3).astype(np.float64).mean(axis=0)
    # Rounded so that float noise never flips a tie between two colours.
    distances = [round(float(np.linalg.norm(mean - colour)), 6) for _, colour in OUTLINE_COLOURS]
    return OUTLINE_COLOURS[distances.index(max(distances))]
