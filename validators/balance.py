"""Balance (warnings only): records per source, category, label and task family, against targets.

Family targets are the recipe's family weights as the manifest records them
(`config.instruct.compose.config.families`), normalised to shares; without a manifest every
compose family (and any other family the records use) gets an equal share. Each label should
hold at least `label_min_share` of the records, and each category at least
`min_category_records`. Source shares are checked only against targets given.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from operator import itemgetter
from typing import Any

from adinstruct.schemas.instruct import TASK_FAMILIES
from adinstruct.validators.base import Batch, Finding, FolderContext, Validator

MANIFEST_FILE = "manifest.json"
LABELS = ("anomaly", "normal")
#: (source, category, anomaly, task family, file) of a record
TallyKey = tuple[str, str, bool, str, str]


def manifest_family_weights(context: FolderContext) -> dict[str, float] | None:
    """The recipe's family weights from DIR/manifest.json, or None when it has none."""
    path = context.root / MANIFEST_FILE
    try:
        manifest: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # a missing or broken manifest is the schema check's finding
    weights: Any = manifest
    for key in ("config", "instruct", "compose", "config", "families"):
        weights = weights.get(key) if isinstance(weights, dict) else None
    if not isinstance(weights, dict):
        return None
    valid = {
        str(name): float(weight)
        for name, weight in weights.items()
        if isinstance(weight, int | float) and weight >= 0
    }
    return valid if sum(valid.values()) > 0 else None


def shares(weights: Mapping[str, float]) -> dict[str, float]:
    total = sum(weights.values())
    return {name: weight / total for name, weight in weights.items()}


class BalanceValidator(Validator):
    """Counts by source, category, label and family; warnings where a share is off target."""

    name = "balance"

    def __init__(
        self,
        *,
        tolerance: float = 0.10,
        label_min_share: float = 0.20,
        min_category_records: int = 20,
        family_targets: Mapping[str, float] | None = None,
        source_targets: Mapping[str, float] | None = None,
    ) -> None:
        self.tolerance = tolerance
        self.label_min_share = label_min_share
        self.min_category_records = min_category_records
        self.family_targets = dict(family_targets) if family_targets else None
        self.source_targets = dict(source_targets) if source_targets else None
        #: Records by (source, category, anomaly, family, file): one count a record, summed by
        #: each of them at the end (five Counter updates a record cost 2 µs).
        self.tally: defaultdict[TallyKey, int] = defaultdict(int)

    def check_batch(self, batch: Batch, context: FolderContext) -> Iterable[Finding]:
        tally, file = self.tally, batch.file
        for record in batch.records:
            meta = record["metadata"]
            key = (meta["source"], meta["category"], meta["anomaly"], meta["task_family"], file)
            tally[key] += 1
        return ()

    def counted(self, name: Callable[[TallyKey], str]) -> Counter[str]:
        counts: Counter[str] = Counter()
        for key, count in self.tally.items():
            counts[name(key)] += count
        return counts

    @property
    def by_source(self) -> Counter[str]:
        return self.counted(itemgetter(0))

    @property
    def by_category(self) -> Counter[str]:
        """By "<source>/<category>"."""
        return self.counted(lambda key: f"{key[0]}/{key[1]}")

    @property
    def by_label(self) -> Counter[str]:
        return self.counted(lambda key: "anomaly" if key[2] else "normal")

    @property
    def by_family(self) -> Counter[str]:
        return self.counted(itemgetter(3))

    @property
    def files(self) -> Counter[str]:
        return self.counted(itemgetter(4))

    def summary(self) -> dict[str, dict[str, int]]:
        """The counts, for the manifest's validation summary."""
        return {
            "by_source": dict(sorted(self.by_source.items())),
            "by_category": dict(sorted(self.by_category.items())),
            "by_label": dict(sorted(self.by_label.items())),
            "by_family": dict(sorted(self.by_family.items())),
        }

    def finish(self, context: FolderContext) -> Iterable[Finding]:
        by_family, by_label, files = self.by_family, self.by_label, self.files
        total = sum(by_family.values())
        if not total:
            return []
        file = files.most_common(1)[0][0] if len(files) == 1 else ""
        findings = []
        family_targets, origin = self.targets(context, by_family)
        findings += self.against(
            "family_share", "task family", by_family, family_targets, origin, total, file
        )
        if self.source_targets:
            findings += self.against(
                "source_share", "source", self.by_source, shares(self.source_targets),
                "the configured targets", total, file,
            )  # fmt: skip
        for label in LABELS:
            share = by_label[label] / total
            if share < self.label_min_share:
                findings.append(
                    self.finding(
                        "warning",
                        "label_share",
                        f"{by_label[label]} of {total} records ({share:.0%}) are {label}; "
                        f"at least {self.label_min_share:.0%} each is the target",
                        file=file,
                    )
                )
        for category, count in sorted(self.by_category.items()):
            if count < self.min_category_records:
                findings.append(
                    self.finding(
                        "warning",
                        "small_category",
                        f"category {category} has {count} records, fewer than "
                        f"{self.min_category_records}",
                        file=file,
                    )
                )
        return findings

    def targets(
        self, context: FolderContext, by_family: Counter[str]
    ) -> tuple[dict[str, float], str]:
        if self.family_targets:
            return shares(self.family_targets), "the configured targets"
        weights = manifest_family_weights(context)
        if weights is not None:
            return shares(weights), "the recipe's family weights (manifest.json)"
        families = dict.fromkeys([*TASK_FAMILIES, *sorted(by_family)], 1.0)
        return shares(families), "equal family shares"

    def against(
        self, code: str, what: str, counts: Counter[str], targets: Mapping[str, float],
        origin: str, total: int, file: str,
    ) -> list[Finding]:  # fmt: skip
        findings = []
        for name in sorted(set(targets) | set(counts)):
            share, target = counts[name] / total, targets.get(name, 0.0)
            if abs(share - target) > self.tolerance:
                findings.append(
                    self.finding(
                        "warning",
                        code,
                        f"{what} {name} has {counts[name]} of {total} records ({share:.0%}); "
                        f"{origin} put it at {target:.0%} (tolerance {self.tolerance:.0%})",
                        file=file,
                    )
                )
        return findings
