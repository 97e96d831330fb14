"""Mask geometry on hand-built masks: RLE round trips, regions, grid words and shares."""

from __future__ import annotations

import numpy as np
import pycocotools.mask as mask_utils
import pytest
from scipy import ndimage

from adinstruct.builder.annotate import (
    find_regions,
    grid_cells,
    grid_shares,
    grid_word,
    measure_mask,
    rle_decode,
    rle_encode,
)
from adinstruct.schemas import GRID_WORDS, RLE


def random_mask(height: int, width: int, density: float, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((height, width)) < density


def coco_encode(binary: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))


# -- RLE ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "density"),
    [(1, 1, 0.5), (1, 17, 0.3), (13, 1, 0.3), (7, 13, 0.4), (31, 45, 0.05), (480, 640, 0.01)],
)
def test_rle_round_trips_and_matches_pycocotools(height, width, density):
    binary = random_mask(height, width, density, seed=height * width)
    mask_rle = rle_encode(binary)
    assert mask_rle.size == (height, width)
    np.testing.assert_array_equal(rle_decode(mask_rle), binary)
    # The crop-then-encode shortcut must write exactly what pycocotools writes for the frame.
    reference = coco_encode(binary)
    assert mask_rle.counts == reference["counts"].decode("ascii")
    encoded = {"size": list(mask_rle.size), "counts": mask_rle.counts.encode("ascii")}
    assert int(mask_utils.area(encoded)) == int(binary.sum())


@pytest.mark.parametrize("shape", [(1, 1), (5, 9), (64, 48)])
def test_rle_of_empty_and_full_masks(shape):
    empty = np.zeros(shape, dtype=bool)
    full = np.ones(shape, dtype=bool)
    for binary in (empty, full):
        mask_rle = rle_encode(binary)
        np.testing.assert_array_equal(rle_decode(mask_rle), binary)
        assert mask_rle.counts == coco_encode(binary)["counts"].decode("ascii")
    assert measure_mask(empty).area == 0
    assert measure_mask(full).area_fraction == 1.0


def test_rle_treats_any_nonzero_value_as_foreground():
    values = np.zeros((6, 8), dtype=np.uint8)
    values[1, 2] = 255
    values[4, 5] = 1
    assert rle_encode(values) == rle_encode(values > 0)


def test_rle_is_a_schema_record():
    mask_rle = rle_encode(np.eye(4, dtype=bool))
    assert RLE.model_validate(mask_rle.model_dump()) == mask_rle


def test_non_2d_mask_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        measure_mask(np.zeros((4, 4, 3), dtype=bool))


# -- regions --------------------------------------------------------------------------------


def test_two_separate_blobs_are_two_regions_with_exact_boxes():
    binary = np.zeros((40, 60), dtype=bool)
    binary[5:10, 8:20] = True  # 5 rows × 12 columns
    binary[30:38, 50:53] = True  # 8 rows × 3 columns
    geometry = measure_mask(binary)
    assert geometry.region_count == 2
    assert geometry.bboxes == [(8, 5, 12, 5), (50, 30, 3, 8)]
    assert [region.area for region in geometry.regions] == [60, 24]
    assert [region.area_fraction for region in geometry.regions] == [60 / 2400, 24 / 2400]
    assert geometry.area == 84
    assert geometry.area_fraction == 84 / 2400
    assert find_regions(binary) == geometry.regions


def test_diagonal_neighbours_are_one_region():
    binary = np.zeros((6, 6), dtype=bool)
    binary[1, 1] = binary[2, 2] = binary[3, 3] = True
    regions = find_regions(binary)
    assert len(regions) == 1
    assert regions[0].bbox == (1, 1, 3, 3)
    assert regions[0].area == 3


def test_regions_follow_label_order():
    binary = np.zeros((20, 20), dtype=bool)
    binary[10:12, 1:3] = True  # first pixel in raster order comes second
    binary[2:4, 15:18] = True
    assert [region.bbox[:2] for region in find_regions(binary)] == [(15, 2), (1, 10)]


def test_region_facts_agree_with_scipy_on_a_speckled_mask():
    binary = random_mask(97, 131, 0.2, seed=7)
    labels, count = ndimage.label(binary, structure=np.ones((3, 3)))
    geometry = measure_mask(binary)
    assert geometry.region_count == count
    centroids = ndimage.center_of_mass(binary, labels, range(1, count + 1))
    for index, (region, slices, centroid) in enumerate(
        zip(geometry.regions, ndimage.find_objects(labels), centroids, strict=True), start=1
    ):
        rows, columns = slices
        assert region.bbox == (
            columns.start,
            rows.start,
            columns.stop - columns.start,
            rows.stop - rows.start,
        )
        assert region.area == int((labels == index).sum())
        assert region.location == grid_word(centroid[0], centroid[1], 97, 131)


# -- grid -----------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", range(9))
def test_blob_in_each_cell_gets_its_word(cell):
    binary = np.zeros((90, 90), dtype=bool)
    row, column = divmod(cell, 3)
    binary[row * 30 + 10 : row * 30 + 20, column * 30 + 10 : column * 30 + 20] = True
    geometry = measure_mask(binary)
    assert geometry.grid_cells == [GRID_WORDS[cell]]
    assert geometry.regions[0].location == GRID_WORDS[cell]
    expected_shares = np.zeros(9)
    expected_shares[cell] = 1.0
    np.testing.assert_array_equal(grid_shares(binary), expected_shares)


def test_blob_spanning_two_cells_lists_both_by_share():
    binary = np.zeros((90, 90), dtype=bool)
    binary[10:20, 20:45] = True  # columns 20-29 are "top left", 30-44 are "top"
    assert grid_cells(binary) == ["top", "top left"]
    shares = grid_shares(binary)
    assert shares[0] == pytest.approx(0.4)
    assert shares[1] == pytest.approx(0.6)
    assert shares.sum() == pytest.approx(1.0)
    assert find_regions(binary)[0].location == "top"


def test_equal_shares_keep_grid_order():
    binary = np.zeros((90, 90), dtype=bool)
    binary[40:50, 20:40] = True  # 10 columns each side of the x=30 boundary
    assert grid_cells(binary) == ["left", "center"]


def test_grid_min_share_cut_off():
    binary = np.zeros((90, 90), dtype=bool)
    binary[40:50, 50:60] = True  # 100 pixels in "center"
    binary[40:45, 60] = True  # 5 pixels in "right": 5 / 105 of the mask
    share_right = 5 / 105
    assert grid_cells(binary, min_share=share_right) == ["center", "right"]
    assert grid_cells(binary, min_share=0.05) == ["center"]
    assert grid_cells(binary, min_share=0.0) == ["center", "right"]
    # A threshold above every share still names the largest cell.
    assert grid_cells(binary, min_share=0.99) == ["center"]
    assert measure_mask(binary, grid_min_share=0.04).grid_cells == ["center", "right"]


def test_grid_bands_use_floor_of_thirds_on_uneven_sizes():
    # Width 10: columns 0-2 left, 3-5 middle, 6-9 right (floor(10/3)=3, floor(20/3)=6).
    assert [grid_word(0, column, 10, 10) for column in (2, 3, 5, 6, 9)] == [
        "top left",
        "top",
        "top",
        "top right",
        "top right",
    ]
    binary = np.zeros((10, 10), dtype=bool)
    binary[9, 6] = True
    assert grid_cells(binary) == ["bottom right"]


def test_empty_mask_has_no_cells_or_regions():
    binary = np.zeros((12, 12), dtype=bool)
    geometry = measure_mask(binary)
    assert geometry.grid_cells == []
    assert geometry.regions == []
    assert grid_cells(binary) == []
    np.testing.assert_array_equal(grid_shares(binary), np.zeros(9))
