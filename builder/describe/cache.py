"""The SQLite cache of LLM answers, keyed by `ChatRequest.cache_key()`, and of submitted batch jobs.

What counts as completed (served from the cache, never sent again): an answer ("ok"), a
refusal ("refused"), and an error the engine stored as final, meaning that sending the same
request again cannot change the outcome: the server rejected the request itself (400, 413,
415, 422), or the model kept answering with `length`, `content_filter` or an answer that
failed validation through every retry. Every other error is stored for the record but is not
completed, so the next run sends the request again: rate limits, 5xx and timeouts that
exhausted their retries, and 401/403/404, which name a bad key, account or base URL rather
than a bad request (caching them would poison the cache until the user deleted it). A
request the failure cap stopped before it was sent is not stored at all.

Each stored answer is its own transaction in WAL mode, so a kill at any moment loses at most
the answers in flight. `synchronous=NORMAL` makes a commit survive a killed process (it is in
the WAL file); only a power cut can lose the last few commits, which then cost a re-send.
Nothing here ever sees the API key or a request's headers: rows hold answers, not requests.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from adinstruct.builder.describe.requests import ChatResult, Usage
from adinstruct.builder.errors import ConfigError
from adinstruct.builder.redact import redact_text

SCHEMA_VERSION = 1
BatchState = Literal["submitting", "submitted", "done", "failed"]
OPEN_BATCH_STATES = ("submitting", "submitted")

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    cache_key TEXT PRIMARY KEY,
    request_id TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'refused', 'error')),
    completed INTEGER NOT NULL,
    content TEXT,
    refusal TEXT,
    finish_reason TEXT,
    error TEXT,
    input_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    attempts INTEGER NOT NULL,
    stored_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_jobs (
    job_id INTEGER PRIMARY KEY AUTOINCREMENT,
    input_file_id TEXT NOT NULL,
    batch_id TEXT UNIQUE,
    state TEXT NOT NULL,
    request_count INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS batch_job_keys (
    job_id INTEGER NOT NULL REFERENCES batch_jobs (job_id),
    cache_key TEXT NOT NULL,
    PRIMARY KEY (job_id, cache_key)
);
"""

ANSWER_COLUMNS = (
    "cache_key, request_id, status, content, refusal, finish_reason, error, "
    "input_tokens, cached_input_tokens, output_tokens, cost_usd, attempts"
)


@dataclass(frozen=True)
class BatchJob:
    job_id: int
    input_file_id: str
    batch_id: str | None
    state: BatchState
    request_count: int


class AnswerCache:
    """One SQLite file; usable from several threads (one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # The engine reads from its feeder thread and writes from its event-loop thread.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA busy_timeout = 10000")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise ConfigError(
                f"LLM cache {self.path} has schema version {version}, but this adinstruct "
                f"reads version {SCHEMA_VERSION}; move the file away or use another cache path"
            )
        with self._lock:
            self._db.executescript(
                f"BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- answers ---------------------------------------------------------------------

    def get(self, key: str) -> ChatResult | None:
        """The completed answer for `key`, marked `from_cache`; None if it must be sent."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {ANSWER_COLUMNS} FROM answers WHERE cache_key = ? AND completed = 1",
                (key,),
            ).fetchone()
        return _result_of(row) if row else None

    def get_many(self, keys: Iterable[str]) -> dict[str, ChatResult]:
        """The completed answers among `keys`, in one query (a full-cache rerun reads many)."""
        keys = list(keys)
        if not keys:
            return {}
        marks = ", ".join("?" * len(keys))
        with self._lock:
            rows = self._db.execute(
                f"SELECT {ANSWER_COLUMNS} FROM answers WHERE completed = 1 "
                f"AND cache_key IN ({marks})",
                keys,
            ).fetchall()
        return {row[0]: _result_of(row) for row in rows}

    def last_outcome(self, key: str) -> ChatResult | None:
        """Whatever is stored for `key`, completed or not (an error the next run re-sends)."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {ANSWER_COLUMNS} FROM answers WHERE cache_key = ?", (key,)
            ).fetchone()
        return _result_of(row) if row else None

    def contains(self, key: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM answers WHERE cache_key = ? AND completed = 1", (key,)
            ).fetchone()
        return row is not None

    def put(self, result: ChatResult, *, model: str, final: bool = False) -> None:
        """Store one outcome in its own transaction.

        `final` says whether an error is completed (see the module docstring); answers and
        refusals always are. A completed row is never replaced by one that is not.
        """
        completed = result.status != "error" or bool(final)
        row = (
            result.cache_key, result.request_id, model, result.status, int(completed),
            result.content, result.refusal, result.finish_reason,
            redact_text(result.error) if result.error else None,
            result.usage.input_tokens, result.usage.cached_input_tokens,
            result.usage.output_tokens, result.cost_usd, result.attempts, time.time(),
        )  # fmt: skip
        with self._lock:
            self._db.execute(
                "INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (cache_key) DO UPDATE SET request_id = excluded.request_id, "
                "model = excluded.model, status = excluded.status, "
                "completed = excluded.completed, content = excluded.content, "
                "refusal = excluded.refusal, finish_reason = excluded.finish_reason, "
                "error = excluded.error, input_tokens = excluded.input_tokens, "
                "cached_input_tokens = excluded.cached_input_tokens, "
                "output_tokens = excluded.output_tokens, cost_usd = excluded.cost_usd, "
                "attempts = excluded.attempts, stored_at = excluded.stored_at "
                "WHERE answers.completed = 0",
                row,
            )

    def counts(self) -> dict[str, int]:
        """Stored rows by "<status>" for completed ones and "retry" for errors to re-send."""
        with self._lock:
            rows = self._db.execute(
                "SELECT CASE WHEN completed THEN status ELSE 'retry' END, COUNT(*) "
                "FROM answers GROUP BY 1"
            ).fetchall()
        return dict(rows)

    # -- batch jobs ------------------------------------------------------------------

    def add_batch_job(self, input_file_id: str, keys: Iterable[str]) -> int:
        """Record an uploaded batch input file and the requests it holds, before submitting."""
        now = time.time()
        keys = list(keys)
        with self._lock:
            self._db.execute("BEGIN")
            cursor = self._db.execute(
                "INSERT INTO batch_jobs (input_file_id, state, request_count, created_at, "
                "updated_at) VALUES (?, 'submitting', ?, ?, ?)",
                (input_file_id, len(keys), now, now),
            )
            job_id = cursor.lastrowid
            self._db.executemany(
                "INSERT OR IGNORE INTO batch_job_keys VALUES (?, ?)", ((job_id, k) for k in keys)
            )
            self._db.execute("COMMIT")
        return job_id

    def set_batch_submitted(self, job_id: int, batch_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE batch_jobs SET batch_id = ?, state = 'submitted', updated_at = ? "
                "WHERE job_id = ?",
                (batch_id, time.time(), job_id),
            )

    def set_batch_state(self, job_id: int, state: BatchState) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE batch_jobs SET state = ?, updated_at = ? WHERE job_id = ?",
                (state, time.time(), job_id),
            )

    def open_batch_jobs(self) -> list[BatchJob]:
        """Jobs submitted (or being submitted) whose results are not stored yet."""
        with self._lock:
            rows = self._db.execute(
                "SELECT job_id, input_file_id, batch_id, state, request_count FROM batch_jobs "
                "WHERE state IN (?, ?) ORDER BY job_id",
                OPEN_BATCH_STATES,
            ).fetchall()
        return [BatchJob(*row) for row in rows]

    def batch_keys(self, job_id: int) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT cache_key FROM batch_job_keys WHERE job_id = ?", (job_id,)
            ).fetchall()
        return [row[0] for row in rows]


def _result_of(row: tuple) -> ChatResult:
    (key, request_id, status, content, refusal, finish_reason, error,
     input_tokens, cached_tokens, output_tokens, cost_usd, attempts) = row  # fmt: skip
    return ChatResult(
        request_id=request_id, cache_key=key, status=status, content=content, refusal=refusal,
        finish_reason=finish_reason, error=error, cost_usd=cost_usd, attempts=attempts,
        usage=Usage(input_tokens=input_tokens, cached_input_tokens=cached_tokens,
                    output_tokens=output_tokens),
        from_cache=True,
    )  # fmt: skip
