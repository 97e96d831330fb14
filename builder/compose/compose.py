"""The compose stage: described samples in, LLaVA-OneVision instruction records out, streaming.

Each sample gets `records_per_sample` distinct families, drawn by weight (without replacement)
from those that suit it, with `random.Random(f"{seed}:{sample.id}:families")`: the draw is
reproducible and independent of the order of samples and of the other samples.

Samples that cannot be composed are skipped, not quarantined: the caller owns the quarantine
file and asks `skip_reason(sample)` for the code (no_annotation, no_description,
description_disagrees).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adinstruct.builder.compose.families import (
    FAMILIES,
    FAMILY_BUILDERS,
    Phrasebook,
    Round,
    Speaker,
    answer_context,
    is_eligible,
    question_context,
)
from adinstruct.builder.images import shown_images
from adinstruct.schemas import InstructionRecord, RecordMetadata, Sample, Turn

IMAGE_TOKEN = "<image>"


class ComposeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    families: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(FAMILIES, 1.0),
        description=f"Family -> weight (>= 0); families: {', '.join(FAMILIES)}.",
    )
    records_per_sample: int = Field(
        default=2, ge=1, le=3, description="Distinct families per sample (fewer if fewer suit)."
    )
    image_prefix: str = Field(
        default="",
        description="Prepended as is to '<source>/<image path>'; paths are relative to the "
        "trainer's --image_folder (DIR/images).",
    )
    templates_dir: Path | None = Field(
        default=None,
        description="Folder with questions/*.j2 and answers/*.j2 replacing shipped banks "
        "of the same name.",
    )

    @field_validator("families")
    @classmethod
    def _known_weights(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown families {unknown}; known: {list(FAMILIES)}")
        negative = sorted(name for name, weight in weights.items() if weight < 0)
        if negative:
            raise ValueError(f"family weights must be >= 0: {negative}")
        if not any(weight > 0 for weight in weights.values()):
            raise ValueError("at least one family needs a weight above 0")
        return weights


def skip_reason(sample: Sample) -> str | None:
    """Why compose would skip `sample` (a quarantine code for the caller), or None."""
    if sample.annotation is None:
        return "no_annotation"
    if sample.description is None:
        return "no_description"
    if sample.description.anomaly_present != (sample.label == "anomaly"):
        # Its free text would contradict the yes/no answers, which follow the label.
        return "description_disagrees"
    return None


def compose(samples: Iterable[Sample], config: ComposeConfig) -> Iterator[InstructionRecord]:
    """Records for every composable sample, in input order; banks are read once, up front."""
    phrasebook = Phrasebook.load(config.templates_dir)
    for sample in samples:
        if skip_reason(sample) is None:
            yield from compose_sample(sample, config, phrasebook)


def compose_sample(
    sample: Sample, config: ComposeConfig, phrasebook: Phrasebook
) -> list[InstructionRecord]:
    """The records of one sample, in FAMILIES order; raises ValueError for a skipped sample."""
    reason = skip_reason(sample)
    if reason is not None:
        raise ValueError(f"sample {sample.id} cannot be composed: {reason}")
    questions, answers = question_context(sample), answer_context(sample)
    records = []
    for family in choose_families(sample, config):
        speaker = Speaker(phrasebook, config.seed, sample.id, family, questions, answers)
        rounds = FAMILY_BUILDERS[family](speaker, sample)
        records.append(make_record(sample, family, rounds, config))
    return records


def choose_families(sample: Sample, config: ComposeConfig) -> list[str]:
    """Up to `records_per_sample` distinct suitable families, drawn by weight, in FAMILIES order."""
    rng = random.Random(f"{config.seed}:{sample.id}:families")
    pool = [
        (family, config.families.get(family, 0.0))
        for family in FAMILIES
        if config.families.get(family, 0.0) > 0 and is_eligible(family, sample)
    ]
    chosen: set[str] = set()
    while pool and len(chosen) < config.records_per_sample:
        point = rng.random() * sum(weight for _, weight in pool)
        index = len(pool) - 1  # float rounding may leave `point` a hair above the last bound
        for position, (_, weight) in enumerate(pool):
            point -= weight
            if point < 0:
                index = position
                break
        chosen.add(pool.pop(index)[0])
    return [family for family in FAMILIES if family in chosen]


def image_paths(sample: Sample, prefix: str = "") -> list[str]:
    """'<prefix><source>/<path>' per image the record shows, in order: all views when
    view_count > 1, and a 3D sample's renders instead of its cloud (`shown_images`)."""
    return [f"{prefix}{path}" for path in shown_images(sample)]


def make_record(
    sample: Sample, family: str, rounds: list[Round], config: ComposeConfig
) -> InstructionRecord:
    images = image_paths(sample, config.image_prefix)
    turns: list[Turn] = []
    for index, (question, answer) in enumerate(rounds):
        if index == 0:
            # One token per image at the front of the first turn, where LLaVA-OneVision
            # moves a lone token anyway.
            question = f"{IMAGE_TOKEN}\n" * len(images) + question
        turns += [Turn(speaker="human", value=question), Turn(speaker="gpt", value=answer)]
    anomaly = sample.label == "anomaly"
    return InstructionRecord(
        id=f"{sample.id}#{family}",
        image=images[0] if len(images) == 1 else images,
        conversations=turns,
        metadata=RecordMetadata(
            anomaly=anomaly,
            source=sample.source,
            category=sample.category,
            sample_id=sample.id,
            defect_types=list(sample.defect_types) if anomaly else [],
            mask=f"masks/{sample.source}/{sample.masks[0].path}" if sample.masks else None,
            task_family=family,
        ),
    )


def records_summary(records: Iterable[InstructionRecord]) -> dict[str, Any]:
    """Counts by family and by label, for the manifest."""
    by_family: Counter[str] = Counter()
    by_label: Counter[str] = Counter()
    total = 0
    for record in records:
        total += 1
        by_family[record.metadata.task_family] += 1
        by_label["anomaly" if record.metadata.anomaly else "normal"] += 1
    return {
        "records": total,
        "by_family": dict(sorted(by_family.items())),
        "by_label": dict(sorted(by_label.items())),
    }


def compose_provenance(config: ComposeConfig) -> dict[str, Any]:
    """The config and the sha256 of every bank used: what shapes the records besides samples."""
    return {
        "config": config.model_dump(mode="json"),
        "banks": Phrasebook.load(config.templates_dir).hashes(),
    }
