"""The validator contract: a base class owns the loop; each check fills in one hook.

A validator looks at the records of a built folder and returns findings. Per-record checks
implement `check(record, file, context)` (instruction records the model accepts) or
`check_raw(raw, context)` (every record of every records file, as parsed JSON, whether the
model accepts it or not); checks across records (leakage, balance, repeated boilerplate) keep
small running state and report in `finish(context)`. Reading, counting, the summary and the
exit status live in the runner, once.
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import from_json

from adinstruct.schemas import (
    DetectionItem,
    InstructionRecord,
    Manifest,
    MMADItem,
    QuarantineEntry,
    ReasoningItem,
    Sample,
)

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


#: Record kind -> the model its records must satisfy. A kind names what one record is: a line
#: of samples.jsonl is a "sample", an entry of an instruct/*.json list an "instruction_record",
#: one value of benchmark/mmad.json an "mmad_item", the whole manifest.json a "manifest".
RECORD_MODELS: dict[str, type[BaseModel]] = {
    "manifest": Manifest,
    "sample": Sample,
    "quarantine_entry": QuarantineEntry,
    "instruction_record": InstructionRecord,
    "detection_item": DetectionItem,
    "reasoning_item": ReasoningItem,
    "mmad_item": MMADItem,
}

_UNSET: Any = object()
#: `RawRecord(data=UNPARSED)`: parse the text when a check first asks for the data.
UNPARSED: Any = _UNSET


#: How records meet their models: strictly (no "1" for 1, no "true" for true) and by alias only
#: ("from", never "speaker"), so that a model accepts nothing the exported JSON Schema rejects.
STRICTLY: dict[str, Any] = {"strict": True, "by_alias": True, "by_name": False}


def validate_strictly(kind: str, text: str) -> tuple[BaseModel | None, ValidationError | None]:
    """The record's JSON text through its model: the model, or None and why it was rejected."""
    try:
        validator = RECORD_MODELS[kind].__pydantic_validator__
        return validator.validate_json(text, **STRICTLY), None
    except ValidationError as error:
        return None, error


class RawRecord:
    """One record as it stands in its file: its JSON text, not yet trusted to fit its model.

    Both the parsed JSON (`data`) and the model are made on first use, and only once: most
    instruction records pass their checks from the model alone, so their JSON is never also
    parsed into plain dicts (a second parse would cost a fifth of the validate budget). A
    reader that parsed the text already passes `data`, or the model it validated.
    """

    __slots__ = ("_data", "_model", "_model_error", "file", "index", "key", "kind", "line", "text")

    def __init__(
        self,
        kind: str,  # a key of RECORD_MODELS
        file: str,  # relative to the folder, POSIX
        index: int,  # 0-based position among the file's records
        data: Any = UNPARSED,  # the parsed JSON value (usually a dict; a hand-edited file
        # may hold anything), or UNPARSED to parse `text` when a check first asks
        text: str = "",  # its JSON text as written in the file
        line: int | None = None,  # 1-based line, for JSON-lines files
        key: str | None = None,  # its key, for records that are values of a JSON object
        model: Any = _UNSET,  # the validated model (None: rejected, see model_error)
        model_error: ValidationError | None = None,
    ) -> None:
        self.kind, self.file, self.index, self.text = kind, file, index, text
        self.line, self.key = line, key
        self._data, self._model, self._model_error = data, model, model_error

    @property
    def data(self) -> Any:
        """The parsed JSON value of the record."""
        if self._data is _UNSET:
            self._data = from_json(self.text)
        return self._data

    @property
    def record_id(self) -> str | None:
        """The id a person would search for: `id`, else the key, sample id or image path."""
        if self.key is not None:
            return self.key
        model = self._model
        if model is not _UNSET and model is not None and self.kind == "instruction_record":
            return model.id  # type: ignore[no-any-return]  # what data["id"] holds
        data = self.data
        if not isinstance(data, dict):
            return None
        for name in ("id", "sample_id", "image", "path"):
            value = data.get(name)
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, str):
                return value
        return None

    @property
    def where(self) -> str:
        """'samples.jsonl line 3', 'instruct/anomaly_instruct.json record 5' (1-based)."""
        if self.line is not None:
            return f"{self.file} line {self.line}"
        if self.key is not None:
            return f"{self.file} key {self.key!r}"
        return f"{self.file} record {self.index + 1}"

    def model(self) -> BaseModel | None:
        """The record as its model, or None when the model rejects it (see `model_error`);
        validated once (`validate_strictly`), however many validators ask."""
        if self._model is _UNSET:
            self._model, self._model_error = validate_strictly(self.kind, self.text)
        return self._model

    @property
    def model_error(self) -> ValidationError | None:
        self.model()
        return self._model_error

    def __repr__(self) -> str:
        return f"RawRecord({self.kind}, {self.where})"


@dataclass
class FolderContext:
    """The built folder being validated, and the sample facts records are checked against."""

    root: Path
    samples: dict[str, SampleFacts] = field(default_factory=dict)
    #: Defect names each (source, category) has in the release, for the grounding check.
    defect_names: dict[tuple[str, str], set[str]] = field(default_factory=dict)


class Validator(ABC):
    """Fill in `check`, `check_raw`, `finish` or any of them; the runner calls them."""

    name: str
    #: Record kinds `check_raw` is called for (keys of RECORD_MODELS).
    raw_kinds: ClassVar[frozenset[str]] = frozenset()

    def check_raw(self, raw: RawRecord, context: FolderContext) -> Iterable[Finding]:
        """Findings for one record of a kind in `raw_kinds`, whether its model accepts it or not.

        Files are read in this order: manifest.json, samples.jsonl (so `context.samples` is
        complete before any other file), quarantine.jsonl, instruct/, benchmark/.
        """
        return ()

    def check(
        self, record: InstructionRecord, file: str, context: FolderContext
    ) -> Iterable[Finding]:
        """Findings for one instruction record of `file` (relative to the folder).

        Called only for records that the model accepts; the others get schema findings.
        """
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
