"""Fingerprints of an image: sha256 of its file bytes and a 64-bit DCT perceptual hash (pHash).

The pHash: greyscale (PIL's ITU-R 601-2 luma; 16- and 32-bit images are taken as
floats so that they are not clipped to 255), area-averaged down to 32×32, 2-D DCT-II
(orthonormal), the top-left 8×8 block of coefficients. Bit i (row-major, most significant
first) is set when coefficient i exceeds the median of the 63 AC coefficients (by more
than 1e-9 of the largest coefficient, so that float noise cannot set bits); the DC
term is left out of the median because it only measures brightness and would drag the
threshold, but it keeps its bit so that the hash has 64. Thresholding at a median makes
the hash blind to brightness and contrast, and the low frequencies survive re-encoding.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

PHASH_SIDE = 32
PHASH_BLOCK = 8


def _dct_matrix(side: int) -> np.ndarray:
    """Orthonormal DCT-II basis: D @ x equals scipy.fft.dct(x, type=2, norm="ortho")."""
    frequencies = np.arange(side)[:, None]
    positions = np.arange(side)[None, :]
    basis = np.sqrt(2 / side) * np.cos(np.pi * (2 * positions + 1) * frequencies / (2 * side))
    basis[0] /= np.sqrt(2)
    return basis


# Only the first 8 frequencies are kept, so two small matrix products replace scipy.fft,
# whose import alone costs more than half a second per process.
_LOW_FREQUENCIES = _dct_matrix(PHASH_SIDE)[:PHASH_BLOCK]

# Modes whose values do not fit in 8 bits; PIL's convert("L") would clip them.
HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: Written into the manifest: hashes are comparable only between builds that share the recipe.
PHASH_RECIPE = "box-32x32-grey, dct-ii 8x8 low band, bit = coefficient > median of 63 AC terms"


def phash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash of a loaded PIL image, as 16 lowercase hex characters."""
    if image.mode in ("L", "F"):
        grey = image
    elif image.mode in HIGH_BIT_DEPTH_MODES:
        grey = Image.fromarray(np.asarray(image, dtype=np.float32))
    else:
        grey = image.convert("L")
    # reducing_gap lets PIL box-reduce by an integer factor first, so that the full frame
    # is read once and the exact resize runs on a small image.
    small = grey.resize((PHASH_SIDE, PHASH_SIDE), Image.Resampling.BOX, reducing_gap=2.0)
    return dct_hash(np.asarray(small, dtype=np.float64))


def dct_hash(pixels: np.ndarray) -> str:
    """The hash bits of a 32×32 greyscale array (see the module docstring), as hex."""
    if pixels.shape != (PHASH_SIDE, PHASH_SIDE):
        raise ValueError(f"pHash needs a {PHASH_SIDE}×{PHASH_SIDE} array, got {pixels.shape}")
    coefficients = (_LOW_FREQUENCIES @ pixels @ _LOW_FREQUENCIES.T).ravel()
    threshold = np.median(coefficients[1:])
    # A flat image's AC terms are zero up to float noise, which must not decide its bits.
    tolerance = 1e-9 * np.abs(coefficients).max()
    return np.packbits(coefficients > threshold + tolerance).tobytes().hex()


def hamming(a_hex: str, b_hex: str) -> int:
    """Number of differing bits between two hex hashes of the same length."""
    if len(a_hex) != len(b_hex):
        raise ValueError(f"hashes differ in length: {a_hex!r} and {b_hex!r}")
    return (int(a_hex, 16) ^ int(b_hex, 16)).bit_count()
