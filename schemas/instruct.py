"""What the describe and compose stages produce: Description, InstructionRecord, benchmark items."""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import ConfigDict, Field, field_validator
from typing_extensions import TypedDict

from adinstruct.schemas.records import Record

#: The task families of instruction records, in the order a sample's records are written: the
#: compose stage's (`builder.compose.FAMILIES`, which a test holds equal), named here so that
#: validation knows them without importing the stage and its templates.
TASK_FAMILIES: tuple[str, ...] = ("detection", "description", "localisation", "reasoning")


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


# The JSON of an instruction record as plain dicts, for `build-dataset validate`: validated
# strictly by pydantic-core with no model objects made, it costs half the model's parse, and
# 100k records a run make that count. Keys are the JSON keys ("from"), so no alias applies.
# It must accept exactly what InstructionRecord accepts, but for the turn order that the
# model's field validator adds (validators/base.py checks that on the dicts); a test mutates
# real records to hold the two to that.
TurnJSON = TypedDict("TurnJSON", {"from": Literal["human", "gpt"], "value": str})  # type: ignore[misc]
TurnJSON.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]


class RecordMetadataJSON(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    anomaly: bool
    source: str
    category: str
    sample_id: str
    defect_types: NotRequired[list[str]]
    mask: NotRequired[str | None]
    task_family: str


class InstructionRecordJSON(TypedDict):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]

    id: str
    image: str | list[str]
    conversations: Annotated[list[TurnJSON], Field(min_length=2)]
    metadata: RecordMetadataJSON


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
