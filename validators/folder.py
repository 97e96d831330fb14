"""Read a built folder: which records files it holds, their records one at a time, its samples.

Memory stays independent of the record count: JSON-lines files are read a line at a time, and
JSON lists (instruct/*.json can hold 100k records) element by element. A list written the way
the build writes it (`JsonListWriter`: one record per line) is read a line at a time with
pydantic-core's JSON parser, twice as fast as the stdlib's; at the first line that is not one
whole record (a pretty-printed or hand-edited file) reading hands over, from that line on, to a
sliding buffer decoded with the stdlib's scanner. Either way a file that does not parse becomes
one schema finding naming the file, line and column.

Instruction records (the files that hold 100k of them) are read the other way round: each line
goes straight through the model, which parses it once, and the plain JSON is made only for a
check that asks for it (`RawRecord.data`): a record the model accepts is checked from the model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from adinstruct.builder.errors import AdinstructError
from adinstruct.validators.base import (
    RECORD_MODELS,
    STRICTLY,
    UNPARSED,
    Finding,
    FolderContext,
    RawRecord,
    SampleFacts,
)

MANIFEST_FILE = "manifest.json"
SAMPLES_FILE = "samples.jsonl"
QUARANTINE_FILE = "quarantine.jsonl"
INSTRUCT_DIR = "instruct"
IMAGES_DIR = "images"

Layout = Literal["document", "jsonl", "list", "object"]
#: benchmark file -> the kind of its records and how they are laid out.
BENCHMARK_FILES: dict[str, tuple[str, Layout]] = {
    "benchmark/test_data.json": ("detection_item", "list"),
    "benchmark/visa_dr.json": ("reasoning_item", "list"),
    "benchmark/mmad.json": ("mmad_item", "object"),
}

#: Read this much at a time; a record larger than MAX_RECORD_CHARS is a syntax error.
CHUNK_CHARS = 1 << 20
MAX_RECORD_CHARS = 64 << 20

Report = Callable[[Finding], None]
#: Kinds whose lines `iter_records` reads through their model first (see the module docstring):
#: their checks read the model, and the JSON only when something is wrong.
MODEL_FIRST_KINDS = frozenset({"instruction_record"})


class FolderError(AdinstructError):
    """The folder to validate is missing or holds none of the files a build writes."""


@dataclass(frozen=True)
class RecordsFile:
    path: str  # relative to the folder, POSIX
    kind: str  # the kind of each record (a key of RECORD_MODELS)
    layout: Layout


def find_records_files(root: Path) -> list[RecordsFile]:
    """The known files of the folder, in reading order (samples before the records using them)."""
    if not root.is_dir():
        raise FolderError(f"{root} is not a folder: give the output folder of a build")
    found: list[RecordsFile] = []
    for path, kind, layout in (
        (MANIFEST_FILE, "manifest", "document"),
        (SAMPLES_FILE, "sample", "jsonl"),
        (QUARANTINE_FILE, "quarantine_entry", "jsonl"),
    ):
        if (root / path).is_file():
            found.append(RecordsFile(path, kind, layout))
    instruct = root / INSTRUCT_DIR
    if instruct.is_dir():
        for path in sorted(instruct.iterdir()):
            if path.is_file() and path.suffix in (".json", ".jsonl"):
                layout = "jsonl" if path.suffix == ".jsonl" else "list"
                found.append(
                    RecordsFile(f"{INSTRUCT_DIR}/{path.name}", "instruction_record", layout)
                )
    for path, (kind, layout) in BENCHMARK_FILES.items():
        if (root / path).is_file():
            found.append(RecordsFile(path, kind, layout))
    if not found:
        raise FolderError(
            f"{root} holds none of {MANIFEST_FILE}, {SAMPLES_FILE}, {INSTRUCT_DIR}/*.json or "
            "benchmark/*.json: is it the output folder of a build?"
        )
    return found


def iter_records(
    root: Path, files: list[RecordsFile], report: Report, *, models_first: bool = True
) -> Iterator[RawRecord]:
    """Every record of every file, in order; unreadable files and lines go to `report`.

    The records of MODEL_FIRST_KINDS are validated with their model as they are read, and
    parsed into plain JSON only when asked for; `models_first=False` parses every record.
    """
    for records_file in files:
        model_first = models_first and records_file.kind in MODEL_FIRST_KINDS
        try:
            with (root / records_file.path).open(encoding="utf-8", newline="") as handle:
                yield from _records_of(handle, records_file, report, model_first)
        except UnicodeDecodeError as error:
            report(parse_finding(records_file.path, f"is not UTF-8 text ({error.reason} at byte "
                                 f"{error.start})"))  # fmt: skip
        except OSError as error:
            report(Finding(
                validator="schema", severity="error", code="unreadable_file",
                file=records_file.path,
                message=f"{records_file.path} cannot be read: {error.strerror or error}",
            ))  # fmt: skip


def parse_finding(file: str, problem: str) -> Finding:
    return Finding(
        validator="schema", severity="error", code="invalid_json", file=file,
        message=f"{file} {problem}",
    )  # fmt: skip


#: What a line holds: its parsed JSON value, or for a kind of MODEL_FIRST_KINDS the pair
#: (model, error) that `validate_strictly` made of it (JSON never parses to a tuple); None when
#: the line is not one whole JSON value (for a list: one object), so the stdlib's reader decides.
LineReader = Callable[[str], Any]


def json_object(line: str) -> Any:
    try:
        value = from_json(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def model_reader(kind: str) -> LineReader:
    """Lines through the model of `kind`, as `validate_strictly` does: a JSON syntax error (the
    one error pydantic then reports) says the line is not one whole value; any other error is
    the model's verdict."""
    validate = partial(RECORD_MODELS[kind].__pydantic_validator__.validate_json, **STRICTLY)

    def read(line: str) -> tuple[BaseModel | None, ValidationError | None] | None:
        try:
            return validate(line), None
        except ValidationError as error:
            if error.errors(include_url=False)[0]["type"] == "json_invalid":
                return None
            return None, error

    return read


def make_record(
    kind: str, file: str, index: int, value: Any, text: str, line: int | None = None
) -> RawRecord:
    if type(value) is tuple:  # validated by a model reader; the JSON is parsed when asked for
        return RawRecord(kind, file, index, UNPARSED, text, line, None, *value)
    return RawRecord(kind, file, index, value, text, line)


def _records_of(
    handle: IO[str], records_file: RecordsFile, report: Report, model_first: bool
) -> Iterator[RawRecord]:
    file, kind = records_file.path, records_file.kind
    if records_file.layout == "jsonl":
        yield from _jsonl_records(handle, file, kind, report, model_first)
        return
    stream = JsonStream(handle)
    try:
        if records_file.layout == "document":
            value, text = stream.document()
            yield RawRecord(kind=kind, file=file, index=0, data=value, text=text)
        elif records_file.layout == "list":
            read_line = model_reader(kind) if model_first else json_object
            for index, (value, text) in enumerate(list_items(handle, read_line)):
                yield make_record(kind, file, index, value, text)
        else:
            for index, (key, value, text) in enumerate(stream.object_items()):
                yield RawRecord(kind=kind, file=file, index=index, data=value, text=text, key=key)
    except JsonSyntaxError as error:
        report(parse_finding(file, f"is not valid JSON: {error.message} at line {error.line} "
                             f"column {error.column}"))  # fmt: skip
    except WrongRootError as error:
        expected = "an object" if records_file.layout == "object" else "a list"
        report(Finding(
            validator="schema", severity="error", code="wrong_root_type", file=file,
            message=f"{file} must hold {expected} of {kind.replace('_', ' ')}s, "
            f"found {error.found}",
        ))  # fmt: skip


def _jsonl_records(
    handle: IO[str], file: str, kind: str, report: Report, model_first: bool
) -> Iterator[RawRecord]:
    read_line = model_reader(kind) if model_first else None
    index = 0
    for number, line in enumerate(handle, 1):
        text = line.strip()
        if not text:
            continue
        value = read_line(text) if read_line is not None else None
        if value is None:
            try:
                value = from_json(text)
            except ValueError:
                try:  # the stdlib's message and column, which people know
                    value = json.loads(text)
                except json.JSONDecodeError as error:
                    report(parse_finding(file, f"line {number} is not valid JSON: {error.msg} "
                                         f"at column {error.colno}"))  # fmt: skip
                    continue
        yield make_record(kind, file, index, value, text, line=number)
        index += 1


def list_items(handle: IO[str], read_line: LineReader = json_object) -> Iterator[tuple[Any, str]]:
    """The elements of a JSON list, with their text: a line at a time while each line holds one
    whole record (as the build writes them), through `JsonStream` from the first that does not.
    A line's element is what `read_line` makes of it; the scanner's are plain JSON values."""
    first = handle.readline()
    if first.strip() != "[":
        yield from JsonStream(handle, text=first).list_items()
        return
    number, state = 1, "first"  # "first" after '[', "element" after ',', "after" after a record
    last = first
    while line := handle.readline():
        number, last = number + 1, line
        body = line.strip()
        if not body:
            continue
        if body == "]" and state != "element":
            JsonStream(handle, line=number + 1).expect_end()
            return
        record = body[:-1] if body.endswith(",") else body
        if state != "after" and record.startswith("{"):
            value = read_line(record)
            if value is not None:  # else not one whole record on this line: the scanner decides
                yield value, record
                state = "element" if record is not body else "after"
                continue
        yield from JsonStream(handle, text=line, line=number).list_items(state)
        return
    # At the end of the file, where json.loads reports it too.
    end = (number + 1, 1) if last.endswith("\n") else (number, len(last) + 1)
    raise JsonSyntaxError("Unexpected end of file, the list is not closed", *end)


# --------------------------------------------------------------------------------------
# Streaming a JSON list or object, element by element
# --------------------------------------------------------------------------------------


class JsonSyntaxError(ValueError):
    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"{message} at line {line} column {column}")
        self.message, self.line, self.column = message, line, column


class WrongRootError(ValueError):
    def __init__(self, found: str) -> None:
        super().__init__(found)
        self.found = found


_LOOKAHEAD = 64
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODE = json.JSONDecoder().raw_decode
_KINDS_OF_VALUE = {"{": "an object", "[": "a list", '"': "a string"}


class JsonStream:
    """A JSON document read through a sliding buffer: one top-level element at a time.

    `text[0]` sits at (`line`, `column`) of the file, so errors report file positions however
    much of the file has been dropped already.
    """

    def __init__(
        self, handle: IO[str], chunk_chars: int = CHUNK_CHARS, *, text: str = "", line: int = 1
    ) -> None:
        """`text`: what was read of `handle` already, starting at column 1 of `line`."""
        self.handle = handle
        self.chunk_chars = chunk_chars
        self.text = text
        self.pos = 0
        self.eof = False
        self.line = line
        self.column = 0  # 0-based column of text[0]

    def compact(self) -> None:
        """Drop what lies before `pos` once it is a chunk long (only between values, so that
        no position held by a caller moves)."""
        if self.pos < self.chunk_chars:
            return
        dropped = self.text[: self.pos]
        newlines = dropped.count("\n")
        if newlines:
            self.line += newlines
            self.column = self.pos - dropped.rfind("\n") - 1
        else:
            self.column += self.pos
        self.text = self.text[self.pos :]
        self.pos = 0

    def fill(self) -> bool:
        """Read more (at least doubling what is buffered past `pos`); False at the end."""
        if self.eof:
            return False
        chunk = self.handle.read(max(self.chunk_chars, len(self.text) - self.pos))
        if not chunk:
            self.eof = True
            return False
        self.text += chunk
        return True

    def peek(self) -> str:
        """The next character that is not whitespace ('' at the end of the file)."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text) or not self.fill():
                return self.text[self.pos] if self.pos < len(self.text) else ""

    def error(self, message: str, pos: int | None = None) -> JsonSyntaxError:
        pos = self.pos if pos is None else pos
        newlines = self.text.count("\n", 0, pos)
        if newlines:
            return JsonSyntaxError(
                message, self.line + newlines, pos - self.text.rfind("\n", 0, pos)
            )
        return JsonSyntaxError(message, self.line, self.column + pos + 1)

    def value(self) -> tuple[Any, str]:
        """Decode the value at `pos`, reading on while it may be cut by the buffer's end."""
        self.peek()
        self.compact()
        while True:
            try:
                value, end = _DECODE(self.text, self.pos)
            except json.JSONDecodeError as error:
                if len(self.text) - self.pos > MAX_RECORD_CHARS or not self.fill():
                    raise self.error(error.msg, error.pos) from None
                continue
            if len(self.text) - end < _LOOKAHEAD and self.fill():
                continue  # a number cut at the buffer's end ("1" of "1e5") may go on
            text = self.text[self.pos : end]
            self.pos = end
            return value, text

    def expect_end(self) -> None:
        if self.peek():
            raise self.error("Extra data after the end of the document")

    def document(self) -> tuple[Any, str]:
        if not self.peek():
            raise self.error("Empty file, expecting a value")
        value, text = self.value()
        self.expect_end()
        return value, text

    def _open(self, bracket: str) -> bool:
        """Step past the opening bracket; False when the container is empty."""
        first = self.peek()
        if first != bracket:
            if not first:
                raise self.error("Empty file, expecting a value")
            if first in '{["':
                raise WrongRootError(_KINDS_OF_VALUE[first])
            value, _ = self.value()  # raises for text that is not JSON at all
            raise WrongRootError("null" if value is None else f"the value {value!r}")
        self.pos += 1
        return self._close_if(bracket)

    def _close_if(self, bracket: str) -> bool:
        closing = "]" if bracket == "[" else "}"
        if self.peek() == closing:
            self.pos += 1
            self.expect_end()
            return False
        return True

    def _next(self, closing: str) -> bool:
        """After an element: True when another follows, False at the closing bracket."""
        following = self.peek()
        if following == ",":
            self.pos += 1
            return True
        if following == closing:
            self.pos += 1
            self.expect_end()
            return False
        if not following:
            raise self.error(f"Unexpected end of file, expecting ',' or '{closing}'")
        raise self.error(f"Expecting ',' delimiter or '{closing}'")

    def list_items(self, state: str = "open") -> Iterator[tuple[Any, str]]:
        """Elements from `state` on: "open" before '[', "first" just after it, "element" after
        a ',', "after" after an element."""
        if state == "open" and not self._open("["):
            return
        if state == "first" and not self._close_if("["):
            return
        if state == "after" and not self._next("]"):
            return
        while True:
            yield self.value()
            if not self._next("]"):
                return

    def object_items(self) -> Iterator[tuple[str, Any, str]]:
        if not self._open("{"):
            return
        while True:
            if self.peek() != '"':
                raise self.error("Expecting property name enclosed in double quotes")
            key, _ = self.value()
            if self.peek() != ":":
                raise self.error("Expecting ':' delimiter")
            self.pos += 1
            value, text = self.value()
            yield key, value, text
            if not self._next("}"):
                return


# --------------------------------------------------------------------------------------
# The sample facts records are checked against
# --------------------------------------------------------------------------------------


def sample_facts(data: Any) -> SampleFacts | None:
    """Facts of one samples.jsonl entry, read defensively: None when its core fields are unusable
    (the schema validator reports why)."""
    if not isinstance(data, dict):
        return None
    try:
        source, image_paths = data["source"], data["image_paths"]
        annotation = data.get("annotation") or {}
        facts = SampleFacts(
            sample_id=data["id"],
            source=source,
            category=data["category"],
            split=data["split"],
            label=data["label"],
            defect_types=tuple(data.get("defect_types") or ()),
            has_mask=bool(data.get("masks")),
            grid_cells=tuple(annotation.get("grid_cells") or ()),
            region_count=int(annotation.get("region_count") or 0),
            image=f"{source}/{image_paths[0]}",
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    if not all(isinstance(value, str) for value in (facts.sample_id, facts.source, facts.category)):
        return None
    return facts


def add_sample(context: FolderContext, data: Any) -> None:
    """Record one samples.jsonl entry's facts (and its defect names) in the context."""
    facts = sample_facts(data)
    if facts is None:
        return
    context.samples[facts.sample_id] = facts
    names = context.defect_names.setdefault((facts.source, facts.category), set())
    names.update(name for name in facts.defect_types if isinstance(name, str))


def load_context(root: Path) -> FolderContext:
    """The context of a folder from its samples.jsonl alone (the runner builds it on the way)."""
    context = FolderContext(root=root.resolve())
    files = [f for f in find_records_files(root) if f.path == SAMPLES_FILE]
    for raw in iter_records(root, files, report=lambda finding: None):
        add_sample(context, raw.data)
    return context
