"""Validation at the end of every build: records with error findings move to quarantine.jsonl.

The built folder is validated as `build-dataset validate` would; then every record that an
error-level finding names leaves its file for the quarantine, with the findings as reason:

- an instruction record or benchmark item named by a finding goes alone;
- a sample named by a finding (samples.jsonl) takes every record and item of its image along;
- a training record showing a benchmark image (or a near copy) takes every other training
  record of that image along: the leak is the image, not the one record a finding names.

Findings about a whole file or folder (no record to move) stay in the manifest's summary as
errors that remain. The files are rewritten atomically from their own record texts, so what
stays is byte for byte what the build wrote.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adinstruct.builder.images import shown_paths
from adinstruct.builder.io import atomic_writer, record_line
from adinstruct.builder.progress import Progress
from adinstruct.schemas import QuarantineEntry
from adinstruct.validators.base import Finding, RawRecord
from adinstruct.validators.folder import RecordsFile, find_records_files, iter_records
from adinstruct.validators.runner import ValidationReport, validate_folder

SAMPLES_FILE = "samples.jsonl"
#: Files whose records may move; the manifest and the quarantine itself never do.
MOVABLE_KINDS = frozenset({"sample", "instruction_record", "detection_item", "reasoning_item",
                           "mmad_item"})  # fmt: skip
LEAK_CODES = frozenset({"benchmark_image_in_training", "benchmark_near_duplicate_in_training"})


@dataclass
class GateResult:
    report: ValidationReport
    moved: list[QuarantineEntry] = field(default_factory=list)
    #: file -> records left in it, for the files that were rewritten
    remaining: dict[str, int] = field(default_factory=dict)
    errors_remaining: int = 0

    def summary(self) -> dict[str, Any]:
        summary = self.report.summary()
        summary["quarantined_records"] = len(self.moved)
        summary["errors_remaining"] = self.errors_remaining
        return summary


def record_images(data: Any, key: str | None) -> list[str]:
    """The images (relative to DIR/images) a record shows."""
    if key is not None:
        return [key]
    if not isinstance(data, dict):
        return []
    if isinstance(data.get("image_paths"), list) and isinstance(data.get("source"), str):
        # A sample: what its records show (a 3D sample's renders), by the rule records follow.
        renders = data.get("render_paths")
        return shown_paths(
            data["source"],
            [path for path in data["image_paths"] if isinstance(path, str)],
            [path for path in renders if isinstance(path, str)]
            if isinstance(renders, list)
            else [],
            str(data.get("modality", "rgb")),
            # Every image of a sample goes with it, as before: not only the first.
            view_count=len(data["image_paths"]),
        )
    image = data.get("image")
    images = image if isinstance(image, list) else [image]
    return [path for path in images if isinstance(path, str)]


class Gate:
    """Collects error findings as validation reports them, then moves the records they name."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.flagged: defaultdict[tuple[str, str], list[Finding]] = defaultdict(list)
        self.unattached = 0
        self.moved_keys: set[tuple[str, str]] = set()

    def note(self, finding: Finding) -> None:
        if finding.severity != "error":
            return
        if finding.record_id is None or not finding.file:
            self.unattached += 1
            return
        self.flagged[(finding.file, finding.record_id)].append(finding)

    def run(self, progress: Progress) -> GateResult:
        report = validate_folder(self.out, progress=progress, on_finding=self.note)
        result = GateResult(report=report)
        if self.flagged:
            files = [f for f in find_records_files(self.out) if f.kind in MOVABLE_KINDS]
            dropped_images = self.images_to_drop(files)
            for records_file in files:
                self.rewrite(records_file, dropped_images, result)
        # A flagged record that no movable file holds leaves its errors behind.
        result.errors_remaining = self.unattached + sum(
            len(findings) for key, findings in self.flagged.items() if key not in self.moved_keys
        )
        return result

    def records(self, records_file: RecordsFile) -> Iterator[RawRecord]:
        return iter_records(self.out, [records_file], lambda finding: None)

    def images_to_drop(self, files: list[RecordsFile]) -> dict[str, str]:
        """image -> why every record showing it goes: a flagged sample's, or a leaked one."""
        images: dict[str, str] = {}
        for records_file in files:
            if records_file.kind not in ("sample", "instruction_record"):
                continue
            for raw in self.records(records_file):
                findings = self.flagged.get((raw.file, raw.record_id or ""))
                if not findings:
                    continue
                if raw.kind == "sample":
                    why = f"its sample {raw.record_id} was quarantined: {findings[0].message}"
                elif any(finding.code in LEAK_CODES for finding in findings):
                    why = f"its image leaks into the benchmark: {findings[0].message}"
                else:
                    continue
                for image in record_images(raw.data, raw.key):
                    images.setdefault(image, why)
        return images

    def verdict(self, raw: RawRecord, dropped_images: dict[str, str]) -> QuarantineEntry | None:
        """The quarantine entry for a record that must go, or None when it stays."""
        key = (raw.file, raw.record_id or "")
        findings = self.flagged.get(key, [])
        if findings:
            self.moved_keys.add(key)
            code = findings[0].code
            reason = "; ".join(dict.fromkeys(finding.message for finding in findings))
        else:
            shown = [i for i in record_images(raw.data, raw.key) if i in dropped_images]
            if not shown:
                return None
            code, reason = "follows_quarantined_image", dropped_images[shown[0]]
        data = raw.data if isinstance(raw.data, dict) else {}
        metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
        images = record_images(raw.data, raw.key)
        source = data.get("source") or metadata.get("source")
        if not isinstance(source, str):
            source = images[0].split("/")[0] if images else "unknown"
        sample_id = data.get("id") if raw.kind == "sample" else metadata.get("sample_id")
        return QuarantineEntry(
            stage="validate", code=code, source=source, path=raw.file,
            sample_id=sample_id if isinstance(sample_id, str) else None,
            reason=f"{raw.where}: {reason}", record=raw.data, record_key=raw.key,
        )  # fmt: skip

    def must_go(self, raw: RawRecord, dropped_images: dict[str, str]) -> bool:
        return (raw.file, raw.record_id or "") in self.flagged or any(
            image in dropped_images for image in record_images(raw.data, raw.key)
        )

    def rewrite(
        self, records_file: RecordsFile, dropped_images: dict[str, str], result: GateResult
    ) -> None:
        """Stream the records that stay into a new file, if any record of it must go."""
        if not any(self.must_go(raw, dropped_images) for raw in self.records(records_file)):
            return
        kept = 0
        with atomic_writer(self.out / records_file.path) as handle:
            writer = RecordTextWriter(handle, records_file.layout)
            for raw in self.records(records_file):
                entry = self.verdict(raw, dropped_images)
                if entry is None:
                    writer.write(raw)
                    kept += 1
                else:
                    result.moved.append(entry)
            writer.close()
        result.remaining[records_file.path] = kept


class RecordTextWriter:
    """Writes records back from their own texts, in the layout the build writes."""

    def __init__(self, handle, layout: str) -> None:  # type: ignore[no-untyped-def]
        self.handle = handle
        self.layout = layout
        self.records = 0
        if layout == "list":
            handle.write("[")
        elif layout == "object":
            handle.write("{")

    def write(self, raw: RawRecord) -> None:
        if self.layout == "jsonl":
            self.handle.write(raw.text + "\n")
        else:
            self.handle.write(",\n" if self.records else "\n")
            if self.layout == "object":
                self.handle.write(json.dumps(raw.key, ensure_ascii=False) + ": ")
            self.handle.write(raw.text)
        self.records += 1

    def close(self) -> None:
        closing = {"list": "]", "object": "}"}.get(self.layout)
        if closing:
            self.handle.write(f"\n{closing}\n" if self.records else f"{closing}\n")


def append_quarantine(path: Path, entries: list[QuarantineEntry]) -> int:
    """Add entries to quarantine.jsonl atomically; returns its record count afterwards."""
    count = 0
    with atomic_writer(path) as handle:
        if path.is_file():
            with path.open(encoding="utf-8") as existing:
                for line in existing:
                    if line.strip():
                        handle.write(line if line.endswith("\n") else line + "\n")
                        count += 1
        for entry in entries:
            handle.write(record_line(entry))
            count += 1
    return count
