"""Exact anomaly-detection metrics: image AUROC, AP and F1-max, pixel AUROC, and AUPRO.

None of them samples thresholds: each is the exact value of its definition, the same as its
reference computes it: scikit-learn's `roc_auc_score` and `average_precision_score`, and the
MVTec AD evaluation code for AUPRO (Bergmann et al., "The MVTec Anomaly Detection Dataset",
IJCV 2021). Scores are "higher means more anomalous"; a threshold t predicts anomalous for
every score >= t, so tied scores always cross a threshold together.

Only numpy and scipy.ndimage (both core dependencies) are used, so this module imports
without the [detector] extra. Pixel metrics take maps as they come (float32 stays float32)
and sort values rather than argsort them wherever no payload has to travel with the values:
on large stacks an argsort is an order of magnitude slower than a plain sort.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

__all__ = ["aupro", "average_precision", "f1_max", "image_auroc", "pixel_auroc"]

#: Connected ground-truth regions are 8-connected, as in the MVTec AD evaluation code, which
#: labels each mask with scipy.ndimage.label and a 3×3 structure of ones.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# -- image level ----------------------------------------------------------------------------


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve, tied scores grouped (as `sklearn.metrics.roc_auc_score`).

    The trapezoid over the ROC curve whose points are the distinct thresholds equals the
    chance that an anomalous sample outscores a normal one, ties counting one half, which is
    what is computed here, in exact integer counts until the final division.
    """
    labels, scores = _labels_and_scores(labels, scores, "image_auroc")
    positives, negatives = scores[labels], scores[~labels]
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("image_auroc needs both anomalous (1) and normal (0) labels")
    return _auroc_of_split(positives, negatives)


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """Average precision exactly as `sklearn.metrics.average_precision_score` defines it.

    The step-wise sum over the distinct thresholds, highest first, of the recall gained at
    each times the precision there: sum (R_i - R_{i-1}) P_i. It is not the trapezoid under
    the PR curve, which interpolates precision linearly and is over-optimistic.
    """
    labels, scores = _labels_and_scores(labels, scores, "average_precision")
    _, true_positives, false_positives = _counts_at_distinct_thresholds(labels, scores)
    positive_count = true_positives[-1]
    if positive_count == 0:
        raise ValueError("average_precision needs at least one anomalous (1) label")
    precision = true_positives / (true_positives + false_positives)
    recall_gained = np.diff(true_positives, prepend=0) / positive_count
    return float(np.sum(recall_gained * precision))


def f1_max(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """The best F1 over all thresholds, and the threshold achieving it.

    The threshold is one of the scores; it predicts anomalous for scores >= it. When several
    thresholds reach the same best F1, the highest of them is returned.
    """
    labels, scores = _labels_and_scores(labels, scores, "f1_max")
    thresholds, true_positives, false_positives = _counts_at_distinct_thresholds(labels, scores)
    positive_count = true_positives[-1]
    if positive_count == 0:
        raise ValueError("f1_max needs at least one anomalous (1) label")
    # F1 = 2TP / (2TP + FP + FN) and TP + FN is every positive.
    f1 = 2 * true_positives / (true_positives + false_positives + positive_count)
    best = int(np.argmax(f1))  # the first maximum, and thresholds run from the highest down
    return float(f1[best]), float(thresholds[best])


# -- pixel level ----------------------------------------------------------------------------


def pixel_auroc(masks: ArrayLike, maps: ArrayLike) -> float:
    """AUROC over every pixel of a stack of maps (N×H×W, or one H×W map), masks True on defects.

    Equals `roc_auc_score(masks.ravel(), maps.ravel())`. The maps are not copied to float64:
    the only copies are the defect and the normal pixels' scores, in the maps' own dtype.
    """
    masks, maps = _masks_and_maps(masks, maps, "pixel_auroc")
    positives, negatives = maps[masks], maps[~masks]
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("pixel_auroc needs both anomalous (mask True) and normal pixels")
    return _auroc_of_split(positives, negatives)


def aupro(masks: ArrayLike, maps: ArrayLike, max_fpr: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to `max_fpr`, divided by `max_fpr`.

    The MVTec AD definition (Bergmann et al., IJCV 2021, and its evaluation code): at a
    threshold, the PRO is the mean, over every connected ground-truth region of every image
    (8-connected, as that code labels them), of the fraction of the region's pixels at or above
    the threshold; the FPR is the fraction of all normal pixels at or above it. The curve through
    the (FPR, PRO) points of all distinct thresholds, starting at (0, 0), is integrated with the
    trapezoid rule up to `max_fpr`, its last point linearly interpolated at exactly `max_fpr`.

    `masks` and `maps` are N×H×W stacks (or one H×W image); images without defects add normal
    pixels only. There is no loop over thresholds, see `_pro_area`.
    """
    masks, maps = _masks_and_maps(masks, maps, "aupro")
    max_fpr = float(max_fpr)
    if not 0.0 < max_fpr <= 1.0:
        raise ValueError(f"aupro needs 0 < max_fpr <= 1, got {max_fpr}")
    if masks.ndim == 2:
        masks, maps = masks[np.newaxis], maps[np.newaxis]

    region_scores, region_weights, region_count = _defect_pixels_and_weights(masks, maps)
    if region_count == 0:
        raise ValueError("aupro needs at least one anomalous pixel (a mask True somewhere)")
    normal_scores = maps[~masks]
    if normal_scores.size == 0:
        raise ValueError("aupro needs at least one normal pixel (a mask False somewhere)")
    area = _pro_area(normal_scores, region_scores, region_weights, max_fpr)
    return area / region_count / max_fpr


def _defect_pixels_and_weights(
    masks: np.ndarray, maps: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Every defect pixel's score and 1 / (size of its region), and the number of regions.

    Once a defect pixel is at or above the threshold it adds 1 / (region size) to the sum of
    the regions' overlaps, and so 1 / (region size × region count) to the mean PRO. The loop
    runs over images, each labelled on its own so that regions never span two images.
    """
    scores, weights = [], []
    region_count = 0
    for mask, anomaly_map in zip(masks, maps, strict=True):
        if not mask.any():
            continue
        regions, count = ndimage.label(mask, structure=EIGHT_CONNECTED)
        region_of_pixel = regions[mask]
        region_sizes = np.bincount(region_of_pixel)  # index 0 (background) is never looked up
        scores.append(anomaly_map[mask])
        weights.append(1.0 / region_sizes[region_of_pixel])
        region_count += count
    if not scores:
        return np.empty(0, maps.dtype), np.empty(0), 0
    return np.concatenate(scores), np.concatenate(weights), region_count


def _pro_area(
    normal_scores: np.ndarray,
    region_scores: np.ndarray,
    region_weights: np.ndarray,
    max_fpr: float,
) -> float:
    """The area under the curve of (FPR, summed region overlap) from FPR 0 to `max_fpr`.

    The curve only moves right where normal pixels cross the threshold; defect pixels alone
    move it straight up, which adds no area. So the curve is a chain of segments, one per
    distinct normal score v, from (F(>v), S(>v)) to (F(>=v), S(>=v)), where F is the share of
    normal pixels and S the summed weight of defect pixels above (or at) v, joined by vertical
    steps. A group of g normal pixels at v adds g/n × (S(>v) + S(>=v)) / 2, so the full
    segments add up, pixel by pixel, to (1 / 2n) × sum over defect pixels d of weight(d) ×
    (#normals below d + #normals at or below d), counted among the normals in the integration
    range. Only that range needs ordering: np.partition finds the normal score v* whose
    segment crosses FPR = max_fpr, only the normals above it are sorted, and v*'s own segment
    is interpolated at max_fpr, exactly as the MVTec evaluation code's trapezoid does.

    Sorting the normals by value (not argsort: they carry no payload) and searching for the
    defect scores in sorted order keeps memory access sequential; both matter on large stacks.
    `normal_scores` is partitioned and sorted in place.
    """
    normal_count = normal_scores.size
    # The most normals that may lie above the threshold with FPR still <= max_fpr, in the same
    # float arithmetic as FPR = count / n (the floor of max_fpr × n can be one off).
    inside = min(int(np.floor(max_fpr * normal_count)), normal_count)
    while inside < normal_count and (inside + 1) / normal_count <= max_fpr:
        inside += 1
    while inside > 0 and inside / normal_count > max_fpr:
        inside -= 1

    order = np.argsort(region_scores)  # the defect pixels carry their weights: an argsort
    region_scores, region_weights = region_scores[order], region_weights[order]

    if inside == normal_count:  # max_fpr == 1: the whole curve, no segment to cut
        normal_scores.sort()
        doubled = _doubled_wins(normal_scores, region_scores)
        return float(region_weights @ doubled) / (2 * normal_count)

    cut = normal_count - 1 - inside
    normal_scores.partition(cut)
    crossing = normal_scores[cut]  # v*, the (inside + 1)-th highest normal score
    in_range = normal_scores[cut + 1 :]  # every normal above v*, and maybe some equal to it
    in_range.sort()
    tied_in_range = int(np.searchsorted(in_range, crossing, side="right"))
    first_tied = int(np.searchsorted(region_scores, crossing, side="left"))
    first_above = int(np.searchsorted(region_scores, crossing, side="right"))
    # The queries are all above v*, so the normals tied with v* are below each of them:
    # subtract them from both counts.
    doubled = _doubled_wins(in_range, region_scores[first_above:]) - 2 * tied_in_range
    area = float(region_weights[first_above:] @ doubled) / (2 * normal_count)

    # v*'s own segment, from (x0, y0) with the normals above v* to (x1, y1) with those at v*
    # too, cut at max_fpr: y1 adds the weight of the defect pixels tied with v*.
    above_count = in_range.size - tied_in_range
    at_or_above_count = above_count + int(np.count_nonzero(normal_scores == crossing))
    x0, x1 = above_count / normal_count, at_or_above_count / normal_count
    y0 = float(region_weights[first_above:].sum())
    y1 = y0 + float(region_weights[first_tied:first_above].sum())
    y_at_max_fpr = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
    return area + (max_fpr - x0) * (y0 + y_at_max_fpr) / 2


def _doubled_wins(sorted_reference: np.ndarray, sorted_queries: np.ndarray) -> np.ndarray:
    """For each query: #reference below it plus #reference at or below it (int64).

    That is twice the pairs the query wins against the reference, ties counting one half,
    kept in integers. Sorted queries make the binary searches walk memory in order.
    """
    below = np.searchsorted(sorted_reference, sorted_queries, side="left")
    return below + np.searchsorted(sorted_reference, sorted_queries, side="right")


def _auroc_of_split(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(positive > negative) + P(positive == negative) / 2; sorts both arrays in place."""
    positives.sort()
    negatives.sort()
    doubled_wins = int(_doubled_wins(negatives, positives).sum())
    return doubled_wins / (2 * positives.size * negatives.size)


def _counts_at_distinct_thresholds(
    labels: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct scores, highest first, and the true and false positives at each.

    Samples tied at a score cross that threshold together, so only the last position of each
    run of equal scores is kept (sklearn's `_binary_clf_curve` does the same).
    """
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores, sorted_labels = scores[order], labels[order]
    last_of_run = np.flatnonzero(np.append(sorted_scores[1:] != sorted_scores[:-1], True))
    true_positives = np.cumsum(sorted_labels, dtype=np.int64)[last_of_run]
    false_positives = last_of_run + 1 - true_positives
    return sorted_scores[last_of_run], true_positives, false_positives


# -- input checks ---------------------------------------------------------------------------


def _binary(values: ArrayLike, name: str) -> np.ndarray:
    """Booleans from bools or 0/1 numbers; anything else (a 0/255 PNG, a soft mask) refuses."""
    array = np.asarray(values)
    if array.dtype == bool:
        return array
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be booleans or 0/1 numbers, got dtype {array.dtype}")
    if not np.all((array == 0) | (array == 1)):
        found = np.unique(array[(array != 0) & (array != 1)])[:3].tolist()
        raise ValueError(
            f"{name} must be booleans or 0/1 numbers, found {found}: binarise them first "
            f"(for example {name} > 0)"
        )
    return array != 0


def _real_scores(values: ArrayLike, name: str) -> np.ndarray:
    """The scores as an array of their own real dtype (float32 stays float32), NaN refused."""
    array = np.asarray(values)
    if array.dtype == bool:
        array = array.view(np.uint8)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")
    # max propagates NaN, so this finds one without a boolean copy of the array.
    if array.dtype.kind == "f" and array.size and np.isnan(array.max()):
        raise ValueError(f"{name} contain NaN")
    return array


def _labels_and_scores(
    labels: ArrayLike, scores: ArrayLike, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    labels = _binary(labels, "labels")
    scores = _real_scores(scores, "scores")
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(
            f"{metric} needs 1-D labels and scores, got shapes {labels.shape} and {scores.shape}"
        )
    if labels.shape != scores.shape:
        raise ValueError(
            f"{metric}: labels and scores differ in length ({labels.size} and {scores.size})"
        )
    if labels.size == 0:
        raise ValueError(f"{metric} needs at least one sample")
    return labels, scores


def _masks_and_maps(
    masks: ArrayLike, maps: ArrayLike, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    masks = _binary(masks, "masks")
    maps = _real_scores(maps, "maps")
    if masks.shape != maps.shape:
        raise ValueError(
            f"{metric}: masks and maps must have the same shape, got masks {masks.shape} "
            f"and maps {maps.shape}"
        )
    if maps.ndim not in (2, 3) or maps.size == 0:
        raise ValueError(
            f"{metric} needs an N×H×W stack of maps (or one H×W map), got shape {maps.shape}"
        )
    return masks, maps
