"""A user's own images: a folder of normal images, a folder of anomalous ones, optional masks.

    <root>/normal/*.png            (also good/, ok/)
    <root>/anomaly/*.png           (also anomalous/, abnormal/, bad/, defect/, ng/);
                                   or anomaly/<defect name>/*.png to name the defects
    <root>/masks/<stem>.png        (also mask/, ground_truth/; <stem>_mask.png too; may mirror
                                   the defect subfolders)

or several categories side by side, each laid out like that. Every image is a test sample:
a user's folder has no released split.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from adinstruct.builder.sources.base import (
    SampleOrQuarantine,
    SourceBuilder,
    list_images,
    subfolders,
)
from adinstruct.builder.sources.mvtec_layout import MVTecStyle, find_mask
from adinstruct.schemas import MaskRef

NORMAL_NAMES = ("normal", "good", "ok")
ANOMALY_NAMES = ("anomaly", "anomalous", "abnormal", "bad", "defect", "defective", "ng")
MASK_NAMES = ("masks", "mask", "ground_truth")
MASK_STYLE = MVTecStyle(mask_stem_suffixes=("", "_mask"))


def named_child(folder: Path, names: tuple[str, ...]) -> Path | None:
    by_lower = {child.name.lower(): child for child in subfolders(folder)}
    return next((by_lower[name] for name in names if name in by_lower), None)


def is_category(folder: Path) -> bool:
    return named_child(folder, NORMAL_NAMES) is not None or (
        named_child(folder, ANOMALY_NAMES) is not None
    )


class Folder(SourceBuilder):
    name = "folder"
    aliases = ("own", "custom")
    layouts = {
        "single-category": "normal/ and anomaly/ folders of images under the root, with an "
        "optional masks/ folder matched by file stem",
        "categories": "one such folder per category under the root",
    }

    def detect_layout(self) -> str:
        if is_category(self.root):
            return "single-category"
        if any(is_category(folder) for folder in subfolders(self.root)):
            return "categories"
        raise self.layout_error("no normal/ or anomaly/ folder")

    def iter_samples(self) -> Iterator[SampleOrQuarantine]:
        if self.layout == "single-category":
            categories = [self.root]
        else:
            categories = [folder for folder in subfolders(self.root) if is_category(folder)]
        for category_root in categories:
            yield from self.iter_category(category_root)

    def iter_category(self, category_root: Path) -> Iterator[SampleOrQuarantine]:
        category = category_root.name
        normal_folder = named_child(category_root, NORMAL_NAMES)
        for image in list_images(normal_folder) if normal_folder else []:
            yield self.make_sample(
                category=category, split="test", label="normal", images=[self.rel(image)]
            )
        anomaly_folder = named_child(category_root, ANOMALY_NAMES)
        if anomaly_folder is None:
            return
        mask_root = named_child(category_root, MASK_NAMES)
        yield from self.iter_anomalies(category, anomaly_folder, mask_root, defect=None)
        for defect_folder in subfolders(anomaly_folder):
            yield from self.iter_anomalies(category, defect_folder, mask_root, defect_folder.name)

    def iter_anomalies(
        self, category: str, folder: Path, mask_root: Path | None, defect: str | None
    ) -> Iterator[SampleOrQuarantine]:
        for image in list_images(folder):
            image_rel = self.rel(image)
            mask = None
            if mask_root is not None and defect:
                # Masks may mirror the defect subfolders, or lie flat in one folder.
                mask = find_mask(mask_root / defect, image.stem, MASK_STYLE)
            if mask_root is not None and mask is None:
                mask = find_mask(mask_root, image.stem, MASK_STYLE)
            if mask_root is not None and mask is None:
                yield self.quarantine(
                    "mask_missing",
                    f"anomalous image {image_rel} has no mask in {self.rel(mask_root)}/ "
                    f"(looked for {image.stem}.png and {image.stem}_mask.png)",
                    path=image_rel,
                    sample_id=self.sample_id(image_rel),
                )
                continue
            yield self.make_sample(
                category=category,
                split="test",
                label="anomaly",
                images=[image_rel],
                masks=[MaskRef(path=self.rel(mask), defect_type=defect)] if mask else [],
                defect_types=[defect] if defect else [],
            )
