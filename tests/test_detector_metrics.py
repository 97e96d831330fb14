"""The detector's metrics against their references.

Image AUROC, AP and pixel AUROC against scikit-learn; F1-max against a brute-force loop over
thresholds; AUPRO against a slow, literal transcription of the MVTec AD definition written
here (binarise at every distinct threshold, overlap per connected region, FPR over normal
pixels, trapezoid up to max_fpr with the last point interpolated), and on hand-computed cases.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from adinstruct.validators.detector.metrics import (
    aupro,
    average_precision,
    f1_max,
    image_auroc,
    pixel_auroc,
)

# -- references -----------------------------------------------------------------------------


def reference_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float) -> float:
    """The definition, one threshold at a time: slow, and obviously what the paper states."""
    masks = np.asarray(masks, dtype=bool)
    regions = []  # (image index, that image's boolean mask of one region)
    for index, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(index, labelled == label) for label in range(1, count + 1)]
    normal = ~masks
    fprs, pros = [0.0], [0.0]
    for threshold in np.unique(maps)[::-1]:
        predicted = maps >= threshold
        overlaps = [predicted[index][region].sum() / region.sum() for index, region in regions]
        pros.append(float(np.mean(overlaps)))
        fprs.append((predicted & normal).sum() / normal.sum())
    return trapezoid_up_to(np.array(fprs), np.array(pros), max_fpr) / max_fpr


def trapezoid_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid over the points with x <= x_max, plus the piece to the interpolated x_max."""
    inside = x <= x_max  # x never decreases, so this is a prefix
    xs, ys = x[inside], y[inside]
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2))
    if not inside.all():
        last, following = int(np.flatnonzero(inside)[-1]), int(np.flatnonzero(~inside)[0])
        slope = (y[following] - y[last]) / (x[following] - x[last])
        y_at_max = y[last] + slope * (x_max - x[last])
        area += (x_max - x[last]) * (y[last] + y_at_max) / 2
    return area


def brute_force_f1_max(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    best, best_threshold = -1.0, None
    for threshold in sorted(set(scores.tolist()), reverse=True):  # highest first wins ties
        predicted = scores >= threshold
        true_positives = int(np.sum(predicted & labels))
        false_positives = int(np.sum(predicted & ~labels))
        false_negatives = int(np.sum(~predicted & labels))
        f1 = 2 * true_positives / (2 * true_positives + false_positives + false_negatives)
        if f1 > best:
            best, best_threshold = f1, threshold
    return best, best_threshold


# -- inputs ---------------------------------------------------------------------------------


def random_labels_and_scores(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two to 60 samples, both classes present; scores continuous or heavily tied."""
    size = int(rng.integers(2, 61))
    labels = rng.random(size) < rng.uniform(0.1, 0.9)
    labels[rng.choice(size, 2, replace=False)] = [True, False]
    kind = rng.integers(3)
    if kind == 0:
        scores = rng.normal(size=size) + labels * rng.uniform(0, 2)
    elif kind == 1:
        scores = rng.integers(0, 4, size).astype(float)  # few distinct values: many ties
    else:
        scores = rng.normal(size=size).astype(np.float32).round(1)
    return labels, scores


def blob_masks(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """Random rectangles, discs and speckles, zero to three per image, overlapping at will.

    Speckles (scattered pixels in a window) touch each other at corners, so regions differ
    between 8- and 4-connectivity. Some images stay defect-free.
    """
    masks = np.zeros((count, height, width), dtype=bool)
    rows, cols = np.mgrid[:height, :width]
    for mask in masks:
        for _ in range(int(rng.integers(0, 4))):
            top, left = int(rng.integers(height)), int(rng.integers(width))
            shape = rng.integers(3)
            if shape == 0:
                size_y, size_x = rng.integers(1, max(2, height // 3), size=2)
                mask[top : top + size_y, left : left + size_x] = True
            elif shape == 1:
                radius = rng.uniform(0.5, max(1.0, height / 5))
                mask |= (rows - top) ** 2 + (cols - left) ** 2 <= radius**2
            else:
                window = mask[top : top + height // 2, left : left + width // 2]
                window |= rng.random(window.shape) < 0.3
    if not masks.any():
        masks[0, 0, 0] = True
    if masks.all():
        masks[0, 0, 0] = False
    return masks


def noisy_maps(rng: np.random.Generator, masks: np.ndarray, kind: str) -> np.ndarray:
    """Maps that score defects somewhat higher, so the curve is neither 0 nor 1."""
    maps = rng.normal(size=masks.shape) + masks * rng.uniform(0.5, 2.0)
    if kind == "tied":
        return np.round(maps * 2) / 2  # about a dozen distinct values over the whole stack
    if kind == "float32":
        return maps.astype(np.float32)
    return maps


# -- image metrics --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(300))
def test_image_auroc_and_average_precision_match_sklearn(seed):
    labels, scores = random_labels_and_scores(np.random.default_rng(seed))
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-12
    )


@pytest.mark.parametrize(
    ("labels", "scores"),
    [
        ([0, 1], [0.2, 0.9]),
        ([1, 0], [0.2, 0.9]),
        ([0, 1], [0.5, 0.5]),
        ([1, 0, 1], [3, 3, 3]),
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]),  # sklearn's own example: AP 0.83, not a trapezoid
        ([True, False, True, True, False], [1, 2, 2, 3, 0]),
    ],
)
def test_tiny_and_fully_tied_sets_match_sklearn(labels, scores):
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-15)
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-15
    )


def test_average_precision_is_the_step_sum_not_the_trapezoid():
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    # Thresholds 0.8, 0.4, 0.35: recall 1/2, 1/2, 1 at precision 1, 1/2, 2/3.
    assert average_precision(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-15)


def test_average_precision_with_no_normal_sample_is_one():
    assert average_precision([1, 1, 1], [0.1, 0.5, 0.2]) == 1.0
    assert average_precision_score([1, 1, 1], [0.1, 0.5, 0.2]) == 1.0


@pytest.mark.parametrize("seed", range(200))
def test_f1_max_matches_a_brute_force_loop(seed):
    labels, scores = random_labels_and_scores(np.random.default_rng(seed))
    best, threshold = f1_max(labels, scores)
    expected_best, expected_threshold = brute_force_f1_max(labels, scores)
    assert best == pytest.approx(expected_best, abs=1e-15)
    assert threshold == expected_threshold
    assert best == pytest.approx(f1_score(labels, scores >= threshold), abs=1e-12)


def test_f1_max_on_a_hand_case_returns_the_highest_of_tied_thresholds():
    # At 0.9: TP 1, FN 2 -> 2/4. At 0.7: TP 2, FP 1, FN 1 -> 4/6. At 0.1: TP 3, FP 3 -> 6/9.
    best, threshold = f1_max([1, 0, 1, 1, 0, 0], [0.9, 0.7, 0.7, 0.1, 0.1, 0.1])
    assert (best, threshold) == (pytest.approx(2 / 3, abs=1e-15), 0.7)
    best, threshold = f1_max([1, 0, 1, 1, 0], [0.9, 0.7, 0.7, 0.1, 0.1])  # 6/8 at 0.1 now
    assert (best, threshold) == (pytest.approx(3 / 4, abs=1e-15), 0.1)


def test_image_metrics_refuse_bad_input():
    with pytest.raises(ValueError, match="both anomalous"):
        image_auroc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least one anomalous"):
        average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least one anomalous"):
        f1_max([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0/1"):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        image_auroc([[0, 1]], [[0.1, 0.2]])
    with pytest.raises(ValueError, match="at least one sample"):
        image_auroc([], [])
    with pytest.raises(ValueError, match="real numbers"):
        image_auroc([0, 1], ["a", "b"])


# -- pixel AUROC ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["continuous", "tied", "float32"])
@pytest.mark.parametrize("seed", range(10))
def test_pixel_auroc_matches_sklearn_on_flattened_arrays(seed, kind):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, count=int(rng.integers(1, 6)), height=24, width=20)
    maps = noisy_maps(rng, masks, kind)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_takes_one_map_and_lists():
    mask = [[0, 1], [1, 0]]
    anomaly_map = [[0.1, 0.9], [0.5, 0.5]]
    assert pixel_auroc(mask, anomaly_map) == pytest.approx(0.875)
    assert pixel_auroc([mask], [anomaly_map]) == pytest.approx(0.875)


def test_pixel_auroc_refuses_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="both anomalous"):
        pixel_auroc(np.zeros((2, 4, 4), bool), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="N×H×W"):
        pixel_auroc(np.zeros(5, bool), np.zeros(5))


# -- AUPRO against the definition -----------------------------------------------------------


@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 0.001, 0.5, 1.0])
@pytest.mark.parametrize("kind", ["continuous", "tied", "float32"])
@pytest.mark.parametrize("seed", range(6))
def test_aupro_matches_the_slow_definition(seed, kind, max_fpr):
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, count=int(rng.integers(1, 5)), height=16, width=18)
    maps = noisy_maps(rng, masks, kind)
    expected = reference_aupro(masks, maps, max_fpr)
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("seed", range(20))
def test_aupro_matches_the_definition_when_the_cut_falls_inside_a_tie(seed):
    # Three distinct scores only: the normal score whose segment crosses max_fpr is almost
    # always shared by many normal and defect pixels, so the interpolation runs inside a tie.
    rng = np.random.default_rng(1000 + seed)
    masks = blob_masks(rng, count=3, height=12, width=12)
    maps = rng.integers(0, 3, masks.shape) + masks * rng.integers(0, 2, masks.shape)
    max_fpr = float(rng.uniform(0.05, 0.95))
    expected = reference_aupro(masks, maps, max_fpr)
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-9)


def test_aupro_at_fprs_that_are_exact_multiples_of_one_normal_pixel():
    # 10 normal pixels: max_fpr = 0.3 lands exactly on a curve point, where x <= x_max and the
    # float comparisons must agree with the definition's count / n.
    masks = np.zeros((1, 1, 13), dtype=bool)
    masks[0, 0, 10:] = True
    maps = np.array([[[*range(1, 11), 7.5, 9.5, 3.0]]])
    for max_fpr in (0.1, 0.2, 0.3, 0.7, 1.0):
        expected = reference_aupro(masks, maps, max_fpr)
        assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-12)


# -- AUPRO by hand --------------------------------------------------------------------------


def test_a_perfect_map_scores_one():
    masks = blob_masks(np.random.default_rng(3), count=4, height=32, width=32)
    maps = np.where(masks, 2.0, np.random.default_rng(4).random(masks.shape))
    assert aupro(masks, maps) == pytest.approx(1.0, abs=1e-12)


def test_a_map_that_scores_defects_lowest_scores_zero():
    masks = blob_masks(np.random.default_rng(5), count=4, height=32, width=32)
    maps = np.where(masks, -1.0, np.random.default_rng(6).random(masks.shape))
    assert aupro(masks, maps) == 0.0


def two_regions() -> np.ndarray:
    """One image: a 4×5 region of 20 pixels and, apart from it, a single-pixel region."""
    masks = np.zeros((1, 10, 10), dtype=bool)
    masks[0, 1:5, 1:6] = True
    masks[0, 8, 8] = True
    return masks


def test_every_region_weighs_the_same_whatever_its_size():
    masks = two_regions()
    # Only the single pixel found, below every normal the big region: PRO is 1/2 all along,
    # where a pixel-weighted overlap would say 1/21.
    maps = np.zeros(masks.shape)
    maps[0, 8, 8] = 1.0
    maps[0, 1:5, 1:6] = -1.0
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-12)
    # Only the big region found: 1/2 again.
    maps = np.where(masks, 1.0, 0.0)
    maps[0, 8, 8] = -1.0
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-12)
    # Half the big region and the single pixel found: (1/2 + 1) / 2.
    maps = np.where(masks, 1.0, 0.0)
    maps[0, 1:3, 1:6] = -1.0
    assert aupro(masks, maps) == pytest.approx(0.75, abs=1e-12)


def test_regions_of_different_images_are_averaged_together():
    masks = np.zeros((2, 6, 6), dtype=bool)
    masks[0, 2, 2] = True  # one pixel, found
    masks[1, 1:5, 1:5] = True  # 16 pixels, missed
    maps = np.where(masks, -1.0, 0.0)
    maps[0, 2, 2] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.5, abs=1e-12)


def test_regions_are_eight_connected_as_in_the_mvtec_code():
    # A 2×2 block and a pixel touching it only at a corner: one region of 5 pixels under
    # 8-connectivity (PRO 1/5 with the lone pixel found), two regions under 4 (PRO 1/2).
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, 2:4, 2:4] = True
    masks[0, 4, 4] = True
    maps = np.where(masks, -1.0, 0.0)
    maps[0, 4, 4] = 1.0
    assert aupro(masks, maps) == pytest.approx(0.2, abs=1e-12)


@pytest.mark.parametrize(
    ("defect_score", "max_fpr", "expected"),
    [
        (8.5, 0.3, 1 / 3),  # found after 2 of 10 normals: area 0.1 over 0.3
        (8.5, 0.25, 0.2),  # 0.05 over 0.25
        (8.0, 0.3, 1 / 6),  # tied with the third normal: a ramp from (0.2, 0) to (0.3, 1)
        (8.0, 0.25, 0.05),  # the ramp interpolated at 0.25 reaches 1/2: 0.0125 over 0.25
    ],
)
def test_interpolation_at_max_fpr_by_hand(defect_score, max_fpr, expected):
    masks = np.zeros((1, 1, 11), dtype=bool)
    masks[0, 0, 10] = True
    maps = np.array([[[*range(1, 11), defect_score]]], dtype=float)
    assert aupro(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-12)


def test_aupro_takes_one_image_lists_and_any_real_dtype():
    rng = np.random.default_rng(7)
    masks = blob_masks(rng, count=1, height=20, width=20)
    maps = rng.integers(0, 50, masks.shape)
    expected = reference_aupro(masks, maps, 0.3)
    assert aupro(masks[0], maps[0]) == pytest.approx(expected, abs=1e-12)
    assert aupro(masks.astype(int).tolist(), maps.tolist()) == pytest.approx(expected, abs=1e-12)
    assert aupro(masks, maps.astype(np.float32)) == pytest.approx(expected, abs=1e-12)


def test_aupro_refuses_bad_input():
    masks = two_regions()
    maps = np.zeros(masks.shape)
    with pytest.raises(ValueError, match="at least one anomalous pixel"):
        aupro(np.zeros_like(masks), maps)
    with pytest.raises(ValueError, match="at least one normal pixel"):
        aupro(np.ones_like(masks), maps)
    with pytest.raises(ValueError, match="same shape"):
        aupro(masks, maps[:, :5])
    with pytest.raises(ValueError, match="NaN"):
        aupro(masks, np.where(masks, np.nan, 0.0))
    with pytest.raises(ValueError, match="masks > 0"):
        aupro(masks * 255, maps)
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(masks, maps, max_fpr=0)
    with pytest.raises(ValueError, match="max_fpr"):
        aupro(masks, maps, max_fpr=1.5)
    with pytest.raises(ValueError, match="N×H×W"):
        aupro(masks[None], maps[None])


# -- memory ---------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [pixel_auroc, aupro])
def test_float32_maps_are_never_copied_to_float64(metric):
    # numpy reports its buffers to tracemalloc. A float64 copy of the stack alone would be
    # 8 bytes a pixel; the scores split into defect and normal pixels in float32 plus a
    # boolean inverse of the masks are about 5.
    rng = np.random.default_rng(8)
    masks = blob_masks(rng, count=8, height=128, width=128)
    maps = noisy_maps(rng, masks, "float32")
    tracemalloc.start()
    try:
        metric(masks, maps)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * maps.size, f"{peak / maps.size:.1f} bytes a pixel"
