"""The compose stage: instruction records (LLaVA-OneVision) from described samples."""

from adinstruct.builder.compose.compose import (
    ComposeConfig,
    choose_families,
    compose,
    compose_provenance,
    compose_sample,
    image_paths,
    records_summary,
    skip_reason,
)
from adinstruct.builder.compose.families import FAMILIES, Phrasebook, answer_context

__all__ = [
    "FAMILIES",
    "ComposeConfig",
    "Phrasebook",
    "answer_context",
    "choose_families",
    "compose",
    "compose_provenance",
    "compose_sample",
    "image_paths",
    "records_summary",
    "skip_reason",
]
