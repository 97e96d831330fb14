"""The schema check: every record of every known file against the JSON Schema files in schemas/.

jsonschema costs about 0.4 ms for an instruction record and 1.3 ms for a sample, ten to fifty
times the validate budget (25,000 records/s with every validator), and importing it and
compiling the schemas a few tenths of a second more. So each record is checked against the
contract the schema files state without running them: instruction records against their
strict shape (`RECORD_SHAPES`), the other kinds through their pydantic model, strictly and by
alias only (`RawRecord.fits`). The schema files are exported from these models (a test keeps
them equal), and so checked the shapes and models accept nothing that the files reject: tests
mutate real records of every kind to hold them to that (the one gap of the models, a key
spelled as an aliased field's Python name, sends the record to the schema).

The schema itself, one compiled Draft 2020-12 validator per kind, runs on every record that
does not fit, which gives the findings their exact JSON path, and, with
`SchemaValidator(schema_every_record_until=N)`, on the first N records of each file as well
(None: on every record, at about 2,500 records/s).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from adinstruct.builder.errors import ConfigError
from adinstruct.schemas.export_json import load_schema
from adinstruct.validators.base import (
    RECORD_MODELS,
    RECORD_SHAPES,
    Batch,
    Finding,
    FolderContext,
    RawRecord,
    Validator,
)

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError as SchemaError
    from jsonschema.protocols import Validator as JsonValidator

#: record kind -> schema file stem (mmad_item is one value of mmad.schema.json's object).
SCHEMA_STEMS = {kind: kind for kind in RECORD_MODELS} | {"mmad_item": "mmad"}

#: jsonschema keyword -> finding code.
KEYWORD_CODES = {
    "required": "missing_field",
    "additionalProperties": "unknown_field",
    "unevaluatedProperties": "unknown_field",
    "type": "wrong_type",
    "enum": "bad_value",
    "const": "bad_value",
    "pattern": "bad_value",
    "minLength": "bad_value",
    "maxLength": "bad_value",
    "minimum": "bad_value",
    "maximum": "bad_value",
    "exclusiveMinimum": "bad_value",
    "exclusiveMaximum": "bad_value",
    "minItems": "bad_value",
    "maxItems": "bad_value",
    "minProperties": "bad_value",
}
MAX_FINDINGS_PER_RECORD = 10
MAX_MESSAGE_CHARS = 300


#: Python names of aliased fields, as JSON keys, per record kind. By alias only, pydantic
#: ignores a key spelled as the field's name ({"from": ..., "speaker": ...} passes) although
#: extra="forbid"; the schema rejects it, so records whose text holds one go to the schema.
FIELD_NAMES_OF_ALIASED: dict[str, tuple[str, ...]] = {
    "instruction_record": ('"speaker"',),
    "mmad_item": ('"question"', '"options"', '"answer"'),
}


#: The same, as one search a kind (a single scan of the record's text).
_FIELD_NAME_PATTERNS = {
    kind: re.compile("|".join(re.escape(name) for name in names))
    for kind, names in FIELD_NAMES_OF_ALIASED.items()
}


def uses_field_names(raw: RawRecord) -> bool:
    """Whether the record's text holds an aliased field's Python name as a JSON string (a
    key, almost surely: inside a string value its quotes would be escaped). Records of a
    RECORD_SHAPES kind need no search: their shape knows only the JSON keys, so such a key is
    an extra one, and the record does not fit."""
    if raw.kind in RECORD_SHAPES:
        return False
    pattern = _FIELD_NAME_PATTERNS.get(raw.kind)
    return pattern is not None and pattern.search(raw.text) is not None


def compile_schema(kind: str) -> JsonValidator:
    """One compiled Draft 2020-12 validator for the records of `kind`."""
    try:
        from jsonschema import Draft202012Validator
    except ImportError as error:
        raise ConfigError(
            "the schema validator needs jsonschema: pip install 'jsonschema>=4.20'"
        ) from error
    schema = load_schema(SCHEMA_STEMS[kind])
    if kind == "mmad_item":
        # mmad.json maps query paths to items; each item is checked on its own, so that a
        # finding names its key rather than the whole file.
        schema = {
            "$schema": schema["$schema"],
            "$defs": schema["$defs"],
            **schema["additionalProperties"],
        }
    # Not checked against the metaschema here (a tenth of a second per kind, every run): the
    # files are the models' own exports, and a test checks every one of them.
    return Draft202012Validator(schema)


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SchemaValidator(Validator):
    name = "schema"
    raw_kinds = frozenset(RECORD_MODELS)

    def __init__(self, schema_every_record_until: int | None = 0) -> None:
        self.schema_every_record_until = schema_every_record_until
        self._schemas: dict[str, JsonValidator] = {}

    def schema_for(self, kind: str) -> JsonValidator:
        schema = self._schemas.get(kind)
        if schema is None:
            schema = self._schemas[kind] = compile_schema(kind)
        return schema

    def check_raw(self, raw: RawRecord, context: FolderContext) -> Iterable[Finding]:
        fits = raw.fits
        limit = self.schema_every_record_until
        if fits and limit is not None and raw.index >= limit and not uses_field_names(raw):
            return ()
        findings = self.schema_findings(raw)
        if findings or fits:
            return findings
        return self.model_only_findings(raw)

    def check_batch(self, batch: Batch, context: FolderContext) -> Iterable[Finding]:
        """Records that fit their model: the schema runs on a file's first ones only."""
        limit = self.schema_every_record_until
        if limit is not None and batch.first_index >= limit:
            return ()
        findings: list[Finding] = []
        for raw in batch.raws():
            if limit is None or raw.index < limit:
                findings += self.schema_findings(raw)
        return findings

    def schema_findings(self, raw: RawRecord) -> list[Finding]:
        findings = []
        for error in self.schema_for(raw.kind).iter_errors(raw.data):
            if len(findings) == MAX_FINDINGS_PER_RECORD:
                break
            findings.append(self.from_schema_error(raw, error))
        return findings

    def from_schema_error(self, raw: RawRecord, error: SchemaError) -> Finding:
        keyword, message = explain(error)
        return self.finding(
            "error", KEYWORD_CODES.get(keyword, "schema_violation"),
            shorten(f"{raw.where}: {message} "
                    f"({SCHEMA_STEMS[raw.kind]}.schema.json)"),
            file=raw.file, record_id=raw.record_id,
        )  # fmt: skip

    def model_only_findings(self, raw: RawRecord) -> list[Finding]:
        """The schema accepts what the model rejects: rules only the model states."""
        error = raw.model_error
        if error is None:
            return []
        problems = error.errors(include_url=False)
        if raw.kind == "instruction_record" and all(
            problem["loc"][:1] == ("conversations",) for problem in problems
        ):
            return []  # turn order and count: the conversation validator reports them precisely
        first = problems[0]
        location = ".".join(str(part) for part in first["loc"]) or "record"
        return [self.finding(
            "warning", "model_rejected",
            shorten(f"{raw.where}: {location}: {first['msg']} (the schema allows it, "
                    f"{RECORD_MODELS[raw.kind].__name__} does not; checks that need the model "
                    "skip this record)"),
            file=raw.file, record_id=raw.record_id,
        )]  # fmt: skip


def explain(error: SchemaError) -> tuple[str, str]:
    """The keyword and the 'path: message' a person can act on, for one schema error.

    "5 is not valid under any of the given schemas" says little: for an anyOf (an optional
    field, `str | list[str]`) the branch of the value's own type says what is wrong inside it,
    and a value of none of the branches' types is a plain type error.
    """
    if error.validator in ("anyOf", "oneOf") and error.context:
        from jsonschema.exceptions import best_match

        best = best_match([error])
        if best is not None and best is not error:
            return str(best.validator), f"{best.json_path}: {best.message}"
        branches = [branch for branch in error.context if not branch.relative_path]
        if branches and all(branch.validator == "type" for branch in branches):
            types = " or ".join(repr(branch.validator_value) for branch in branches)
            value = shorten(repr(error.instance), 60)
            return "type", f"{error.json_path}: {value} is not of type {types}"
    return str(error.validator), f"{error.json_path}: {error.message}"
