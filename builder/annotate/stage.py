"""The annotate stage: decode a sample's image and masks once and record what the pixels say.

A 3D sample is also rendered (`renders.py`): Real3D-AD's `.pcd` to K views whose anomaly masks
give its annotation; MVTec 3D-AD's rgb and gt mask are annotated as any image, then its xyz
becomes a depth image and K views. The sample's `render_paths` name what records show.

Quarantine codes: path_outside_root, image_unreadable, image_truncated, image_too_large,
mask_unreadable, mask_size_mismatch, mask_empty (an anomaly whose masks, or per-point labels,
mark nothing) and mask_on_normal (a normal image whose mask marks pixels, or a normal cloud
with labelled points); for 3D samples also cloud_unreadable, cloud_size_mismatch,
point_labels_unreadable and point_labels_mismatch (see `renders.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adinstruct.builder.annotate.decode import (
    DecodeError,
    MaskSizeMismatch,
    image_facts,
    mask_values,
    read_file,
)
from adinstruct.builder.annotate.geometry import DEFAULT_GRID_MIN_SHARE, measure_mask
from adinstruct.builder.annotate.renders import (
    DEFAULT_RENDER_SIZE,
    DEFAULT_VIEWS,
    RenderConfig,
    RenderFolders,
    RenderReject,
    annotate_organised_cloud,
    annotate_point_cloud,
    is_rendered,
)
from adinstruct.builder.errors import ConfigError, PathEscapeError
from adinstruct.builder.paths import resolve_inside
from adinstruct.builder.stage import Stage
from adinstruct.schemas import Annotation, DefectMask, MaskRef, QuarantineEntry, Sample

#: PIL's own default Image.MAX_IMAGE_PIXELS: about a quarter gigabyte of RGB pixels.
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485

GREYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})

IMAGE_CODES = {
    "unreadable": "image_unreadable",
    "truncated": "image_truncated",
    "too_large": "image_too_large",
}


@dataclass(slots=True)
class _MaskPixels:
    """What one sample's masks hold; lives for one `process` call only."""

    union: np.ndarray
    #: Defect name -> its pixels, or None when the release does not tell defects apart.
    defects: dict[str, np.ndarray] | None
    #: Mask files with at least one defect pixel, in the sample's order.
    marked_files: list[str]


class AnnotateStage(Stage):
    """Image size, mode, hashes and mask geometry for each sample; `roots` maps source -> root.

    `renders` is the folder 3D samples are drawn into (see `RenderFolders`), with `views`
    views of `render_size` pixels a side; only builds with 3D sources need it.
    """

    name = "annotate"

    def __init__(
        self,
        roots: dict[str, str],
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        grid_min_share: float = DEFAULT_GRID_MIN_SHARE,
        renders: str | None = None,
        views: int = DEFAULT_VIEWS,
        render_size: int = DEFAULT_RENDER_SIZE,
    ) -> None:
        if max_image_pixels < 1:
            raise ConfigError(f"max_image_pixels must be at least 1, got {max_image_pixels}")
        if not 0 <= grid_min_share <= 1:
            raise ConfigError(f"grid_min_share must lie in [0, 1], got {grid_min_share}")
        if views < 1:
            raise ConfigError(f"a 3D sample needs at least one view, got views={views}")
        if render_size < 16:
            raise ConfigError(f"render_size must be at least 16 pixels, got {render_size}")
        # Plain strings only, so that the stage pickles small and the same everywhere.
        self.roots = {source: str(Path(root).resolve()) for source, root in roots.items()}
        self.max_image_pixels = int(max_image_pixels)
        self.grid_min_share = float(grid_min_share)
        self.renders = str(Path(renders).resolve()) if renders is not None else None
        self.views = int(views)
        self.render_size = int(render_size)

    def process(self, sample: Sample) -> Sample | QuarantineEntry:
        if not is_rendered(sample):
            annotated = self._annotate_image(sample)
            return annotated if isinstance(annotated, QuarantineEntry) else annotated[0]
        if self.renders is None:
            raise ConfigError(
                f"annotate has no render folder for the 3D sample {sample.id}; pass renders="
            )
        folders = RenderFolders(Path(self.renders))
        config = RenderConfig(views=self.views, size=self.render_size,
                              grid_min_share=self.grid_min_share,
                              max_image_pixels=self.max_image_pixels)  # fmt: skip
        root = self._root(sample.source)
        try:
            if sample.modality == "point_cloud":
                return annotate_point_cloud(sample, root, folders, config)
            annotated = self._annotate_image(sample, keep_mask=True)
            if isinstance(annotated, QuarantineEntry):
                return annotated
            return annotate_organised_cloud(*annotated, root, folders, config)
        except RenderReject as reject:
            return self.quarantine(sample, reject.code, reject.reason, reject.path)

    def _annotate_image(
        self, sample: Sample, keep_mask: bool = False
    ) -> tuple[Sample, np.ndarray | None] | QuarantineEntry:
        """The sample with its image's annotation, and (`keep_mask`) the masks' union."""
        root = self._root(sample.source)
        resolved = self._resolve(sample, root)
        if isinstance(resolved, QuarantineEntry):
            return resolved
        image_path, mask_paths = resolved
        image_name = sample.image_paths[0]
        try:
            facts = image_facts(
                read_file(image_path, image_name), image_name, self.max_image_pixels
            )
        except DecodeError as error:
            return self.quarantine(sample, IMAGE_CODES[error.kind], str(error), image_name)
        image_fields = {
            "width": facts.width,
            "height": facts.height,
            "mode": facts.mode,
            "sha256": facts.sha256,
            "phash": facts.phash,
        }
        update: dict[str, object] = {}
        if sample.modality == "rgb" and facts.mode in GREYSCALE_MODES:
            # A single-channel photo is what the grey modality means, whatever the release says.
            update["modality"] = "grey"
        if not sample.masks:
            return sample.model_copy(
                update={**update, "annotation": Annotation(**image_fields)}
            ), None

        pixels = self._read_masks(sample, mask_paths, (facts.width, facts.height))
        if isinstance(pixels, QuarantineEntry):
            return pixels
        mask_names = [mask.path for mask in sample.masks]
        if sample.label == "anomaly" and not pixels.marked_files:
            return self.quarantine(
                sample,
                "mask_empty",
                f"anomalous image {image_name} has only empty masks (no pixel above 0): "
                + ", ".join(mask_names),
                mask_names[0],
            )
        if sample.label == "normal" and pixels.marked_files:
            return self.quarantine(
                sample,
                "mask_on_normal",
                f"normal image {image_name} has defect pixels in mask "
                + ", ".join(pixels.marked_files),
                pixels.marked_files[0],
            )

        union_geometry = measure_mask(pixels.union, self.grid_min_share)
        defects = [
            self._defect_mask(name, pixels.defects[name]) for name in sorted(pixels.defects or {})
        ]
        union = pixels.union if keep_mask else None
        del pixels  # the full-size arrays; only their compact geometry travels on
        annotation = Annotation(
            **image_fields,
            mask_rle=union_geometry.mask_rle,
            bboxes=union_geometry.bboxes,
            area_fraction=union_geometry.area_fraction,
            region_count=union_geometry.region_count,
            regions=union_geometry.regions,
            grid_cells=union_geometry.grid_cells,
            defects=defects,
        )
        update["annotation"] = annotation
        if defects and not sample.defect_types:
            # Releases that name defects only through pixel values (VisA, MVTec LOCO) leave
            # defect_types empty at listing time; the masks fill it in.
            update["defect_types"] = [defect.defect_type for defect in defects]
        return sample.model_copy(update=update), union

    # -- helpers -------------------------------------------------------------------------

    def _root(self, source: str) -> Path:
        try:
            return Path(self.roots[source])
        except KeyError:
            raise KeyError(
                f"annotate has no root for source {source!r}; configured: {sorted(self.roots)}"
            ) from None

    def _resolve(self, sample: Sample, root: Path) -> tuple[Path, list[Path]] | QuarantineEntry:
        """Resolve every path before any file is opened, so an escaping one is never read."""
        resolved: list[Path] = []
        for relative in [*sample.image_paths, *(mask.path for mask in sample.masks)]:
            try:
                resolved.append(resolve_inside(root, relative))
            except PathEscapeError as error:
                return self.quarantine(sample, "path_outside_root", str(error), relative)
        return resolved[0], resolved[len(sample.image_paths) :]

    def _read_masks(
        self, sample: Sample, mask_paths: list[Path], image_size: tuple[int, int]
    ) -> _MaskPixels | QuarantineEntry:
        separates_defects = len(sample.masks) > 1 or any(
            mask.value_names is not None for mask in sample.masks
        )
        # A mask file without its own name belongs to the sample's one named defect, if any.
        fallback_name = sample.defect_types[0] if len(sample.defect_types) == 1 else "unknown"
        union: np.ndarray | None = None
        defects: dict[str, np.ndarray] | None = {} if separates_defects else None
        marked_files: list[str] = []
        for mask, path in zip(sample.masks, mask_paths, strict=True):
            try:
                values = mask_values(
                    read_file(path, mask.path), mask.path, image_size, self.max_image_pixels
                )
            except MaskSizeMismatch as mismatch:
                width, height = mismatch.size
                return self.quarantine(
                    sample,
                    "mask_size_mismatch",
                    f"mask {mask.path} is {width}×{height} but its image {sample.image_paths[0]} "
                    f"is {image_size[0]}×{image_size[1]}",
                    mask.path,
                )
            except DecodeError as error:
                return self.quarantine(sample, "mask_unreadable", str(error), mask.path)
            binary = values > 0
            if binary.any():
                marked_files.append(mask.path)
            # Never OR in place: the first binary may also be stored as a defect's pixels.
            union = binary if union is None else union | binary
            if defects is not None:
                for name, part in _defect_parts(mask, values, binary, fallback_name):
                    defects[name] = part if name not in defects else defects[name] | part
            del values, binary
        assert union is not None  # the caller only reads masks of samples that have some
        return _MaskPixels(union=union, defects=defects, marked_files=marked_files)

    def _defect_mask(self, name: str, binary: np.ndarray) -> DefectMask:
        geometry = measure_mask(binary, self.grid_min_share)
        return DefectMask(
            defect_type=name,
            rle=geometry.mask_rle,
            area_fraction=geometry.area_fraction,
            region_count=geometry.region_count,
            bboxes=geometry.bboxes,
            grid_cells=geometry.grid_cells,
        )


def _defect_parts(
    mask: MaskRef, values: np.ndarray, binary: np.ndarray, fallback_name: str
) -> Iterator[tuple[str, np.ndarray]]:
    """(defect name, its pixels) for each defect that one mask file shows."""
    if mask.value_names is not None:
        # Only the defect pixels are searched for ids, which is few for most masks.
        for value in np.unique(values[binary]).tolist():
            yield mask.value_names.get(value, f"unknown id {value}"), values == value
    elif binary.any():
        yield mask.defect_type or fallback_name, binary
