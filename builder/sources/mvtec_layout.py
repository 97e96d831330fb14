"""The MVTec AD folder layout, shared by MVTec AD, MPDD, BTAD and VisA's MVTec-style copy.

    <cat>/train/<normal>/000.png
    <cat>/test/<normal>/000.png, <cat>/test/<defect>/000.png
    <cat>/ground_truth/<defect>/000_mask.png   (or 000.png / 000.bmp in copies and in BTAD)

A pure listing over the folder: no pixel is read. Every anomalous image is paired with its
mask by stem; an image without a mask and a mask without an image both become quarantine
entries that name the two files.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from adinstruct.builder.sources.base import (
    SampleOrQuarantine,
    SourceBuilder,
    list_images,
    subfolders,
)
from adinstruct.schemas import MaskRef
from adinstruct.schemas.records import Modality, Split

SPLIT_FOLDERS: dict[str, Split] = {"train": "train", "validation": "val", "test": "test"}
MASK_SUFFIXES = (".png", ".PNG", ".bmp", ".BMP", ".tif", ".tiff")


@dataclass(frozen=True)
class MVTecStyle:
    """What differs between the releases that share the layout."""

    normal_folders: frozenset[str] = frozenset({"good"})
    #: Anomaly folders whose name is not a defect name (VisA copy's `bad`, BTAD's `ko`).
    unnamed_defect_folders: frozenset[str] = frozenset()
    mask_stem_suffixes: tuple[str, ...] = ("_mask", "")
    modality_of: Callable[[str], Modality] = field(default=lambda category: "rgb")


def looks_like_category(folder: Path, style: MVTecStyle) -> bool:
    return any(
        (folder / split / normal).is_dir()
        for split in SPLIT_FOLDERS
        for normal in style.normal_folders
    )


def category_folders(root: Path, style: MVTecStyle) -> list[Path]:
    """Category folders under root; licence and readme files beside them are ignored."""
    return [folder for folder in subfolders(root) if looks_like_category(folder, style)]


def find_mask(mask_folder: Path, stem: str, style: MVTecStyle) -> Path | None:
    for stem_suffix in style.mask_stem_suffixes:
        for suffix in MASK_SUFFIXES:
            candidate = mask_folder / f"{stem}{stem_suffix}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def iter_mvtec_category(
    builder: SourceBuilder, category_root: Path, style: MVTecStyle
) -> Iterator[SampleOrQuarantine]:
    category = category_root.name
    modality = style.modality_of(category)
    for split_folder, split in SPLIT_FOLDERS.items():
        for class_folder in subfolders(category_root / split_folder):
            is_normal = class_folder.name in style.normal_folders
            defect = None if is_normal else class_folder.name
            mask_folder = category_root / "ground_truth" / class_folder.name
            paired_masks: set[Path] = set()
            for image in list_images(class_folder):
                image_rel = builder.rel(image)
                if is_normal:
                    yield builder.make_sample(
                        category=category, split=split, label="normal",
                        images=[image_rel], modality=modality,
                    )  # fmt: skip
                    continue
                mask = find_mask(mask_folder, image.stem, style)
                if mask is None:
                    expected = builder.rel(mask_folder / f"{image.stem}_mask.png")
                    yield builder.quarantine(
                        "mask_missing",
                        f"anomalous image {image_rel} has no mask: expected {expected}",
                        path=image_rel,
                        sample_id=builder.sample_id(image_rel),
                    )
                    continue
                paired_masks.add(mask)
                named = defect not in style.unnamed_defect_folders
                yield builder.make_sample(
                    category=category,
                    split=split,
                    label="anomaly",
                    images=[image_rel],
                    masks=[MaskRef(path=builder.rel(mask), defect_type=defect if named else None)],
                    defect_types=[defect] if named and defect else [],
                    modality=modality,
                    extra={} if named else {"anomaly_folder": class_folder.name},
                )
            if not is_normal:
                yield from orphan_masks(builder, mask_folder, class_folder, paired_masks)


def orphan_masks(
    builder: SourceBuilder, mask_folder: Path, image_folder: Path, paired: set[Path]
) -> Iterator[SampleOrQuarantine]:
    for mask in list_images(mask_folder):
        if mask in paired:
            continue
        stem = mask.stem.removesuffix("_mask")
        yield builder.quarantine(
            "mask_orphan",
            f"mask {builder.rel(mask)} has no image: expected "
            f"{builder.rel(image_folder / stem)}.png (or .jpg/.bmp)",
            path=builder.rel(mask),
        )


class MVTecStyleBuilder(SourceBuilder):
    """A release in the MVTec layout; subclasses set the style and the licence facts."""

    style: MVTecStyle = MVTecStyle()

    def detect_layout(self) -> str:
        if category_folders(self.root, self.style):
            return "categories"
        if looks_like_category(self.root, self.style):
            # The user pointed at one category folder (e.g. mvtec/bottle): accept it.
            return "single-category"
        raise self.layout_error("no category folder with train/ or test/ holding normal images")

    def categories(self) -> list[Path]:
        if self.layout == "single-category":
            return [self.root]
        return category_folders(self.root, self.style)

    def iter_samples(self) -> Iterator[SampleOrQuarantine]:
        for category_root in self.categories():
            yield from iter_mvtec_category(self, category_root, self.style)
