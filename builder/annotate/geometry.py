"""Mask geometry with numpy and scipy only: COCO RLE, connected regions, 3×3 grid locations."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_utils

from adinstruct.schemas.records import GRID_WORDS, RLE, Region

#: Diagonal neighbours join a region: a thin diagonal scratch is one defect, not a dotted line.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)

DEFAULT_GRID_MIN_SHARE = 0.05

# (row start, row stop, column start, column stop) of the mask's non-zero pixels.
Box = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class MaskGeometry:
    """Everything the annotation states about one binary mask."""

    mask_rle: RLE
    area: int
    area_fraction: float
    regions: list[Region]
    grid_cells: list[str]

    @property
    def region_count(self) -> int:
        return len(self.regions)

    @property
    def bboxes(self) -> list[tuple[int, int, int, int]]:
        return [region.bbox for region in self.regions]


def as_binary(mask: np.ndarray) -> np.ndarray:
    """`mask` as a 2-D boolean array, every non-zero value True (no copy when already boolean)."""
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {mask.shape}")
    return mask if mask.dtype == bool else mask != 0


def rle_encode(binary: np.ndarray) -> RLE:
    """COCO RLE of a 2-D mask (non-zero is foreground), as pycocotools compresses it."""
    binary = as_binary(binary)
    return _encode(binary, _nonzero_box(binary))


def rle_decode(mask_rle: RLE) -> np.ndarray:
    """The boolean H×W mask an RLE describes."""
    encoded = {"size": list(mask_rle.size), "counts": mask_rle.counts.encode("ascii")}
    with warnings.catch_warnings():
        # pycocotools' Cython decoder predates numpy 2's copy keyword; harmless, but noisy.
        warnings.filterwarnings(
            "ignore", message="__array__ implementation", category=DeprecationWarning
        )
        decoded = mask_utils.decode(encoded)
    return np.ascontiguousarray(decoded, dtype=bool)


def grid_shares(binary: np.ndarray) -> np.ndarray:
    """Share of the mask's pixels in each 3×3 grid cell, row-major; all zero for an empty mask."""
    binary = as_binary(binary)
    box = _nonzero_box(binary)
    if box is None:
        return np.zeros(9)
    rows, columns = np.nonzero(binary[box[0] : box[1], box[2] : box[3]])
    counts = _cell_counts(rows, columns, box, binary.shape)
    return counts / counts.sum()


def grid_cells(binary: np.ndarray, min_share: float = DEFAULT_GRID_MIN_SHARE) -> list[str]:
    """Grid words of the cells holding at least `min_share` of the mask, largest share first."""
    binary = as_binary(binary)
    box = _nonzero_box(binary)
    if box is None:
        return []
    rows, columns = np.nonzero(binary[box[0] : box[1], box[2] : box[3]])
    return _select_cells(_cell_counts(rows, columns, box, binary.shape), min_share)


def grid_word(row: float, column: float, height: int, width: int) -> str:
    """Grid word of the pixel holding point (row, column), in pixel-centre coordinates."""
    # Pixel y spans [y - 0.5, y + 0.5) around its centre, so floor(v + 0.5) is its index.
    row_band = _band_of(np.floor(row + 0.5), height)
    column_band = _band_of(np.floor(column + 0.5), width)
    return GRID_WORDS[int(row_band) * 3 + int(column_band)]


def find_regions(binary: np.ndarray) -> list[Region]:
    """Connected regions (8-connectivity) in label order: by their first pixel in raster order."""
    return measure_mask(binary).regions


def measure_mask(
    binary: np.ndarray, grid_min_share: float = DEFAULT_GRID_MIN_SHARE
) -> MaskGeometry:
    """RLE, area, regions and grid cells of a mask, scanning the full image only a few times.

    Everything after the RLE works on the bounding box of the non-zero pixels: defects are
    usually small, and labelling a 1024×1024 frame costs more than the rest together.
    """
    binary = as_binary(binary)
    height, width = binary.shape
    box = _nonzero_box(binary)
    mask_rle = _encode(binary, box)
    if box is None:
        return MaskGeometry(mask_rle=mask_rle, area=0, area_fraction=0.0, regions=[], grid_cells=[])
    crop = binary[box[0] : box[1], box[2] : box[3]]
    rows, columns = np.nonzero(crop)
    area = int(rows.size)
    return MaskGeometry(
        mask_rle=mask_rle,
        area=area,
        area_fraction=area / (height * width),
        regions=_regions(crop, rows, columns, box, binary.shape),
        grid_cells=_select_cells(_cell_counts(rows, columns, box, binary.shape), grid_min_share),
    )


def _regions(
    crop: np.ndarray, rows: np.ndarray, columns: np.ndarray, box: Box, shape: tuple[int, int]
) -> list[Region]:
    """Regions of the cropped mask, from one labelling and per-label sums over its pixels."""
    # Imported here: scipy.ndimage costs half a second to import, and commands that only
    # decode RLEs, or builds without masks, never need it.
    from scipy import ndimage

    height, width = shape
    row_start, column_start = box[0], box[2]
    labels, region_count = ndimage.label(crop, structure=EIGHT_CONNECTED)
    region_ids = labels[rows, columns]
    areas = np.bincount(region_ids, minlength=region_count + 1)[1:]
    centroid_rows = np.bincount(region_ids, weights=rows, minlength=region_count + 1)[1:] / areas
    centroid_columns = (
        np.bincount(region_ids, weights=columns, minlength=region_count + 1)[1:] / areas
    )
    if region_count == 1:
        # Most defects are one blob, whose box is the crop itself: skip another scan.
        region_slices = [(slice(0, crop.shape[0]), slice(0, crop.shape[1]))]
    else:
        region_slices = ndimage.find_objects(labels)
    regions = []
    for (row_slice, column_slice), area, centroid_row, centroid_column in zip(
        region_slices, areas.tolist(), centroid_rows, centroid_columns, strict=True
    ):
        regions.append(
            Region(
                bbox=(
                    column_start + column_slice.start,
                    row_start + row_slice.start,
                    column_slice.stop - column_slice.start,
                    row_slice.stop - row_slice.start,
                ),
                area=area,
                area_fraction=area / (height * width),
                location=grid_word(
                    row_start + centroid_row, column_start + centroid_column, height, width
                ),
            )
        )
    return regions


def _nonzero_box(binary: np.ndarray) -> Box | None:
    occupied_rows = np.flatnonzero(binary.any(axis=1))
    if occupied_rows.size == 0:
        return None
    occupied_columns = np.flatnonzero(binary.any(axis=0))
    return (
        int(occupied_rows[0]),
        int(occupied_rows[-1]) + 1,
        int(occupied_columns[0]),
        int(occupied_columns[-1]) + 1,
    )


def _encode(binary: np.ndarray, box: Box | None) -> RLE:
    height, width = binary.shape
    # pycocotools reads column-major memory. Zeroed pages are free and only the box is
    # copied, which is far cheaper than a transposing copy of the whole frame.
    fortran = np.zeros((height, width), dtype=np.uint8, order="F")
    if box is not None:
        fortran[box[0] : box[1], box[2] : box[3]] = binary[box[0] : box[1], box[2] : box[3]]
    encoded = mask_utils.encode(fortran)
    return RLE(size=(height, width), counts=encoded["counts"].decode("ascii"))


def _band_starts(length: int) -> np.ndarray:
    # Band b covers [floor(b * L / 3), floor((b + 1) * L / 3)); bands 1 and 2 start here.
    return np.array([length // 3, (2 * length) // 3])


def _band_of(position: np.ndarray | float, length: int) -> np.ndarray:
    # side="right" puts a position equal to a start into the band that starts there, and
    # skips the empty bands that images under 3 pixels have.
    return np.searchsorted(_band_starts(length), position, side="right")


def _cell_counts(
    rows: np.ndarray, columns: np.ndarray, box: Box, shape: tuple[int, int]
) -> np.ndarray:
    """Mask pixels per grid cell, from the crop coordinates of the mask's pixels."""
    height, width = shape
    row_bands = _band_of(np.arange(box[0], box[1]), height)
    column_bands = _band_of(np.arange(box[2], box[3]), width)
    return np.bincount(row_bands[rows] * 3 + column_bands[columns], minlength=9)


def _select_cells(cell_counts: np.ndarray, min_share: float) -> list[str]:
    total = int(cell_counts.sum())
    if total == 0:
        return []
    # Integer counts order exactly; ties keep grid order because the sort is stable.
    by_share = sorted(range(9), key=lambda cell: -int(cell_counts[cell]))
    chosen = [
        GRID_WORDS[cell]
        for cell in by_share
        if cell_counts[cell] > 0 and cell_counts[cell] / total >= min_share
    ]
    # A threshold above the largest share must still leave the mask somewhere.
    return chosen or [GRID_WORDS[by_share[0]]]
