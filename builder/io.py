"""Atomic file writes and checksums: a crash never leaves half a file under its final name."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel

from adinstruct.schemas import Sample


def _file_mode() -> int:
    """What open() would give a new file: 0o666 less the umask (read once, at import)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


#: mkstemp creates files 0600; outputs are shared (a cluster's trainers read them), so they get
#: the mode any ordinarily written file would have.
FILE_MODE = _file_mode()


@contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    os.fchmod(descriptor, FILE_MODE)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(descriptor, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: Any) -> None:
    with atomic_writer(path) as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False, sort_keys=False)
        handle.write("\n")


def record_line(record: BaseModel) -> str:
    """One JSONL line; defaults are kept so that every line has the same keys."""
    return record.model_dump_json(by_alias=True) + "\n"


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


class JsonListWriter:
    """Streams records into a JSON list (LLaVA's loaders read a list, not JSON lines)."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle
        self.records = 0
        handle.write("[")

    def write(self, record: BaseModel) -> None:
        self.handle.write(",\n" if self.records else "\n")
        self.handle.write(record.model_dump_json(by_alias=True, exclude_none=False))
        self.records += 1

    def close(self) -> None:
        self.handle.write("\n]\n" if self.records else "]\n")


class JsonObjectWriter:
    """Streams `key: record` pairs into a JSON object, one a line (mmad.json is keyed by image)."""

    def __init__(self, handle: IO[str]) -> None:
        self.handle = handle
        self.records = 0
        self.keys: set[str] = set()
        handle.write("{")

    def write(self, key: str, record: BaseModel) -> None:
        if key in self.keys:
            raise ValueError(f"key {key!r} is written twice; a JSON object keeps only one")
        self.keys.add(key)
        self.handle.write(",\n" if self.records else "\n")
        self.handle.write(json.dumps(key, ensure_ascii=False))
        self.handle.write(": ")
        self.handle.write(record.model_dump_json(by_alias=True, exclude_none=False))
        self.records += 1

    def close(self) -> None:
        self.handle.write("\n}\n" if self.records else "}\n")


def read_samples(path: Path) -> Iterator[Sample]:
    """The samples of a JSON-lines file, one at a time."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            yield Sample.model_validate_json(line)


def replace_directory(staging: Path, target: Path) -> None:
    """Put `staging` at `target`, removing what was there (a link is removed, not followed)."""
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        target.rename(retired / target.name)
        shutil.rmtree(retired)
    staging.rename(target)
