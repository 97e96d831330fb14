"""Rate limits for the engine: requests and tokens per minute, a global pause, bounded concurrency.

Everything reads time from an injectable `Clock`, so tests drive it with a fake one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class TokenBucket:
    """Refills at `per_minute / 60` a second and holds one second's worth.

    Servers enforce per-minute limits over shorter windows, so a full minute's burst at the
    start would be refused. A cost larger than the bucket (a big request under a small
    tokens-per-minute limit) goes through once the bucket is full and leaves it in debt, so
    the long-run rate holds for any cost and nothing waits forever.
    """

    def __init__(self, per_minute: float, clock: Clock) -> None:
        if per_minute <= 0:
            raise ValueError(f"a rate limit must be positive, not {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = self.rate
        self.level = self.capacity
        self._clock = clock
        self._updated = clock.now()

    def _refill(self) -> None:
        now = self._clock.now()
        self.level = min(self.capacity, self.level + (now - self._updated) * self.rate)
        self._updated = now

    def delay_for(self, cost: float) -> float:
        """Seconds until `cost` may be taken (0 if now)."""
        self._refill()
        needed = min(cost, self.capacity)
        return 0.0 if self.level >= needed - 1e-9 else (needed - self.level) / self.rate

    def take(self, cost: float) -> None:
        self._refill()
        self.level -= cost

    def give_back(self, amount: float) -> None:
        """Correct an estimate: a positive amount returns tokens, a negative one takes more."""
        self._refill()
        self.level = min(self.capacity, self.level + amount)


class RateLimiter:
    """Admits a request when a concurrency slot is free and both buckets allow it."""

    def __init__(
        self,
        *,
        concurrency: int,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or MonotonicClock()
        self.requests = (
            TokenBucket(requests_per_minute, self.clock) if requests_per_minute else None
        )
        self.tokens = TokenBucket(tokens_per_minute, self.clock) if tokens_per_minute else None
        self._semaphore = asyncio.Semaphore(concurrency)
        self._lock = asyncio.Lock()  # FIFO: waiters are admitted in the order they came
        self._paused_until = float("-inf")
        self.in_flight = 0
        self.most_in_flight = 0

    @asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[None]:
        """Hold a concurrency slot for one request, admitted by the rate limits."""
        async with self._semaphore:
            await self._admit(estimated_tokens)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1

    async def _admit(self, estimated_tokens: int) -> None:
        if self.requests is None and self.tokens is None and not self._paused():
            return  # the common case without limits costs no lock
        async with self._lock:
            while (wait := self._wait_for(estimated_tokens)) > 0:
                await self.clock.sleep(wait)
            if self.requests:
                self.requests.take(1)
            if self.tokens:
                self.tokens.take(estimated_tokens)

    def _paused(self) -> bool:
        return self.clock.now() < self._paused_until

    def _wait_for(self, estimated_tokens: int) -> float:
        waits = [self._paused_until - self.clock.now()]
        if self.requests:
            waits.append(self.requests.delay_for(1))
        if self.tokens:
            waits.append(self.tokens.delay_for(estimated_tokens))
        return max(waits)

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Correct the tokens bucket with what the server counted."""
        if self.tokens:
            self.tokens.give_back(estimated_tokens - actual_tokens)

    def pause(self, seconds: float) -> None:
        """Admit nothing for `seconds` (the server said so, with a 429's retry-after)."""
        self._paused_until = max(self._paused_until, self.clock.now() + seconds)
