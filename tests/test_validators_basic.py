"""Schema, integrity and conversation validators on a real built folder with planted faults.

The demo release is built once per module by the real pipeline; each test plants its faults
into a copy and asserts that each is caught with the right validator and code, and that the
records it did not touch raise nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import trees
from built_folders import build_demo_folder
from PIL import Image

from adinstruct.builder.instruct import INSTRUCT_FILE
from adinstruct.validators.base import Finding
from adinstruct.validators.folder import load_context
from adinstruct.validators.runner import ValidationReport, validate_folder

#: The validators this module tests; the others have their own tests.
MINE = ["schema", "integrity", "conversation"]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("demo")
    return build_demo_folder(base / "built", release=base / "release", image_size=64)


@pytest.fixture
def folder(built, tmp_path) -> Path:
    copy = tmp_path / "folder"
    shutil.copytree(built, copy)
    return copy


def read_records(folder: Path) -> list[dict]:
    return json.loads((folder / INSTRUCT_FILE).read_text(encoding="utf-8"))


def write_records(folder: Path, records: list, *, indent: int | None = None) -> None:
    text = json.dumps(records, indent=indent) if indent else (
        "[" + ",".join("\n" + json.dumps(record) for record in records) + "\n]\n"
    )  # fmt: skip
    (folder / INSTRUCT_FILE).write_text(text, encoding="utf-8")


def read_samples(folder: Path) -> list[dict]:
    lines = (folder / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def write_samples(folder: Path, samples: list[dict]) -> None:
    lines = "".join(json.dumps(sample) + "\n" for sample in samples)
    (folder / "samples.jsonl").write_text(lines, encoding="utf-8")


def errors(report: ValidationReport) -> list[Finding]:
    return [finding for finding in report.findings if finding.severity == "error"]


def by_code(report: ValidationReport) -> dict[str, list[Finding]]:
    found: dict[str, list[Finding]] = {}
    for finding in report.findings:
        found.setdefault(finding.code, []).append(finding)
    return found


def every(found: dict[str, list[Finding]]) -> list[Finding]:
    return [finding for findings in found.values() for finding in findings]


def first_anomaly(samples: list[dict]) -> dict:
    return next(sample for sample in samples if sample["label"] == "anomaly")


def test_the_clean_folder_has_no_finding_at_all(built):
    assert validate_folder(built).error_count == 0  # every registered validator
    report = validate_folder(built, MINE)
    assert report.findings == [], [f.message for f in report.findings]
    assert report.error_count == report.warning_count == 0
    context = load_context(built)
    assert len(context.samples) == len(read_samples(built))
    assert report.records == 1 + len(read_samples(built)) + len(read_records(built))


def test_a_pretty_printed_instruct_file_reads_the_same_and_stays_clean(folder):
    records = read_records(folder)
    write_records(folder, records, indent=2)
    (folder / "manifest.json").unlink()  # its checksums describe the original bytes
    report = validate_folder(folder, MINE)
    assert errors(report) == [] and report.warning_count == 0
    (instruct,) = [f for f in report.files if f.path == INSTRUCT_FILE]
    assert instruct.records == len(records)


def test_broken_conversations_get_one_precise_finding_each(folder):
    records = read_records(folder)
    long = [r for r in records if len(r["conversations"]) >= 4]
    odd, two_tokens, empty, gpt_first, token_later, not_leading = (
        long[0], records[1], records[2], records[3], long[1], records[5]
    )  # fmt: skip
    odd["conversations"].pop()
    two_tokens["conversations"][0]["value"] = "<image>\n" + two_tokens["conversations"][0]["value"]
    empty["conversations"][1]["value"] = "  \n "
    turns = gpt_first["conversations"]
    turns[0], turns[1] = turns[1], turns[0]
    token_later["conversations"][2]["value"] += " <image>"
    not_leading["conversations"][0]["value"] = (
        not_leading["conversations"][0]["value"].removeprefix("<image>\n") + " <image>"
    )  # fmt: skip
    write_records(folder, records)
    found = by_code(validate_folder(folder, ["schema", "conversation"]))
    expected = {
        "odd_turn_count": odd, "image_token_count": two_tokens, "empty_turn": empty,
        "first_turn_not_human": gpt_first, "image_token_outside_first_turn": token_later,
        "image_token_not_leading": not_leading,
    }  # fmt: skip
    for code, record in expected.items():
        assert [(f.validator, f.record_id) for f in found[code]] == [("conversation", record["id"])]
        assert found[code][0].file == INSTRUCT_FILE
    assert found["image_token_not_leading"][0].severity == "warning"
    assert found["odd_turn_count"][0].severity == "error"
    # The model rejects the odd and the gpt-first records, but the schema allows them: the
    # conversation findings say why, with no vague schema finding beside them.
    assert not [f for f in every(found) if f.validator == "schema"]
    # The swapped record breaks the order at turn 0 and at every turn after: one finding.
    codes_of_swapped = [f.code for f in every(found) if f.record_id == gpt_first["id"]]
    assert sorted(codes_of_swapped) == ["first_turn_not_human"]


def test_an_empty_answer_is_reported_once_as_the_conversation_checks_empty_turn(folder):
    records = read_records(folder)
    emptied, blank = records[2], records[3]
    emptied["conversations"][1]["value"] = ""
    blank["conversations"][1]["value"] = " \n "
    write_records(folder, records)
    (folder / "manifest.json").unlink()  # its checksums describe the original bytes
    report = validate_folder(folder)  # every registered validator, grounding included
    for record in (emptied, blank):
        mine = [(f.validator, f.code) for f in report.findings if f.record_id == record["id"]]
        assert mine == [("conversation", "empty_turn")]


def test_a_conversation_the_model_cannot_even_read_still_gets_precise_findings(folder):
    records = read_records(folder)
    record = records[40]
    record["conversations"] = [
        {"from": "human", "value": "<image>\nIs it defective?"},
        {"from": "assistant", "value": "Yes."},
        {"from": "gpt"},
    ]
    write_records(folder, records)
    report = validate_folder(folder, ["schema", "conversation"])
    mine = [f for f in report.findings if f.record_id == record["id"]]
    conversation = sorted(f.code for f in mine if f.validator == "conversation")
    assert conversation == ["bad_turn", "odd_turn_count", "unknown_speaker"]
    schema = sorted(f.code for f in mine if f.validator == "schema")
    assert schema == ["bad_value", "missing_field"]  # 'assistant' and the missing 'value'
    assert all("record 41" in f.message for f in mine)


def test_missing_images_are_caught_once_per_file_with_their_referrer(folder):
    records = read_records(folder)
    samples = read_samples(folder)
    records[7]["image"] = "demo/capsule/test/crack/999.png"
    write_records(folder, records)
    deleted = samples[4]["image_paths"][0]
    (folder / "images" / "demo" / deleted).unlink()
    report = validate_folder(folder, ["integrity"])
    missing = by_code(report)["missing_image"]
    assert {f.message.split(" does not")[0] for f in missing} == {
        "images/demo/capsule/test/crack/999.png", f"images/demo/{deleted}",
    }  # fmt: skip
    by_path = {f.message.split(" does not")[0]: f for f in missing}
    assert by_path["images/demo/capsule/test/crack/999.png"].record_id == records[7]["id"]
    # The deleted file is named by its sample and by that sample's records: one finding.
    deleted_finding = by_path[f"images/demo/{deleted}"]
    assert deleted_finding.record_id == samples[4]["id"] and "more" in deleted_finding.message
    mismatch = by_code(report)["image_not_of_sample"]
    assert [f.record_id for f in mismatch] == [records[7]["id"]]


def test_truncated_images_are_caught_even_when_only_the_end_chunk_is_cut(folder):
    samples = read_samples(folder)
    halved = folder / "images" / "demo" / samples[0]["image_paths"][0]
    trees.truncate(halved)
    clipped = folder / "images" / "demo" / samples[1]["image_paths"][0]
    clipped.write_bytes(clipped.read_bytes()[:-3])  # PIL's verify() alone accepts this one
    report = validate_folder(folder, ["integrity"])
    found = by_code(report)["undecodable_image"]
    undecodable = {f.message.split(" does not")[0]: f for f in found}
    assert set(undecodable) == {f"images/demo/{s['image_paths'][0]}" for s in samples[:2]}
    assert all(f.validator == "integrity" and f.severity == "error" for f in undecodable.values())


def test_mask_problems_wrong_size_empty_missing_and_on_normal(folder):
    samples = read_samples(folder)
    anomalies = [sample for sample in samples if sample["label"] == "anomaly"]
    wrong_size, empty = anomalies[0], anomalies[1]
    wrong_path = folder / "masks" / "demo" / wrong_size["masks"][0]["path"]
    Image.open(wrong_path).resize((32, 48)).save(wrong_path)
    empty_path = folder / "masks" / "demo" / empty["masks"][0]["path"]
    Image.new("L", Image.open(empty_path).size, 0).save(empty_path)
    unmasked = anomalies[2]
    unmasked["masks"] = []
    normal = next(sample for sample in samples if sample["label"] == "normal")
    normal["masks"] = [dict(anomalies[3]["masks"][0])]
    write_samples(folder, samples)
    found = by_code(validate_folder(folder, ["integrity"]))
    (size,) = found["mask_size_mismatch"]
    assert size.record_id == wrong_size["id"]
    assert "is 32×48 but its image" in size.message and "is 64×64" in size.message
    assert [f.record_id for f in found["empty_mask"]] == [empty["id"]]
    assert [f.record_id for f in found["anomaly_without_mask"]] == [unmasked["id"]]
    assert [f.record_id for f in found["mask_on_normal"]] == [normal["id"]]


def test_hand_edited_samples_lines_are_checked_against_the_schema_file(folder):
    samples = read_samples(folder)
    lines = [json.dumps(sample) for sample in samples]
    late = 50  # past the records the schema checks unconditionally: the model finds it first
    samples[late]["label"] = "broken"
    samples[2]["colour"] = "red"
    samples[3]["annotation"]["width"] = "64"
    lines[late], lines[2], lines[3] = (json.dumps(samples[i]) for i in (late, 2, 3))
    lines[10] = lines[10][:-5]  # a line cut short
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = validate_folder(folder, ["schema"])
    found = by_code(report)
    (label,) = found["bad_value"]
    assert label.validator == "schema" and label.record_id == samples[late]["id"]
    assert f"samples.jsonl line {late + 1}: $.label: 'broken' is not one of" in label.message
    (unknown,) = found["unknown_field"]
    assert unknown.record_id == samples[2]["id"] and "'colour'" in unknown.message
    (wrong,) = found["wrong_type"]
    assert "$.annotation.width" in wrong.message and "line 4" in wrong.message
    (broken,) = found["invalid_json"]
    assert broken.file == "samples.jsonl" and "line 11 is not valid JSON" in broken.message
    assert report.error_count == 4


def test_a_list_file_that_does_not_parse_names_its_line_and_column(folder):
    text = (folder / INSTRUCT_FILE).read_text(encoding="utf-8")
    lines = text.split("\n")
    lines[30] = lines[30].replace('"conversations":', '"conversations"', 1)
    broken = "\n".join(lines)
    (folder / INSTRUCT_FILE).write_text(broken, encoding="utf-8")
    with pytest.raises(json.JSONDecodeError) as stdlib:
        json.loads(broken)
    found = by_code(validate_folder(folder, ["schema"]))
    (finding,) = found["invalid_json"]
    assert finding.file == INSTRUCT_FILE and finding.validator == "schema"
    assert f"at line {stdlib.value.lineno} column {stdlib.value.colno}" in finding.message


def test_deep_records_with_a_wrong_type_are_found_by_the_model_and_named_by_the_schema(folder):
    records = read_records(folder)
    records[90]["metadata"]["anomaly"] = "yes"
    records[100]["image"] = 7
    write_records(folder, records)
    found = by_code(validate_folder(folder, ["schema"]))
    messages = {f.record_id: f.message for f in found["wrong_type"]}
    assert "$.metadata.anomaly: 'yes' is not of type 'boolean'" in messages[records[90]["id"]]
    assert "$.image: 7 is not of type" in messages[records[100]["id"]]


def test_paths_leaving_the_folder_are_findings_and_never_opened(folder):
    records = read_records(folder)
    records[11]["image"] = "../../etc/passwd"
    records[12]["metadata"]["mask"] = "/etc/shadow"
    records[12]["metadata"]["anomaly"] = True
    records[13]["image"] = ["demo/ok.png", "..\\..\\boot.ini"]
    write_records(folder, records)
    found = by_code(validate_folder(folder, MINE))
    unsafe = {f.record_id: f.message for f in found["unsafe_path"]}
    assert set(unsafe) == {records[11]["id"], records[12]["id"], records[13]["id"]}
    assert "'../../etc/passwd' climbs out of the folder" in unsafe[records[11]["id"]]
    assert "'/etc/shadow' is absolute" in unsafe[records[12]["id"]]
    # Looked at as strings only: no other finding names those files.
    named = [f for f in every(found) if "passwd" in f.message or "shadow" in f.message]
    assert all(f.code == "unsafe_path" for f in named)


def test_records_marked_normal_with_a_mask_and_records_of_unknown_samples(folder):
    records = read_records(folder)
    samples = read_samples(folder)
    normal = next(r for r in records if not r["metadata"]["anomaly"])
    normal["metadata"]["mask"] = "masks/demo/" + first_anomaly(samples)["masks"][0]["path"]
    stray = records[20]
    stray["metadata"]["sample_id"] = "demo/nowhere/000"
    write_records(folder, records)
    found = by_code(validate_folder(folder, ["integrity"]))
    assert [f.record_id for f in found["mask_on_normal"]] == [normal["id"]]
    assert [f.record_id for f in found["unknown_sample"]] == [stray["id"]]


def test_a_hand_edited_file_no_longer_matches_the_manifest(folder):
    with (folder / "samples.jsonl").open("a", encoding="utf-8") as handle:
        handle.write("\n")
    (folder / "quarantine.jsonl").unlink()
    found = by_code(validate_folder(folder, ["integrity"]))
    (changed,) = found["output_changed"]
    size = (folder / "samples.jsonl").stat().st_size
    assert f"samples.jsonl is {size} bytes, the manifest says {size - 1}" in changed.message
    assert changed.severity == "warning" and changed.file == "manifest.json"
    (missing,) = found["output_missing"]
    assert "quarantine.jsonl" in missing.message and missing.severity == "error"


def test_benchmark_files_are_read_and_checked_by_kind(folder):
    samples = read_samples(folder)
    anomaly = first_anomaly(samples)
    image = f"demo/{anomaly['image_paths'][0]}"
    mask = f"masks/demo/{anomaly['masks'][0]['path']}"
    benchmark = folder / "benchmark"
    benchmark.mkdir()
    (benchmark / "test_data.json").write_text(json.dumps([
        {"image": image, "anomaly": True}, {"image": "demo/gone.png", "anomaly": False},
    ]))  # fmt: skip
    (benchmark / "visa_dr.json").write_text(json.dumps([
        {"image": image, "questions": ["Is it defective?", "Where?"], "answers": ["Yes."]},
    ]))  # fmt: skip
    question = {"Question": "Is there a defect?", "Options": {"A": "Yes", "B": "No"},
                "Answer": "C", "type": "Anomaly Detection"}  # fmt: skip
    (benchmark / "mmad.json").write_text(json.dumps({
        image: {"conversation": [question], "mask_path": mask, "similar_templates": [],
                "random_templates": []},
        "demo/also_gone.png": {"conversation": [dict(question, Answer="A", type="Color")]},
    }, indent=2))  # fmt: skip
    report = validate_folder(folder, MINE)
    assert {f.path: f.records for f in report.files if f.path.startswith("benchmark/")} == {
        "benchmark/test_data.json": 2, "benchmark/visa_dr.json": 1, "benchmark/mmad.json": 2,
    }  # fmt: skip
    found = {(f.validator, f.code, f.record_id) for f in report.findings}
    assert found == {
        ("integrity", "missing_image", "demo/gone.png"),
        ("integrity", "missing_image", "demo/also_gone.png"),
        ("conversation", "answer_count_mismatch", image),
        ("conversation", "answer_not_an_option", image),
        ("schema", "bad_value", "demo/also_gone.png"),  # the type 'Color'
    }


def test_the_quick_conversation_path_agrees_with_the_full_check():
    """Almost every record takes `follows_every_rule`; it may pass only what the full check
    passes, and refuse only what the full check has a finding for."""
    import random

    from adinstruct.validators.base import RawRecord
    from adinstruct.validators.conversation import ConversationValidator, follows_every_rule

    rng = random.Random(0)
    validator = ConversationValidator()
    values = ["Is it defective?", "", "  ", " padded", "padded ", "x <image>", "<image>x", "ok"]
    images = ["demo/a.png", ["demo/a.png", "demo/b.png"], []]
    quick_passed = 0
    for _ in range(3000):
        image = rng.choice(images)
        count = len(image) if isinstance(image, list) else 1
        turns = []
        for index in range(rng.choice([1, 2, 2, 3, 4, 4])):
            speaker = ("human", "gpt")[index % 2] if rng.random() < 0.9 else "gpt"
            value = rng.choice(values)
            if index == 0 and rng.random() < 0.8:
                value = "<image>\n" * rng.choice([count, count, 1, 2]) + value
            turns.append({"from": speaker, "value": value})
        data = {"id": "r", "image": image, "conversations": turns}
        raw = RawRecord(kind="instruction_record", file="f", index=0, data=data, text="")
        quick, full = follows_every_rule(data), validator.check_conversation(raw, data)
        assert not (quick and full), (data, [f.code for f in full])
        assert quick or full, data
        quick_passed += quick
    assert quick_passed > 20


def test_the_quick_path_on_fitting_records_agrees_with_the_quick_path_on_any_json():
    """A record that fits its model is passed by `record_follows_every_rule`, which trusts the
    turn order: it must decide as `follows_every_rule` does on the same record's JSON, and a
    record fits exactly when the model accepts it."""
    import random

    from adinstruct.validators.base import Batch, FolderContext, check_shape, validate_strictly
    from adinstruct.validators.conversation import (
        ConversationValidator,
        follows_every_rule,
        record_follows_every_rule,
    )

    rng = random.Random(1)
    values = ["Is it defective?", "", "  ", " padded", "padded ", "x <image>", "<image>x", "ok"]
    images = ["demo/a.png", ["demo/a.png", "demo/b.png"], [], ["demo/c.png"] * 16]
    accepted = passed = 0
    batch, one_by_one = Batch("instruction_record", "f.json", 0), []
    context = FolderContext(root=Path("."))
    for number in range(3000):
        image = rng.choice(images)
        count = len(image) if isinstance(image, list) else 1
        turns = []
        for index in range(rng.choice([2, 2, 4, 6])):
            value = rng.choice(values)
            if index == 0 and rng.random() < 0.8:
                value = "<image>\n" * rng.choice([count, count, 1, 2]) + value
            turns.append({"from": ("human", "gpt")[index % 2], "value": value})
        data = {
            "id": f"r{number}", "image": image, "conversations": turns,
            "metadata": {"anomaly": False, "source": "demo", "category": "capsule",
                         "sample_id": "s", "task_family": "detection"},
        }  # fmt: skip
        text = json.dumps(data)
        model, _ = validate_strictly("instruction_record", text)
        record, fits = check_shape("instruction_record", text)
        assert fits == (model is not None), data
        if not fits:
            continue
        accepted += 1
        quick = record_follows_every_rule(record)
        assert quick == follows_every_rule(data), data
        passed += quick
        batch.records.append(record)
        batch.texts.append(text)
        alone = Batch("instruction_record", "f.json", len(batch.records) - 1, [record], [text])
        one_by_one += ConversationValidator().check_batch(alone, context)
    assert accepted > 1000 and passed > 20
    # The batch path judges each distinct first turn once (they repeat here, as the banks'
    # questions do) and finds what a fresh validator finds in each record alone.
    together = ConversationValidator().check_batch(batch, context)
    assert [(f.record_id, f.code) for f in together] == [(f.record_id, f.code) for f in one_by_one]
    assert len(together) > 100
