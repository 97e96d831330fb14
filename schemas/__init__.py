"""Pydantic models for every record adinstruct reads or writes, and their JSON Schema files."""

from adinstruct.schemas.instruct import (
    DetectionItem,
    InstructionRecord,
    MMADItem,
    MMADQuestion,
    ReasoningItem,
    RecordMetadata,
    Turn,
)
from adinstruct.schemas.manifest import Counts, LLMUsage, Manifest, OutputFile, SourceInfo
from adinstruct.schemas.records import (
    GRID_WORDS,
    RLE,
    Annotation,
    DefectMask,
    Description,
    MaskRef,
    QuarantineEntry,
    Region,
    Sample,
)

__all__ = [
    "GRID_WORDS",
    "RLE",
    "Annotation",
    "Counts",
    "DefectMask",
    "Description",
    "DetectionItem",
    "InstructionRecord",
    "LLMUsage",
    "MMADItem",
    "MMADQuestion",
    "Manifest",
    "MaskRef",
    "OutputFile",
    "QuarantineEntry",
    "ReasoningItem",
    "RecordMetadata",
    "Region",
    "Sample",
    "SourceInfo",
    "Turn",
]
