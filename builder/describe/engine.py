"""The LLM request engine: cached, rate-limited, retried chat requests, answered in input order.

`Engine.run` is a plain generator. The caller's thread iterates the requests (rendering a
prompt is the caller's work), keys them and serves cache hits; the misses go to an asyncio
loop in a second thread, started on the first miss, which sends them through
`openai.AsyncOpenAI`. At most `window` requests are read ahead of the one being yielded, so
memory stays flat however many requests there are.

Retries (the client's own are off):

- 429: wait what `retry-after-ms` / `retry-after` says (and pause every request for that
  long, since the limit is the account's), else back off;
- 5xx, 408, 409, timeouts and connection errors: exponential backoff with full jitter;
- other 4xx: not retried (see cache.py for which of them are final);
- an answer that ends with `length` or `content_filter`, is empty, is not JSON when a schema
  was asked for, or fails `validate`: asked again, up to `answer_retries` times;
- a refusal: recorded as status "refused", not retried.

A result's usage and cost cover every attempt that got an answer, and `Engine.totals` sums
exactly the `usage` fields the server returned (cache hits cost nothing in this run).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import email.utils
import json
import logging
import math
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from adinstruct.builder.describe.cache import AnswerCache
from adinstruct.builder.describe.limits import Clock, RateLimiter
from adinstruct.builder.describe.pricing import (
    DryRunEstimate,
    PriceTable,
    estimate_request_tokens,
    estimate_run,
)
from adinstruct.builder.describe.requests import ChatRequest, ChatResult, Usage
from adinstruct.builder.errors import AdinstructError, ConfigError
from adinstruct.builder.progress import Progress
from adinstruct.builder.redact import redact_text
from adinstruct.schemas import LLMUsage

log = logging.getLogger(__name__)

Validator = Callable[[ChatResult], str | None]

#: Connections per HTTP pool; the engine uses concurrency / this many clients.
CONNECTIONS_PER_POOL = 8
#: Status codes that reject the request itself: sending it again cannot help (cache.py).
FINAL_STATUS_CODES = frozenset({400, 413, 415, 422})
RETRIED_STATUS_CODES = frozenset({408, 409, 429})
#: Local servers (vLLM, Ollama) accept any key, but the client insists on one.
LOCAL_SERVER_KEY = "unused"


def _env_key() -> SecretStr:
    return SecretStr(os.environ.get("OPENAI_API_KEY", ""))


def _env_base_url() -> str | None:
    return os.environ.get("OPENAI_BASE_URL") or None


class EngineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    api_key: SecretStr = Field(default_factory=_env_key, description="From OPENAI_API_KEY.")
    base_url: str | None = Field(default_factory=_env_base_url, description="OPENAI_BASE_URL.")
    concurrency: int = Field(default=8, ge=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    timeout_s: float = Field(default=120.0, gt=0)
    max_retries: int = Field(default=6, ge=0, description="For 429, 5xx, timeouts.")
    answer_retries: int = Field(default=2, ge=0, description="For length, filter, invalid.")
    backoff_base_s: float = Field(default=1.0, ge=0)
    backoff_max_s: float = Field(default=60.0, ge=0)
    max_retry_after_s: float = Field(
        default=300.0, gt=0, description="A 429 asking for a longer wait fails the request."
    )
    max_failures: int | None = Field(
        default=50, ge=1, description="Stop the run after this many failed requests."
    )
    window: int | None = Field(
        default=None, ge=1, description="Requests between input and output; 4 × concurrency."
    )
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = Field(
        default="max_tokens",
        description="OpenAI's reasoning models take only max_completion_tokens.",
    )

    def resolved_key(self) -> str:
        key = self.api_key.get_secret_value()
        if key:
            return key
        if self.base_url:
            return LOCAL_SERVER_KEY
        raise ConfigError(
            "OPENAI_API_KEY is not set: the openai describer needs an API key "
            "(or OPENAI_BASE_URL pointing at a local server that needs none)"
        )


class RunAborted(AdinstructError):
    """Too many requests failed for good; what was answered is in the cache."""


# --------------------------------------------------------------------------------------
# Request bodies and answers, shared with batch mode
# --------------------------------------------------------------------------------------


def chat_body(request: ChatRequest, config: EngineConfig | None = None) -> dict[str, Any]:
    """The JSON body of POST /v1/chat/completions for a request."""
    body: dict[str, Any] = {"model": request.model, "messages": request.messages}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.max_tokens is not None:
        body[config.max_tokens_param if config else "max_tokens"] = request.max_tokens
    if request.seed is not None:
        body["seed"] = request.seed
    if request.response_schema is not None:
        schema = request.response_schema
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": schema.name, "schema": schema.json_schema, "strict": True},
        }
    return body


@dataclass
class Answer:
    """One chat completion, read: what it says, what it cost, and whether to ask again."""

    status: Literal["ok", "refused", "retry"]
    usage: Usage
    content: str | None = None
    refusal: str | None = None
    finish_reason: str | None = None
    problem: str | None = None


def read_answer(payload: dict[str, Any], *, expects_json: bool) -> Answer:
    """Interpret a chat completion's JSON (online, or the body of a batch output line)."""
    usage_fields = payload.get("usage") or {}
    details = usage_fields.get("prompt_tokens_details") or {}
    usage = Usage(
        input_tokens=usage_fields.get("prompt_tokens") or 0,
        cached_input_tokens=details.get("cached_tokens") or 0,
        output_tokens=usage_fields.get("completion_tokens") or 0,
    )
    choices = payload.get("choices") or []
    if not choices:
        return Answer("retry", usage, problem="the answer has no choices")
    choice = choices[0]
    message = choice.get("message") or {}
    content, refusal = message.get("content"), message.get("refusal")
    finish_reason = choice.get("finish_reason")
    answer = Answer("ok", usage, content, refusal, finish_reason)
    if refusal:
        answer.status = "refused"
    elif finish_reason in ("length", "content_filter"):
        answer.status, answer.problem = "retry", f"the answer ended with {finish_reason!r}"
    elif not content:
        answer.status, answer.problem = "retry", "the answer is empty"
    elif expects_json:
        try:
            json.loads(content)
        except ValueError as error:
            answer.status, answer.problem = "retry", f"the answer is not valid JSON ({error})"
    return answer


def retry_after_seconds(headers: Any) -> float | None:
    """The wait a 429 asks for: retry-after-ms, else retry-after (seconds or an HTTP date)."""
    if headers is None:
        return None
    milliseconds, value = headers.get("retry-after-ms"), headers.get("retry-after")
    with contextlib.suppress(ValueError):
        if milliseconds is not None:
            return max(float(milliseconds) / 1000.0, 0.0)
    with contextlib.suppress(ValueError):
        if value is not None:
            return max(float(value), 0.0)
    with contextlib.suppress(TypeError, ValueError):
        if value:
            return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    return None  # absent or unreadable: back off instead


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


@dataclass
class _Tally:
    requests: int = 0
    cache_hits: int = 0
    failures: int = 0
    attempts: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class _Failure:
    reason: str
    retryable: bool
    final: bool = False
    retry_after: float | None = None


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        cache: AnswerCache,
        prices: PriceTable,
        progress: Progress | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.prices = prices
        self.progress = progress or Progress()
        self.clock = clock
        self.rng = rng or random.Random()
        self._tally = _Tally()

    @property
    def totals(self) -> LLMUsage:
        """Usage of every run of this engine so far, for the manifest."""
        tally = self._tally
        return LLMUsage(
            requests=tally.requests, cache_hits=tally.cache_hits, failures=tally.failures,
            input_tokens=tally.input_tokens, output_tokens=tally.output_tokens,
            cost_usd=tally.cost_usd,
        )  # fmt: skip

    def stats_line(self) -> str:
        tally = self._tally
        tokens = tally.input_tokens + tally.output_tokens
        return (
            f"{tally.requests} sent, {tally.cache_hits} cached, {tally.failures} failed, "
            f"{tokens:,} tok, ${tally.cost_usd:.4f}"
        )

    def dry_run(
        self, requests: Iterable[ChatRequest], *, typical_output_tokens: int = 300
    ) -> DryRunEstimate:
        """Count and price what `run` would send; sends nothing."""
        return estimate_run(
            requests, self.prices, self.cache.contains, typical_output_tokens=typical_output_tokens
        )

    def run(
        self, requests: Iterable[ChatRequest], validate: Validator | None = None
    ) -> Iterator[ChatResult]:
        """One result per request, in input order; raises RunAborted at the failure cap."""
        return _Run(self, requests, validate).results()


_ABORTED = object()  # a request the failure cap stopped before it was answered
_END = object()


def _attempts_text(attempts: int) -> str:
    return "1 attempt" if attempts == 1 else f"{attempts} attempts"


class _Run:
    """One pass of `Engine.run`: its window of requests, and the loop that sends them."""

    def __init__(
        self, engine: Engine, requests: Iterable[ChatRequest], validate: Validator | None
    ) -> None:
        self.engine = engine
        self.config = engine.config
        self.tally = engine._tally
        self.requests = requests
        self.validate = validate
        self.window_size = self.config.window or 4 * self.config.concurrency
        self.in_flight: dict[str, concurrent.futures.Future] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread: threading.Thread | None = None
        self.limiter: RateLimiter | None = None
        self.clients: list[Any] = []
        self.sent = 0
        self.tasks: set[asyncio.Task] = set()
        self.on_wire: set[asyncio.Task] = set()
        self.failures = 0
        self.aborting = False
        self.last_error = ""
        self.exhausted = False

    # -- the caller's thread ---------------------------------------------------------

    def results(self) -> Iterator[ChatResult]:
        # The caller's thread reads ahead: it renders (iterates) the requests, keys them and
        # serves cache hits itself, handing only misses to the loop thread. Handing every
        # request across threads costs ~100 µs each, which a full-cache rerun would feel.
        window: deque[Any] = deque()
        requests = iter(self.requests)
        chunk_size = max(16, self.config.concurrency)
        low_water = max(self.window_size // 2, self.window_size - chunk_size)
        cancel = True
        last_stats = 0.0
        try:
            while True:
                # Top up in chunks once the window runs low: one cache query per chunk.
                while not self.exhausted and not self.aborting and len(window) <= low_water:
                    room = self.window_size - len(window)
                    window.extend(self._slots_for(self._read(requests, min(room, chunk_size))))
                if not window:
                    break
                result = self._resolve(window.popleft())
                if result is _ABORTED:
                    break
                self.engine.progress.advance(1, quarantined=int(result.status != "ok"))
                if (now := time.monotonic()) - last_stats > 0.25:
                    self.engine.progress.stats(self.engine.stats_line())
                    last_stats = now
                yield result
            cancel = False
        except Exception:
            # The caller's requests (or `validate`) raised: stop, but let what is on the wire
            # finish and be stored. Only the caller closing us, or Ctrl-C, cancels it.
            cancel = False
            raise
        finally:
            self._shutdown(cancel=cancel)
            self.engine.progress.stats(self.engine.stats_line())
        if self.aborting:
            raise RunAborted(
                f"stopped after {self.failures} requests failed for good (the cap is "
                f"{self.config.max_failures}); last error: {self.last_error}. Every answer "
                f"received is in the cache {self.engine.cache.path}: rerunning the same "
                "command resumes and sends only what is missing."
            )

    def _read(self, requests: Iterator[ChatRequest], count: int) -> list[ChatRequest]:
        chunk = []
        for _ in range(count):
            request = next(requests, _END)
            if request is _END:
                self.exhausted = True
                break
            chunk.append(request)
        return chunk

    def _slots_for(self, chunk: list[ChatRequest]) -> list[Any]:
        keys = [request.cache_key() for request in chunk]
        cached = self.engine.cache.get_many(keys)  # one query for the chunk
        return [
            self._slot_for(request, key, cached.get(key))
            for request, key in zip(chunk, keys, strict=True)
        ]

    def _slot_for(self, request: ChatRequest, key: str, cached: ChatResult | None) -> Any:
        earlier = self.in_flight.get(key)
        if earlier is not None and not earlier.done():
            # The same request is already on its way: share its answer rather than pay twice.
            self.tally.cache_hits += 1
            return asyncio.run_coroutine_threadsafe(self._follow(earlier, request), self.loop)
        if cached is None and earlier is not None:
            cached = self.engine.cache.get(key)  # answered since the chunk was looked up
        if cached is not None:
            self.tally.cache_hits += 1
            if cached.request_id == request.request_id:
                return cached
            return cached.model_copy(update={"request_id": request.request_id})
        if self.loop is None:
            self._start_loop()
        # Only a tokens-per-minute limit needs the estimate (it reads every image's header).
        estimate = 0
        if self.config.tokens_per_minute:
            estimate = estimate_request_tokens(request, self.engine.prices)
        future = asyncio.run_coroutine_threadsafe(self._complete(request, key, estimate), self.loop)
        self.in_flight[key] = future
        future.add_done_callback(lambda done: self._forget(key, done))
        return future

    def _forget(self, key: str, done: concurrent.futures.Future) -> None:
        if self.in_flight.get(key) is done:
            del self.in_flight[key]

    def _resolve(self, slot: Any) -> Any:
        if isinstance(slot, ChatResult):
            return slot
        try:
            return slot.result()
        except concurrent.futures.CancelledError:
            if self.aborting:  # stopped by the failure cap before it was sent
                return _ABORTED
            raise

    def _start_loop(self) -> None:
        """Only when something must be sent: a full-cache rerun needs no key and no client."""
        key = self.config.resolved_key()  # a missing key fails here, in the caller's thread
        self.loop = asyncio.new_event_loop()
        self.loop_thread = threading.Thread(
            target=self.loop.run_forever, name="llm-engine-loop", daemon=True
        )
        self.loop_thread.start()
        asyncio.run_coroutine_threadsafe(self._setup(key), self.loop).result()

    def _shutdown(self, cancel: bool) -> None:
        if self.loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._drain(cancel), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop_thread.join()
        self.loop.close()

    # -- the loop thread -------------------------------------------------------------

    async def _setup(self, key: str) -> None:
        # Imported here: importing openai takes a while, and `--help` must not pay for it.
        import httpx2
        import openai

        self.httpx2, self.openai = httpx2, openai
        self.limiter = RateLimiter(
            concurrency=self.config.concurrency,
            requests_per_minute=self.config.requests_per_minute,
            tokens_per_minute=self.config.tokens_per_minute,
            clock=self.engine.clock,
        )
        # httpcore scans every connection of its pool on each request and each response, so
        # one pool of 64 connections costs ~20% more CPU per request than eight of 8. The
        # clients share one SSL context: building one per client takes ~30 ms each.
        ssl_context = httpx2.create_ssl_context()
        shards = math.ceil(self.config.concurrency / CONNECTIONS_PER_POOL)
        self.clients = [
            openai.AsyncOpenAI(
                api_key=key,
                base_url=self.config.base_url,
                timeout=self.config.timeout_s,
                max_retries=0,
                http_client=openai.DefaultAsyncHttpx2Client(verify=ssl_context),
            )
            for _ in range(shards)
        ]

    async def _drain(self, cancel: bool) -> None:
        """End what still runs: what is on the wire finishes and is stored, unless `cancel`."""
        pending = [task for task in self.tasks if not task.done()]
        for task in pending:
            if cancel or task not in self.on_wire:
                task.cancel()
        # Nobody reads these outcomes any more (answers are in the cache): they only have to
        # end before the loop closes.
        await asyncio.gather(*pending, return_exceptions=True)
        for client in self.clients:
            await client.close()

    async def _follow(self, earlier: concurrent.futures.Future, request: ChatRequest) -> Any:
        result = await asyncio.wrap_future(earlier)
        if result is _ABORTED:
            return result
        return result.model_copy(
            update={"request_id": request.request_id, "from_cache": True, "usage": Usage(),
                    "cost_usd": 0.0}
        )  # fmt: skip

    async def _complete(self, request: ChatRequest, key: str, estimate: int) -> Any:
        task = asyncio.current_task()
        self.tasks.add(task)
        try:
            return await self._attempts(request, key, estimate, task)
        finally:
            self.tasks.discard(task)

    async def _attempts(self, request: ChatRequest, key: str, estimate: int, task: Any) -> Any:
        openai = self.openai
        body = chat_body(request, self.config)
        spent = Usage()
        cost = 0.0
        attempts = transport_retries = answer_retries = 0
        while True:
            failure: _Failure | None = None
            async with self.limiter.slot(estimate):
                if self.aborting:
                    return _ABORTED
                attempts += 1
                self.tally.attempts += 1
                if attempts == 1:
                    self.tally.requests += 1
                self.on_wire.add(task)
                self.sent += 1
                client = self.clients[self.sent % len(self.clients)]
                try:
                    # The client's generic post: the typed create() spends ~2 ms of CPU per
                    # call on pydantic models we do not need, and batch output lines are
                    # plain JSON too, so one reader (read_answer) serves both.
                    response = await client.post(
                        "/chat/completions", body=body, cast_to=self.httpx2.Response
                    )
                    payload = json.loads(response.content)
                    if not isinstance(payload, dict):
                        raise ValueError(f"expected an object, got {type(payload).__name__}")
                except openai.APIStatusError as error:
                    failure = self._status_failure(error)
                except openai.APIConnectionError as error:  # timeouts included
                    cause = f" ({error.__cause__!r})" if error.__cause__ else ""
                    failure = _Failure(redact_text(f"{error.message}{cause}"), retryable=True)
                except ValueError as error:
                    failure = _Failure(f"the server sent invalid JSON: {error}", retryable=True)
                finally:
                    self.on_wire.discard(task)
            if failure is not None:
                if failure.retryable and transport_retries < self.config.max_retries:
                    transport_retries += 1
                    delay = failure.retry_after
                    if delay is None:
                        delay = self._backoff(transport_retries)
                    else:
                        self.limiter.pause(delay)
                    log.debug("retrying %s in %.2fs: %s", request.request_id, delay, failure.reason)
                    await asyncio.sleep(delay)  # the failure cap cancels this wait
                    continue
                return self._finish(
                    request, key, "error", spent, cost, attempts, final=failure.final,
                    error=f"{failure.reason} (after {_attempts_text(attempts)})",
                )  # fmt: skip

            answer = read_answer(payload, expects_json=request.response_schema is not None)
            spent, cost = self._account(request, answer.usage, estimate, spent, cost)
            fields = {"content": answer.content, "refusal": answer.refusal,
                      "finish_reason": answer.finish_reason}  # fmt: skip
            if answer.status == "ok" and self.validate is not None:
                candidate = ChatResult(
                    request_id=request.request_id, cache_key=key, status="ok", usage=spent,
                    cost_usd=cost, attempts=attempts, **fields,
                )  # fmt: skip
                problem = self.validate(candidate)
                if problem is not None:
                    answer.status = "retry"
                    answer.problem = f"the answer failed validation: {problem}"
            if answer.status != "retry":
                return self._finish(request, key, answer.status, spent, cost, attempts, **fields)
            if self.aborting:
                return _ABORTED  # not final: the next run asks again
            if answer_retries < self.config.answer_retries:
                answer_retries += 1
                log.debug("asking again for %s: %s", request.request_id, answer.problem)
                continue
            # The model answered every time, and would again: final, not worth re-sending.
            return self._finish(
                request, key, "error", spent, cost, attempts, final=True, **fields,
                error=f"{answer.problem} (after {_attempts_text(attempts)})",
            )  # fmt: skip

    def _status_failure(self, error: Any) -> _Failure:
        status = error.status_code
        # Servers echo a bad key in their message ("Incorrect API key provided: sk-...").
        reason = redact_text(f"HTTP {status}: {error.message}")
        if status == 429:
            wait = retry_after_seconds(getattr(error.response, "headers", None))
            if wait is not None and wait > self.config.max_retry_after_s:
                return _Failure(f"{reason} (retry-after {wait:.0f}s is too long)", retryable=False)
            return _Failure(reason, retryable=True, retry_after=wait)
        if status >= 500 or status in RETRIED_STATUS_CODES:
            return _Failure(reason, retryable=True)
        return _Failure(reason, retryable=False, final=status in FINAL_STATUS_CODES)

    def _backoff(self, retry: int) -> float:
        """Full jitter: uniform in [0, min(max, base × 2^retry)]."""
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (retry - 1))
        return self.engine.rng.uniform(0.0, ceiling)

    def _account(
        self, request: ChatRequest, usage: Usage, estimate: int, spent: Usage, cost: float
    ) -> tuple[Usage, float]:
        answer_cost = self.engine.prices.cost(request.model, usage)
        tally = self.tally
        tally.input_tokens += usage.input_tokens
        tally.cached_input_tokens += usage.cached_input_tokens
        tally.output_tokens += usage.output_tokens
        tally.cost_usd += answer_cost
        self.limiter.settle(estimate, usage.input_tokens + usage.output_tokens)
        total = Usage(
            input_tokens=spent.input_tokens + usage.input_tokens,
            cached_input_tokens=spent.cached_input_tokens + usage.cached_input_tokens,
            output_tokens=spent.output_tokens + usage.output_tokens,
        )
        return total, cost + answer_cost

    def _finish(
        self, request: ChatRequest, key: str, status: str, usage: Usage, cost: float,
        attempts: int, *, final: bool = False, error: str | None = None, **fields: Any,
    ) -> ChatResult:  # fmt: skip
        result = ChatResult(
            request_id=request.request_id, cache_key=key, status=status, usage=usage,
            cost_usd=cost, attempts=attempts, error=redact_text(error) if error else None,
            **fields,
        )  # fmt: skip
        self.engine.cache.put(result, model=request.model, final=final)
        if status == "error":
            self.failures += 1
            self.tally.failures += 1
            self.last_error = result.error or ""
            log.warning("request %s failed: %s", request.request_id, result.error)
            cap = self.config.max_failures
            if cap is not None and self.failures >= cap and not self.aborting:
                self._abort()
        return result

    def _abort(self) -> None:
        """Stop sending: cancel what is not on the wire; what is finishes and is stored."""
        self.aborting = True
        for task in self.tasks - self.on_wire:
            if task is not asyncio.current_task():
                task.cancel()
        log.error("failure cap reached (%d failed); stopping the run", self.failures)
