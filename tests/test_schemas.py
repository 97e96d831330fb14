"""The JSON Schema files under schemas/ are the models' contract: they must never drift apart."""

from __future__ import annotations

import json

import jsonschema
import pytest
from pydantic import ValidationError

from adinstruct.schemas import InstructionRecord, Manifest, Sample
from adinstruct.schemas.export_json import EXPORTED, load_schema, schema_path, schema_text


@pytest.mark.parametrize("stem", sorted(EXPORTED))
def test_schema_file_matches_model(stem):
    assert schema_path(stem).is_file(), (
        f"{schema_path(stem)} is missing: run python -m adinstruct.schemas.export_json"
    )
    assert schema_path(stem).read_text(encoding="utf-8") == schema_text(EXPORTED[stem]), (
        f"{schema_path(stem).name} disagrees with {EXPORTED[stem].__name__}: "
        "run python -m adinstruct.schemas.export_json"
    )


def sample_payload(**changes):
    payload = {
        "id": "mvtec_ad/bottle/test/crack/000",
        "source": "mvtec_ad",
        "category": "bottle",
        "split": "test",
        "label": "anomaly",
        "defect_types": ["crack"],
        "image_paths": ["bottle/test/crack/000.png"],
        "masks": [{"path": "bottle/ground_truth/crack/000_mask.png", "defect_type": "crack"}],
    }
    payload.update(changes)
    return payload


def test_sample_round_trips_and_the_file_schema_accepts_it():
    sample = Sample.model_validate(sample_payload())
    line = sample.model_dump_json()
    assert Sample.model_validate_json(line) == sample
    jsonschema.validate(json.loads(line), load_schema("sample"))


@pytest.mark.parametrize(
    "changes",
    [{"split": "validation"}, {"label": "bad"}, {"image_paths": []}, {"colour": "red"}],
    ids=["split", "label", "no-image", "unknown-field"],
)
def test_sample_rejects_what_the_schema_file_rejects(changes):
    payload = sample_payload(**changes)
    with pytest.raises(ValidationError):
        Sample.model_validate(payload)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(payload, load_schema("sample"))


def record_payload(turns):
    return {
        "id": "r1",
        "image": "mvtec_ad/bottle/test/crack/000.png",
        "conversations": [{"from": speaker, "value": text} for speaker, text in turns],
        "metadata": {"anomaly": True, "source": "mvtec_ad", "category": "bottle",
                     "sample_id": "s", "task_family": "detection"},
    }  # fmt: skip


def test_instruction_record_uses_llava_keys():
    record = InstructionRecord.model_validate(
        record_payload([("human", "<image>\nAny defect?"), ("gpt", "Yes.")])
    )
    dumped = json.loads(record.model_dump_json())
    assert dumped["conversations"][0] == {"from": "human", "value": "<image>\nAny defect?"}
    jsonschema.validate(dumped, load_schema("instruction_record"))


@pytest.mark.parametrize(
    "turns",
    [[("human", "hi")], [("gpt", "a"), ("human", "b")], [("human", "a"), ("human", "b")]],
    ids=["odd", "gpt-first", "not-alternating"],
)
def test_instruction_record_rejects_broken_conversations(turns):
    with pytest.raises(ValidationError):
        InstructionRecord.model_validate(record_payload(turns))


def test_manifest_schema_requires_a_version():
    with pytest.raises(ValidationError):
        Manifest.model_validate({"command": []})
    jsonschema.validate(
        Manifest(toolkit_version="1.0", command=["build-dataset"]).model_dump(mode="json"),
        load_schema("manifest"),
    )
