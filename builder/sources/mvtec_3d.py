"""MVTec 3D-AD: 10 categories, each sample an rgb image and an organised xyz point cloud.

    <cat>/{train,validation}/good/rgb/000.png   and  .../xyz/000.tiff
    <cat>/test/<good|defect>/rgb/000.png, xyz/000.tiff, gt/000.png

A pure listing: no pixel or point is read. The sample's image is the rgb file (pixel-aligned
with the xyz cloud and the gt mask), its modality `depth`, and `extra["xyz"]` names the cloud
that the annotate stage renders (a depth image beside the rgb, and multi-view renders).
An rgb file without its xyz, and an anomalous one without its gt mask, become quarantine
entries naming the expected file; so does an xyz file without its rgb.
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
from adinstruct.schemas import MaskRef
from adinstruct.schemas.records import Split

SPLIT_FOLDERS: dict[str, Split] = {"train": "train", "validation": "val", "test": "test"}
NORMAL = "good"
XYZ_SUFFIXES = (".tiff", ".tif", ".TIFF", ".TIF")
MASK_SUFFIXES = (".png", ".PNG")


def looks_like_category(folder: Path) -> bool:
    return any((folder / split / NORMAL / "rgb").is_dir() for split in SPLIT_FOLDERS)


def find_file(folder: Path, stem: str, suffixes: tuple[str, ...]) -> Path | None:
    for suffix in suffixes:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


class MVTec3DAD(SourceBuilder):
    name = "mvtec_3d_ad"
    aliases = ("mvtec3d", "mvtec-3d", "mvtec_3d", "mvtec3dad")
    layouts = {
        "categories": "<cat>/{train,validation}/good/{rgb,xyz}/ and "
        "<cat>/test/<good|defect>/{rgb,xyz,gt}/ under the root",
        "single-category": "train/good/rgb/, test/<defect>/{rgb,xyz,gt}/ directly under the "
        "root (one category)",
    }

    def detect_layout(self) -> str:
        if any(looks_like_category(folder) for folder in subfolders(self.root)):
            return "categories"
        if looks_like_category(self.root):
            return "single-category"
        raise self.layout_error("no category folder with train/good/rgb/ or test/good/rgb/")

    def categories(self) -> list[Path]:
        if self.layout == "single-category":
            return [self.root]
        return [folder for folder in subfolders(self.root) if looks_like_category(folder)]

    def iter_samples(self) -> Iterator[SampleOrQuarantine]:
        for category_root in self.categories():
            for split_folder, split in SPLIT_FOLDERS.items():
                for class_folder in subfolders(category_root / split_folder):
                    yield from self.iter_class(category_root.name, split, class_folder)

    def iter_class(self, category: str, split: Split, folder: Path) -> Iterator[SampleOrQuarantine]:
        is_normal = folder.name == NORMAL
        rgb_stems = set()
        for image in list_images(folder / "rgb"):
            rgb_stems.add(image.stem)
            image_rel = self.rel(image)
            xyz = find_file(folder / "xyz", image.stem, XYZ_SUFFIXES)
            if xyz is None:
                yield self.quarantine(
                    "xyz_missing",
                    f"rgb image {image_rel} has no point cloud: expected "
                    f"{self.rel(folder / 'xyz' / image.stem)}.tiff",
                    path=image_rel, sample_id=self.sample_id(image_rel),
                )  # fmt: skip
                continue
            extra = {"xyz": self.rel(xyz)}
            if is_normal:
                yield self.make_sample(
                    category=category, split=split, label="normal", images=[image_rel],
                    modality="depth", extra=extra,
                )  # fmt: skip
                continue
            mask = find_file(folder / "gt", image.stem, MASK_SUFFIXES)
            if mask is None:
                yield self.quarantine(
                    "mask_missing",
                    f"anomalous image {image_rel} has no mask: expected "
                    f"{self.rel(folder / 'gt' / image.stem)}.png",
                    path=image_rel, sample_id=self.sample_id(image_rel),
                )  # fmt: skip
                continue
            yield self.make_sample(
                category=category, split=split, label="anomaly", images=[image_rel],
                masks=[MaskRef(path=self.rel(mask), defect_type=folder.name)],
                defect_types=[folder.name], modality="depth", extra=extra,
            )  # fmt: skip
        for xyz in sorted((folder / "xyz").glob("*")) if (folder / "xyz").is_dir() else ():
            if xyz.suffix in XYZ_SUFFIXES and xyz.stem not in rgb_stems:
                yield self.quarantine(
                    "rgb_missing",
                    f"point cloud {self.rel(xyz)} has no rgb image: expected "
                    f"{self.rel(folder / 'rgb' / xyz.stem)}.png",
                    path=self.rel(xyz),
                )
