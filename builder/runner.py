"""Run a stage over a stream of samples, in this process or over a pool of worker processes.

Stages know nothing of processes: a runner cuts the stream into shards, ships the stage and a
shard to a worker, and yields the results in input order (so builds are deterministic).
Only a bounded window of shards is in flight, so memory does not grow with the stream. A Ray
runner would implement the same `map`.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from itertools import islice

from adinstruct.builder.stage import Stage
from adinstruct.schemas import QuarantineEntry, Sample

logger = logging.getLogger(__name__)

Result = Sample | QuarantineEntry


def process_shard(stage: Stage, shard: list[Sample]) -> list[Result]:
    """Apply the stage to each sample; an unexpected error becomes that sample's quarantine entry.

    Catching broadly is deliberate here and only here: one sample that trips a bug in a stage
    (or in a decoder) must not stop a 100k-sample build, and its reason is recorded, not lost.
    """
    results: list[Result] = []
    for sample in shard:
        try:
            results.append(stage.process(sample))
        except Exception as error:  # noqa: BLE001 - recorded in the quarantine entry
            logger.warning("%s failed on %s: %r", stage.name, sample.id, error)
            results.append(
                stage.quarantine(sample, "unexpected_error", f"{type(error).__name__}: {error}")
            )
    return results


def shards(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    iterator = iter(samples)
    while shard := list(islice(iterator, size)):
        yield shard


class Runner(ABC):
    @abstractmethod
    def map(self, stage: Stage, samples: Iterable[Sample]) -> Iterator[Result]:
        """Yield one result per input sample, in input order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release workers; the in-process runner has none."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class InProcessRunner(Runner):
    def map(self, stage: Stage, samples: Iterable[Sample]) -> Iterator[Result]:
        for shard in shards(samples, 1):
            yield from process_shard(stage, shard)


def pool_context() -> multiprocessing.context.BaseContext:
    # fork is unsafe once threads run (the progress bar has one); forkserver forks workers from
    # a clean single-threaded server, cheaply, where the platform has it.
    if sys.platform.startswith("linux"):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(
            [
                "adinstruct.builder.annotate",
                "adinstruct.schemas",
                "scipy.ndimage",
                "pycocotools.mask",
            ]
        )
        return context
    return multiprocessing.get_context("spawn")


class ProcessPoolRunner(Runner):
    def __init__(self, workers: int, shard_size: int = 4, shards_in_flight: int | None = None):
        self.workers = workers
        self.shard_size = shard_size
        self.shards_in_flight = shards_in_flight or workers * 4
        self._executor: ProcessPoolExecutor | None = None

    def executor(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=pool_context())
        return self._executor

    def restart(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None

    def map(self, stage: Stage, samples: Iterable[Sample]) -> Iterator[Result]:
        pending: deque[tuple[list[Sample], Future[list[Result]]]] = deque()
        stream = shards(samples, self.shard_size)
        for shard in stream:
            pending.append((shard, self.executor().submit(process_shard, stage, shard)))
            if len(pending) >= self.shards_in_flight:
                yield from self.collect(stage, pending)
        while pending:
            yield from self.collect(stage, pending)

    def collect(
        self, stage: Stage, pending: deque[tuple[list[Sample], Future[list[Result]]]]
    ) -> Iterator[Result]:
        shard, future = pending.popleft()
        try:
            yield from future.result()
            return
        except BrokenProcessPool:
            logger.warning("a %s worker died; retrying its shards one sample at a time", stage.name)
        # A worker died (a decoder crashed, or the kernel killed it). Everything in flight is
        # lost with the pool: rerun this shard and the others, each sample alone, so that only
        # the sample that kills a worker is quarantined.
        retry = [shard] + [queued for queued, _ in pending]
        pending.clear()
        self.restart()
        for queued in retry:
            for sample in queued:
                yield self.run_alone(stage, sample)

    def run_alone(self, stage: Stage, sample: Sample) -> Result:
        try:
            return self.executor().submit(process_shard, stage, [sample]).result()[0]
        except BrokenProcessPool:
            self.restart()
            return stage.quarantine(
                sample, "worker_crashed", f"the {stage.name} worker process died on this sample"
            )

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def make_runner(workers: int | None) -> Runner:
    count = default_workers() if workers is None else workers
    return InProcessRunner() if count <= 1 else ProcessPoolRunner(count)
