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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError
from pydantic_core import SchemaValidator, from_json

from adinstruct.schemas import (
    DetectionItem,
    InstructionRecord,
    Manifest,
    MMADItem,
    QuarantineEntry,
    ReasoningItem,
    Sample,
)
from adinstruct.schemas.instruct import InstructionRecordJSON

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

#: Kinds whose records are checked as plain JSON against a strict shape (the `*JSON` TypedDicts
#: beside their models) instead of being made into models: the kinds a folder holds 100k of.
#: A record fits when its shape accepts it and its turns alternate from a human one, which is
#: what its model accepts (the one rule the model states in code, `alternates`).
RECORD_SHAPES: dict[str, SchemaValidator] = {
    "instruction_record": TypeAdapter(InstructionRecordJSON).validator,
}


def alternates(turns: list[dict[str, Any]]) -> bool:
    """Turns of a shape-checked record in the model's order: human first, then alternating, an
    even count (the shape asks for at least 2)."""
    if len(turns) == 2:  # most records: a question and its answer, without the loop
        return turns[0]["from"] == "human" and turns[1]["from"] == "gpt"
    if len(turns) % 2:
        return False
    for index in range(0, len(turns), 2):
        if turns[index]["from"] != "human" or turns[index + 1]["from"] != "gpt":
            return False
    return True


def validate_strictly(kind: str, text: str) -> tuple[BaseModel | None, ValidationError | None]:
    """The record's JSON text through its model: the model, or None and why it was rejected."""
    try:
        validator = RECORD_MODELS[kind].__pydantic_validator__
        return validator.validate_json(text, **STRICTLY), None
    except ValidationError as error:
        return None, error


def check_shape(kind: str, text: str | bytes) -> tuple[Any, bool] | None:
    """A line of a kind of RECORD_SHAPES through its shape: (its JSON as dicts, True) when it
    fits, (UNPARSED, False) when it is JSON that does not fit, None when it is not one whole JSON
    value (the one error pydantic then reports is a syntax error)."""
    try:
        data = RECORD_SHAPES[kind].validate_json(text, strict=True)
    except ValidationError as error:
        if error.errors(include_url=False)[0]["type"] == "json_invalid":
            return None
        return UNPARSED, False
    return data, alternates(data["conversations"])


class RawRecord:
    """One record as it stands in its file: its JSON text, not yet trusted to fit its model.

    `fits` says whether its model accepts it. For the kinds of RECORD_SHAPES the reader checks
    each line against the shape as it parses it, so that a record is parsed once, into the
    plain JSON (`data`) that the checks read; the model itself is made only when asked for
    (`model()`: the export and the report). For other kinds `data` is parsed and the model made
    on first use, once. The text may be held as the bytes of the line until someone reads it.
    """

    __slots__ = (
        "_data", "_fits", "_model", "_model_error", "_text", "file", "index", "key", "kind",
        "line",
    )  # fmt: skip

    def __init__(
        self,
        kind: str,  # a key of RECORD_MODELS
        file: str,  # relative to the folder, POSIX
        index: int,  # 0-based position among the file's records
        data: Any = UNPARSED,  # the parsed JSON value (usually a dict; a hand-edited file
        # may hold anything), or UNPARSED to parse `text` when a check first asks
        text: str | bytes = "",  # its JSON text as written in the file (bytes: UTF-8)
        line: int | None = None,  # 1-based line, for JSON-lines files
        key: str | None = None,  # its key, for records that are values of a JSON object
        model: Any = _UNSET,  # the validated model (None: rejected, see model_error)
        model_error: ValidationError | None = None,
    ) -> None:
        self.kind, self.file, self.index, self._text = kind, file, index, text
        self.line, self.key = line, key
        self._data, self._model, self._model_error = data, model, model_error
        self._fits = None if model is _UNSET else model is not None

    @classmethod
    def checked(
        cls, kind: str, file: str, index: int, data: Any, fits: bool, text: str | bytes,
        line: int | None = None,
    ) -> RawRecord:  # fmt: skip
        """A record the reader checked against its shape (the hot path: no keyword handling)."""
        raw = cls.__new__(cls)
        raw.kind, raw.file, raw.index, raw._text, raw.line, raw.key = (
            kind, file, index, text, line, None
        )  # fmt: skip
        raw._data, raw._fits, raw._model, raw._model_error = data, fits, _UNSET, None
        return raw

    @property
    def text(self) -> str:
        """Its JSON text as written in the file."""
        text = self._text
        if type(text) is bytes:
            text = self._text = text.decode("utf-8")
        return text  # type: ignore[return-value]

    @property
    def data(self) -> Any:
        """The parsed JSON value of the record."""
        if self._data is _UNSET:
            self._data = from_json(self._text)
        return self._data

    @property
    def fits(self) -> bool:
        """Whether the record's model accepts it."""
        fits = self._fits
        if fits is None:
            shaped = check_shape(self.kind, self._text) if self.kind in RECORD_SHAPES else None
            if shaped is None:
                fits = self.model() is not None
            else:
                data, fits = shaped
                if self._data is _UNSET:
                    self._data = data
            self._fits = fits
        return fits

    @property
    def record_id(self) -> str | None:
        """The id a person would search for: `id`, else the key, sample id or image path."""
        if self.key is not None:
            return self.key
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
        validated once (`validate_strictly`), however many ask."""
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


@dataclass(slots=True)
class Batch:
    """Consecutive records of one file, of a RECORD_SHAPES kind, that all fit their model, as
    the reader parsed them: their JSON (what checks read) and their text; `raw(n)` makes the
    n-th a RawRecord, for a finding's `where` and id, only when one is needed."""

    kind: str
    file: str
    first_index: int  # the first record's 0-based position in the file
    records: list[InstructionRecordJSON] = field(default_factory=list)
    texts: list[str | bytes] = field(default_factory=list)
    #: 1-based line of each record, for JSON-lines files (None for a JSON list)
    lines: list[int] | None = None

    @classmethod
    def of(cls, raw: RawRecord) -> Batch:
        """A batch of one record that fits."""
        lines = None if raw.line is None else [raw.line]
        return cls(raw.kind, raw.file, raw.index, [raw.data], [raw.text], lines)

    def raw(self, position: int) -> RawRecord:
        line = self.lines[position] if self.lines is not None else None
        return RawRecord.checked(
            self.kind, self.file, self.first_index + position, self.records[position], True,
            self.texts[position], line,
        )  # fmt: skip

    def raws(self) -> Iterator[RawRecord]:
        return (self.raw(position) for position in range(len(self.records)))


class Validator(ABC):
    """Fill in `check`, `check_raw`, `check_batch`, `finish` or any of them; the runner calls
    them."""

    name: str
    #: Record kinds `check_raw` is called for (keys of RECORD_MODELS).
    raw_kinds: ClassVar[frozenset[str]] = frozenset()

    def check_raw(self, raw: RawRecord, context: FolderContext) -> Iterable[Finding]:
        """Findings for one record of a kind in `raw_kinds`, whether its model accepts it or not.

        Files are read in this order: manifest.json, samples.jsonl (so `context.samples` is
        complete before any other file), quarantine.jsonl, instruct/, benchmark/. Records of a
        RECORD_SHAPES kind that fit their model come through `check_batch` instead.
        """
        return ()

    def check(
        self, record: InstructionRecordJSON, file: str, context: FolderContext
    ) -> Iterable[Finding]:
        """Findings for one instruction record of `file` (relative to the folder), as its JSON.

        Called only for records that fit their model (`RawRecord.fits`), so every key of the
        shape is there with its type and the turns alternate from a human one; optional keys
        (`defect_types`, `mask`) may be missing. The others get schema findings.
        """
        return ()

    def check_batch(self, batch: Batch, context: FolderContext) -> Iterable[Finding]:
        """Findings for a batch of instruction records that fit their model: by default
        `check_raw` (when this validator reads instruction records raw) and `check` for each.
        Validators override it to check a hundred thousand records in a tight loop: a call per
        record and hook costs more than some of the checks."""
        findings: list[Finding] = []
        raw_too = batch.kind in self.raw_kinds
        for position, record in enumerate(batch.records):
            if raw_too:
                findings += self.check_raw(batch.raw(position), context)
            findings += self.check(record, batch.file, context)
        return findings

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
