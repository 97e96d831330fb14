"""The contract between a stage and the runner: one sample in, one sample or quarantine entry out.

A stage knows nothing of processes, pools or clusters. It must be picklable (hold only its
configuration) so that a runner can ship it to workers, and it must not keep per-sample state,
so that memory stays flat however many samples flow through it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from adinstruct.schemas import QuarantineEntry, Sample


class Stage(ABC):
    #: Written into quarantine entries and the manifest's per-stage counts.
    name: str

    @abstractmethod
    def process(self, sample: Sample) -> Sample | QuarantineEntry:
        """Return the sample, enriched, or a quarantine entry saying why it was rejected."""

    def quarantine(self, sample: Sample, code: str, reason: str, path: str | None = None):
        return QuarantineEntry(
            stage=self.name,
            code=code,
            reason=reason,
            source=sample.source,
            path=path if path is not None else sample.image_paths[0],
            sample_id=sample.id,
            sample=sample,
        )
