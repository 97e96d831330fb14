"""The annotate stage and the mask geometry and image hashes it computes.

Names are imported when first used (PEP 562): `validate` needs the image decoder of this
package, not the stage (renderers, point-cloud readers), and pays for no more than it uses.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: name -> the module of this package that defines it
_HOMES = {
    **dict.fromkeys(
        (
            "EIGHT_CONNECTED", "MaskGeometry", "find_regions", "grid_cells", "grid_shares",
            "grid_word", "measure_mask", "rle_decode", "rle_encode",
        ),
        "geometry",
    ),
    **dict.fromkeys(("dct_hash", "hamming", "phash", "sha256_hex"), "hashing"),
    "AnnotateStage": "stage",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{home}"), name)


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
