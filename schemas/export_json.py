"""Export the record models as JSON Schema files beside this module.

Run `python -m adinstruct.schemas.export_json` after changing a model; a test fails while the
files and the models disagree, so a folder produced by another tool can be checked against
the same contract the code uses.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, RootModel

from adinstruct.schemas.instruct import (
    DetectionItem,
    InstructionRecord,
    MMADItem,
    ReasoningItem,
)
from adinstruct.schemas.manifest import Manifest
from adinstruct.schemas.records import Annotation, Description, QuarantineEntry, Sample

SCHEMA_DIR = Path(__file__).resolve().parent


class MMADFile(RootModel[dict[str, MMADItem]]):
    """mmad.json: query image path -> its questions and few-shot templates."""


#: file stem -> model; each file describes one JSON/JSONL record (or a whole JSON file).
EXPORTED: dict[str, type[BaseModel]] = {
    "sample": Sample,
    "annotation": Annotation,
    "quarantine_entry": QuarantineEntry,
    "description": Description,
    "instruction_record": InstructionRecord,
    "detection_item": DetectionItem,
    "reasoning_item": ReasoningItem,
    "mmad": MMADFile,
    "manifest": Manifest,
}


def schema_text(model: type[BaseModel]) -> str:
    schema = model.model_json_schema(by_alias=True, mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def schema_path(stem: str) -> Path:
    return SCHEMA_DIR / f"{stem}.schema.json"


def write_all() -> list[Path]:
    written = []
    for stem, model in EXPORTED.items():
        path = schema_path(stem)
        path.write_text(schema_text(model), encoding="utf-8")
        written.append(path)
    return written


def load_schema(stem: str) -> dict:
    return json.loads(schema_path(stem).read_text(encoding="utf-8"))


if __name__ == "__main__":
    for written_path in write_all():
        print(written_path)
