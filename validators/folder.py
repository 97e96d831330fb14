"""Read a built folder: which records files it holds, their records one at a time, its samples.

Memory stays independent of the record count: JSON-lines files are read a line at a time, and
JSON lists (instruct/*.json can hold 100k records) element by element. A list written the way
the build writes it (`JsonListWriter`: one record per line) is read a line at a time with
pydantic-core's JSON parser, twice as fast as the stdlib's; at the first line that is not one
whole record (a pretty-printed or hand-edited file) reading hands over, from that line on, to a
sliding buffer decoded with the stdlib's scanner. Either way a file that does not parse becomes
one schema finding naming the file, line and column.

Instruction records (the files that hold 100k of them) are read as bytes, and each line goes
straight through the record's strict shape (`RECORD_SHAPES`), which parses it once into the
plain JSON the checks read and says whether the record fits its model; no model is made, and
the text is decoded only when someone reads it.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from pydantic_core import from_json

from adinstruct.builder.errors import AdinstructError
from adinstruct.builder.images import shown_paths
from adinstruct.validators.base import (
    RECORD_SHAPES,
    Batch,
    Finding,
    FolderContext,
    RawRecord,
    SampleFacts,
    check_shape,
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

#: Fitting records of a RECORD_SHAPES kind come this many at a time with `batches=True`: enough
#: to make a call per batch cheap, few enough that a batch stays in the CPU's caches.
BATCH_RECORDS = 64
#: Read this much at a time; a record larger than MAX_RECORD_CHARS is a syntax error.
CHUNK_CHARS = 1 << 20
MAX_RECORD_CHARS = 64 << 20

Report = Callable[[Finding], None]


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
    root: Path,
    files: list[RecordsFile],
    report: Report,
    *,
    shapes_first: bool = True,
    batches: bool = False,
) -> Iterator[RawRecord | Batch]:
    """Every record of every file, in order; unreadable files and lines go to `report`.

    The lines of RECORD_SHAPES kinds are read as bytes and checked against their shape as they
    are parsed (`RawRecord.fits`); `shapes_first=False` parses every record into plain JSON
    and leaves the checking to whoever asks. With `batches`, runs of such records that fit come
    as a `Batch` of up to BATCH_RECORDS (the validation runner's hot path) rather than one by
    one.
    """
    for records_file in files:
        path = root / records_file.path
        try:
            if shapes_first and records_file.kind in RECORD_SHAPES and records_file.layout in (
                "list", "jsonl",
            ):  # fmt: skip
                with path.open("rb") as binary:
                    read = (
                        _shaped_jsonl_records(binary, records_file, report)
                        if records_file.layout == "jsonl"
                        else _shaped_list_records(binary, records_file)
                    )
                    for item in read:
                        if batches or type(item) is RawRecord:
                            yield item
                        else:
                            yield from item.raws()
            else:
                with path.open(encoding="utf-8", newline="") as handle:
                    yield from _records_of(handle, records_file, report)
        except UnicodeDecodeError as error:
            report(parse_finding(records_file.path, f"is not UTF-8 text ({error.reason} at byte "
                                 f"{error.start})"))  # fmt: skip
        except JsonSyntaxError as error:
            report(parse_finding(records_file.path, f"is not valid JSON: {error.message} at "
                                 f"line {error.line} column {error.column}"))  # fmt: skip
        except WrongRootError as error:
            report(wrong_root_finding(records_file, error))
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


def wrong_root_finding(records_file: RecordsFile, error: WrongRootError) -> Finding:
    expected = "an object" if records_file.layout == "object" else "a list"
    return Finding(
        validator="schema", severity="error", code="wrong_root_type", file=records_file.path,
        message=f"{records_file.path} must hold {expected} of "
        f"{records_file.kind.replace('_', ' ')}s, found {error.found}",
    )  # fmt: skip


def json_object(line: str) -> Any:
    """A line's one JSON object, or None when it holds something else (the scanner decides)."""
    try:
        value = from_json(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _records_of(handle: IO[str], records_file: RecordsFile, report: Report) -> Iterator[RawRecord]:
    file, kind = records_file.path, records_file.kind
    if records_file.layout == "jsonl":
        yield from _jsonl_records(handle, file, kind, report)
        return
    stream = JsonStream(handle)
    if records_file.layout == "document":
        value, text = stream.document()
        yield RawRecord(kind=kind, file=file, index=0, data=value, text=text)
    elif records_file.layout == "list":
        for index, (value, text) in enumerate(list_items(handle)):
            yield RawRecord(kind, file, index, value, text)
    else:
        for index, (key, value, text) in enumerate(stream.object_items()):
            yield RawRecord(kind=kind, file=file, index=index, data=value, text=text, key=key)


def _jsonl_records(handle: IO[str], file: str, kind: str, report: Report) -> Iterator[RawRecord]:
    index = 0
    for number, line in enumerate(handle, 1):
        text = line.strip()
        if not text:
            continue
        value = _parse_line(text, file, number, report)
        if value is not _UNREADABLE:
            yield RawRecord(kind, file, index, value, text, line=number)
            index += 1


_UNREADABLE: Any = object()


def _parse_line(text: str, file: str, number: int, report: Report) -> Any:
    """A JSON-lines line's value, or _UNREADABLE once `report` has the stdlib's reason."""
    try:
        return from_json(text)
    except ValueError:
        try:  # the stdlib's message and column, which people know
            return json.loads(text)
        except json.JSONDecodeError as error:
            report(parse_finding(file, f"line {number} is not valid JSON: {error.msg} at column "
                                 f"{error.colno}"))  # fmt: skip
            return _UNREADABLE


class _Batcher:
    """Collects the fitting records of a file into Batches, in file order: the reader appends
    to `batch` and `take`s it when it is full or a record that does not fit comes."""

    def __init__(self, records_file: RecordsFile) -> None:
        self.kind, self.file = records_file.kind, records_file.path
        self.jsonl = records_file.layout == "jsonl"
        self.batch = self.new(0)

    def new(self, first_index: int) -> Batch:
        return Batch(self.kind, self.file, first_index, lines=[] if self.jsonl else None)

    def take(self, next_index: int) -> list[Batch]:
        """The batch so far (none if empty), a new one starting at record `next_index`."""
        batch, self.batch = self.batch, self.new(next_index)
        return [batch] if batch.records else []


def _shaped_jsonl_records(
    binary: IO[bytes], records_file: RecordsFile, report: Report
) -> Iterator[RawRecord | Batch]:
    """A JSON-lines file of a RECORD_SHAPES kind: each line parsed once, through its shape."""
    file, kind = records_file.path, records_file.kind
    batcher = _Batcher(records_file)
    index = number = 0
    while lines := binary.readlines(CHUNK_CHARS):
        for line in lines:
            number += 1
            text = line.strip()
            if not text:
                continue
            shaped = check_shape(kind, text)
            if shaped is None:  # not one JSON value, or not UTF-8 (which raises, as text would)
                yield from batcher.take(index)
                value = _parse_line(text.decode("utf-8"), file, number, report)
                if value is _UNREADABLE:
                    continue
                shaped = (value, False)  # JSON after all (pydantic's parser is the stricter)
            data, fits = shaped
            batch = batcher.batch
            if fits:
                batch.records.append(data)
                batch.texts.append(text)
                batch.lines.append(number)  # type: ignore[union-attr]
                if len(batch.records) == BATCH_RECORDS:
                    yield from batcher.take(index + 1)
            else:
                yield from batcher.take(index + 1)
                yield RawRecord.checked(kind, file, index, data, False, text, number)
            index += 1
    yield from batcher.take(index)


def _shaped_list_records(
    binary: IO[bytes], records_file: RecordsFile
) -> Iterator[RawRecord | Batch]:
    """A JSON list of a RECORD_SHAPES kind, a line at a time while each line holds one whole
    record (as the build writes them), through its shape; from the first line that does not,
    the stdlib's scanner reads on (`_resume_list`).

    This loop runs once a record for 100k records: fitting records go straight into the
    current batch.
    """
    file, kind = records_file.path, records_file.kind
    first = binary.readline()
    if first.strip() != b"[":
        yield from _resume_list(binary, 0, 1, "open", records_file, 0)
        return
    batcher = _Batcher(records_file)
    records, texts = batcher.batch.records, batcher.batch.texts
    index = 0
    state = "first"  # "first" after '[', "element" after ',', "after" after a record
    # Where the current chunk of lines starts (byte offset, lines before it): a line's own
    # position is worked out only when the scanner must take over from it.
    chunk_offset, lines_before, last = len(first), 1, first
    while lines := binary.readlines(CHUNK_CHARS):
        for position, line in enumerate(lines):
            body = line.strip()
            if not body:
                continue
            record = body[:-1] if body.endswith(b",") else body
            shaped = (
                check_shape(kind, record) if state != "after" and record.startswith(b"{") else None
            )
            if shaped is None:  # the closing bracket, or a line the scanner must read
                yield from batcher.take(index)
                offset = chunk_offset + sum(map(len, lines[:position]))
                number = lines_before + position + 1
                if body == b"]" and state != "element":
                    JsonStream(_text_from(binary, offset + len(line)), line=number + 1).expect_end()
                else:
                    yield from _resume_list(binary, offset, number, state, records_file, index)
                return
            data, fits = shaped
            if fits:
                records.append(data)
                texts.append(record)
                if len(records) == BATCH_RECORDS:
                    yield from batcher.take(index + 1)
                    records, texts = batcher.batch.records, batcher.batch.texts
            else:
                yield from batcher.take(index + 1)
                records, texts = batcher.batch.records, batcher.batch.texts
                yield RawRecord.checked(kind, file, index, data, False, record)
            index += 1
            state = "element" if record is not body else "after"
        chunk_offset += sum(map(len, lines))
        lines_before += len(lines)
        last = lines[-1]
    yield from batcher.take(index)
    # At the end of the file, where json.loads reports it too.
    number = lines_before
    end = (number + 1, 1) if last.endswith(b"\n") else (number, len(last.decode("utf-8")) + 1)
    raise JsonSyntaxError("Unexpected end of file, the list is not closed", *end)


def _text_from(binary: IO[bytes], offset: int) -> IO[str]:
    """The file as text from byte `offset` (the start of a line) on."""
    binary.seek(offset)
    return io.TextIOWrapper(binary, encoding="utf-8", newline="")


def _resume_list(
    binary: IO[bytes], offset: int, number: int, state: str, records_file: RecordsFile,
    index: int,
) -> Iterator[RawRecord]:  # fmt: skip
    """The list's elements from the line at byte `offset` (line `number`) on, through the
    stdlib's scanner; `state` says where in the list that line starts."""
    stream = JsonStream(_text_from(binary, offset), line=number)
    for value, text in stream.list_items(state):
        yield RawRecord(records_file.kind, records_file.path, index, value, text)
        index += 1


def list_items(handle: IO[str]) -> Iterator[tuple[Any, str]]:
    """The elements of a JSON list, with their text: a line at a time while each line holds one
    whole record (as the build writes them), through `JsonStream` from the first that does not."""
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
            value = json_object(record)
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
        annotation = data.get("annotation") or {}
        facts = SampleFacts(
            sample_id=data["id"],
            source=data["source"],
            category=data["category"],
            split=data["split"],
            label=data["label"],
            defect_types=tuple(data.get("defect_types") or ()),
            # A mask file, or a mask the annotate stage drew (Real3D-AD's labelled points
            # seen on a view): either way the annotation's cells and regions are the truth.
            has_mask=bool(data.get("masks")) or annotation.get("mask_rle") is not None,
            grid_cells=tuple(annotation.get("grid_cells") or ()),
            region_count=int(annotation.get("region_count") or 0),
            image=sample_images(data)[0],
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    if not all(isinstance(value, str) for value in (facts.sample_id, facts.source, facts.category)):
        return None
    return facts


def sample_images(data: dict[str, Any]) -> list[str]:
    """What the records of a samples.jsonl entry show, relative to DIR/images, in order: its
    image, or for a 3D sample what the annotate stage drew (never the point cloud)."""
    return shown_paths(
        data["source"], data["image_paths"], data.get("render_paths") or (),
        data.get("modality", "rgb"), data.get("view_count", 1),
    )  # fmt: skip


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
