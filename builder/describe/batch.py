"""Batch mode: the same requests through the OpenAI Batch API, at half the price, resumable.

The requests are written as JSONL (`custom_id` = the cache key) into files of at most
`max_requests` lines and `max_bytes` bytes, uploaded, and submitted. Each uploaded file is
recorded in the cache before its batch is created, and the batch id right after, so a restart
finds every job: it polls a submitted batch instead of submitting it again, and for a file
whose batch creation was cut short it looks among the account's recent batches for one made
from that file before creating one. Requests already answered, or covered by an open job, are
not submitted at all.

Unlike the online engine there is no retry inside a run: an answer that ended with `length`
or `content_filter`, is not JSON, or fails `validate`, and a line the batch could not run,
is stored as an error that is not final, so the next run submits it again (or the caller
sends it through `Engine`). Errors the server gives for the request itself (400, 422) are
final, as online.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adinstruct.builder.describe.cache import AnswerCache, BatchJob
from adinstruct.builder.describe.engine import (
    FINAL_STATUS_CODES,
    EngineConfig,
    Validator,
    chat_body,
    read_answer,
)
from adinstruct.builder.describe.pricing import PriceTable
from adinstruct.builder.describe.requests import ChatRequest, ChatResult, Usage
from adinstruct.builder.errors import AdinstructError
from adinstruct.builder.progress import Progress
from adinstruct.builder.redact import redact_text
from adinstruct.schemas import LLMUsage

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS_PER_BATCH = 50_000
MAX_BYTES_PER_BATCH = 200_000_000
RUNNING_STATES = ("validating", "in_progress", "finalizing", "cancelling")
#: How far back a restart looks for a batch created from a file just before a crash.
RECENT_BATCHES = 100


class BatchError(AdinstructError):
    """The Batch API refused to take a job (the upload or the batch creation failed)."""


@dataclass
class _Chunk:
    """One batch input file being written."""

    path: Path
    keys: list[str] = field(default_factory=list)
    size: int = 0

    def add(self, key: str, line: bytes) -> None:
        with self.path.open("ab") as handle:
            handle.write(line)
        self.keys.append(key)
        self.size += len(line)


@dataclass(frozen=True)
class _Facts:
    """What reading an answer needs to know of its request, kept instead of the request."""

    request_id: str
    model: str
    expects_json: bool


class BatchRunner:
    def __init__(
        self,
        config: EngineConfig,
        cache: AnswerCache,
        prices: PriceTable,
        poll_interval_s: float = 30.0,
        *,
        max_requests: int = MAX_REQUESTS_PER_BATCH,
        max_bytes: int = MAX_BYTES_PER_BATCH,
        progress: Progress | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.prices = prices
        self.poll_interval_s = poll_interval_s
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.progress = progress or Progress()
        self.totals = LLMUsage()
        self._client_instance: Any = None

    def run(
        self, requests: Iterable[ChatRequest], validate: Validator | None = None
    ) -> Iterator[ChatResult]:
        """Submit what is missing, wait for every batch, then yield results in input order."""
        open_jobs = self.cache.open_batch_jobs()
        covered = {key: job for job in open_jobs for key in self.cache.batch_keys(job.job_id)}
        order: list[tuple[str, str]] = []
        facts: dict[str, _Facts] = {}
        needed: dict[int, BatchJob] = {}
        submitted: list[BatchJob] = []
        with tempfile.TemporaryDirectory(prefix="adinstruct-batch-") as workdir:
            chunk = _Chunk(Path(workdir) / "batch-0.jsonl")
            for request in requests:
                key = request.cache_key()
                order.append((request.request_id, key))
                if key in facts:
                    continue
                facts[key] = _Facts(
                    request.request_id, request.model, request.response_schema is not None
                )
                if self.cache.contains(key):
                    continue
                if key in covered:
                    needed[covered[key].job_id] = covered[key]
                    continue
                line = self._line(request, key)
                if chunk.keys and (
                    len(chunk.keys) >= self.max_requests or chunk.size + len(line) > self.max_bytes
                ):
                    # Submitted as soon as it is full: the JSONL of 100k requests with
                    # images would not fit on every disk at once.
                    submitted.append(self._submit(chunk))
                    chunk = _Chunk(Path(workdir) / f"batch-{len(submitted)}.jsonl")
                chunk.add(key, line)
            if chunk.keys:
                submitted.append(self._submit(chunk))
        fresh = {key for job in submitted for key in self.cache.batch_keys(job.job_id)}
        self.totals.requests += len(fresh)
        jobs = list(needed.values()) + submitted
        if jobs:
            self._poll(jobs, facts, validate)
        stored_now = {key for job in jobs for key in self.cache.batch_keys(job.job_id)}
        yield from self._results(order, stored_now)

    # -- submitting ------------------------------------------------------------------

    def _line(self, request: ChatRequest, key: str) -> bytes:
        body = chat_body(request, self.config)
        line = {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}
        encoded = json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if len(encoded) + 1 > self.max_bytes:
            raise BatchError(
                f"request {request.request_id} is {len(encoded) + 1:,} bytes as a batch line, "
                f"more than a whole batch file may hold ({self.max_bytes:,})"
            )
        return encoded + b"\n"

    def _submit(self, chunk: _Chunk) -> BatchJob:
        client = self._client()
        with chunk.path.open("rb") as handle:
            uploaded = client.files.create(file=(chunk.path.name, handle), purpose="batch")
        chunk.path.unlink()
        # Persisted before the batch exists: a crash from here on leaves a trace to resume.
        job_id = self.cache.add_batch_job(uploaded.id, chunk.keys)
        log.info("uploaded %d requests as %s", len(chunk.keys), uploaded.id)
        return self._create_batch(job_id, uploaded.id, len(chunk.keys))

    def _create_batch(self, job_id: int, input_file_id: str, count: int) -> BatchJob:
        import openai

        try:
            # No automatic retry: a create that timed out may still have made a batch, and a
            # second one would be paid twice. A rerun reconciles through `_resume`.
            batch = self._client().with_options(max_retries=0).batches.create(
                input_file_id=input_file_id, endpoint=ENDPOINT, completion_window="24h",
                metadata={"adinstruct_job": str(job_id)},
            )  # fmt: skip
        except openai.APIError as error:
            raise BatchError(
                redact_text(
                    f"creating the batch for file {input_file_id} failed: {error}; the file is "
                    f"recorded in {self.cache.path}, and a rerun submits it"
                )
            ) from error
        self.cache.set_batch_submitted(job_id, batch.id)
        log.info("submitted batch %s (%d requests)", batch.id, count)
        return BatchJob(job_id, input_file_id, batch.id, "submitted", count)

    def _resume(self, job: BatchJob) -> BatchJob:
        """A job whose batch creation may have been cut short: adopt its batch, or create it."""
        for batch in self._client().batches.list(limit=RECENT_BATCHES).data:
            if batch.input_file_id == job.input_file_id:
                self.cache.set_batch_submitted(job.job_id, batch.id)
                return BatchJob(
                    job.job_id, job.input_file_id, batch.id, "submitted", job.request_count
                )
        return self._create_batch(job.job_id, job.input_file_id, job.request_count)

    # -- waiting and collecting ------------------------------------------------------

    def _poll(self, jobs: list[BatchJob], facts: dict[str, _Facts], validate: Validator | None):
        waiting = [self._resume(job) if job.batch_id is None else job for job in jobs]
        while waiting:
            states = []
            for job in list(waiting):
                batch = self._client().batches.retrieve(job.batch_id)
                states.append(batch.status)
                if batch.status not in RUNNING_STATES:
                    self._collect(job, batch, facts, validate)
                    waiting.remove(job)
            self.progress.stats(
                f"{len(waiting)} of {len(jobs)} batches running: {', '.join(states)}"
            )
            if waiting:
                time.sleep(self.poll_interval_s)

    def _collect(
        self, job: BatchJob, batch: Any, facts: dict[str, _Facts], validate: Validator | None
    ) -> None:
        import openai

        keys = set(self.cache.batch_keys(job.job_id))
        answered: set[str] = set()
        why, lost = "", False
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            try:
                self._read_output(file_id, batch.id, keys, facts, validate, answered)
            except openai.NotFoundError:
                # Output files expire (30 days): what it held is lost, and is asked again.
                log.warning("batch %s: its output file %s is gone", batch.id, file_id)
                why, lost = f" (its output file {file_id} is gone)", True
        errors = (batch.errors.data or []) if batch.errors else []
        if errors and errors[0].message:
            why = f" ({errors[0].message})"
        for key in keys - answered:
            if self.cache.contains(key):
                continue
            known = facts.get(key)
            missing = ChatResult(
                request_id=known.request_id if known else "", cache_key=key, status="error",
                attempts=1, error=redact_text(
                    f"batch {batch.id} ended {batch.status}{why} without an answer for it"
                ),
            )  # fmt: skip
            self.cache.put(missing, model=known.model if known else "unknown")
            self.totals.failures += 1
        done = batch.status == "completed" and not lost
        self.cache.set_batch_state(job.job_id, "done" if done else "failed")
        log.info("batch %s %s: %d answers stored", batch.id, batch.status, len(answered))

    def _read_output(
        self, file_id: str, batch_id: str, keys: set[str], facts: dict[str, _Facts],
        validate: Validator | None, answered: set[str],
    ) -> None:  # fmt: skip
        with self._client().files.with_streaming_response.content(file_id) as response:
            for line in response.iter_lines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key = item.get("custom_id")
                if key not in keys:
                    log.warning("batch %s answered an unknown custom_id %r", batch_id, key)
                    continue
                self._store(item, key, facts.get(key), validate)
                answered.add(key)

    def _store(
        self, item: dict[str, Any], key: str, facts: _Facts | None, validate: Validator | None
    ) -> None:
        response = item.get("response") or {}
        body = response.get("body") or {}
        model = facts.model if facts else body.get("model", "unknown")
        request_id = facts.request_id if facts else ""
        status_code = response.get("status_code")
        if status_code != 200:
            error = body.get("error") or item.get("error") or {}
            message = error.get("message", "no message") if isinstance(error, dict) else error
            failed = ChatResult(
                request_id=request_id, cache_key=key, status="error", attempts=1,
                error=redact_text(f"HTTP {status_code} in the batch: {message}"),
            )  # fmt: skip
            self.cache.put(failed, model=model, final=status_code in FINAL_STATUS_CODES)
            self.totals.failures += 1
            return
        answer = read_answer(body, expects_json=facts.expects_json if facts else False)
        cost = self.prices.cost(model, answer.usage, batch=True)
        self._count(answer.usage, cost)
        result = ChatResult(
            request_id=request_id, cache_key=key,
            status="refused" if answer.status == "refused" else "ok",
            content=answer.content, refusal=answer.refusal, finish_reason=answer.finish_reason,
            usage=answer.usage, cost_usd=cost, attempts=1,
        )  # fmt: skip
        problem = answer.problem
        if answer.status == "ok" and validate is not None and (found := validate(result)):
            problem = f"the answer failed validation: {found}"
        if problem is not None:  # not final: the next run submits it again
            result = result.model_copy(update={"status": "error", "error": problem})
            self.totals.failures += 1
        self.cache.put(result, model=model)

    def _count(self, usage: Usage, cost: float) -> None:
        self.totals.input_tokens += usage.input_tokens
        self.totals.output_tokens += usage.output_tokens
        self.totals.cost_usd += cost

    def _results(self, order: list[tuple[str, str]], stored_now: set[str]) -> Iterator[ChatResult]:
        seen: set[str] = set()
        for request_id, key in order:
            result = self.cache.get(key) or self.cache.last_outcome(key) or self._no_answer(key)
            from_cache = key not in stored_now or key in seen
            seen.add(key)
            if from_cache:
                self.totals.cache_hits += 1
            self.progress.advance(1, quarantined=int(result.status != "ok"))
            yield result.model_copy(update={"request_id": request_id, "from_cache": from_cache})

    def _no_answer(self, key: str) -> ChatResult:
        error = "no answer came back from the batch"
        return ChatResult(request_id="", cache_key=key, status="error", error=error, attempts=1)

    def _client(self) -> Any:
        if self._client_instance is None:
            import openai

            self._client_instance = openai.OpenAI(
                api_key=self.config.resolved_key(), base_url=self.config.base_url,
                timeout=self.config.timeout_s, max_retries=self.config.max_retries,
            )  # fmt: skip
        return self._client_instance
