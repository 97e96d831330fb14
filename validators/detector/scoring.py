"""Zero-shot anomaly scores and maps (WinCLIP, ALFA) over any `Backbone`'s embeddings.

Image score: the softmax, at temperature 0.07, of the CLS embedding against the [normal,
anomalous] class embeddings; the anomalous probability. Pixel map: the same probability for
every patch token (1 × 1) and for every 2 × 2 and 3 × 3 window (stride 1); each patch takes
the harmonic mean of the windows covering it, the three maps are averaged, and the mean is
upsampled bilinearly to the image's own size. The harmonic mean is WinCLIP's: one window
that looks normal pulls a patch down, so a defect has to look anomalous in every window that
sees it, which keeps blobs from bleeding into their surroundings.

The class embeddings come from a `PromptSet`. `ensemble` (WinCLIP): the normalised prompt
embeddings of each class averaged and normalised again, the same for every image.
`contextual` (ALFA): each image weights each class's prompts by the softmax of its CLS
similarity to them (same temperature), so the descriptions that fit the image dominate, and
the patches and windows are then aligned with those per-image class embeddings.

Everything here is plain tensor arithmetic on the backbone's output, so it does not matter
which library produced the tokens; tests drive it with a hand-built backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from adinstruct.builder.errors import ConfigError
from adinstruct.validators.detector.backbones import Backbone, ImageEncoding, ImageInput
from adinstruct.validators.detector.prompts import PromptSet

#: CLIP's learned logit scale is 100 = 1 / 0.07; WinCLIP and ALFA score at that temperature.
TEMPERATURE = 0.07
WINDOW_SIZES = (2, 3)
#: A window probability that underflows to 0 would make its reciprocal infinite; the limit
#: of the harmonic mean there is 0, which this floor reproduces without inf / nan.
PROBABILITY_FLOOR = 1e-12


@dataclass
class DetectorScores:
    #: (B,) anomalous probability of each image.
    image_scores: np.ndarray
    #: One (H, W) float32 map per image at the image's own size; empty without maps.
    maps: list[np.ndarray]


@dataclass(frozen=True)
class TextEmbeddings:
    """Normalised prompt embeddings of each class, (prompts, D)."""

    normal: torch.Tensor
    anomalous: torch.Tensor


def normalize(embeddings: torch.Tensor) -> torch.Tensor:
    return F.normalize(embeddings.float(), dim=-1)


def ensemble_classes(text: TextEmbeddings) -> torch.Tensor:
    """(2, D): each class's mean prompt direction, [normal, anomalous]."""
    return normalize(torch.stack([text.normal.mean(0), text.anomalous.mean(0)]))


def contextual_classes(
    cls: torch.Tensor, text: TextEmbeddings, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """(B, 2, D): per image, each class's prompts weighted by softmax(CLS · prompt / T)."""
    image = normalize(cls)
    classes = []
    for prompts in (text.normal, text.anomalous):
        weights = (image @ prompts.T / temperature).softmax(dim=-1)  # (B, prompts)
        classes.append(normalize(weights @ prompts))
    return torch.stack(classes, dim=1)


def anomalous_probability(
    embeddings: torch.Tensor, classes: torch.Tensor, temperature: float = TEMPERATURE
) -> torch.Tensor:
    """Softmax over [normal, anomalous] of normalised `embeddings` (B, ..., D), index 1.

    `classes` is (2, D) for every image or (B, 2, D) per image.
    """
    if classes.ndim == 2:
        classes = classes.expand(len(embeddings), -1, -1)
    logits = torch.einsum("b...d,bcd->b...c", normalize(embeddings), classes) / temperature
    return logits.softmax(dim=-1)[..., 1]


def harmonic_aggregation(window_scores: torch.Tensor, size: int) -> torch.Tensor:
    """(B, h, w) per-patch harmonic mean of the (B, h - size + 1, w - size + 1) window scores.

    Window (i, j) covers patches i..i+size-1 × j..j+size-1. Zero-padding the reciprocals by
    size - 1 and summing each size × size box gives, at patch (i, j), the sum over exactly the
    windows covering it; the same box sum of ones counts them.
    """
    reciprocal = 1.0 / window_scores.clamp_min(PROBABILITY_FLOOR)
    pad = size - 1
    box = torch.ones(1, 1, size, size, dtype=reciprocal.dtype)
    padded = F.pad(reciprocal.unsqueeze(1), (pad, pad, pad, pad))
    sums = F.conv2d(padded, box).squeeze(1)
    counts = F.conv2d(F.pad(torch.ones_like(reciprocal[:1]).unsqueeze(1), (pad,) * 4), box)
    return counts.squeeze(1) / sums


class ZeroShotScorer:
    """WinCLIP / ALFA scoring with one backbone; text embeddings are kept per prompt set."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        temperature: float = TEMPERATURE,
        window_sizes: Sequence[int] = WINDOW_SIZES,
    ) -> None:
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, not {temperature}")
        self.backbone = backbone
        self.temperature = temperature
        self.window_sizes = tuple(window_sizes)
        self._text: dict[PromptSet, TextEmbeddings] = {}

    def text_embeddings(self, prompts: PromptSet) -> TextEmbeddings:
        if prompts not in self._text:
            embeddings = normalize(self.backbone.encode_text([*prompts.normal, *prompts.anomalous]))
            count = len(prompts.normal)
            self._text[prompts] = TextEmbeddings(embeddings[:count], embeddings[count:])
        return self._text[prompts]

    def score(
        self, images: Sequence[ImageInput], prompts: PromptSet, *, maps: bool = True
    ) -> DetectorScores:
        """Image scores, and with `maps` a pixel map per image, for one category's images."""
        window_sizes = self.window_sizes if maps else ()
        encoding = self.backbone.encode_images(images, window_sizes=window_sizes)
        return self.score_encoding(encoding, prompts, maps=maps)

    def score_encoding(
        self, encoding: ImageEncoding, prompts: PromptSet, *, maps: bool = True
    ) -> DetectorScores:
        text = self.text_embeddings(prompts)
        if prompts.weighting == "contextual":
            classes = contextual_classes(encoding.cls, text, self.temperature)
        else:
            classes = ensemble_classes(text)
        image_scores = anomalous_probability(encoding.cls, classes, self.temperature)
        if not maps:
            return DetectorScores(image_scores=image_scores.numpy(), maps=[])
        patch_map = self.patch_map(encoding, classes)
        return DetectorScores(
            image_scores=image_scores.numpy(), maps=upsample(patch_map, encoding.sizes)
        )

    def patch_map(self, encoding: ImageEncoding, classes: torch.Tensor) -> torch.Tensor:
        """(B, h, w): the 1 × 1 map and each window size's harmonic map, averaged."""
        return torch.stack(list(self.scale_maps(encoding, classes).values())).mean(dim=0)

    def scale_maps(self, encoding: ImageEncoding, classes: torch.Tensor) -> dict[int, torch.Tensor]:
        """Window size -> (B, h, w) map; 1 is the patch tokens' own map."""
        maps = {1: anomalous_probability(encoding.patches, classes, self.temperature)}
        for size in self.window_sizes:
            if size not in encoding.windows:
                raise ConfigError(f"the encoding has no {size}×{size} windows to score")
            window_scores = anomalous_probability(encoding.windows[size], classes, self.temperature)
            maps[size] = harmonic_aggregation(window_scores, size)
        return maps


def upsample(patch_map: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Each image's patch map, bilinear, to its own (height, width)."""
    return [
        F.interpolate(
            patch_map[index][None, None], size=size, mode="bilinear", align_corners=False
        )[0, 0].numpy()
        for index, size in enumerate(sizes)
    ]
