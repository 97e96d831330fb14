"""The describer interface: a stream of annotated samples in, the same samples described out.

Unlike the annotate stage, describing is I/O-bound for an LLM (many requests in flight in one
process), so a describer maps a whole stream rather than one sample at a time. It must yield
exactly one result per input sample, in input order, so that builds stay deterministic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator

from adinstruct.schemas import QuarantineEntry, Sample


class Describer(ABC):
    #: "template" or "openai"; the sample's `describer` field says e.g. "openai:gpt-4o-mini".
    name: str

    @abstractmethod
    def describe(self, samples: Iterable[Sample]) -> Iterator[Sample | QuarantineEntry]:
        """Yield each sample with `description` and `describer` set, or its quarantine entry."""

    def quarantine(self, sample: Sample, code: str, reason: str) -> QuarantineEntry:
        return QuarantineEntry(
            stage="describe", code=code, reason=reason, source=sample.source,
            path=sample.image_paths[0], sample_id=sample.id, sample=sample,
        )  # fmt: skip
