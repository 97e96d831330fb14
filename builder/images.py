"""Place the images and masks that records point at under the output folder.

Records name images relative to `DIR/images` (the trainer's --image_folder) as
`<source>/<path in the release>`, and masks as `masks/<source>/<path>` relative to DIR.
Files are copied by default; `hardlink` saves the space where the release sits on the same
file system (the output never writes into a placed file: every write is a rename).

A 3D sample is shown by what the annotate stage drew (`render_paths`), never by its point
cloud: a `.pcd` or an xyz `.tiff` is never placed under DIR/images nor named by a record.
MVTec 3D-AD's records show the rgb image first, then the depth image drawn from the xyz,
then the K views: the gt mask, and so every location word the annotation gives, is in the
rgb's frame, which the depth image shares pixel for pixel, while the views show the shape
from around. Real3D-AD's records show the K views only (they have no photograph).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

from adinstruct.builder.paths import resolve_inside
from adinstruct.schemas import Sample

IMAGES_DIR = "images"
MASKS_DIR = "masks"
#: Samples of this modality list a cloud as their image, which is never shown.
CLOUD_MODALITY = "point_cloud"


class Placement(StrEnum):
    copy = "copy"
    hardlink = "hardlink"


def shown_paths(
    source: str,
    image_paths: Sequence[str],
    render_paths: Sequence[str] = (),
    modality: str = "rgb",
    view_count: int = 1,
) -> list[str]:
    """What records show of a sample, relative to DIR/images, in order (see the module's
    docstring); from a sample's fields, so that code reading raw JSON shares the rule."""
    if render_paths:
        pictures = [] if modality == CLOUD_MODALITY else list(image_paths[:1])
        return [f"{source}/{path}" for path in [*pictures, *render_paths]]
    views = image_paths if view_count > 1 else image_paths[:1]
    return [f"{source}/{path}" for path in views]


def split_renders(render_paths: Sequence[str], view_count: int) -> tuple[list[str], list[str]]:
    """A 3D sample's render paths as (what annotate drew before the views, the views): the
    last `view_count` are the views; MVTec 3D-AD's depth image comes before them."""
    first_view = max(len(render_paths) - view_count, 0)
    return list(render_paths[:first_view]), list(render_paths[first_view:])


def shown_images(sample: Sample) -> list[str]:
    """The images records of `sample` show, relative to DIR/images, in order."""
    return shown_paths(sample.source, sample.image_paths, sample.render_paths, sample.modality,
                       sample.view_count)  # fmt: skip


def image_reference(sample: Sample, index: int = 0) -> str:
    """One `image` entry of the sample's records, relative to DIR/images: by default the first
    (the one a benchmark that takes a single image shows)."""
    return shown_images(sample)[index]


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


def place_sample_files(
    sample: Sample, root: Path, out: Path, placement: Placement, rendered: Path | None = None
) -> int:
    """Copy (or link) a sample's images and masks under `out`; returns how many were placed.

    `rendered` holds what the annotate stage drew, as `<source>/<render path>` (the build's
    `RenderFolders.views`); a sample with render paths needs it.
    """
    placed = 0
    # A point cloud is no image: its renders stand in for it.
    pictures = [] if sample.modality == CLOUD_MODALITY else sample.image_paths
    for relative in pictures:
        target = out / IMAGES_DIR / sample.source / relative
        place_file(resolve_inside(root, relative), target, placement)
        placed += 1
    if sample.render_paths and rendered is None:
        raise ValueError(f"sample {sample.id} has renders, but no render folder was given")
    for relative in sample.render_paths:
        assert rendered is not None
        source = resolve_inside(rendered / sample.source, relative)
        place_file(source, out / IMAGES_DIR / sample.source / relative, placement)
        placed += 1
    for mask in sample.masks:
        target = out / MASKS_DIR / sample.source / mask.path
        place_file(resolve_inside(root, mask.path), target, placement)
        placed += 1
    return placed
