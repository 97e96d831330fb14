"""The annotate stage's 3D part: read a sample's point cloud, render its views, measure them.

A 3D sample reaches the language model as K rendered views (4 or 9, as Anomaly-OV). What is
drawn goes into the build's render folder (`RenderFolders`, inside its work folder):

- `views/<source>/<render path>`: what records show, later placed into DIR/images/<source>/
  with the sample's other files: the K views (`<category>/renders/<cloud path>/view_00.png`
  ..., depth shading, no highlight) and, for MVTec 3D-AD, the depth image drawn from the xyz
  (`<cat>/<split>/<class>/depth/<stem>.png`, beside the release's rgb/, xyz/ and gt/ folders:
  aligned pixel for pixel with the rgb and its ground-truth mask);
- `describer/<source>/<render folder>/highlight_00.png` ...: the same views with the
  anomalous points in a distinct colour. They tell the describer where the defect is, so a
  training image must never show them: they are never placed under DIR/images and no sample or
  record names them.

Real3D-AD's annotation comes from the per-point labels, through the views' anomaly masks (see
`measured_view`); MVTec 3D-AD's from its gt mask, as for 2D images (the stage measures it
before calling here), and the mask also marks which points the highlight views paint.

Failures raise `RenderReject` with a quarantine code and a reason naming the file:
cloud_unreadable (corrupt, truncated or empty cloud), cloud_size_mismatch (an xyz whose grid
is not its rgb's size), point_labels_unreadable, point_labels_mismatch (Real3D-AD labels whose
point count differs from the cloud's), mask_empty (an anomaly whose labels mark no point),
mask_on_normal (a normal cloud with points labelled anomalous), path_outside_root, and
render_unwritable (a view that cannot be read back after it was written).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

import numpy as np
from scipy import ndimage

from adinstruct.builder.annotate.decode import DecodeError, image_facts
from adinstruct.builder.annotate.geometry import measure_mask
from adinstruct.builder.annotate.pointcloud import (
    PointCloudError,
    organised_points,
    read_pcd,
    read_point_labels,
    read_xyz_tiff,
)
from adinstruct.builder.annotate.render import (
    SENSOR_UP,
    View,
    depth_image,
    render_folder,
    render_views,
    view_names,
    write_png,
)
from adinstruct.builder.errors import PathEscapeError
from adinstruct.builder.paths import resolve_inside
from adinstruct.schemas import Annotation, Sample

DEFAULT_VIEWS = 4
DEFAULT_RENDER_SIZE = 512
#: The renderer's widest disc; wider would blur the relief more than it closes gaps.
MAX_SPLAT_RADIUS = 8
DEPTH_FOLDER = "depth"


class RenderReject(Exception):
    """A 3D sample the stage cannot render; `code` is its quarantine code, `path` the file."""

    def __init__(self, code: str, reason: str, path: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.path = path


@dataclass(frozen=True)
class RenderFolders:
    """Where the annotate stage draws, and where later stages find what it drew."""

    root: Path

    @property
    def views(self) -> Path:
        """Files records show, as `<source>/<render path>`: the stand-in for DIR/images."""
        return self.root / "views"

    @property
    def describer(self) -> Path:
        """Highlight views, as `<source>/<render folder>/highlight_XX.png`: never placed."""
        return self.root / "describer"

    def view_file(self, source: str, render_path: str) -> Path:
        return resolve_inside(self.views / source, render_path)

    def highlight_files(self, sample: Sample) -> list[Path]:
        """The sample's highlight views, in view order; [] when none were drawn (a normal
        sample, or an anomaly no view shows)."""
        cloud = cloud_name(sample)
        if cloud is None:
            return []
        folder = self.describer / sample.source / render_folder(cloud)
        files = [folder / name for name in view_names(sample.view_count, "highlight")]
        return files if all(path.is_file() for path in files) else []


@dataclass(frozen=True)
class RenderConfig:
    """The annotate stage's settings that rendering uses; the stage fills in every field."""

    views: int
    size: int
    grid_min_share: float
    max_image_pixels: int


def is_rendered(sample: Sample) -> bool:
    """Whether the sample is a point cloud the stage renders (Real3D-AD, MVTec 3D-AD)."""
    return sample.modality == "point_cloud" or "xyz" in sample.extra


def cloud_name(sample: Sample) -> str | None:
    """The sample's point cloud, relative to its source root."""
    if sample.modality == "point_cloud":
        return sample.image_paths[0]
    return sample.extra.get("xyz")


def depth_path(rgb_relative: str) -> str:
    """`bagel/test/crack/rgb/000.png` -> `bagel/test/crack/depth/000.png`."""
    rgb = PurePosixPath(rgb_relative)
    return (rgb.parent.parent / DEPTH_FOLDER / rgb.with_suffix(".png").name).as_posix()


def splat_radius(point_count: int, size: int) -> int:
    """A disc radius that closes most gaps between neighbouring points: about their spacing
    when half the points (the visible side) spread over half the image.

    1 pixel for dense scans (MVTec 3D-AD's organised clouds at 512×512), a few for sparser
    clouds, whose views would otherwise be scattered dots with the far side showing through.
    """
    spacing = math.sqrt(size * size / max(point_count, 1))
    return int(min(MAX_SPLAT_RADIUS, max(1, math.ceil(spacing))))


def visible_anomaly(view: View, radius: int) -> np.ndarray:
    """The view's anomaly mask as a region measure should see it (H×W bool).

    The renderer marks the pixels whose nearest point is anomalous, so a sampled surface
    leaves the defect in fragments, and anomalous points on the far side show through gaps of
    the near one as specks. A closing over one point's disc joins fragments that no wider gap
    than the point spacing separates, and components smaller than one drawn point are dropped:
    no one could see a region there, and counting them would state tens of "regions".
    """
    if view.anomaly_mask is None:
        return np.zeros(view.coverage.shape, dtype=bool)
    rows, cols = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disc = rows * rows + cols * cols <= radius * radius + 1  # the renderer's splat disc
    closed = ndimage.binary_closing(view.anomaly_mask, structure=disc) & view.coverage
    labels, count = ndimage.label(closed, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return closed
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    large = sizes >= (2 * radius + 1) ** 2
    large[0] = False  # the background
    return large[labels]


def measured_view(masks: list[np.ndarray]) -> int | None:
    """The view whose anomaly mask the annotation measures: the one showing most anomalous
    pixels (the lowest index on a tie), or None when no view shows any.

    Not the union of the views' masks: each view is its own frame, so a union's grid words
    would name no place on any one image. Not always the first view either: a ring of cameras
    sees a defect from one or two sides only, and a first view facing away would leave the
    defect unlocated. The records then name the view ("in the top left of the second view").
    """
    counts = [int(mask.sum()) for mask in masks]
    best = max(range(len(masks)), key=lambda index: (counts[index], -index))
    return best if counts[best] > 0 else None


def annotate_point_cloud(sample: Sample, root: Path, folders: RenderFolders,
                         config: RenderConfig) -> Sample:  # fmt: skip
    """Real3D-AD: the `.pcd`, its per-point labels when it has them, K views, the annotation."""
    name = sample.image_paths[0]
    points = _read(lambda path: read_pcd(path, name), root, name, "cloud_unreadable")
    if len(points) == 0:
        raise RenderReject("cloud_unreadable", f"{name} holds no finite point", name)
    labels = None
    labels_name = sample.extra.get("point_labels")
    if labels_name:
        labelled, labels = _read(lambda path: read_point_labels(path, labels_name), root,
                                 labels_name, "point_labels_unreadable")  # fmt: skip
        if len(labelled) != len(points):
            raise RenderReject(
                "point_labels_mismatch",
                f"{labels_name} labels {len(labelled):,} points but its cloud {name} has "
                f"{len(points):,}",
                labels_name,
            )
        marked = int(labels.sum())
        if sample.label == "anomaly" and not marked:
            raise RenderReject(
                "mask_empty",
                f"anomalous cloud {name} has no point labelled anomalous in {labels_name}",
                labels_name,
            )
        if sample.label == "normal" and marked:
            raise RenderReject(
                "mask_on_normal",
                f"normal cloud {name} has {marked:,} points labelled anomalous in {labels_name}",
                labels_name,
            )
        # The release's ground truth is the txt's points (SOURCES.md): they carry the labels.
        points = labelled
        labels = labels if marked else None
    radius = splat_radius(len(points), config.size)
    views = render_views(points, config.views, labels=labels, size=config.size,
                         splat_radius=radius)  # fmt: skip
    folder = render_folder(name)
    render_paths = _write_views(views, sample, folder, folders)
    fields = _image_fields(folders.views / sample.source / render_paths[0], render_paths[0], config)
    annotation = Annotation(**fields)
    masks = [visible_anomaly(view, radius) for view in views] if labels is not None else []
    view = measured_view(masks) if masks else None
    if view is not None:
        geometry = measure_mask(masks[view], config.grid_min_share)
        annotation = Annotation(
            **fields, mask_rle=geometry.mask_rle, bboxes=geometry.bboxes,
            area_fraction=geometry.area_fraction, region_count=geometry.region_count,
            regions=geometry.regions, grid_cells=geometry.grid_cells, view=view,
        )  # fmt: skip
    return sample.model_copy(update={
        "annotation": annotation, "render_paths": render_paths, "view_count": len(views),
    })  # fmt: skip


def annotate_organised_cloud(sample: Sample, mask: np.ndarray | None, root: Path,
                             folders: RenderFolders, config: RenderConfig) -> Sample:  # fmt: skip
    """MVTec 3D-AD, after its rgb and gt mask are annotated: the depth image and K views.

    `mask` is the gt mask's union (H×W bool, aligned with the rgb), or None for a normal sample;
    the points it covers are the ones the highlight views paint.
    """
    assert sample.annotation is not None  # the stage annotates the rgb first
    name = sample.extra["xyz"]
    xyz = _read(lambda path: read_xyz_tiff(path, name), root, name, "cloud_unreadable")
    height, width = xyz.shape[:2]
    if (width, height) != (sample.annotation.width, sample.annotation.height):
        raise RenderReject(
            "cloud_size_mismatch",
            f"point cloud {name} is {width}×{height} but its image {sample.image_paths[0]} is "
            f"{sample.annotation.width}×{sample.annotation.height}",
            name,
        )
    points, pixels = organised_points(xyz)
    if len(points) == 0:
        raise RenderReject("cloud_unreadable", f"{name} holds no valid point (all zero or NaN)",
                           name)  # fmt: skip
    labels = mask.ravel()[pixels] if mask is not None else None
    depth = depth_path(sample.image_paths[0])
    write_png(folders.views / sample.source / depth, depth_image(xyz))
    del xyz
    views = render_views(points, config.views, labels=labels, up=SENSOR_UP, size=config.size,
                         splat_radius=splat_radius(len(points), config.size))  # fmt: skip
    render_paths = [depth, *_write_views(views, sample, render_folder(name), folders)]
    return sample.model_copy(update={"render_paths": render_paths, "view_count": len(views)})


# -- helpers -----------------------------------------------------------------------------


Read = TypeVar("Read")


def _read(reader: Callable[[Path], Read], root: Path, name: str, code: str) -> Read:
    """`reader(path)` of a file named relative to the root, its failures as RenderReject."""
    try:
        path = resolve_inside(root, name)
    except PathEscapeError as error:
        raise RenderReject("path_outside_root", str(error), name) from error
    try:
        return reader(path)
    except PointCloudError as error:
        raise RenderReject(code, str(error), name) from error


def _write_views(
    views: list[View], sample: Sample, folder: str, folders: RenderFolders
) -> list[str]:
    """Write the training views (and the highlight views, apart); their render paths back."""
    names = view_names(len(views))
    highlights = view_names(len(views), "highlight")
    paths = []
    for index, view in enumerate(views):
        relative = f"{folder}/{names[index]}"
        write_png(folders.views / sample.source / relative, view.image)
        paths.append(relative)
        if view.highlight is not None:
            write_png(
                folders.describer / sample.source / folder / highlights[index], view.highlight
            )
    return paths


def _image_fields(path: Path, name: str, config: RenderConfig) -> dict[str, object]:
    try:
        facts = image_facts(path.read_bytes(), name, config.max_image_pixels)
    except (OSError, DecodeError) as error:  # a view just written: the disk failed under us
        raise RenderReject(
            "render_unwritable", f"cannot read back {name}: {error}", name
        ) from error
    return {"width": facts.width, "height": facts.height, "mode": facts.mode,
            "sha256": facts.sha256, "phash": facts.phash}  # fmt: skip
