"""Batch mode over real HTTP: upload, submit, poll, download, match, and resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import openai
import pytest
from llm_standin import StandinServer, fault

from adinstruct.builder.describe.batch import BatchError, BatchRunner
from adinstruct.builder.describe.cache import AnswerCache
from adinstruct.builder.describe.engine import Engine, EngineConfig, chat_body
from adinstruct.builder.describe.pricing import PriceTable
from adinstruct.builder.describe.requests import ChatRequest, ResponseSchema, Usage

KEY = "sk-test-DO-NOT-LEAK-1234567890"
SCHEMA = ResponseSchema(
    name="verdict",
    json_schema={
        "type": "object", "properties": {"anomaly_present": {"type": "boolean"}},
        "required": ["anomaly_present"], "additionalProperties": False,
    },
)  # fmt: skip


def request(index: int, extra: str = "") -> ChatRequest:
    return ChatRequest(
        request_id=f"r{index}", model="gpt-4o", response_schema=SCHEMA,
        messages=[{"role": "user", "content": f"item {index} {extra}".strip()}],
    )  # fmt: skip


def runner(server: StandinServer, path: Path, **options) -> BatchRunner:
    config = EngineConfig(api_key=KEY, base_url=server.base_url)
    cache = AnswerCache(path / "cache.sqlite")
    return BatchRunner(config, cache, PriceTable(), poll_interval_s=0.05, **options)


def uploaded_lines(server: StandinServer) -> list[list[dict]]:
    """The JSONL files the runner uploaded, one list of lines per file."""
    files = [f for f in server._files.values() if b'"custom_id"' in f and b'"method"' in f]
    return [[json.loads(line) for line in f.decode().splitlines()] for f in files]


@pytest.fixture
def server():
    with StandinServer(batch_polls=3) as running:
        yield running


def test_submit_poll_download_and_match(server, tmp_path):
    requests = [request(0), request(1, fault("status", code=400)), request(2, fault("refusal")),
                request(3), request(4, fault("length"))]  # fmt: skip
    batch = runner(server, tmp_path)
    results = list(batch.run(requests))
    assert [r.request_id for r in results] == ["r0", "r1", "r2", "r3", "r4"]
    assert [r.status for r in results] == ["ok", "error", "refused", "ok", "error"]
    assert json.loads(results[0].content) == {"anomaly_present": True}
    assert "HTTP 400" in results[1].error and "'length'" in results[4].error
    assert server.batch_creations == 1
    [lines] = uploaded_lines(server)
    assert [line["custom_id"] for line in lines] == [r.cache_key() for r in requests]
    assert {(line["method"], line["url"]) for line in lines} == {("POST", "/v1/chat/completions")}
    assert lines[0]["body"]["response_format"]["json_schema"]["strict"] is True
    # Batch prices are half the standard ones.
    paid = [Usage(input_tokens=u["prompt_tokens"], output_tokens=u["completion_tokens"])
            for u in server.answered_usage()]  # fmt: skip
    expected = sum(PriceTable().cost("gpt-4o", usage) for usage in paid) / 2
    assert batch.totals.cost_usd == pytest.approx(expected) and expected > 0
    assert (batch.totals.requests, batch.totals.failures) == (5, 2)

    # A rerun submits only what is not final: the `length` answer, not the 400.
    again = list(runner(server, tmp_path).run(requests))
    assert server.batch_creations == 2
    assert [line["custom_id"] for line in uploaded_lines(server)[1]] == [requests[4].cache_key()]
    assert [r.from_cache for r in again] == [True, True, True, True, False]
    assert again[4].status == "ok"  # the stand-in's fault was for the first request only


def test_answered_requests_are_not_submitted(server, tmp_path):
    requests = [request(i) for i in range(6)]
    config = EngineConfig(api_key=KEY, base_url=server.base_url)
    online = Engine(config, AnswerCache(tmp_path / "cache.sqlite"), PriceTable())
    list(online.run(requests[:3]))
    results = list(runner(server, tmp_path).run([*requests, requests[5]]))
    assert [r.from_cache for r in results] == [True, True, True, False, False, False, True]
    [lines] = uploaded_lines(server)
    assert [line["custom_id"] for line in lines] == [r.cache_key() for r in requests[3:]]


def test_splits_at_the_request_and_byte_caps(server, tmp_path):
    requests = [request(i) for i in range(10)]
    results = list(runner(server, tmp_path, max_requests=3).run(requests))
    assert all(r.status == "ok" for r in results) and server.batch_creations == 4
    assert sorted(len(lines) for lines in uploaded_lines(server)) == [1, 3, 3, 3]

    # Lines of "item 10" .. "item 13" are one byte longer than those of "item 0" .. "item 9".
    line_size = max(len(line) for f in server._files.values() for line in f.splitlines()) + 2
    more = [request(i + 10) for i in range(4)]
    list(runner(server, tmp_path, max_bytes=2 * line_size + line_size // 2).run(more))
    assert server.batch_creations == 4 + 2  # two lines a file fit under the byte cap
    with pytest.raises(BatchError, match=r"r99 is .* bytes"):
        list(runner(server, tmp_path, max_bytes=100).run([request(99)]))


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from adinstruct.builder.describe.batch import BatchRunner
    from adinstruct.builder.describe.cache import AnswerCache
    from adinstruct.builder.describe.engine import EngineConfig
    from adinstruct.builder.describe.pricing import PriceTable
    from adinstruct.builder.describe.requests import ChatRequest

    base_url, cache_path = sys.argv[1], Path(sys.argv[2])
    requests = [ChatRequest(request_id=f"r{i}", model="gpt-4o",
                            messages=[{"role": "user", "content": f"item {i}"}])
                for i in range(8)]
    runner = BatchRunner(EngineConfig(base_url=base_url), AnswerCache(cache_path), PriceTable(),
                         poll_interval_s=60)
    list(runner.run(requests))  # killed while it waits between two polls
    """
)


def test_a_restart_between_submit_and_download_polls_instead_of_resubmitting(server, tmp_path):
    cache_path = tmp_path / "cache.sqlite"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, server.base_url, str(cache_path)], env=env
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not submitted_batches(cache_path):
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    assert server.batch_creations == 1 and submitted_batches(cache_path)

    requests = [ChatRequest(request_id=f"r{i}", model="gpt-4o",
                            messages=[{"role": "user", "content": f"item {i}"}])
                for i in range(8)]  # fmt: skip
    results = list(runner(server, tmp_path).run(requests))
    assert [r.status for r in results] == ["ok"] * 8
    assert [r.request_id for r in results] == [f"r{i}" for i in range(8)]
    assert server.batch_creations == 1
    over_http = [r.authorization for r in server.requests if r.method in ("GET", "POST")]
    assert set(over_http) == {f"Bearer {KEY}"}


def submitted_batches(path: Path) -> list[str]:
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        try:
            rows = db.execute("SELECT batch_id FROM batch_jobs WHERE batch_id IS NOT NULL")
            return [row[0] for row in rows.fetchall()]
        except sqlite3.OperationalError:  # the child has not created its tables yet
            return []


@pytest.mark.parametrize("batch_was_created", [True, False])
def test_a_file_uploaded_before_a_crash_is_adopted_or_submitted(
    server, tmp_path, batch_was_created
):
    """The crash came after the upload was recorded, before (or just after) batches.create."""
    requests = [request(i) for i in range(3)]
    batch = runner(server, tmp_path)
    lines = [json.dumps({"custom_id": r.cache_key(), "method": "POST",
                         "url": "/v1/chat/completions", "body": chat_body(r)})
             for r in requests]  # fmt: skip
    client = openai.OpenAI(api_key=KEY, base_url=server.base_url)
    uploaded = client.files.create(file=("in.jsonl", "\n".join(lines).encode()), purpose="batch")
    batch.cache.add_batch_job(uploaded.id, [r.cache_key() for r in requests])
    if batch_was_created:
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    results = list(batch.run(requests))
    assert [r.status for r in results] == ["ok"] * 3
    assert server.batch_creations == 1
