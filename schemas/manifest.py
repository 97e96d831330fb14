"""The manifest: what was built, from what, with counts, checksums, cost and validation."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from adinstruct.schemas.records import Record


class Counts(Record):
    total: int = 0
    by_split: dict[str, int] = Field(default_factory=dict)
    by_label: dict[str, int] = Field(default_factory=dict)
    by_category: dict[str, int] = Field(default_factory=dict)
    quarantined: int = 0


class SourceInfo(Record):
    name: str = Field(description="Builder name, e.g. mvtec_ad.")
    root: str = Field(description="Absolute path of the release root that was read.")
    layout: str = Field(description="Which of the builder's accepted layouts was recognised.")
    license: str = Field(description="SPDX-style licence id of the release.")
    license_url: str | None = None
    homepage: str | None = None
    counts: Counts = Field(default_factory=Counts)


class OutputFile(Record):
    path: str = Field(description="Relative to the output folder.")
    records: int = Field(ge=0)
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class LLMUsage(Record):
    requests: int = 0
    cache_hits: int = 0
    failures: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class Manifest(Record):
    toolkit: str = "adinstruct"
    toolkit_version: str
    command: list[str] = Field(description="The command line, with secrets removed.")
    config: dict[str, Any] = Field(default_factory=dict)
    sources: list[SourceInfo] = Field(default_factory=list)
    outputs: list[OutputFile] = Field(default_factory=list)
    stages: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Per stage, in pipeline order: in, out, quarantined."
    )
    quarantine_codes: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Per stage: quarantine entries by reason code."
    )
    llm_usage: LLMUsage = Field(default_factory=LLMUsage)
    validation: dict[str, Any] | None = None
    sanity: dict[str, Any] | None = Field(
        default=None,
        description="The detector sanity check's summary (build-dataset sanity): backbone, "
        "prompts, mean metrics, flag counts; the details are in sanity/metrics.json.",
    )
