"""The answer cache: survives reopening and kills, runs in WAL mode, and knows what is completed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

from adinstruct.builder.describe.cache import AnswerCache
from adinstruct.builder.describe.requests import ChatResult, Usage


def result(key: str, status: str = "ok", **fields) -> ChatResult:
    return ChatResult(
        request_id=f"id-{key}", cache_key=key, status=status, attempts=1,
        usage=Usage(input_tokens=100, cached_input_tokens=20, output_tokens=30), cost_usd=0.001,
        **fields,
    )  # fmt: skip


def test_answers_survive_reopening(tmp_path):
    path = tmp_path / "llm" / "cache.sqlite"
    with AnswerCache(path) as cache:
        cache.put(result("a", content='{"x": 1}', finish_reason="stop"), model="gpt-4o")
    with AnswerCache(path) as cache:
        stored = cache.get("a")
    assert stored is not None and stored.from_cache
    assert (stored.content, stored.finish_reason, stored.usage.cached_input_tokens) == (
        '{"x": 1}', "stop", 20,
    )  # fmt: skip
    assert stored.model_dump(exclude={"from_cache"}) == result(
        "a", content='{"x": 1}', finish_reason="stop"
    ).model_dump(exclude={"from_cache"})


def test_wal_mode(tmp_path):
    path = tmp_path / "cache.sqlite"
    AnswerCache(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_which_statuses_count_as_completed(tmp_path):
    with AnswerCache(tmp_path / "cache.sqlite") as cache:
        cache.put(result("ok"), model="m")
        cache.put(result("refused", "refused", refusal="no"), model="m")
        cache.put(result("bad-request", "error", error="HTTP 400"), model="m", final=True)
        cache.put(result("rate-limited", "error", error="HTTP 429"), model="m")
        assert cache.get("ok").status == "ok"
        assert cache.get("refused").status == "refused"
        assert cache.get("bad-request").status == "error"
        # Not completed: the next run sends it again, but the record of the failure is kept.
        assert cache.get("rate-limited") is None
        assert not cache.contains("rate-limited")
        assert cache.last_outcome("rate-limited").error == "HTTP 429"
        assert cache.counts() == {"ok": 1, "refused": 1, "error": 1, "retry": 1}

        # A later answer replaces the transient error; nothing replaces a completed row.
        cache.put(result("rate-limited", content="fine"), model="m")
        assert cache.get("rate-limited").content == "fine"
        cache.put(result("ok", "error", error="HTTP 500"), model="m")
        assert cache.get("ok").status == "ok"


def test_errors_are_stored_redacted(tmp_path):
    path = tmp_path / "cache.sqlite"
    with AnswerCache(path) as cache:
        cache.put(
            result("k", "error", error="Incorrect API key provided: sk-test-abcdef123456"),
            model="m",
        )
        assert cache.last_outcome("k").error == "Incorrect API key provided: ***"
    assert b"sk-test-abcdef123456" not in b"".join(p.read_bytes() for p in tmp_path.iterdir())


def test_batch_jobs_are_recorded(tmp_path):
    with AnswerCache(tmp_path / "cache.sqlite") as cache:
        job_id = cache.add_batch_job("file-1", ["k1", "k2", "k2"])
        [job] = cache.open_batch_jobs()
        assert (job.input_file_id, job.batch_id, job.state, job.request_count) == (
            "file-1", None, "submitting", 3,
        )  # fmt: skip
        cache.set_batch_submitted(job_id, "batch-9")
        assert cache.open_batch_jobs()[0].batch_id == "batch-9"
        assert sorted(cache.batch_keys(job_id)) == ["k1", "k2"]
        cache.set_batch_state(job_id, "done")
        assert cache.open_batch_jobs() == []


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from adinstruct.builder.describe.cache import AnswerCache
    from adinstruct.builder.describe.requests import ChatResult

    cache = AnswerCache(Path(sys.argv[1]))
    index = 0
    while True:  # until killed
        cache.put(ChatResult(request_id=str(index), cache_key=f"key-{index}", status="ok",
                             content="x" * 2000), model="m")
        index += 1
    """
)


def test_a_kill_in_the_middle_of_writing_loses_nothing_committed(tmp_path):
    path = tmp_path / "cache.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    try:
        deadline = time.monotonic() + 30
        seen = 0
        while seen < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
            if path.exists():
                try:
                    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                        seen = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
                except sqlite3.OperationalError:
                    continue  # the file exists but its table is not created (committed) yet
    finally:
        # Killed however the loop ended: the writer never stops by itself.
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert seen >= 300
    with AnswerCache(path) as cache:
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            stored = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        # Every commit the reader saw before the kill is still there, and all rows are whole.
        assert stored >= seen
        assert all(cache.get(f"key-{i}").content == "x" * 2000 for i in range(stored))
        cache.put(result("after-the-kill"), model="m")
        assert cache.get("after-the-kill") is not None
