"""What the describe and compose stages produce: Description, InstructionRecord, benchmark items."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from adinstruct.schemas.records import Record


class Turn(Record):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    speaker: Literal["human", "gpt"] = Field(alias="from")
    value: str


class RecordMetadata(Record):
    anomaly: bool
    source: str
    category: str
    sample_id: str
    defect_types: list[str] = Field(default_factory=list)
    mask: str | None = Field(default=None, description="Mask path under the output folder.")
    task_family: str


class InstructionRecord(Record):
    """One training conversation in the LLaVA-OneVision format that Anomaly-OV's loader reads."""

    id: str
    image: str | list[str] = Field(
        description="Path(s) relative to the image folder; views in order."
    )
    conversations: list[Turn] = Field(min_length=2)
    metadata: RecordMetadata

    @field_validator("conversations")
    @classmethod
    def _even_and_alternating(cls, turns: list[Turn]) -> list[Turn]:
        if len(turns) % 2:
            raise ValueError(f"conversations need an even number of turns, got {len(turns)}")
        for index, turn in enumerate(turns):
            expected = "human" if index % 2 == 0 else "gpt"
            if turn.speaker != expected:
                raise ValueError(f"turn {index} is from {turn.speaker!r}, expected {expected!r}")
        return turns


class DetectionItem(Record):
    """An entry of test_data.json, as Anomaly-OV's test_detection.py reads it."""

    image: str = Field(description="'<source>/<class>/...': the class is the second component.")
    anomaly: bool


class ReasoningItem(Record):
    """An entry of visa_dr.json: one multi-turn chat, with grounded reference answers."""

    image: str | list[str]
    questions: list[str] = Field(min_length=1)
    answers: list[str] = Field(default_factory=list)


MMADType = Literal[
    "Anomaly Detection",
    "Defect Classification",
    "Defect Localization",
    "Defect Description",
    "Defect Analysis",
    "Object Classification",
    "Object Analysis",
]


class MMADQuestion(Record):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    question: str = Field(alias="Question")
    options: dict[str, str] = Field(alias="Options", min_length=2)
    answer: str = Field(alias="Answer", pattern=r"^[A-Z]$")
    type: MMADType


class MMADItem(Record):
    """The value of one key (the query image's relative path) of mmad.json."""

    conversation: list[MMADQuestion] = Field(min_length=1)
    mask_path: str | None = None
    similar_templates: list[str] = Field(default_factory=list)
    random_templates: list[str] = Field(default_factory=list)
