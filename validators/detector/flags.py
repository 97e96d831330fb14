"""The sanity check's rules: which labels and masks the detector's scores call into question.

Label flags compare an image's score with the category's two classes, each summarised by
robust statistics (median, and 1.4826 × the median absolute deviation, which estimates the
standard deviation of a normal distribution and moves little however the tail looks):

- `normal_scores_high`: an image labelled normal scores above
  T = max(median_normal + k·spread_normal, median_anomalous − k·spread_anomalous):
  it stands out from the other normal images *and* lies inside the anomalous range.
- `anomaly_scores_low`: an image labelled anomalous scores below
  T = min(median_anomalous − k·spread_anomalous, median_normal + k·spread_normal).

k is 3 (one normal image in 740 crosses the first bound by chance when the scores are
Gaussian). Both conditions are needed: where the classes overlap, the outlier bound decides,
so an ordinary hard image is not flagged; where they are far apart, the other class's bound
decides, so an image a little off its class but nowhere near the other is not either. The
medians and spreads include the suspects themselves, which is why they are robust ones: up to
half of a class can be mislabelled before its median moves past them. The F1-max threshold
is reported but not used: it moves with the very images in question and with the class ratio.
A spread below 0.01 counts as 0.01 (scores are probabilities), so that a class of near-equal
scores does not make every small difference an outlier.

Label flags are raised only where they mean something: both classes have at least three
scored images and the category's image AUROC is at least 0.7. Below that the detector cannot
tell the category's classes apart, and its "outliers" would be its own mistakes.

`mask_misses_map`: the mask's contrast on the anomaly map, (mean of the map inside the mask −
mean outside it) / (max − min of the map), in [−1, 1] on the pixel-metric grid, is below 0:
the map is no higher on the mask than off it, so the mask is probably misplaced or the
defect is not where it says. Raised only where the category's pixel AUROC is at least 0.7
(the map localises at all). A flat map, and a mask covering the whole image, are not judged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

NORMAL_SCORES_HIGH = "normal_scores_high"
ANOMALY_SCORES_LOW = "anomaly_scores_low"
MASK_MISSES_MAP = "mask_misses_map"
UNREADABLE_IMAGE = "unreadable_image"
UNREADABLE_SAMPLE = "unreadable_sample"
UNREADABLE_MASK = "unreadable_mask"
FLAG_CODES = (
    NORMAL_SCORES_HIGH, ANOMALY_SCORES_LOW, MASK_MISSES_MAP, UNREADABLE_IMAGE, UNREADABLE_MASK,
    UNREADABLE_SAMPLE,
)  # fmt: skip
#: 1.4826 × MAD estimates the standard deviation of normally distributed values.
MAD_TO_SIGMA = 1.4826


class SanityThresholds(BaseModel):
    """The numbers behind the flag rules (see the module docstring for why each is what it is)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    spread_multiple: float = Field(
        default=3.0, gt=0, description="k: robust standard deviations past a class's median."
    )
    min_spread: float = Field(
        default=0.01, gt=0, description="The smallest spread a class's scores are given."
    )
    min_class_images: int = Field(
        default=3, ge=2, description="Scored images each class needs before labels are judged."
    )
    min_image_auroc: float = Field(
        default=0.7, ge=0, le=1, description="Category image AUROC below which labels are not."
    )
    min_pixel_auroc: float = Field(
        default=0.7, ge=0, le=1, description="Category pixel AUROC below which masks are not."
    )
    min_mask_contrast: float = Field(
        default=0.0, ge=-1, le=1, description="Mask contrast on the map below which it is flagged."
    )


@dataclass(frozen=True)
class ClassStats:
    count: int
    median: float
    spread: float

    def as_dict(self) -> dict[str, float | int]:
        return {"count": self.count, "median": self.median, "spread": self.spread}


def class_stats(scores: np.ndarray, min_spread: float) -> ClassStats:
    median = float(np.median(scores))
    spread = MAD_TO_SIGMA * float(np.median(np.abs(scores - median)))
    return ClassStats(count=int(scores.size), median=median, spread=max(spread, min_spread))


@dataclass(frozen=True)
class LabelRule:
    """A category's two thresholds, or why its labels are not judged."""

    normal: ClassStats | None
    anomalous: ClassStats | None
    normal_high: float | None = None  # a normal image scoring above this is flagged
    anomaly_low: float | None = None  # an anomalous image scoring below this is flagged
    skipped: str | None = None


def label_rule(
    labels: np.ndarray,
    scores: np.ndarray,
    image_auroc: float | None,
    thresholds: SanityThresholds,
) -> LabelRule:
    normal_scores, anomalous_scores = scores[~labels], scores[labels]
    normal = class_stats(normal_scores, thresholds.min_spread) if normal_scores.size else None
    anomalous = (
        class_stats(anomalous_scores, thresholds.min_spread) if anomalous_scores.size else None
    )
    fewest = min(normal_scores.size, anomalous_scores.size)
    if fewest < thresholds.min_class_images:
        why = (
            f"needs {thresholds.min_class_images} scored normal and anomalous images, has "
            f"{normal_scores.size} and {anomalous_scores.size}"
        )
        return LabelRule(normal, anomalous, skipped=why)
    assert normal is not None and anomalous is not None and image_auroc is not None
    if image_auroc < thresholds.min_image_auroc:
        why = (
            f"image AUROC {image_auroc:.3f} is below {thresholds.min_image_auroc}: the "
            "detector does not tell this category's classes apart"
        )
        return LabelRule(normal, anomalous, skipped=why)
    k = thresholds.spread_multiple
    normal_upper = normal.median + k * normal.spread
    anomalous_lower = anomalous.median - k * anomalous.spread
    return LabelRule(
        normal,
        anomalous,
        normal_high=max(normal_upper, anomalous_lower),
        anomaly_low=min(anomalous_lower, normal_upper),
    )


def mask_contrast(anomaly_map: np.ndarray, mask: np.ndarray) -> float | None:
    """(mean inside − mean outside) / (max − min) of the map; None when it cannot be judged."""
    if not mask.any() or mask.all():
        return None
    low, high = float(anomaly_map.min()), float(anomaly_map.max())
    if high - low <= 1e-12 * max(abs(high), 1.0):
        return None
    inside = float(anomaly_map[mask].mean(dtype=np.float64))
    outside = float(anomaly_map[~mask].mean(dtype=np.float64))
    return (inside - outside) / (high - low)


def mask_rule_skipped(pixel_auroc: float | None, thresholds: SanityThresholds) -> str | None:
    """Why the category's masks are not judged, or None when they are."""
    if pixel_auroc is None:
        return "no pixel AUROC (no anomalous image with a mask, or no normal pixel)"
    if pixel_auroc < thresholds.min_pixel_auroc:
        return (
            f"pixel AUROC {pixel_auroc:.3f} is below {thresholds.min_pixel_auroc}: the map "
            "does not localise this category's defects"
        )
    return None


def normal_high_message(score: float, rule: LabelRule, k: float) -> str:
    assert rule.normal is not None and rule.anomalous is not None
    return (
        f"labelled normal but scores {score:.3f}, above {rule.normal_high:.3f} (normal median "
        f"{rule.normal.median:.3f} + {k:g} × {rule.normal.spread:.3f}, anomalous median "
        f"{rule.anomalous.median:.3f} − {k:g} × {rule.anomalous.spread:.3f}): look for a "
        "defect, or a wrong label"
    )


def anomaly_low_message(score: float, rule: LabelRule, k: float) -> str:
    assert rule.normal is not None and rule.anomalous is not None
    return (
        f"labelled anomalous but scores {score:.3f}, below {rule.anomaly_low:.3f} (anomalous "
        f"median {rule.anomalous.median:.3f} − {k:g} × {rule.anomalous.spread:.3f}, normal "
        f"median {rule.normal.median:.3f} + {k:g} × {rule.normal.spread:.3f}): a wrong label, "
        "or a defect too small or subtle for the detector"
    )


def mask_message(contrast: float, threshold: float) -> str:
    return (
        f"the anomaly map is no higher on the mask than off it (contrast {contrast:.3f}, "
        f"below {threshold:g}): the mask may be misplaced, or the detector misses the defect"
    )
