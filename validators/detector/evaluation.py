"""One category's metric inputs, gathered batch by batch: shared by the folder sanity check
(sanity.py) and the reproduction of WinCLIP's figures (bench/reproduce.py).

Pixel metrics are computed on a fixed S × S grid (128 by default), whatever the image size:
the scorer's patch map is interpolated straight to S × S (the same bilinear step it uses for
full-size maps, without making the full-size map), and each mask is area-downsampled to it.
Both are squashed the way the backbone squashes the image, so they stay aligned. A grid cell
is a defect when at least half of it is; a mask whose every defect is smaller than half a
cell keeps each cell it touches instead, so that no anomalous image loses its defect.

Memory is one category's inputs: a float per image, and for the pixel metrics one S × S
float32 map and boolean mask (80 KB an image at S = 128), released when the category ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image

from adinstruct.validators.detector.backbones import ImageInput
from adinstruct.validators.detector.metrics import (
    aupro,
    average_precision,
    f1_max,
    image_auroc,
    pixel_auroc,
)
from adinstruct.validators.detector.prompts import PromptSet
from adinstruct.validators.detector.scoring import ZeroShotScorer

#: The side of the grid pixel metrics are computed on.
PIXEL_SIZE = 128


def downsample_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """The (size, size) boolean mask: cells at least half covered, or every touched cell when
    that would leave a non-empty mask empty."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape == (size, size):
        return mask.copy()
    # Mode F keeps the exact covered share: a uint8 box average rounds a lone defect pixel in
    # a 30 × 30 cell to zero.
    coverage = np.asarray(
        Image.fromarray(mask.astype(np.float32), "F").resize((size, size), Image.Resampling.BOX)
    )
    cells = coverage >= 0.5
    if mask.any() and not cells.any():
        cells = coverage > 0
    return cells


def score_at_size(
    scorer: ZeroShotScorer,
    images: Sequence[ImageInput],
    prompt_sets: Sequence[PromptSet],
    size: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per prompt set, (image scores (B,), maps (B, size, size) float32) of one batch.

    The images are encoded once; each prompt set only changes the class embeddings.
    """
    encoding = scorer.backbone.encode_images(images, window_sizes=scorer.window_sizes)
    encoding = replace(encoding, sizes=[(size, size)] * len(images))
    results = []
    for prompts in prompt_sets:
        scores = scorer.score_encoding(encoding, prompts, maps=True)
        results.append(
            (scores.image_scores.astype(np.float64), np.stack(scores.maps).astype(np.float32))
        )
    return results


@dataclass
class Metrics:
    """A category's metrics; None where its samples cannot define one (`*_note` says why)."""

    image_auroc: float | None = None
    average_precision: float | None = None
    f1_max: float | None = None
    f1_threshold: float | None = None
    image_note: str | None = None
    pixel_auroc: float | None = None
    aupro: float | None = None
    pixel_note: str | None = None


@dataclass
class CategoryInputs:
    """Labels and image scores of every scored image, and the maps and masks of those that
    count at pixel level: normal images (no defect pixel) and anomalous ones with a mask."""

    size: int = PIXEL_SIZE
    labels: list[bool] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    #: Index into `labels` of each entry of `maps` and `masks`.
    pixel_index: list[int] = field(default_factory=list)
    maps: list[np.ndarray] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)

    def add(
        self,
        anomalous: bool,
        score: float,
        anomaly_map: np.ndarray | None = None,
        mask: np.ndarray | None = None,
    ) -> None:
        """One image. `mask` is its downsampled mask; an anomalous image without one (None)
        counts at image level only, since its defect pixels are unknown."""
        self.labels.append(anomalous)
        self.scores.append(float(score))
        if anomaly_map is None or (anomalous and mask is None):
            return
        if anomaly_map.shape != (self.size, self.size):
            raise ValueError(f"a map of {anomaly_map.shape} on a {self.size}-pixel grid")
        self.pixel_index.append(len(self.labels) - 1)
        self.maps.append(anomaly_map)
        if anomalous:
            self.masks.append(np.asarray(mask, dtype=bool))
        else:
            self.masks.append(np.zeros((self.size, self.size), dtype=bool))

    @property
    def count(self) -> int:
        return len(self.labels)

    def metrics(self) -> Metrics:
        result = Metrics()
        labels, scores = np.array(self.labels, dtype=bool), np.array(self.scores)
        if labels.all() or not labels.any():
            result.image_note = "needs normal and anomalous images"
        else:
            result.image_auroc = image_auroc(labels, scores)
            result.average_precision = average_precision(labels, scores)
            result.f1_max, result.f1_threshold = f1_max(labels, scores)
        if not any(mask.any() for mask in self.masks):
            result.pixel_note = "no anomalous image with a mask"
        elif all(mask.all() for mask in self.masks):
            result.pixel_note = "no normal pixel"
        else:
            masks, maps = np.stack(self.masks), np.stack(self.maps)
            result.pixel_auroc = pixel_auroc(masks, maps)
            result.aupro = aupro(masks, maps)
        return result
