"""The annotate stage and the mask geometry and image hashes it computes."""

from adinstruct.builder.annotate.geometry import (
    EIGHT_CONNECTED,
    MaskGeometry,
    find_regions,
    grid_cells,
    grid_shares,
    grid_word,
    measure_mask,
    rle_decode,
    rle_encode,
)
from adinstruct.builder.annotate.hashing import dct_hash, hamming, phash, sha256_hex
from adinstruct.builder.annotate.stage import AnnotateStage

__all__ = [
    "EIGHT_CONNECTED",
    "AnnotateStage",
    "MaskGeometry",
    "dct_hash",
    "find_regions",
    "grid_cells",
    "grid_shares",
    "grid_word",
    "hamming",
    "measure_mask",
    "phash",
    "rle_decode",
    "rle_encode",
    "sha256_hex",
]
