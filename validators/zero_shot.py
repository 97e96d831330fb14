"""Zero-shot integrity: no source and no category of the benchmark is trained on.

Anomaly-OV evaluates zero-shot: VisA is kept out of its training data entirely, so that every
benchmark class is unseen. Benchmark images are named `<source>/<class>/...` (the class is
the path's second component, as Anomaly-OV's test_detection.py reads it); training records
carry `metadata.source` and `metadata.category`. The same image in both is the leakage
validator's finding (it compares the files).

Categories are compared by name across sources, lower-cased with "_", "-" and spaces
dropped: a "pcb1" trained from another release is no longer an unseen class either.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from adinstruct.validators.base import Batch, Finding, FolderContext, Validator
from adinstruct.validators.leakage import benchmark_images


def category_key(category: str) -> str:
    return "".join(category.lower().replace("-", " ").replace("_", " ").split())


class ZeroShotValidator(Validator):
    """Benchmark sources and categories against those of the instruction records."""

    name = "zero_shot"

    def __init__(self) -> None:
        #: (source, category) -> training records (a defaultdict: a Counter's += costs three
        #: times as much, per record), and the first record of each source
        self.trained: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.first_record: dict[str, tuple[str, str]] = {}

    def check_batch(self, batch: Batch, context: FolderContext) -> Iterable[Finding]:
        trained, first_record, file = self.trained, self.first_record, batch.file
        for record in batch.records:
            meta = record["metadata"]
            source = meta["source"]
            trained[(source, meta["category"])] += 1
            if source not in first_record:
                first_record[source] = (file, record["id"])
        return ()

    def finish(self, context: FolderContext) -> Iterable[Finding]:
        items, _ = benchmark_images(context.root)  # unreadable files: the leakage warning
        benchmark: dict[tuple[str, str], str] = {}  # (source, class) -> a benchmark file
        for item in items:
            parts = item.image.replace("\\", "/").split("/")
            if len(parts) >= 3:
                benchmark.setdefault((parts[0], parts[1]), item.file)
        if not benchmark or not self.trained:
            return []
        findings = []
        sources: Counter[str] = Counter()
        by_category: dict[str, Counter[str]] = {}
        for (source, category), count in self.trained.items():
            sources[source] += count
            by_category.setdefault(category_key(category), Counter())[f"{source}/{category}"] += (
                count
            )
        for source in sorted({source for source, _ in benchmark}):
            if source in sources:
                file, record_id = self.first_record[source]
                findings.append(
                    self.finding(
                        "error",
                        "benchmark_source_in_training",
                        f"the benchmark evaluates source {source!r}, and {sources[source]} "
                        f"training records come from it (first: {record_id})",
                        file=file,
                        record_id=record_id,
                    )
                )
        for (source, category), file in sorted(benchmark.items()):
            trained = by_category.get(category_key(category))
            if trained:
                listed = ", ".join(f"{name} ({count})" for name, count in sorted(trained.items()))
                findings.append(
                    self.finding(
                        "error",
                        "benchmark_category_in_training",
                        f"{file} evaluates class {source}/{category}, which training records "
                        f"also show: {listed}",
                        file=file,
                    )
                )
        return findings
