"""The LLM engine over real HTTP: the stand-in server on 127.0.0.1 and the real `openai` client."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from llm_standin import StandinServer, fault, last_user_text

from adinstruct.builder.describe.cache import AnswerCache
from adinstruct.builder.describe.engine import Engine, EngineConfig, RunAborted
from adinstruct.builder.describe.limits import RateLimiter
from adinstruct.builder.describe.pricing import PriceTable
from adinstruct.builder.describe.requests import ChatRequest, ChatResult, ResponseSchema, Usage
from adinstruct.builder.progress import Progress
from adinstruct.schemas import Description

KEY = "sk-test-DO-NOT-LEAK-1234567890"
CHAT = "/v1/chat/completions"
SCHEMA = ResponseSchema(
    name="description",
    json_schema={
        "type": "object",
        "properties": {
            "anomaly_present": {"type": "boolean"},
            "defect_type": {"type": ["string", "null"]},
            "location": {"type": ["string", "null"]},
        },
        "required": ["anomaly_present", "defect_type", "location"],
        "additionalProperties": False,
    },
)


def request(index: int, extra: str = "") -> ChatRequest:
    return ChatRequest(
        request_id=f"r{index}", model="gpt-4o", response_schema=SCHEMA,
        messages=[
            {"role": "system", "content": "You describe industrial defects."},
            {"role": "user", "content": f"describe item {index} {extra}".strip()},
        ],
    )  # fmt: skip


def is_description(result: ChatResult) -> str | None:
    try:
        Description.model_validate_json(result.content or "")
    except ValueError as error:
        return str(error).splitlines()[0]
    return None


def make_engine(server: StandinServer, path: Path, **config) -> Engine:
    settings = {"backoff_base_s": 0.02, "backoff_max_s": 0.1, **config}
    engine_config = EngineConfig(api_key=KEY, base_url=server.base_url, **settings)
    return Engine(engine_config, AnswerCache(path / "cache.sqlite"), PriceTable())


def chat_requests(server: StandinServer, needle: str = "") -> list:
    return [r for r in server.requests if r.path == CHAT and needle in last_user_text(r.body)]


@pytest.fixture
def server():
    with StandinServer() as running:
        yield running


# --------------------------------------------------------------------------------------
# Answers and order
# --------------------------------------------------------------------------------------


def test_sends_the_request_as_structured_output(server, tmp_path):
    [result] = make_engine(server, tmp_path).run([request(0)])
    assert result.status == "ok" and not result.from_cache and result.attempts == 1
    assert is_description(result) is None
    [body] = server.chat_bodies()
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "description", "schema": SCHEMA.json_schema, "strict": True},
    }
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("gpt-4o", 800, 0.2)


def test_results_come_in_input_order_under_concurrency(tmp_path):
    with StandinServer(latency_s=0.02) as server:
        slow = fault("slow", delay=0.3)
        requests = [request(i, slow if i % 4 == 0 else "") for i in range(24)]
        results = list(make_engine(server, tmp_path, concurrency=6).run(requests))
        assert [r.request_id for r in results] == [f"r{i}" for i in range(24)]
        assert all(r.status == "ok" for r in results)
        assert 2 <= server.most_concurrent <= 6
        # The slow ones finished last, yet nothing waited for them to be sent.
        arrivals = [last_user_text(r.body) for r in chat_requests(server)]
        assert arrivals.index(f"describe item 8 {slow}") < 12


def test_cache_hits_and_repeats_are_not_sent(server, tmp_path):
    engine = make_engine(server, tmp_path)
    first = list(engine.run([request(0), request(1)]))
    twin = request(1).model_copy(update={"request_id": "twin-of-r1"})
    again = list(engine.run([request(0), twin, request(2), request(2)]))
    assert [r.request_id for r in again] == ["r0", "twin-of-r1", "r2", "r2"]
    assert [r.from_cache for r in again] == [True, True, False, True]
    assert again[1].content == first[1].content
    assert len(server.chat_bodies()) == 3
    assert (engine.totals.requests, engine.totals.cache_hits) == (3, 3)


def test_stopping_early_ends_the_threads(tmp_path):
    with StandinServer(latency_s=0.05) as server:
        results = make_engine(server, tmp_path, concurrency=4).run(request(i) for i in range(40))
        taken = [next(results) for _ in range(3)]
        results.close()
    assert [r.request_id for r in taken] == ["r0", "r1", "r2"]
    assert not [t for t in threading.enumerate() if t.name.startswith("llm-engine")]


def test_progress_counts_results_and_shows_stats(server, tmp_path):
    class Recording(Progress):
        def __init__(self):
            self.advanced, self.quarantined, self.lines = 0, 0, []

        def advance(self, steps=1, quarantined=0):
            self.advanced += steps
            self.quarantined += quarantined

        def stats(self, text):
            self.lines.append(text)

    progress = Recording()
    engine = make_engine(server, tmp_path)
    engine.progress = progress
    list(engine.run([request(i, fault("refusal") if i < 2 else "") for i in range(6)]))
    assert (progress.advanced, progress.quarantined) == (6, 2)
    assert progress.lines[-1].startswith("6 sent, 0 cached, 0 failed, ")
    assert "$0.00" in progress.lines[-1]


def test_dry_run_sends_nothing(server, tmp_path):
    engine = make_engine(server, tmp_path)
    list(engine.run([request(0)]))
    estimate = engine.dry_run([request(i) for i in range(4)])
    assert (estimate.requests, estimate.cached, estimate.to_send) == (4, 1, 3)
    assert estimate.cost_usd_max > estimate.cost_usd_typical > 0
    assert len(server.chat_bodies()) == 1


# --------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{"retry_after": 0.3}, {"retry_after_ms": 300, "retry_after": 30}]
)
def test_429_waits_at_least_retry_after(server, tmp_path, headers):
    start = time.monotonic()
    [result] = make_engine(server, tmp_path).run([request(0, fault("429", **headers))])
    assert result.status == "ok" and result.attempts == 2
    first, second = (r.received_at for r in chat_requests(server))
    assert second - first >= 0.3
    assert time.monotonic() - start < 5  # retry-after-ms wins over retry-after's 30 s


def test_500_is_retried_then_succeeds(server, tmp_path):
    [result] = make_engine(server, tmp_path).run([request(0, fault("status", code=500, times=2))])
    assert (result.status, result.attempts) == ("ok", 3)


def test_timeout_is_retried(server, tmp_path):
    start = time.monotonic()
    engine = make_engine(server, tmp_path, timeout_s=0.4)
    [result] = engine.run([request(0, fault("slow", delay=1.5))])
    assert (result.status, result.attempts) == ("ok", 2)
    assert 0.4 <= time.monotonic() - start < 1.5


def test_cut_off_json_fails_validation_and_is_retried(server, tmp_path):
    engine = make_engine(server, tmp_path)
    [result] = engine.run([request(0, fault("cutoff"))], validate=is_description)
    assert (result.status, result.attempts) == ("ok", 2)
    # The engine itself catches JSON that is not JSON; `validate` catches the rest.
    calls = []
    wrong_shape = lambda r: calls.append(r) or ("no" if len(calls) == 1 else None)  # noqa: E731
    [result] = engine.run([request(1)], validate=wrong_shape)
    assert (result.status, result.attempts, len(calls)) == ("ok", 2, 2)


def test_refusal_is_recorded_and_not_retried(server, tmp_path):
    engine = make_engine(server, tmp_path)
    [result] = engine.run([request(0, fault("refusal", times="always"))])
    assert (result.status, result.attempts, result.content) == ("refused", 1, None)
    assert "can't help" in result.refusal
    [again] = engine.run([request(0, fault("refusal", times="always"))])
    assert again.from_cache and again.status == "refused"
    assert len(server.chat_bodies()) == 1


def test_length_is_retried(server, tmp_path):
    [result] = make_engine(server, tmp_path).run([request(0, fault("length"))])
    assert (result.status, result.attempts, result.finish_reason) == ("ok", 2, "stop")


@pytest.mark.parametrize(
    ("marker", "attempts", "resent"),
    [
        (fault("content_filter", times="always"), 3, False),  # answered 3 times: final
        (fault("cutoff", times="always"), 3, False),
        (fault("status", code=400, times="always"), 1, False),  # the request is bad: final
        (fault("status", code=404, times="always"), 1, True),  # bad model or URL: not final
        (fault("status", code=503, times="always"), 3, True),  # retries exhausted: not final
        (fault("429", times="always", retry_after=0.01), 3, True),
    ],
)
def test_persistent_faults_end_as_errors(server, tmp_path, marker, attempts, resent):
    engine = make_engine(server, tmp_path, max_retries=2, answer_retries=2)
    [result] = engine.run([request(0, marker)])
    assert (result.status, result.attempts) == ("error", attempts)
    assert f"after {attempts} attempt" in result.error
    [again] = engine.run([request(0, marker)])
    assert again.from_cache is not resent
    assert len(server.chat_bodies()) == attempts * (2 if resent else 1)


def test_failure_cap_stops_the_run_and_keeps_what_was_answered(server, tmp_path):
    requests = [request(i, fault("status", code=500, times="always") if i % 3 == 1 else "")
                for i in range(40)]  # fmt: skip
    engine = make_engine(server, tmp_path, concurrency=2, max_retries=0, max_failures=3)
    received = []
    with pytest.raises(RunAborted) as aborted:
        for result in engine.run(requests):
            received.append(result)
    message = str(aborted.value)
    assert "3 requests failed" in message and "HTTP 500" in message and "rerunning" in message
    assert [r.request_id for r in received] == [f"r{i}" for i in range(len(received))]
    sent = chat_requests(server)
    assert len(sent) < 15  # it stopped sending
    by_text = {last_user_text({"messages": r.messages}): r for r in requests}
    answered = [by_text[last_user_text(r.body)] for r in sent if r.status == 200]
    assert answered and all(engine.cache.get(r.cache_key()) for r in answered)


# --------------------------------------------------------------------------------------
# Money and secrets
# --------------------------------------------------------------------------------------


def test_costs_add_up_to_the_usage_the_server_sent(server, tmp_path):
    engine = make_engine(server, tmp_path, concurrency=4)
    requests = [request(i, fault("length") if i % 5 == 0 else "") for i in range(25)]
    results = list(engine.run(requests))
    sent = server.answered_usage()
    assert len(sent) == 25 + 5  # the 5 `length` answers were paid for too
    totals = engine.totals
    assert totals.input_tokens == sum(u["prompt_tokens"] for u in sent)
    assert totals.output_tokens == sum(u["completion_tokens"] for u in sent)
    assert sum(r.usage.input_tokens for r in results) == totals.input_tokens
    assert sum(r.usage.output_tokens for r in results) == totals.output_tokens
    priced = [
        Usage(input_tokens=u["prompt_tokens"], output_tokens=u["completion_tokens"],
              cached_input_tokens=u["prompt_tokens_details"]["cached_tokens"])
        for u in sent
    ]  # fmt: skip
    assert any(u.cached_input_tokens for u in priced)
    expected = sum(PriceTable().cost("gpt-4o", usage) for usage in priced)
    assert totals.cost_usd == pytest.approx(expected)
    assert sum(r.cost_usd for r in results) == pytest.approx(expected)
    assert (totals.requests, totals.cache_hits, totals.failures) == (25, 0, 0)
    list(engine.run(requests))  # all cached: nothing more to pay
    assert engine.totals.cost_usd == pytest.approx(expected)
    assert engine.totals.cache_hits == 25


def test_the_api_key_appears_nowhere(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the openai client's and httpx2's included
    results = []
    # A server that wants another key echoes the one it got, as OpenAI's does.
    with StandinServer(require_api_key="sk-the-right-one-000000") as picky:
        results += make_engine(picky, tmp_path).run([request(0), request(1)])
        assert picky.authorization_headers[0] == f"Bearer {KEY}"
    with StandinServer() as server:
        engine = make_engine(server, tmp_path, timeout_s=0.3, max_retries=1, max_failures=2)
        faults = [fault("status", code=500, times="always"), fault("slow", delay=1, times="always")]
        with pytest.raises(RunAborted) as aborted:
            results += engine.run([request(i + 2, f) for i, f in enumerate(["", *faults])])
    assert [r.status for r in results[:2]] == ["error", "error"]
    assert "Incorrect API key provided: ***" in results[0].error
    written = b"".join(path.read_bytes() for path in tmp_path.iterdir() if path.is_file())
    assert written
    everything = [
        written.decode("latin-1"), caplog.text, str(aborted.value),
        json.dumps([r.model_dump() for r in results]),
        repr(engine.config), engine.config.model_dump_json(), str(engine.config.model_dump()),
    ]  # fmt: skip
    for text in everything:
        assert KEY not in text and KEY[3:] not in text


# --------------------------------------------------------------------------------------
# A kill and a rerun
# --------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from adinstruct.builder.describe.cache import AnswerCache
    from adinstruct.builder.describe.engine import Engine, EngineConfig
    from adinstruct.builder.describe.pricing import PriceTable
    from adinstruct.builder.describe.requests import ChatRequest

    base_url, cache_path, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    requests = (
        ChatRequest(request_id=f"item-{i}", model="gpt-4o",
                    messages=[{"role": "user", "content": f"item {i}"}])
        for i in range(count)
    )
    engine = Engine(EngineConfig(base_url=base_url, concurrency=4), AnswerCache(cache_path),
                    PriceTable())
    for result in engine.run(requests):
        assert result.status == "ok", result.error
    """
)


def stored_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        try:
            rows = db.execute("SELECT cache_key FROM answers WHERE completed").fetchall()
        except sqlite3.OperationalError:  # the child has not created its tables yet
            return set()
    return {row[0] for row in rows}


def test_no_completed_request_is_sent_again_after_a_kill(tmp_path):
    count, concurrency = 80, 4
    cache_path = tmp_path / "cache.sqlite"
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    with StandinServer(latency_s=0.05) as server:
        command = [sys.executable, "-c", CHILD, server.base_url, str(cache_path), str(count)]
        child = subprocess.Popen(command, env=env)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and child.poll() is None:
                if len(stored_keys(cache_path)) >= 20:
                    break
                time.sleep(0.02)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait()
        assert child.returncode == -signal.SIGKILL
        completed_before_kill = stored_keys(cache_path)
        assert 20 <= len(completed_before_kill) < count

        subprocess.run(command, env=env, check=True, timeout=60)

        texts = [last_user_text(body) for body in server.chat_bodies()]
    keys = {
        f"item {i}": ChatRequest(
            request_id="", model="gpt-4o", messages=[{"role": "user", "content": f"item {i}"}]
        ).cache_key()
        for i in range(count)
    }
    assert stored_keys(cache_path) == set(keys.values())
    sends = {text: texts.count(text) for text in keys}
    # A request whose answer was stored before the kill is never sent again. One that was on
    # the wire when the kill came (its answer sent by the server, never stored) must be sent
    # again: nobody kept that answer. There are at most `concurrency` of those.
    assert all(sends[text] == 1 for text, key in keys.items() if key in completed_before_kill)
    resent = [text for text, n in sends.items() if n > 1]
    assert all(sends[text] == 2 for text in resent) and len(resent) <= concurrency
    assert all(n >= 1 for n in sends.values())


# --------------------------------------------------------------------------------------
# Rate limits, on a fake clock
# --------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.time = 0.0

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.time += seconds
        await asyncio.sleep(0)


def admission_times(limiter: RateLimiter, clock: FakeClock, estimates: list[int], settle=None):
    async def go():
        times = []

        async def one(estimate):
            async with limiter.slot(estimate):
                times.append(clock.now())
                if settle is not None:
                    limiter.settle(estimate, settle)

        for estimate in estimates:  # one after another, so the order is the list's
            await one(estimate)
        return times

    return asyncio.run(go())


def test_requests_per_minute_spaces_requests():
    clock = FakeClock()
    limiter = RateLimiter(concurrency=8, requests_per_minute=60, clock=clock)
    assert admission_times(limiter, clock, [1] * 5) == pytest.approx([0, 1, 2, 3, 4])


def test_tokens_per_minute_charges_the_estimate_and_corrects_it():
    clock = FakeClock()
    limiter = RateLimiter(concurrency=8, tokens_per_minute=6000, clock=clock)  # 100 a second
    # 500 estimated tokens put the bucket 400 in debt: the next request waits 5 s.
    assert admission_times(limiter, clock, [500, 500]) == pytest.approx([0, 5])
    clock = FakeClock()
    limiter = RateLimiter(concurrency=8, tokens_per_minute=6000, clock=clock)
    # The server counted only 100: the 400 come back, and the wait is 1 s.
    assert admission_times(limiter, clock, [500, 500], settle=100) == pytest.approx([0, 1])


def test_pause_holds_every_request():
    clock = FakeClock()
    limiter = RateLimiter(concurrency=8, clock=clock)
    limiter.pause(2.5)
    assert admission_times(limiter, clock, [1, 1]) == pytest.approx([2.5, 2.5])


def test_concurrency_is_bounded():
    async def go():
        limiter = RateLimiter(concurrency=3)

        async def one():
            async with limiter.slot(1):
                await asyncio.sleep(0.01)

        await asyncio.gather(*(one() for _ in range(12)))
        return limiter.most_in_flight

    assert asyncio.run(go()) == 3
