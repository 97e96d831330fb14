"""Exports of a built folder: LLaVA, Hugging Face datasets, and a push to the Hub.

What every export shares lives here: the summary an export returns, and `BuiltFolder`, which
reads a built folder's records one at a time (with the validators' own reader, so an export
accepts exactly what `build-dataset validate` accepts) and resolves every file a record names
without leaving the folder: images under DIR/images, masks under DIR/masks. The demo's
`source/` trees and anything outside the folder are never opened.

An export checks every record and every file it names before it writes anything, so a bad
record stops it with one message naming the record, and the target is left as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from adinstruct.builder.errors import AdinstructError, PathEscapeError
from adinstruct.builder.images import IMAGES_DIR, MASKS_DIR, mask_reference, shown_images
from adinstruct.builder.paths import resolve_inside
from adinstruct.schemas import (
    DetectionItem,
    InstructionRecord,
    Manifest,
    MMADItem,
    ReasoningItem,
    Sample,
)
from adinstruct.schemas.records import Record
from adinstruct.validators.base import Finding, RawRecord
from adinstruct.validators.folder import (
    MANIFEST_FILE,
    RecordsFile,
    find_records_files,
    iter_records,
)

__all__ = ["BuiltFolder", "ExportError", "ExportSummary", "NamedFiles", "WrittenFile"]


class ExportError(AdinstructError):
    """A folder that cannot be exported as it is; the message names the file and the record."""


class WrittenFile(Record):
    path: str = Field(description="Relative to the export folder, POSIX.")
    records: int | None = Field(default=None, description="Rows or records; None for a card.")
    bytes: int = Field(ge=0)


class ExportSummary(Record):
    """What an export wrote, for the command line to print and a push to check."""

    format: Literal["llava", "hf"]
    source: str = Field(description="The built folder that was exported (absolute).")
    folder: str = Field(description="The folder the export wrote (absolute).")
    files: list[WrittenFile] = Field(default_factory=list)
    images: int = Field(
        default=0, description="llava: image files placed; hf: images embedded (one per view)."
    )
    masks: int = Field(default=0, description="Mask files placed, or masks embedded.")
    bytes: int = Field(default=0, description="Total size of the files written and placed.")


@dataclass
class NamedFiles:
    """The files one record names: its own image(s) in view order, its masks, and (MMAD) the
    normal images offered as few-shot templates. Images are relative to DIR/images, masks to
    DIR (`masks/...`), as the records write them."""

    images: list[str]
    masks: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)


def named_files(model: BaseModel, key: str | None = None) -> NamedFiles:
    """What a record of any exported kind points at; `key` is an MMAD record's key."""
    if isinstance(model, InstructionRecord):
        images = [model.image] if isinstance(model.image, str) else list(model.image)
        mask = model.metadata.mask
        return NamedFiles(images, [mask] if mask is not None else [])
    if isinstance(model, DetectionItem):
        return NamedFiles([model.image])
    if isinstance(model, ReasoningItem):
        return NamedFiles([model.image] if isinstance(model.image, str) else list(model.image))
    if isinstance(model, MMADItem):
        assert key is not None, "an MMAD record is named by its key"
        masks = [model.mask_path] if model.mask_path is not None else []
        return NamedFiles([key], masks, [*model.similar_templates, *model.random_templates])
    if isinstance(model, Sample):
        images = shown_images(model)  # a 3D sample's renders, never its cloud
        masks = [mask_reference(model, index) for index in range(len(model.masks))]
        return NamedFiles(images, masks)
    raise TypeError(f"no export for records of type {type(model).__name__}")


def describe(raw: RawRecord) -> str:
    """'instruct/anomaly_instruct.json record 3 (id 'demo/...')': where a person finds it."""
    record_id = raw.record_id
    return f"{raw.where} ({record_id!r})" if record_id is not None else raw.where


class BuiltFolder:
    """A built folder opened for export: its records files, and the files its records name."""

    def __init__(self, folder: Path) -> None:
        self.root = folder.resolve()
        if not self.root.is_dir():
            raise ExportError(f"{folder} is not a folder: give the output folder of a build")
        self.files = find_records_files(self.root)
        # An images/ or masks/ folder that is a link to elsewhere would let reads leave the folder.
        self.images_root = self._inside(IMAGES_DIR)
        self.masks_root = self._inside(MASKS_DIR)
        # Every file resolved once: records share images (two or three records per sample),
        # and resolving walks each path component. Distinct files only, never records.
        self._resolved: dict[tuple[Path, str], Path] = {}

    def _inside(self, relative: str) -> Path:
        try:
            return resolve_inside(self.root, relative)
        except PathEscapeError as error:
            raise ExportError(f"{self.root}/{relative} leads outside the folder: {error}") from None

    def records_files(self, *kinds: str) -> list[RecordsFile]:
        """The folder's files of these record kinds, in the validators' reading order."""
        return [records_file for records_file in self.files if records_file.kind in kinds]

    def manifest(self) -> Manifest:
        path = self._inside(MANIFEST_FILE)
        if not path.is_file():
            raise ExportError(f"{self.root} has no {MANIFEST_FILE}: is it the output of a build?")
        try:
            return Manifest.model_validate_json(path.read_bytes())
        except ValidationError as error:
            raise ExportError(f"{path} is not a valid manifest: {first_error(error)}") from None

    def records(self, records_file: RecordsFile) -> Iterator[tuple[RawRecord, BaseModel]]:
        """Each record of the file with its model, strictly validated; ExportError at the first
        record that is not valid JSON or does not fit its schema."""
        self._inside(records_file.path)  # a records file linked from elsewhere is refused too

        def refuse(finding: Finding) -> None:
            raise ExportError(f"{finding.message}; nothing was exported")

        for raw in iter_records(self.root, [records_file], refuse):
            model = raw.model()
            if model is None:
                assert raw.model_error is not None
                raise ExportError(
                    f"{describe(raw)} does not fit its schema: {first_error(raw.model_error)}; "
                    f"`build-dataset validate {self.root}` lists every problem"
                )
            yield raw, model

    def image(self, reference: str, raw: RawRecord) -> Path:
        """The file of an image reference (relative to DIR/images), checked to exist."""
        return self._file(self.images_root, reference, reference, "image", raw)

    def mask(self, reference: str, raw: RawRecord) -> Path:
        """The file of a mask reference (`masks/...`, relative to DIR), checked to exist."""
        prefix = f"{MASKS_DIR}/"
        if not reference.startswith(prefix):
            raise ExportError(
                f"{describe(raw)}: mask {reference!r} does not start with {prefix!r}; masks live "
                f"under {self.masks_root}"
            )
        return self._file(self.masks_root, reference.removeprefix(prefix), reference, "mask", raw)

    def _file(self, root: Path, relative: str, reference: str, what: str, raw: RawRecord) -> Path:
        known = self._resolved.get((root, relative))
        if known is not None:
            return known
        try:
            path = resolve_inside(root, relative)
        except PathEscapeError:
            raise ExportError(
                f"{describe(raw)}: {what} {reference!r} is not inside {root}; an export never "
                "reads outside the folder, so nothing was exported"
            ) from None
        if not path.is_file():
            raise ExportError(f"{describe(raw)}: {what} {reference!r} is missing ({path})")
        self._resolved[(root, relative)] = path
        return path

    def read(self, path: Path, raw: RawRecord) -> bytes:
        """A resolved file's bytes; a file gone since it was resolved is named with its record."""
        try:
            return path.read_bytes()
        except OSError as error:
            raise ExportError(f"{describe(raw)}: {path} cannot be read: {error}") from None


def first_error(error: ValidationError) -> str:
    details = error.errors(include_url=False)[0]
    where = ".".join(str(part) for part in details["loc"]) or "the record"
    return f"{where}: {details['msg']}"


def prepare_target(folder: BuiltFolder, to: Path) -> Path:
    """The export folder, created; refused where writing it would overwrite the built folder."""
    target = to.resolve()
    if target == folder.root or folder.root.is_relative_to(target):
        raise ExportError(
            f"cannot export {folder.root} into {target}: the export folder must not be the "
            "built folder or hold it"
        )
    if target.exists() and not target.is_dir():
        raise ExportError(f"{target} exists and is not a folder")
    target.mkdir(parents=True, exist_ok=True)
    return target
