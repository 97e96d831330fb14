"""The integrity check: the files records name exist inside the folder, decode, and fit together.

Per record only strings are looked at (the model's, for a record the model accepts): each image
and mask path is checked for escapes (an absolute path or a `..` part is a finding and is never
opened) and remembered with its first referrer and a count. `finish` then touches every distinct
file once, however many records name it:

- images are opened for their size; a PNG is `verify()`-ed, which walks every chunk and checks
  its CRC without inflating the pixels (a sixth of the cost of decoding), plus a check that
  the file ends with the IEND chunk, since verify() accepts a file cut inside that last
  chunk; other formats (JPEG's verify() checks nothing) are decoded in full, and PIL raises
  for a truncated file;
- masks are always decoded in full: whether a mask is empty needs its pixels anyway.

Then: a mask's size equals its image's, an image's size equals its annotation, an anomalous
sample of a release that has masks has a non-empty one, a normal sample (or a record marked
normal) names none, each record's sample exists and shows the record's image, and the files
manifest.json lists are there with the checksum it states.

Paths are checked as written, not resolved: DIR/images may be a link to a shared image store,
which the trainer follows as well.
"""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from adinstruct.builder.io import sha256_file
from adinstruct.validators.base import Batch, Finding, FolderContext, RawRecord, Validator
from adinstruct.validators.folder import IMAGES_DIR, sample_images

MASKS_DIR = "masks"
#: The last 12 bytes of every complete PNG: IEND's zero length, type and CRC.
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
#: verify() stops at IEND; a PNG may carry a little trailing data after it.
PNG_TAIL_BYTES = 4096
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_SEPARATORS = re.compile(r"[\\/]")


def unsafe_reason(path: Any) -> str | None:
    """Why `path` may not be opened inside the folder, or None when it is a plain relative path."""
    if not isinstance(path, str) or not path.strip():
        return "is empty or not a string"
    if "\x00" in path:
        return "holds a NUL byte"
    if path.startswith(("/", "\\")) or (len(path) > 1 and path[1] == ":"):
        return "is absolute"
    if ".." in _SEPARATORS.split(path):
        return "climbs out of the folder with '..'"
    return None


class DecodeError(ValueError):
    pass


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a readable image; raises DecodeError naming what is wrong."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                size, kind = image.size, image.format
                if kind == "PNG":
                    image.verify()
                else:
                    image.load()
    except DECODE_ERRORS as error:
        raise DecodeError(str(error) or type(error).__name__) from None
    if kind == "PNG":
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - PNG_TAIL_BYTES))
            if PNG_END not in handle.read():
                raise DecodeError("it does not end with the PNG IEND chunk (truncated file?)")
    return size


def mask_facts(path: Path) -> tuple[tuple[int, int], bool]:
    """(width, height) and whether any pixel is non-zero, from a full decode."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as mask:
                mask.load()
                return mask.size, mask.getbbox() is not None
    except DECODE_ERRORS as error:
        raise DecodeError(str(error) or type(error).__name__) from None


@dataclass(slots=True)
class Reference:
    """Who first named a file, and how many references followed."""

    file: str
    record_id: str | None
    where: str
    count: int = 1

    def by(self) -> str:
        more = f" and {self.count - 1} more" if self.count > 1 else ""
        return f"named by {self.where}{more}"


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}×{size[1]}"


class IntegrityValidator(Validator):
    name = "integrity"
    raw_kinds = frozenset({
        "manifest", "sample", "instruction_record", "detection_item", "reasoning_item",
        "mmad_item",
    })  # fmt: skip

    def __init__(self) -> None:
        self.images: dict[str, Reference] = {}  # relative to DIR/images
        self.masks: dict[str, Reference] = {}  # relative to DIR
        self.pairs: dict[tuple[str, str], Reference] = {}  # (mask, image)
        self.annotated_sizes: dict[str, tuple[tuple[int, int], Reference]] = {}
        self.anomaly_masks: list[tuple[tuple[str, ...], Reference]] = []
        self.anomalies_without_mask: defaultdict[str, list[Reference]] = defaultdict(list)
        self.sources_with_masks: set[str] = set()
        self.sample_ids: set[str] = set()
        self.outputs: list[tuple[dict[str, Any], Reference]] = []
        #: (image, mask, anomaly, sample id) of instruction records that passed already: one
        #: per record shape of a sample, so it grows with the samples, not the records.
        self.clean: set[tuple[tuple[str, ...], str | None, bool, str]] = set()

    # -- per record: strings only ------------------------------------------------------

    def check_raw(self, raw: RawRecord, context: FolderContext) -> Iterable[Finding]:
        findings: list[Finding] = []
        kind = raw.kind
        if kind == "instruction_record" and raw.fits:  # every key there, with its type
            record = raw.data
            meta = record["metadata"]
            self.check_record(
                raw, record["image"], meta.get("mask"), meta["anomaly"], meta["sample_id"],
                context, findings,
            )  # fmt: skip
            return findings
        data = raw.data
        if not isinstance(data, dict):
            return ()
        if kind == "instruction_record":
            metadata = data.get("metadata")
            if isinstance(metadata, dict):
                self.check_record(
                    raw, data.get("image"), metadata.get("mask"), metadata.get("anomaly"),
                    metadata.get("sample_id"), context, findings,
                )  # fmt: skip
            else:
                self.check_record(raw, data.get("image"), None, None, None, context, findings)
        elif kind == "sample":
            self.check_sample(raw, data, findings)
        elif kind in ("detection_item", "reasoning_item"):
            self.note_images(raw, data.get("image"), findings)
        elif kind == "mmad_item":
            self.note_images(raw, raw.key, findings)
            for name in ("similar_templates", "random_templates"):
                self.note_images(raw, data.get(name), findings)
            if data.get("mask_path") is not None:
                self.note(self.masks, "mask", raw, data["mask_path"], findings)
        elif kind == "manifest":
            outputs = data.get("outputs")
            for output in outputs if isinstance(outputs, list) else ():
                if isinstance(output, dict) and isinstance(output.get("path"), str):
                    self.outputs.append((output, Reference(raw.file, None, raw.where)))
        return findings

    def check_batch(self, batch: Batch, context: FolderContext) -> Iterable[Finding]:
        """Fitting instruction records; a sample's records name the same image, mask, label and
        sample id, so after the first that passes the rest only add to the references' counts."""
        findings: list[Finding] = []
        images, masks, clean = self.images, self.masks, self.clean
        for position, record in enumerate(batch.records):
            meta = record["metadata"]
            image, mask, anomaly, sample_id = (
                record["image"], meta.get("mask"), meta["anomaly"], meta["sample_id"]
            )  # fmt: skip
            paths = (image,) if type(image) is str else tuple(image)
            key = (paths, mask, anomaly, sample_id)
            if key in clean:
                for path in paths:
                    images[path].count += 1
                if mask is not None:
                    masks[mask].count += 1
                continue
            before = len(findings)
            raw = batch.raw(position)
            self.check_record(raw, image, mask, anomaly, sample_id, context, findings)
            if len(findings) == before:
                clean.add(key)
        return findings

    def error(self, raw: RawRecord, code: str, message: str) -> Finding:
        return self.finding(
            "error", code, f"{raw.where}: {message}", file=raw.file, record_id=raw.record_id
        )

    def note(
        self, table: dict[str, Reference], what: str, raw: RawRecord, path: Any,
        findings: list[Finding],
    ) -> bool:  # fmt: skip
        """Remember a reference to `path`; False (with a finding) when it may not be opened."""
        reference = table.get(path) if isinstance(path, str) else None
        if reference is not None:
            reference.count += 1
            return True
        reason = unsafe_reason(path)
        if reason is not None:
            findings.append(self.error(
                raw, "unsafe_path", f"{what} path {path!r} {reason}; it was not opened"
            ))  # fmt: skip
            return False
        table[path] = Reference(raw.file, raw.record_id, raw.where)
        return True

    def note_images(self, raw: RawRecord, image: Any, findings: list[Finding]) -> list[str]:
        """Remember every path of `image` (a path or a list of paths); the safe ones back."""
        paths = image if isinstance(image, list) else [image] if isinstance(image, str) else []
        return [path for path in paths if self.note(self.images, "image", raw, path, findings)]

    def check_record(
        self, raw: RawRecord, image: Any, mask: Any, anomaly: Any, sample_id: Any,
        context: FolderContext, findings: list[Finding],
    ) -> None:  # fmt: skip
        """An instruction record's image, mask, label and sample (its metadata's values)."""
        reference = self.images.get(image) if type(image) is str else None
        if reference is not None:  # the common case: an image other records named already
            reference.count += 1
            shown: str | None = image
        else:
            images = self.note_images(raw, image, findings)
            shown = images[0] if images else None
        if mask is not None and self.note(self.masks, "mask", raw, mask, findings) and shown:
            self.pair(mask, shown, raw)
        if mask is not None and anomaly is False:
            findings.append(self.error(
                raw, "mask_on_normal", f"the record is marked normal but names the mask {mask!r}"
            ))  # fmt: skip
        if not context.samples or not isinstance(sample_id, str):
            return
        facts = context.samples.get(sample_id)
        if facts is None:
            findings.append(self.error(
                raw, "unknown_sample", f"sample {sample_id!r} is not in samples.jsonl"
            ))  # fmt: skip
        elif shown is not None and shown != facts.image:
            findings.append(self.error(
                raw, "image_not_of_sample",
                f"the record shows {shown!r} but its sample {sample_id!r} is the image "
                f"{facts.image!r}",
            ))  # fmt: skip

    def pair(self, mask: str, image: str, raw: RawRecord) -> None:
        key = (mask, image)
        if key not in self.pairs:
            self.pairs[key] = Reference(raw.file, raw.record_id, raw.where)

    def check_sample(self, raw: RawRecord, data: dict[str, Any], findings: list[Finding]) -> None:
        sample_id, source = data.get("id"), data.get("source")
        if isinstance(sample_id, str):
            if sample_id in self.sample_ids:
                findings.append(self.error(
                    raw, "duplicate_sample_id", f"sample id {sample_id!r} is already used above"
                ))  # fmt: skip
            self.sample_ids.add(sample_id)
        image_paths, masks = data.get("image_paths"), data.get("masks")
        if not isinstance(source, str) or not isinstance(image_paths, list):
            return  # the schema check reports it
        try:  # its picture or, for a 3D sample, its renders: never a point cloud
            shown = sample_images(data)
        except (TypeError, IndexError, AttributeError):
            shown = [f"{source}/{path}" if isinstance(path, str) else path for path in image_paths]
        images = self.note_images(raw, shown, findings)
        annotation = data.get("annotation")
        if images and isinstance(annotation, dict):
            width, height = annotation.get("width"), annotation.get("height")
            if isinstance(width, int) and isinstance(height, int):
                reference = Reference(raw.file, raw.record_id, raw.where)
                self.annotated_sizes.setdefault(images[0], ((width, height), reference))
        mask_paths = []
        for mask in masks if isinstance(masks, list) else ():
            path = mask.get("path") if isinstance(mask, dict) else None
            if not isinstance(path, str):
                continue
            relative = f"{MASKS_DIR}/{source}/{path}"
            if self.note(self.masks, "mask", raw, relative, findings):
                mask_paths.append(relative)
                if images:
                    self.pair(relative, images[0], raw)
        label = data.get("label")
        if masks:
            self.sources_with_masks.add(source)
        if label == "normal" and masks:
            findings.append(self.error(
                raw, "mask_on_normal", f"the sample is labelled normal but lists {len(masks)} "
                "mask(s)",
            ))  # fmt: skip
        elif label == "anomaly":
            reference = Reference(raw.file, raw.record_id, raw.where)
            if masks:
                if mask_paths:
                    self.anomaly_masks.append((tuple(mask_paths), reference))
            else:
                self.anomalies_without_mask[source].append(reference)

    # -- at the end: every distinct file once -------------------------------------------

    def finish(self, context: FolderContext) -> Iterable[Finding]:
        root = context.root
        findings: list[Finding] = []
        sizes = self.check_images(root / IMAGES_DIR, findings)
        mask_sizes, non_empty = self.check_masks(root, findings)
        for (mask, image), reference in self.pairs.items():
            if mask in mask_sizes and image in sizes and mask_sizes[mask] != sizes[image]:
                findings.append(self.at(
                    reference, "mask_size_mismatch",
                    f"mask {mask} is {size_text(mask_sizes[mask])} but its image "
                    f"{IMAGES_DIR}/{image} is {size_text(sizes[image])}",
                ))  # fmt: skip
        for image, (annotated, reference) in self.annotated_sizes.items():
            if image in sizes and sizes[image] != annotated:
                findings.append(self.at(
                    reference, "image_size_mismatch",
                    f"{IMAGES_DIR}/{image} is {size_text(sizes[image])} but its annotation says "
                    f"{size_text(annotated)}",
                ))  # fmt: skip
        for masks, reference in self.anomaly_masks:
            if all(mask in non_empty for mask in masks) and not any(
                non_empty[mask] for mask in masks
            ):
                findings.append(self.at(
                    reference, "empty_mask",
                    f"the anomalous sample's mask {', '.join(masks)} has no non-zero pixel",
                ))  # fmt: skip
        for source in sorted(self.sources_with_masks & set(self.anomalies_without_mask)):
            for reference in self.anomalies_without_mask[source]:
                findings.append(self.at(
                    reference, "anomaly_without_mask",
                    f"the anomalous sample has no mask, while other samples of {source} have",
                ))  # fmt: skip
        findings.extend(self.check_outputs(root))
        return findings

    def at(self, reference: Reference, code: str, message: str, severity: str = "error") -> Finding:
        return self.finding(
            severity, code, f"{message} ({reference.by()})",  # type: ignore[arg-type]
            file=reference.file, record_id=reference.record_id,
        )  # fmt: skip

    def check_images(self, base: Path, findings: list[Finding]) -> dict[str, tuple[int, int]]:
        sizes = {}
        for path, reference in self.images.items():
            full = base / path
            if not full.is_file():
                findings.append(self.at(
                    reference, "missing_image", f"{IMAGES_DIR}/{path} does not exist"
                ))  # fmt: skip
                continue
            try:
                sizes[path] = image_size(full)
            except DecodeError as error:
                findings.append(self.at(
                    reference, "undecodable_image", f"{IMAGES_DIR}/{path} does not decode: {error}"
                ))  # fmt: skip
        return sizes

    def check_masks(
        self, root: Path, findings: list[Finding]
    ) -> tuple[dict[str, tuple[int, int]], dict[str, bool]]:
        sizes, non_empty = {}, {}
        for path, reference in self.masks.items():
            full = root / path
            if not full.is_file():
                findings.append(self.at(reference, "missing_mask", f"{path} does not exist"))
                continue
            try:
                sizes[path], non_empty[path] = mask_facts(full)
            except DecodeError as error:
                findings.append(self.at(
                    reference, "undecodable_mask", f"{path} does not decode: {error}"
                ))  # fmt: skip
        return sizes, non_empty

    def check_outputs(self, root: Path) -> list[Finding]:
        """The files manifest.json lists exist, with the size and sha256 it states."""
        findings = []
        for output, reference in self.outputs:
            path = output["path"]
            reason = unsafe_reason(path)
            if reason is not None:
                findings.append(self.at(
                    reference, "unsafe_path", f"output path {path!r} {reason}; it was not opened"
                ))  # fmt: skip
                continue
            full = root / path
            if not full.is_file():
                findings.append(self.at(
                    reference, "output_missing", f"{path} is listed in the manifest but missing"
                ))  # fmt: skip
                continue
            size = full.stat().st_size
            if size != output.get("bytes"):
                change = f"is {size} bytes, the manifest says {output.get('bytes')}"
            elif sha256_file(full) != output.get("sha256"):
                change = "has another sha256 than the manifest states"
            else:
                continue
            findings.append(self.at(
                reference, "output_changed", f"{path} {change}: edited after the build?",
                severity="warning",
            ))  # fmt: skip
        return findings
