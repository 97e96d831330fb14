"""Turn a file's bytes into pixels with PIL exactly once, and each way that fails into DecodeError.

Only this module of the annotate stage imports PIL for pixels; geometry sees numpy arrays.
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from adinstruct.builder.annotate.hashing import PHASH_SIDE, phash, sha256_hex

DecodeFailure = Literal["unreadable", "truncated", "too_large"]

# Modes whose pixel values are the mask's values as the release wrote them (P: palette
# indices, which is how VisA-style id masks are often saved).
VALUE_MODES = frozenset({"L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"})
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa"})
WITH_ALPHA_MODES = frozenset({"LA", "La", "PA"})

# What PIL raises for bad bytes: plugins signal a wrong format with SyntaxError and
# struct.error, decoders signal bad data with OSError, some readers run into EOFError.
PIL_DATA_ERRORS = (OSError, EOFError, SyntaxError, ValueError, struct.error)


class DecodeError(Exception):
    """Why a file's bytes cannot become pixels; the message names the file."""

    def __init__(self, kind: DecodeFailure, message: str) -> None:
        super().__init__(message)
        self.kind: DecodeFailure = kind


class MaskSizeMismatch(Exception):
    """A mask whose header declares another size than its image; raised before decoding it."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__(f"mask is {size[0]}×{size[1]}")
        self.size = size


@dataclass(frozen=True, slots=True)
class ImageFacts:
    width: int
    height: int
    mode: str
    sha256: str
    phash: str


def read_file(path: Path, name: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DecodeError("unreadable", f"cannot read {name}: {error.strerror or error}") from error


def image_facts(data: bytes, name: str, max_pixels: int) -> ImageFacts:
    """Size, mode, sha256 and pHash of an image file's bytes, decoding its pixels once."""
    sha256 = sha256_hex(data)
    with _open_header(data, name, max_pixels) as image:
        width, height = image.size
        mode = image.mode
        # A JPEG then decodes straight to greyscale at up to 1/8 scale: the whole entropy-coded
        # stream is still read (so truncation is still caught) but the full-size IDCT and
        # colour conversion, which pHash would throw away, are skipped. Other formats ignore it.
        image.draft("L", (2 * PHASH_SIDE, 2 * PHASH_SIDE))
        _load(image, name)
        try:
            fingerprint = phash(image)
        except ValueError as error:  # a mode PIL cannot turn into greyscale
            raise DecodeError("unreadable", f"{name}: cannot hash mode {mode}: {error}") from error
    return ImageFacts(width=width, height=height, mode=mode, sha256=sha256, phash=fingerprint)


def mask_values(
    data: bytes, name: str, expected_size: tuple[int, int], max_pixels: int
) -> np.ndarray:
    """A mask file's pixels as a 2-D integer array, checking its size against its image first.

    Single-channel and palette masks keep their values (defect ids in VisA and MVTec LOCO);
    colour-mapped masks (BMAD brain) become the maximum over their colour channels, alpha
    ignored; masks with alpha keep their first channel.
    """
    with _open_header(data, name, max_pixels) as mask:
        if mask.size != expected_size:
            raise MaskSizeMismatch(mask.size)
        _load(mask, name)
        return _integer_values(mask)


def _open_header(data: bytes, name: str, max_pixels: int) -> Image.Image:
    # PIL warns above its own global limit. When this build allows more, our limit decides;
    # otherwise the warning is a rejection. catch_warnings is process-global, which is safe
    # because runners give each worker its own process.
    pil_limit = Image.MAX_IMAGE_PIXELS
    defer_to_ours = pil_limit is not None and max_pixels > pil_limit
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore" if defer_to_ours else "error", Image.DecompressionBombWarning
        )
        try:
            image = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise DecodeError("too_large", f"{name}: {error}") from error
        except UnidentifiedImageError as error:
            # PIL's own message holds the BytesIO's memory address, which would make
            # quarantine files differ between identical builds.
            raise DecodeError("unreadable", f"{name} is not an image PIL can identify") from error
        except PIL_DATA_ERRORS as error:
            raise _data_error(name, error) from error
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise DecodeError(
            "too_large",
            f"{name} declares {width}×{height} = {width * height:,} pixels, over the limit of "
            f"{max_pixels:,} (a possible decompression bomb)",
        )
    return image


def _load(image: Image.Image, name: str) -> None:
    try:
        image.load()
    except PIL_DATA_ERRORS as error:
        raise _data_error(name, error) from error


def _data_error(name: str, error: BaseException) -> DecodeError:
    text = str(error) or type(error).__name__
    lowered = text.lower()
    if isinstance(error, EOFError) or "truncated" in lowered or "broken data stream" in lowered:
        return DecodeError("truncated", f"{name} is truncated or corrupt: {text}")
    return DecodeError("unreadable", f"{name} cannot be decoded: {type(error).__name__}: {text}")


def _integer_values(mask: Image.Image) -> np.ndarray:
    mode = mask.mode
    if mode in VALUE_MODES:
        return np.asarray(mask)
    if mode == "1":
        return np.asarray(mask).view(np.uint8)
    if mode in COLOUR_MODES:
        channels = np.asarray(mask)
        return np.maximum(np.maximum(channels[..., 0], channels[..., 1]), channels[..., 2])
    if mode in WITH_ALPHA_MODES:
        return np.asarray(mask.getchannel(0))
    if mode == "F":
        # A float mask names no defect ids; NaN compares False, so it counts as background.
        return (np.asarray(mask) > 0).view(np.uint8)
    return np.asarray(mask.convert("L"))
