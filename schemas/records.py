"""The records that flow between stages: Sample (with its Annotation) and QuarantineEntry."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Split = Literal["train", "val", "test"]
Label = Literal["normal", "anomaly"]
Modality = Literal[
    "rgb", "grey", "depth", "point_cloud", "mri", "ct", "oct", "xray", "histopathology"
]

#: The 3x3 grid that AnomalyGPT and Myriad describe locations with, row by row.
GRID_WORDS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
GridWord = Literal[
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
]  # fmt: skip


class Record(BaseModel):
    """Base of every record: unknown fields are an error, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=False)


class MaskRef(Record):
    """One mask file of a sample, and how its pixel values name defects."""

    path: str = Field(description="Path relative to the source root.")
    defect_type: str | None = Field(
        default=None,
        description="The defect this whole mask shows, when the release names it by folder.",
    )
    value_names: dict[int, str] | None = Field(
        default=None,
        description="Pixel value -> defect name, for releases whose masks are multi-valued "
        "(VisA's id-to-class table, MVTec LOCO's defects_config.json).",
    )


class RLE(Record):
    """COCO run-length encoding as pycocotools writes it (counts as a compressed string)."""

    size: tuple[int, int] = Field(description="[height, width]")
    counts: str


class Region(Record):
    """One connected region of a mask (8-connectivity)."""

    bbox: tuple[int, int, int, int] = Field(description="COCO [x, y, width, height] in pixels.")
    area: int = Field(ge=1, description="Pixels in the region.")
    area_fraction: float = Field(ge=0, le=1)
    location: GridWord = Field(description="Grid cell of the region's centroid.")


class DefectMask(Record):
    """The pixels of one named defect type, for releases that tell defects apart in a mask."""

    defect_type: str
    rle: RLE
    area_fraction: float = Field(ge=0, le=1)
    region_count: int = Field(ge=0)
    bboxes: list[tuple[int, int, int, int]] = Field(
        default_factory=list, description="COCO [x, y, w, h] of each of its connected regions."
    )
    grid_cells: list[GridWord]


class Annotation(Record):
    """Facts computed once from the pixels; every generated sentence must agree with them."""

    width: int = Field(ge=1)
    height: int = Field(ge=1)
    mode: str = Field(description="PIL mode of the decoded image, e.g. RGB or L.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the image file bytes.")
    phash: str = Field(pattern=r"^[0-9a-f]{16}$", description="64-bit DCT perceptual hash, hex.")
    mask_rle: RLE | None = Field(default=None, description="Union of all masks, binarised > 0.")
    bboxes: list[tuple[int, int, int, int]] = Field(
        default_factory=list, description="COCO [x, y, w, h] of each connected region."
    )
    area_fraction: float = Field(default=0.0, ge=0, le=1)
    region_count: int = Field(default=0, ge=0)
    regions: list[Region] = Field(default_factory=list)
    grid_cells: list[GridWord] = Field(
        default_factory=list,
        description="Grid cells holding at least 5% of the mask's pixels, largest share first.",
    )
    defects: list[DefectMask] = Field(
        default_factory=list,
        description="Per-defect masks where the release distinguishes defects by pixel value.",
    )
    view: int | None = Field(
        default=None,
        ge=0,
        description="For a rendered 3D sample whose mask geometry was measured on one of its "
        "views (Real3D-AD's per-point labels), that view's index into the rendered views; None "
        "when it was measured on the image itself (image_paths[0]).",
    )


class Description(Record):
    """A grounded description of one sample, as a describer (template or LLM) returns it."""

    anomaly_present: bool
    defect_type: str | None = None
    location: str | None = Field(default=None, description="Grid words, e.g. 'top left'.")
    appearance: str | None = None
    likely_cause: str | None = None
    effect: str | None = None
    prevention: str | None = None
    object_description: str | None = Field(default=None, description="For normal images.")


class Sample(Record):
    """One image (or one multi-view object) of a release, as its files and labels say."""

    id: str = Field(description="Stable id: '<source>/<image path without extension>'.")
    source: str = Field(description="Builder name, e.g. mvtec_ad.")
    category: str
    split: Split
    label: Label
    defect_types: list[str] = Field(
        default_factory=list,
        description="Defect names as the release names them; empty for normal samples and for "
        "releases that do not name defects.",
    )
    image_paths: list[str] = Field(min_length=1, description="Relative to the source root.")
    masks: list[MaskRef] = Field(default_factory=list)
    modality: Modality = "rgb"
    view_count: int = Field(
        default=1, ge=1, description="Images of the sample; for a 3D sample its rendered views."
    )
    render_paths: list[str] = Field(
        default_factory=list,
        description="What the annotate stage drew for a 3D sample, in the order records show "
        "it, relative to DIR/images/<source>/: MVTec 3D-AD's depth image, then the views "
        "(<category>/renders/<cloud path>/view_00.png ...). Records show these instead of a "
        "point cloud.",
    )
    group: str | None = Field(
        default=None,
        description="Physical object this image shows, when a release photographs one object "
        "several times (Real-IAD's five cameras); leakage checks keep a group together.",
    )
    extra: dict[str, str] = Field(default_factory=dict, description="Release-specific facts.")
    annotation: Annotation | None = None
    description: Description | None = Field(
        default=None, description="What the describe stage said about the sample."
    )
    describer: str | None = Field(
        default=None, description="Which describer wrote it: 'template' or 'openai:<model>'."
    )


class QuarantineEntry(Record):
    """A sample or record that a stage could not handle, with why; the build goes on."""

    stage: str = Field(description="source, annotate, describe, compose, validate, ...")
    code: str = Field(description="Short machine-readable reason, e.g. mask_size_mismatch.")
    reason: str = Field(description="One sentence a person can act on, naming the files.")
    source: str
    path: str | None = Field(default=None, description="The offending file, relative to root.")
    sample_id: str | None = None
    sample: Sample | None = Field(default=None, description="The sample, when one was formed.")
    record: Any = Field(
        default=None,
        description="The record as its file held it, for records that validation moved here.",
    )
    record_key: str | None = Field(
        default=None, description="Its key, for a record of a JSON object (mmad.json)."
    )
