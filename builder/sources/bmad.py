"""BMAD (Benchmarks for Medical Anomaly Detection): one builder per subset.

Subsets, each one category named after the organ or tissue it shows (the subset's modality
says how it was imaged, so "brain" and not "brain_mri"):

    Brain           BraTS 2021 MRI slices      masks (RGBA, colour-mapped)   category brain
    Liver           BTCV + LiTS CT slices      masks                         category liver
    Retina_RESC     RESC OCT scans             masks                         category retina
    Retina_OCT2017  OCT2017 OCT scans          labels only                   category retina
    Chest           RSNA X-rays                labels only                   category chest
    Histopathology  Camelyon16 patches         labels only                   category lymph_node

Splits `train`, `valid` (split "val") and `test`; normal images are `good`, anomalous ones
`Ungood`. Three layouts are seen for the same subsets:

    readme:        <split>/{good,Ungood}/img/x.png  + <split>/Ungood/anomaly_mask/x.png
    label-folders: <split>/{good,Ungood}/img/x.png  + <split>/{good,Ungood}/label/x.png
    split-folders: <split>/img/{good,Ungood}/x.png  + <split>/label/{good,Ungood}/x.png

BMAD names no anomaly types, so `defect_types` stays empty and the wording says
"abnormality". Normal images carry no mask (the label folders' all-black masks of `good`
images say nothing). The root may be the subset folder or the BMAD folder holding it. There
is no index file: every path comes from a listing, and one that resolves outside the root
(a link) is quarantined without being opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from adinstruct.builder.errors import PathEscapeError
from adinstruct.builder.paths import resolve_inside
from adinstruct.builder.sources.base import (
    SampleOrQuarantine,
    SourceBuilder,
    list_images,
    subfolders,
)
from adinstruct.schemas import MaskRef
from adinstruct.schemas.records import Label, Modality, Split

SPLIT_FOLDERS: dict[str, Split] = {"train": "train", "valid": "val", "test": "test"}
LABEL_FOLDERS: dict[str, Label] = {"good": "normal", "ungood": "anomaly"}
#: Where the class-based layouts keep an anomalous image's mask, in the order looked at.
CLASS_MASK_FOLDERS = ("anomaly_mask", "label")
MASK_SUFFIXES = (".png", ".PNG")

LAYOUTS = {
    "readme": "<split>/{good,Ungood}/img/*.png with <split>/Ungood/anomaly_mask/*.png "
    "(BMAD's README)",
    "label-folders": "<split>/{good,Ungood}/img/*.png with <split>/{good,Ungood}/label/*.png "
    "(the generation scripts, anomalib)",
    "split-folders": "<split>/img/{good,Ungood}/*.png with <split>/label/{good,Ungood}/*.png "
    "(the liver script)",
}
#: The label-only subsets (no masks): the README and label-folder layouts then look the same.
LABEL_ONLY_LAYOUTS = {
    "readme": "<split>/{good,Ungood}/img/*.png (BMAD's README and anomalib; labels only)",
    "split-folders": "<split>/img/{good,Ungood}/*.png (the liver script's layout; labels only)",
}


@dataclass(frozen=True)
class Subset:
    """What differs between BMAD's subsets."""

    #: Lower-case names the subset's folder goes by inside a BMAD folder.
    folder_names: tuple[str, ...]
    category: str
    modality: Modality
    has_masks: bool


def label_of(folder: Path) -> Label | None:
    return LABEL_FOLDERS.get(folder.name.lower())


def split_folders(root: Path) -> list[tuple[Path, Split]]:
    """The split folders directly under root, in train, valid, test order."""
    return [(root / name, split) for name, split in SPLIT_FOLDERS.items() if (root / name).is_dir()]


def class_folders(folder: Path) -> list[Path]:
    return [child for child in subfolders(folder) if label_of(child) is not None]


def split_layout(split_root: Path) -> str | None:
    """Which layout one split folder is in, or None when it holds no good/Ungood folder."""
    if class_folders(split_root / "img"):
        return "split-folders"
    classes = class_folders(split_root)
    if not classes:
        return None
    if any((folder / "label").is_dir() for folder in classes):
        return "label-folders"
    return "readme"


def find_mask(folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for mask_stem in (stem, f"{stem}_mask"):
            for suffix in MASK_SUFFIXES:
                candidate = folder / f"{mask_stem}{suffix}"
                if candidate.is_file():
                    return candidate
    return None


class BMADSubset(SourceBuilder):
    """One BMAD subset in any of its three layouts; subclasses set `subset` and the card name."""

    subset: ClassVar[Subset]
    layouts = LAYOUTS

    def detect_layout(self) -> str:
        if not split_folders(self.root):
            inner = self.subset_folder()
            if inner is None:
                raise self.layout_error(
                    "no train/, valid/ or test/ folder, and no subset folder named "
                    + " or ".join(self.subset.folder_names)
                )
            self.root = inner.resolve()
        found = {
            split_root.name: layout
            for split_root, _ in split_folders(self.root)
            if (layout := split_layout(split_root)) is not None
        }
        if not found:
            raise self.layout_error("no good/ or Ungood/ folder under train/, valid/ or test/")
        kinds = {"split" if layout == "split-folders" else "class" for layout in found.values()}
        if len(kinds) > 1:
            shown = ", ".join(f"{name}/ in {layout}" for name, layout in sorted(found.items()))
            raise self.layout_error(f"its splits mix layouts: {shown}")
        if "split" in kinds:
            return "split-folders"
        if "label-folders" in found.values() and self.subset.has_masks:
            return "label-folders"
        return "readme"

    def subset_folder(self) -> Path | None:
        for child in subfolders(self.root):
            if child.name.lower() in self.subset.folder_names and split_folders(child):
                return child
        return None

    # -- listing ---------------------------------------------------------------------------

    def iter_samples(self) -> Iterator[SampleOrQuarantine]:
        for split_root, split in split_folders(self.root):
            if self.layout == "split-folders":
                for images in subfolders(split_root / "img"):
                    masks = [split_root / "label" / images.name]
                    yield from self.iter_class(split, images, images, masks)
            else:
                for folder in subfolders(split_root):
                    image_folder = folder / "img" if (folder / "img").is_dir() else folder
                    masks = [folder / name for name in CLASS_MASK_FOLDERS]
                    yield from self.iter_class(split, folder, image_folder, masks)

    def iter_class(
        self, split: Split, class_folder: Path, image_folder: Path, mask_folders: list[Path]
    ) -> Iterator[SampleOrQuarantine]:
        label = label_of(class_folder)
        if label is None:
            yield self.quarantine(
                "unknown_label_folder",
                f"folder {self.rel(class_folder)} is neither good nor Ungood; its images are "
                "skipped",
                path=self.rel(class_folder),
            )
            return
        wants_masks = label == "anomaly" and self.subset.has_masks
        mask_folders = [folder for folder in mask_folders if folder.is_dir()]
        paired: set[Path] = set()
        for image in list_images(image_folder):
            image_rel = self.rel(image)
            try:
                resolve_inside(self.root, image_rel)
            except PathEscapeError as error:
                yield self.escape(error, image_rel)
                continue
            if not wants_masks:
                yield self.sample(split, label, image_rel)
                continue
            mask = find_mask(mask_folders, image.stem)
            if mask is None:
                expected = self.rel(self.expected_mask_folder(class_folder) / f"{image.stem}.png")
                yield self.quarantine(
                    "mask_missing",
                    f"anomalous image {image_rel} has no mask: expected {expected}",
                    path=image_rel,
                    sample_id=self.sample_id(image_rel),
                )
                continue
            paired.add(mask)
            mask_rel = self.rel(mask)
            try:
                resolve_inside(self.root, mask_rel)
            except PathEscapeError as error:
                yield self.escape(error, mask_rel)
                continue
            yield self.sample(split, label, image_rel, MaskRef(path=mask_rel))
        if wants_masks:
            yield from self.orphan_masks(mask_folders, image_folder, paired)

    def expected_mask_folder(self, class_folder: Path) -> Path:
        if self.layout == "split-folders":
            return class_folder.parent.parent / "label" / class_folder.name
        name = "label" if self.layout == "label-folders" else "anomaly_mask"
        return class_folder / name

    def orphan_masks(
        self, mask_folders: list[Path], image_folder: Path, paired: set[Path]
    ) -> Iterator[SampleOrQuarantine]:
        for folder in mask_folders:
            for mask in list_images(folder):
                if mask in paired:
                    continue
                stem = mask.stem.removesuffix("_mask")
                yield self.quarantine(
                    "mask_orphan",
                    f"mask {self.rel(mask)} has no image: expected "
                    f"{self.rel(image_folder / stem)}.png",
                    path=self.rel(mask),
                )

    def sample(self, split: Split, label: Label, image_rel: str, mask: MaskRef | None = None):
        return self.make_sample(
            category=self.subset.category,
            split=split,
            label=label,
            images=[image_rel],
            masks=[mask] if mask is not None else [],
            modality=self.subset.modality,
        )

    def escape(self, error: PathEscapeError, relative: str):
        return self.quarantine(
            "path_outside_root",
            f"{relative} is a link to a file outside the source root: {error}",
            path=relative,
        )


class BMADBrain(BMADSubset):
    name = "bmad_brain"
    aliases = ("brain", "bmad-brain", "brats", "brats2021")
    subset = Subset(("brain", "brain_ad", "brats2021"), "brain", "mri", has_masks=True)


class BMADLiver(BMADSubset):
    name = "bmad_liver"
    aliases = ("liver", "bmad-liver")
    subset = Subset(("liver", "liver_ad"), "liver", "ct", has_masks=True)


class BMADRetinaRESC(BMADSubset):
    name = "bmad_retina_resc"
    aliases = ("retina_resc", "bmad-retina-resc", "resc")
    subset = Subset(("retina_resc", "resc", "resc_ad"), "retina", "oct", has_masks=True)


class BMADRetinaOCT2017(BMADSubset):
    name = "bmad_retina_oct2017"
    aliases = ("retina_oct2017", "bmad-retina-oct2017", "oct2017")
    layouts = LABEL_ONLY_LAYOUTS
    subset = Subset(("retina_oct2017", "oct2017", "oct2017_ad"), "retina", "oct", has_masks=False)


class BMADChest(BMADSubset):
    name = "bmad_chest"
    aliases = ("chest", "bmad-chest", "rsna")
    layouts = LABEL_ONLY_LAYOUTS
    subset = Subset(("chest", "chest_ad"), "chest", "xray", has_masks=False)


class BMADHistopathology(BMADSubset):
    name = "bmad_histopathology"
    aliases = ("histopathology", "bmad-histopathology", "camelyon16")
    layouts = LABEL_ONLY_LAYOUTS
    subset = Subset(
        ("histopathology", "histopathology_ad", "camelyon16"), "lymph_node", "histopathology",
        has_masks=False,
    )  # fmt: skip


BMAD_BUILDERS: tuple[type[BMADSubset], ...] = (
    BMADBrain, BMADLiver, BMADRetinaRESC, BMADRetinaOCT2017, BMADChest, BMADHistopathology,
)  # fmt: skip
