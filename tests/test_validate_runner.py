"""`validate_folder`: exit semantics, the capped report and its JSON, the registry, the reader.

A real demo folder is built once per module by the real pipeline and copied per test.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from pathlib import Path

import pytest
import yaml
from built_folders import build_demo_folder

from adinstruct.builder.errors import ConfigError
from adinstruct.builder.instruct import INSTRUCT_FILE
from adinstruct.builder.progress import Progress
from adinstruct.validators.folder import FolderError, JsonStream, JsonSyntaxError, list_items
from adinstruct.validators.registry import (
    VALIDATORS,
    get_validators,
    list_validators,
    validator_class,
)
from adinstruct.validators.runner import VALIDATION_FILE, ValidationReport, validate_folder

REPO = Path(__file__).resolve().parents[1]
#: The validators whose findings these tests plant; the others have their own tests.
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


def rewrite_records(folder: Path, change) -> list[dict]:
    path = folder / INSTRUCT_FILE
    records = json.loads(path.read_text(encoding="utf-8"))
    change(records)
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    (folder / "manifest.json").unlink(missing_ok=True)  # its checksums describe the originals
    return records


def test_a_clean_folder_passes_and_the_table_lists_every_validator(built):
    report = validate_folder(built)
    assert report.error_count == 0 and report.passed and report.exit_status == 0
    assert [row[0] for row in report.summary_table()] == list_validators()
    report = validate_folder(built, MINE)
    assert report.summary_table() == [(name, 0, 0) for name in MINE]
    manifest = json.loads((built / "manifest.json").read_text())
    listed = {output["path"]: output["records"] for output in manifest["outputs"]}
    assert {f.path: f.records for f in report.files if f.path != "manifest.json"} == listed
    assert report.records == sum(listed.values()) + 1


def test_errors_fail_the_folder_and_warnings_alone_do_not(folder):
    def plant(records):
        for record in records[:7]:
            record["conversations"][0]["value"] += "  "  # style: a warning
        records[10]["conversations"][1]["value"] = ""

    records = rewrite_records(folder, plant)
    report = validate_folder(folder, ["conversation"])
    assert report.error_count == 1 and report.exit_status == 1 and not report.passed
    assert report.warning_count == 7
    assert report.summary_table() == [("conversation", 1, 7)]
    (error,) = [f for f in report.findings if f.severity == "error"]
    assert error.code == "empty_turn" and error.record_id == records[10]["id"]

    rewrite_records(folder, lambda records: records[10]["conversations"][1].update(value="Yes."))
    report = validate_folder(folder, ["conversation"])
    assert report.error_count == 0 and report.exit_status == 0 and report.warning_count == 7


def test_the_json_report_is_capped_per_code_but_keeps_every_count(folder):
    def plant(records):
        for record in records[:9]:
            record["conversations"][0]["value"] += " <image>"

    rewrite_records(folder, plant)
    seen = []
    report = validate_folder(folder, MINE, max_findings_per_code=4, on_finding=seen.append)
    report.write(folder / VALIDATION_FILE)
    written = json.loads((folder / VALIDATION_FILE).read_text(encoding="utf-8"))
    assert ValidationReport.model_validate(written) == report
    counts = {(c["validator"], c["code"], c["severity"]): (c["count"], c["kept"])
              for c in written["counts"]}  # fmt: skip
    assert counts[("conversation", "image_token_count", "error")] == (9, 4)
    kept = [f for f in written["findings"] if f["code"] == "image_token_count"]
    assert len(kept) == 4 and written["max_findings_per_code"] == 4
    assert written["error_count"] == 9 == report.error_count
    assert len([f for f in seen if f.code == "image_token_count"]) == 9
    rows = {row[0]: row for row in report.summary_table()}
    assert rows["conversation"] == ("conversation", 9, 0)
    summary = report.summary()
    assert summary["codes"]["conversation"] == {"image_token_count": 9}
    assert summary["error_count"] == 9
    assert not list(folder.glob(".validation.json.*.tmp"))  # written atomically


def test_a_file_that_does_not_parse_is_a_schema_error_whichever_validators_run(folder):
    path = folder / INSTRUCT_FILE
    path.write_text(path.read_text(encoding="utf-8")[:-40], encoding="utf-8")
    report = validate_folder(folder, ["conversation"])
    assert report.exit_status == 1
    (finding,) = report.findings
    assert (finding.validator, finding.code) == ("schema", "invalid_json")
    assert [row[0] for row in report.summary_table()] == ["conversation", "schema"]


def test_structural_problems_raise_rather_than_report(tmp_path):
    with pytest.raises(FolderError, match="is not a folder"):
        validate_folder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FolderError, match="holds none of"):
        validate_folder(tmp_path / "empty")
    with pytest.raises(ConfigError, match="unknown validator 'spelling'"):
        get_validators(["spelling"])


def test_progress_hears_of_every_record(built):
    class Counting(Progress):
        def __init__(self):
            self.stages, self.steps = [], 0

        def start(self, stage, total=None):
            self.stages.append((stage, total))

        def advance(self, steps=1, quarantined=0):
            self.steps += steps

    progress = Counting()
    report = validate_folder(built, progress=progress)
    assert progress.stages == [("validate", report.records), ("finish", len(list_validators()))]
    assert progress.steps == report.records + len(list_validators())


def test_the_registry_is_data_and_a_missing_module_fails_with_its_name():
    assert list_validators()[:3] == ["schema", "integrity", "conversation"]
    assert [v.name for v in get_validators(["conversation", "schema"])] == [
        "schema", "conversation",
    ]  # fmt: skip
    registry = dict(VALIDATORS, grounding="adinstruct.validators.no_such_module:Grounding")
    with pytest.raises(ImportError, match=r"'grounding'.*adinstruct\.validators\.no_such_module"):
        get_validators(None, registry)
    registry = dict(VALIDATORS, schema="adinstruct.validators.schema_check:NoSuchClass")
    with pytest.raises(ImportError, match="no Validator subclass 'NoSuchClass'"):
        validator_class("schema", registry)


def test_the_pre_commit_hook_runs_build_dataset_validate():
    hooks = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    (hook,) = [hook for hook in hooks if hook["entry"] == "build-dataset validate"]
    assert hook["language"] == "python" and hook["pass_filenames"] is False
    assert hook["id"] and hook["name"]


#: Files opened while `_OPENS_WATCHED` holds True (an audit hook cannot be removed, so it is
#: added once and switched).
_OPENED: list[str] = []
_OPENS_WATCHED = [False]


def _watch_opens(event: str, args: tuple) -> None:
    if _OPENS_WATCHED[0] and event == "open" and isinstance(args[0], str | Path):
        _OPENED.append(str(args[0]))


def test_no_check_opens_a_file_or_runs_the_json_schema_per_record(folder):
    """Speed lives in bench/validate.py; what makes it is checked here: validating ten
    thousand records opens exactly the files validating a thousand does, and no JSON Schema is
    compiled or run for records that fit (the shapes and models stand for it)."""
    import sys

    from adinstruct.validators.folder import find_records_files
    from adinstruct.validators.runner import run_validators

    sys.addaudithook(_watch_opens)
    records = json.loads((folder / INSTRUCT_FILE).read_text(encoding="utf-8"))
    (folder / "manifest.json").unlink()  # its checksums no longer match the grown file
    opened = []
    for count in (1_000, 10_000):
        with (folder / INSTRUCT_FILE).open("w", encoding="utf-8") as handle:
            handle.write("[")
            for index in range(count):
                record = dict(records[index % len(records)], id=f"copy-{index}")
                handle.write(("," if index else "") + "\n" + json.dumps(record))
            handle.write("\n]\n")
        validators = get_validators(MINE)
        _OPENED.clear()
        _OPENS_WATCHED[0] = True
        try:
            report = run_validators(
                folder, find_records_files(folder), validators, Progress(), 100, None, 0.0
            )
        finally:
            _OPENS_WATCHED[0] = False
        assert report.error_count == report.warning_count == 0
        assert report.records >= count
        opened.append(sorted(_OPENED))
        schema = next(v for v in validators if v.name == "schema")
        assert schema._schemas == {}  # type: ignore[attr-defined]
    assert opened[0] == opened[1] and opened[0]


# -- the streaming reader -------------------------------------------------------------


def random_records(count: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    return [
        {"id": index, "text": "x, ]}" * rng.randint(0, 4), "values": [1, 2.5e-3, None, True],
         "nested": {"deep": [{"a": "ü"}]}}
        for index in range(count)
    ]  # fmt: skip


@pytest.mark.parametrize("chunk", [1, 7, 256, 1 << 20])
@pytest.mark.parametrize("indent", [None, 2])
def test_json_stream_reads_what_json_loads_reads(chunk, indent):
    for count in (0, 1, 2, 150):
        records = random_records(count)
        text = json.dumps(records, indent=indent)
        items = list(JsonStream(io.StringIO(text), chunk).list_items())
        assert [value for value, _ in items] == records
        assert [json.loads(raw) for _, raw in items] == records
        assert [value for value, _ in list_items(io.StringIO(text))] == records
    assert [v for v, _ in JsonStream(io.StringIO("[1234, 5e10, -0.5]"), 2).list_items()] == [
        1234, 5e10, -0.5,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "damage",
    ["drop a colon", "trailing comma", "unclosed", "extra data", "two lines merged"],
)
def test_json_stream_reports_the_line_and_column_json_loads_reports(damage):
    lines = ("[" + ",".join("\n" + json.dumps(r) for r in random_records(40)) + "\n]").split("\n")
    if damage == "drop a colon":
        lines[25] = lines[25].replace('"text":', '"text"', 1)
    elif damage == "trailing comma":
        lines[-2] += ","
    elif damage == "unclosed":
        lines = lines[:-1]
    elif damage == "extra data":
        lines.append("{}")
    else:
        lines[12:14] = [lines[12].removesuffix(",") + lines[13]]
    text = "\n".join(lines)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    for reader in (lambda: list_items(io.StringIO(text)),
                   lambda: JsonStream(io.StringIO(text), 64).list_items()):  # fmt: skip
        with pytest.raises(JsonSyntaxError) as found:
            list(reader())
        assert (found.value.line, found.value.column) == (
            expected.value.lineno, expected.value.colno,
        )  # fmt: skip


def test_instruction_records_read_through_their_shape_hold_what_json_loads_reads(folder):
    """The reader checks instruction records against their shape as it parses them; whatever a
    line holds, the record's data, model and verdict are as if read apart."""
    from adinstruct.validators.base import validate_strictly
    from adinstruct.validators.folder import find_records_files, iter_records

    def plant(records):
        records[3]["metadata"]["anomaly"] = "yes"  # the model rejects these, the JSON is fine
        records[5]["image"] = 7
        records[6]["metadata"]["colour"] = "red"
        records[4]["conversations"][0]["speaker"] = "human"  # by alias only, the model takes it

    records = rewrite_records(folder, lambda records: None)
    plant(records)
    lines = [json.dumps(record) for record in records]
    lines[20] = json.dumps(records[20], indent=2)  # from here on the stdlib's scanner reads
    (folder / INSTRUCT_FILE).write_text("[\n" + ",\n".join(lines) + "\n]\n", encoding="utf-8")
    files = [f for f in find_records_files(folder) if f.kind == "instruction_record"]
    read = list(iter_records(folder, files, report=pytest.fail))
    assert [raw.data for raw in read] == records
    plain = iter_records(folder, files, report=pytest.fail, shapes_first=False)
    assert [raw.data for raw in plain] == records
    for raw in read:
        assert raw.data == json.loads(raw.text)
        model, error = validate_strictly(raw.kind, raw.text)
        assert (raw.model() is None) == (model is None) == (raw.index in (3, 5, 6))
        # The shape knows only the JSON keys: "speaker" beside "from" is an unknown key to it.
        assert raw.fits == (raw.index not in (3, 4, 5, 6))
        if model is not None:
            assert raw.model() == model and raw.record_id == records[raw.index]["id"]
        else:
            assert raw.model_error.errors() == error.errors()
            assert raw.record_id == records[raw.index]["id"]


def test_a_json_lines_instruct_file_gets_the_findings_of_the_json_list(folder):
    def plant(records):
        records[1]["conversations"][1]["value"] = ""
        records[2]["metadata"]["anomaly"] = "yes"
        records[3]["image"] = "demo/capsule/test/crack/999.png"

    records = rewrite_records(folder, plant)
    as_list = validate_folder(folder)
    (folder / INSTRUCT_FILE).unlink()
    jsonl = (folder / INSTRUCT_FILE).with_suffix(".jsonl")
    jsonl.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    as_lines = validate_folder(folder)

    def found(report):
        return sorted((f.validator, f.code, f.record_id) for f in report.findings)

    assert found(as_lines) == found(as_list)
    assert {f.code for f in as_list.findings} >= {"empty_turn", "wrong_type", "missing_image"}


def test_every_schema_the_check_compiles_is_a_valid_draft_2020_12_schema():
    """The schema check compiles the exported schemas without checking them against the
    metaschema (a tenth of a second per kind, every run); this checks them, once."""
    from jsonschema import Draft202012Validator

    from adinstruct.validators.schema_check import SCHEMA_STEMS, compile_schema

    for kind in SCHEMA_STEMS:
        Draft202012Validator.check_schema(compile_schema(kind).schema)


# -- the schema check's premise ---------------------------------------------------------


def paths_of(value, prefix=()):
    """Every (path) to a value inside nested dicts and lists."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths_of(item, (*prefix, index))


def mutated(record, path, mutation):
    copy = json.loads(json.dumps(record))
    if not path:
        return copy
    *parents, last = path
    target = copy
    for part in parents:
        target = target[part]
    if mutation == "delete":
        del target[last]
    elif isinstance(mutation, str) and mutation.startswith("extra:"):
        if not isinstance(target[last], dict):
            return None
        target[last][mutation.removeprefix("extra:")] = "human"
    else:
        target[last] = mutation
    return copy


def test_the_fast_path_passes_nothing_the_schema_file_rejects(built, tmp_path):
    """Past the first records of a file the schema check trusts the strict model: every
    mutation of real records that it lets through, the exported JSON Schema must accept."""
    from jsonschema import Draft202012Validator

    from adinstruct.schemas.export_json import load_schema
    from adinstruct.validators.base import FolderContext, RawRecord
    from adinstruct.validators.schema_check import SchemaValidator

    fast = SchemaValidator(schema_every_record_until=0)
    context = FolderContext(root=tmp_path)

    samples = [json.loads(line) for line in (built / "samples.jsonl").open(encoding="utf-8")]
    records = json.loads((built / INSTRUCT_FILE).read_text(encoding="utf-8"))
    anomaly = next(sample for sample in samples if sample["label"] == "anomaly")
    mmad = {
        "conversation": [{"Question": "Is there a defect?", "Options": {"A": "Yes", "B": "No"},
                          "Answer": "A", "type": "Anomaly Detection"}],
        "mask_path": "masks/demo/x.png", "similar_templates": ["demo/a.png"],
        "random_templates": [],
    }  # fmt: skip
    cases = [
        ("sample", anomaly),
        ("instruction_record", records[0]),
        ("instruction_record", next(r for r in records if r["metadata"]["mask"])),
        ("mmad_item", mmad),
        ("reasoning_item", {"image": "demo/a.png", "questions": ["Q?"], "answers": ["A."]}),
        ("detection_item", {"image": "demo/a.png", "anomaly": True}),
    ]
    # Keys spelled as aliased fields' Python names ("speaker" for "from") included.
    extras = ["extra:speaker", "extra:question", "extra:answer", "extra:colour"]
    mutations = ["delete", *extras, None, "1", 1, 1.5, True, [], {}, ["x"]]
    checked = 0
    for kind, record in cases:
        schema = fast.schema_for(kind) if kind == "mmad_item" else (
            Draft202012Validator(load_schema(kind))
        )  # fmt: skip
        for path in list(paths_of(record)):
            for mutation in mutations:
                candidate = mutated(record, path, mutation)
                if candidate is None:
                    continue
                raw = RawRecord(kind=kind, file="x", index=0, data=candidate,
                                text=json.dumps(candidate))  # fmt: skip
                if not fast.check_raw(raw, context):
                    checked += 1
                    errors = [e.message for e in schema.iter_errors(candidate)]
                    assert not errors, (kind, path, mutation, errors)
    assert checked > 100


def test_an_instruction_record_fits_its_shape_exactly_when_model_and_schema_accept_it(built):
    """Instruction records are checked against their shape (plain dicts), never made into
    models: for every mutation of real records, and for turns out of order, the shape must
    accept exactly what the model and the exported JSON Schema both accept."""
    from jsonschema import Draft202012Validator

    from adinstruct.schemas.export_json import load_schema
    from adinstruct.validators.base import check_shape, validate_strictly

    schema = Draft202012Validator(load_schema("instruction_record"))
    records = json.loads((built / INSTRUCT_FILE).read_text(encoding="utf-8"))
    reasoning = next(r for r in records if len(r["conversations"]) >= 4)
    masked = next(r for r in records if r["metadata"]["mask"])
    unmasked = json.loads(json.dumps(masked))
    del unmasked["metadata"]["mask"], unmasked["metadata"]["defect_types"]  # defaults
    swapped = json.loads(json.dumps(reasoning))
    turns = swapped["conversations"]
    turns[1], turns[2] = turns[2], turns[1]
    extras = ["extra:speaker", "extra:colour"]
    mutations = ["delete", *extras, None, "1", 1, 1.5, True, False, [], {}, ["x"], "gpt"]
    verdicts = {True: 0, False: 0}
    for record in (records[0], reasoning, masked, unmasked, swapped):
        for path in list(paths_of(record)):
            for mutation in mutations:
                candidate = mutated(record, path, mutation)
                if candidate is None:
                    continue
                text = json.dumps(candidate)
                model, _ = validate_strictly("instruction_record", text)
                accepted = model is not None and not list(schema.iter_errors(candidate))
                data, fits = check_shape("instruction_record", text.encode())
                assert fits == accepted, (path, mutation)
                if fits:
                    assert data == candidate
                verdicts[fits] += 1
    assert verdicts[True] > 50 and verdicts[False] > 200


def test_every_aliased_field_is_known_to_the_fast_path():
    import inspect

    from adinstruct import schemas
    from adinstruct.validators.schema_check import FIELD_NAMES_OF_ALIASED

    aliased = {
        name
        for _, model in inspect.getmembers(schemas, inspect.isclass)
        if hasattr(model, "model_fields")
        for name, field in model.model_fields.items()
        if field.alias and field.alias != name
    }
    known = {name.strip('"') for names in FIELD_NAMES_OF_ALIASED.values() for name in names}
    assert aliased == known


def test_validate_command_exits_1_on_an_error_and_writes_the_report(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "demo"
    script = str(Path(sys.executable).parent / "build-dataset")
    subprocess.run([script, "demo", "--out", str(out), "--quiet"], check=True, timeout=300)
    clean = subprocess.run([script, "validate", str(out), "--quiet"], capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert clean.returncode == 0, clean.stderr
    assert json.loads((out / "validation.json").read_text())["error_count"] == 0
    records_file = out / "instruct" / "anomaly_instruct.json"
    records = json.loads(records_file.read_text())
    records[0]["conversations"] = records[0]["conversations"][:1]  # an odd, one-turn chat
    records_file.write_text(json.dumps(records))
    broken = subprocess.run([script, "validate", str(out)], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert broken.returncode == 1
    report = json.loads((out / "validation.json").read_text())
    assert report["error_count"] >= 1
    assert "conversation" in broken.stderr
