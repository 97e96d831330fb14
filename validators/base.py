"""The validator contract: a base class owns the loop; each check fills in one hook.

A validator looks at the records of a built folder and returns findings. Per-record checks
implement `check(record, context)`; checks across records (leakage, balance, repeated
boilerplate) keep small running state and report in `finish(context)`. Counting, the summary
and the exit status live in the runner, once.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from adinstruct.schemas import InstructionRecord

Severity = Literal["error", "warning"]


class Finding(BaseModel):
    """One problem found: what, where, how bad. Errors fail `build-dataset validate`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    validator: str
    severity: Severity
    code: str
    message: str
    file: str = ""
    record_id: str | None = None


@dataclass(frozen=True)
class SampleFacts:
    """What validators need to know of one sample: compact, so 100k of them fit easily."""

    sample_id: str
    source: str
    category: str
    split: str
    label: str
    defect_types: tuple[str, ...]
    has_mask: bool
    grid_cells: tuple[str, ...]
    region_count: int
    image: str  # relative to DIR/images, as records name it


@dataclass
class FolderContext:
    """The built folder being validated, and the sample facts records are checked against."""

    root: Path
    samples: dict[str, SampleFacts] = field(default_factory=dict)
    #: Defect names each (source, category) has in the release, for the grounding check.
    defect_names: dict[tuple[str, str], set[str]] = field(default_factory=dict)


class Validator(ABC):
    """Fill in `check`, `finish` or both; the runner calls them."""

    name: str

    def check(
        self, record: InstructionRecord, file: str, context: FolderContext
    ) -> Iterable[Finding]:
        """Findings for one record of `file` (relative to the folder)."""
        return ()

    def finish(self, context: FolderContext) -> Iterable[Finding]:
        """Findings that need every record (or every file) seen first."""
        return ()

    def finding(
        self, severity: Severity, code: str, message: str, *, file: str = "",
        record_id: str | None = None,
    ) -> Finding:  # fmt: skip
        return Finding(
            validator=self.name, severity=severity, code=code, message=message, file=file,
            record_id=record_id,
        )  # fmt: skip
