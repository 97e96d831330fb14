"""`validate`: stream every records file of a built folder through the validators, and report.

One pass, in file order (manifest, samples, quarantine, instruct/, benchmark/): each record
goes to the `check_raw` of every validator that wants its kind, except the instruction records
that fit their model, which come in batches to every validator's `check_batch` (by default its
`check`, and its `check_raw` if it reads instruction records), as their JSON; then each
validator's `finish`. The reader checks each instruction record against its strict shape as it
parses it, so that a record is parsed once and no model object is made. Memory holds one batch
of records at a time plus what validators keep (the samples' facts, one entry per distinct
file); the report counts every finding but keeps at most `max_findings_per_code` of each code.
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from time import perf_counter
from typing import Any

from pydantic import BaseModel, Field

from adinstruct import __version__
from adinstruct.builder.io import write_json
from adinstruct.builder.progress import Progress
from adinstruct.validators.base import (
    RECORD_SHAPES,
    Batch,
    Finding,
    FolderContext,
    RawRecord,
    Severity,
    Validator,
)
from adinstruct.validators.folder import (
    MANIFEST_FILE,
    RecordsFile,
    add_sample,
    find_records_files,
    iter_records,
)
from adinstruct.validators.registry import get_validators

VALIDATION_FILE = "validation.json"
DEFAULT_MAX_FINDINGS_PER_CODE = 100
#: Progress is advanced in steps of this many records: a call per record would cost more
#: than some of the checks.
PROGRESS_STEP = 1024


class CodeCount(BaseModel):
    validator: str
    code: str
    severity: Severity
    count: int = Field(description="Every finding of this code.")
    kept: int = Field(description="How many of them `findings` holds.")


class ValidatorSummary(BaseModel):
    name: str
    errors: int = 0
    warnings: int = 0
    seconds: float = Field(
        default=0.0,
        description="Time in its hooks, finish included.",
    )


class FileSummary(BaseModel):
    path: str
    kind: str
    records: int


class ValidationReport(BaseModel):
    """What `validate` found in a folder; error_count > 0 fails the folder."""

    root: str
    toolkit_version: str = __version__
    validators: list[ValidatorSummary]
    files: list[FileSummary]
    records: int
    seconds: float
    error_count: int
    warning_count: int
    counts: list[CodeCount] = Field(description="Per validator, code and severity.")
    max_findings_per_code: int
    findings: list[Finding] = Field(description="At most max_findings_per_code per code.")

    @property
    def passed(self) -> bool:
        return self.error_count == 0

    @property
    def exit_status(self) -> int:
        """1 when any error-level finding remains, as `build-dataset validate` exits."""
        return 0 if self.passed else 1

    def summary_table(self) -> list[tuple[str, int, int]]:
        """(validator, errors, warnings) rows, in running order."""
        return [(entry.name, entry.errors, entry.warnings) for entry in self.validators]

    def summary(self) -> dict[str, Any]:
        """The compact form the manifest keeps: totals, per validator, per code."""
        codes: dict[str, dict[str, int]] = {}
        for entry in self.counts:
            codes.setdefault(entry.validator, {})[entry.code] = entry.count
        return {
            "error_count": self.error_count,
            "warning_count": self.warning_count,
            "records": self.records,
            "validators": {
                name: {"errors": errors, "warnings": warnings}
                for name, errors, warnings in self.summary_table()
            },
            "codes": codes,
        }

    def write(self, path: Path) -> None:
        """Write the report as JSON, atomically (validation.json in the folder, usually)."""
        write_json(path, self.model_dump(mode="json"))


class FindingCollector:
    """Counts every finding; keeps the first `cap` of each (validator, code)."""

    def __init__(self, cap: int, on_finding: Callable[[Finding], None] | None = None) -> None:
        self.cap = cap
        self.on_finding = on_finding
        self.counts: Counter[tuple[str, str, str]] = Counter()
        self.kept: list[Finding] = []

    def add(self, finding: Finding) -> None:
        key = (finding.validator, finding.code, finding.severity)
        self.counts[key] += 1
        if self.counts[key] <= self.cap:
            self.kept.append(finding)
        if self.on_finding is not None:
            self.on_finding(finding)

    def code_counts(self) -> list[CodeCount]:
        return [
            CodeCount(validator=v, code=c, severity=s, count=n, kept=min(n, self.cap))  # type: ignore[arg-type]
            for (v, c, s), n in sorted(self.counts.items())
        ]


def expected_records(root: Path, files: list[RecordsFile]) -> int | None:
    """The record total the manifest states for these files (a progress total), if it can tell."""
    try:
        manifest = json.loads((root / MANIFEST_FILE).read_text(encoding="utf-8"))
        listed = {output["path"]: int(output["records"]) for output in manifest["outputs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if any(f.path not in listed for f in files if f.path != MANIFEST_FILE):
        return None
    return sum(listed.get(f.path, 1) for f in files)


def fits_a_shape(raw: RawRecord) -> bool:
    return raw.kind in RECORD_SHAPES and raw.fits


def overrides(validator: Validator, hook: str) -> bool:
    return getattr(type(validator), hook) is not getattr(Validator, hook)


def validate_folder(
    root: Path,
    validators: list[str] | None = None,
    progress: Progress | None = None,
    *,
    max_findings_per_code: int = DEFAULT_MAX_FINDINGS_PER_CODE,
    on_finding: Callable[[Finding], None] | None = None,
) -> ValidationReport:
    """Run the named validators (all registered ones for None) over the folder at `root`.

    Raises FolderError when `root` is not a built folder and ConfigError for an unknown
    validator; everything wrong inside the folder is a finding. `on_finding` sees every
    finding, beyond the cap too (the build quarantines records by them).
    """
    started = perf_counter()
    root = Path(root)
    progress = progress or Progress()
    files = find_records_files(root)
    chosen = get_validators(validators)
    return run_validators(root, files, chosen, progress, max_findings_per_code, on_finding, started)


@contextmanager
def cyclic_collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off while records stream through. Each record parses
    into a dozen new dicts and lists, so the collector would run every few dozen records and
    walk every young object (a sixth of the whole run, measured); the records are plain JSON,
    which holds no cycle, and are freed by reference counting the moment they are checked, so
    nothing piles up meanwhile. The collector is back on (if it was) however the loop ends."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_validators(
    root: Path,
    files: list[RecordsFile],
    chosen: list[Validator],
    progress: Progress,
    max_findings_per_code: int,
    on_finding: Callable[[Finding], None] | None,
    started: float,
) -> ValidationReport:
    context = FolderContext(root=root.resolve())
    collector = FindingCollector(max_findings_per_code, on_finding)
    add = collector.add
    seconds = [0.0] * len(chosen)
    clock = perf_counter
    raw_hooks: dict[str, list[tuple[int, Any]]] = {}
    for position, validator in enumerate(chosen):
        if overrides(validator, "check_raw"):
            for kind in validator.raw_kinds:
                raw_hooks.setdefault(kind, []).append((position, validator.check_raw))
    batch_hooks = [
        (position, validator.check_batch)
        for position, validator in enumerate(chosen)
        if overrides(validator, "check_batch")
        or overrides(validator, "check")
        or (overrides(validator, "check_raw") and "instruction_record" in validator.raw_kinds)
    ]

    def check_batch(batch: Batch) -> None:
        for position, hook in batch_hooks:
            tick = clock()
            for finding in hook(batch, context):
                add(finding)
            seconds[position] += clock() - tick

    per_file: dict[str, int] = {}
    progress.start("validate", total=expected_records(root, files))
    count = advanced = 0
    file, hooks = "", ()
    # The hot loop. Records of a RECORD_SHAPES kind that fit (nearly every instruction record)
    # come from the reader in batches, and each validator checks a batch in a tight loop; the
    # rest (and every other kind) go through the per-record hooks. Every hook is timed.
    with cyclic_collector_paused():
        for item in iter_records(root, files, add, batches=bool(batch_hooks)):
            if item.file != file:
                file = item.file
                hooks = raw_hooks.get(item.kind, ())
            if type(item) is not Batch and batch_hooks and fits_a_shape(item):
                item = Batch.of(item)  # one the reader could not batch (a hand-edited list)
            if type(item) is Batch:
                per_file[file] = item.first_index + len(item.records)
                count += len(item.records)
                check_batch(item)
            else:
                raw = item
                per_file[file] = raw.index + 1
                count += 1
                if raw.kind == "sample":
                    add_sample(context, raw.data)
                for position, hook in hooks:
                    tick = clock()
                    for finding in hook(raw, context):
                        add(finding)
                    seconds[position] += clock() - tick
            if count - advanced >= PROGRESS_STEP:
                progress.advance(count - advanced)
                advanced = count
    progress.advance(count - advanced)
    progress.finish()
    progress.start("finish", total=len(chosen))
    for position, validator in enumerate(chosen):
        tick = clock()
        for finding in validator.finish(context):
            add(finding)
        seconds[position] += clock() - tick
        progress.advance(1)
    progress.finish()
    return make_report(root, files, chosen, collector, per_file, count, seconds, started)


def make_report(
    root: Path,
    files: list[RecordsFile],
    chosen: list[Validator],
    collector: FindingCollector,
    per_file: dict[str, int],
    count: int,
    seconds: list[float],
    started: float,
) -> ValidationReport:
    by_validator: dict[str, Counter[str]] = {}
    for (validator, _, severity), n in collector.counts.items():
        by_validator.setdefault(validator, Counter())[severity] += n
    names = [validator.name for validator in chosen]
    # Reading problems are schema findings even when the schema check was not asked for.
    names += sorted(set(by_validator) - set(names))
    timing = {validator.name: spent for validator, spent in zip(chosen, seconds, strict=True)}
    summaries = [
        ValidatorSummary(
            name=name,
            errors=by_validator.get(name, Counter())["error"],
            warnings=by_validator.get(name, Counter())["warning"],
            seconds=round(timing.get(name, 0.0), 4),
        )
        for name in names
    ]
    return ValidationReport(
        root=str(root),
        validators=summaries,
        files=[
            FileSummary(path=f.path, kind=f.kind, records=per_file.get(f.path, 0)) for f in files
        ],
        records=count,
        seconds=round(perf_counter() - started, 4),
        error_count=sum(entry.errors for entry in summaries),
        warning_count=sum(entry.warnings for entry in summaries),
        counts=collector.code_counts(),
        max_findings_per_code=collector.cap,
        findings=collector.kept,
    )
