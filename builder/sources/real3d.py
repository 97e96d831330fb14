"""Real3D-AD: 12 classes of high-resolution point clouds, prototypes for training.

    <cls>/train/*.pcd      prototypes (names contain `prototype` or `template`)
    <cls>/test/*.pcd       normal ones contain `good`, e.g. 3_good.pcd, 4_bulge.pcd
    <cls>/gt/<stem>.txt    `x y z label` per point, for the anomalous test clouds

A pure listing: no point is read. The sample's image is the `.pcd` file, its modality
`point_cloud`; an anomalous sample names its per-point labels in `extra["point_labels"]`
(the release's ground truth is the txt's points, not the pcd's). The defect name is the
non-numeric part of the file name (`bulge`, `sink`; `cut` marks a cropped scan and is kept
in `extra["cut"]`). An anomalous cloud without its txt, and a txt without its cloud, become
quarantine entries.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from adinstruct.builder.sources.base import SampleOrQuarantine, SourceBuilder, subfolders

PROTOTYPE_WORDS = ("prototype", "template")
NORMAL_WORD = "good"
CUT_WORD = "cut"


def list_clouds(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".pcd"
         and not p.name.startswith(".")),
        key=lambda p: p.name,
    )  # fmt: skip


def looks_like_class(folder: Path) -> bool:
    return bool(list_clouds(folder / "train") or list_clouds(folder / "test"))


def defect_words(stem: str) -> list[str]:
    """`4_bulge` -> ["bulge"]; `482_bulge_cut` -> ["bulge"]; `7` -> []."""
    words = [word.lower() for word in stem.replace("-", "_").split("_")]
    return [w for w in words if w and not w.isdigit() and w not in (CUT_WORD, NORMAL_WORD)]


class Real3DAD(SourceBuilder):
    name = "real3d_ad"
    aliases = ("real3d", "real3d-ad", "real3dad")
    layouts = {
        "classes": "<cls>/train/*prototype*.pcd (or *template*), <cls>/test/*.pcd and "
        "<cls>/gt/<stem>.txt under the root",
        "single-class": "train/, test/ and gt/ directly under the root (one class)",
    }

    def detect_layout(self) -> str:
        if any(looks_like_class(folder) for folder in subfolders(self.root)):
            return "classes"
        if looks_like_class(self.root):
            return "single-class"
        raise self.layout_error("no class folder with train/*.pcd or test/*.pcd")

    def classes(self) -> list[Path]:
        if self.layout == "single-class":
            return [self.root]
        return [folder for folder in subfolders(self.root) if looks_like_class(folder)]

    def iter_samples(self) -> Iterator[SampleOrQuarantine]:
        for class_root in self.classes():
            yield from self.iter_class(class_root)

    def iter_class(self, class_root: Path) -> Iterator[SampleOrQuarantine]:
        category = class_root.name
        for cloud in list_clouds(class_root / "train"):
            cloud_rel = self.rel(cloud)
            if not any(word in cloud.stem.lower() for word in PROTOTYPE_WORDS):
                yield self.quarantine(
                    "unexpected_file",
                    f"{cloud_rel} is in train/ but its name has neither 'prototype' nor "
                    "'template', as the release's training clouds do",
                    path=cloud_rel,
                )
                continue
            yield self.make_sample(
                category=category, split="train", label="normal", images=[cloud_rel],
                modality="point_cloud",
            )  # fmt: skip
        gt_folder = class_root / "gt"
        paired: set[str] = set()
        for cloud in list_clouds(class_root / "test"):
            cloud_rel = self.rel(cloud)
            extra = {"cut": "true"} if CUT_WORD in cloud.stem.lower().split("_") else {}
            labels = gt_folder / f"{cloud.stem}.txt"
            if NORMAL_WORD in cloud.stem.lower():
                if labels.is_file():  # all-zero labels, where a copy ships them: annotate checks
                    paired.add(labels.name)
                    extra["point_labels"] = self.rel(labels)
                yield self.make_sample(
                    category=category, split="test", label="normal", images=[cloud_rel],
                    modality="point_cloud", extra=extra,
                )  # fmt: skip
                continue
            if not labels.is_file():
                yield self.quarantine(
                    "point_labels_missing",
                    f"anomalous cloud {cloud_rel} has no per-point labels: expected "
                    f"{self.rel(labels)}",
                    path=cloud_rel, sample_id=self.sample_id(cloud_rel),
                )  # fmt: skip
                continue
            paired.add(labels.name)
            defects = defect_words(cloud.stem)
            yield self.make_sample(
                category=category, split="test", label="anomaly", images=[cloud_rel],
                defect_types=defects[:1], modality="point_cloud",
                extra={**extra, "point_labels": self.rel(labels)},
            )  # fmt: skip
        if gt_folder.is_dir():
            for labels in sorted(gt_folder.glob("*.txt")):
                if labels.name not in paired:
                    yield self.quarantine(
                        "point_labels_orphan",
                        f"per-point labels {self.rel(labels)} have no cloud: expected "
                        f"{self.rel(class_root / 'test' / labels.stem)}.pcd",
                        path=self.rel(labels),
                    )
