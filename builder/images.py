"""Place the images and masks that records point at under the output folder.

Records name images relative to `DIR/images` (the trainer's --image_folder) as
`<source>/<path in the release>`, and masks as `masks/<source>/<path>` relative to DIR.
Files are copied by default; `hardlink` saves the space where the release sits on the same
file system (the output never writes into a placed file: every write is a rename).
"""

from __future__ import annotations

import os
import shutil
from enum import StrEnum
from pathlib import Path

from adinstruct.builder.paths import resolve_inside
from adinstruct.schemas import Sample

IMAGES_DIR = "images"
MASKS_DIR = "masks"


class Placement(StrEnum):
    copy = "copy"
    hardlink = "hardlink"


def image_reference(sample: Sample, index: int = 0) -> str:
    """The record's `image` entry: relative to DIR/images."""
    return f"{sample.source}/{sample.image_paths[index]}"


def mask_reference(sample: Sample, index: int = 0) -> str:
    """The record's mask entry: relative to DIR."""
    return f"{MASKS_DIR}/{sample.source}/{sample.masks[index].path}"


def place_file(source: Path, target: Path, placement: Placement) -> None:
    if target.exists() and is_same_placement(source, target):
        return  # placed by an earlier build from the same release file
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    if placement is Placement.hardlink:
        try:
            temporary.unlink(missing_ok=True)
            os.link(source, temporary)
            os.replace(temporary, target)
            return
        except OSError:
            pass  # another file system: fall back to a copy
    shutil.copy2(source, temporary)  # keeps the modification time, which the rebuild check reads
    os.replace(temporary, target)


def is_same_placement(source: Path, target: Path) -> bool:
    source_stat, target_stat = source.stat(), target.stat()
    if (source_stat.st_dev, source_stat.st_ino) == (target_stat.st_dev, target_stat.st_ino):
        return True
    return (source_stat.st_size, source_stat.st_mtime_ns) == (
        target_stat.st_size, target_stat.st_mtime_ns,
    )  # fmt: skip


def place_sample_files(sample: Sample, root: Path, out: Path, placement: Placement) -> int:
    """Copy (or link) a sample's images and masks under `out`; returns how many were placed."""
    placed = 0
    for relative in sample.image_paths:
        target = out / IMAGES_DIR / sample.source / relative
        place_file(resolve_inside(root, relative), target, placement)
        placed += 1
    for mask in sample.masks:
        target = out / MASKS_DIR / sample.source / mask.path
        place_file(resolve_inside(root, mask.path), target, placement)
        placed += 1
    return placed
