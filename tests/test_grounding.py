"""Grounding over a real demo build: a clean folder passes, and every planted fault is caught.

Each test plants one kind of fault in every record it suits (in a copy of the folder) and
asserts that exactly those records are flagged with the fault's code.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import pytest
from built_folders import build_demo_folder, validate_records

from adinstruct.builder.describe.template import GRID_PATTERN, grid_words_in
from adinstruct.builder.instruct import INSTRUCT_FILE
from adinstruct.validators.base import Batch, Finding, FolderContext, SampleFacts, check_shape
from adinstruct.validators.folder import load_context
from adinstruct.validators.grounding import (
    NEGATIONS,
    PAIRED,
    CacheUse,
    GroundingValidator,
    has_negation,
    has_paired,
    names_only_known_defects,
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo_folder(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def folder(demo, tmp_path) -> Path:
    """A copy of the demo build to plant faults in; grounding reads no pixels."""
    copy = tmp_path / "folder"
    shutil.copytree(demo, copy, ignore=shutil.ignore_patterns("source", "images", "masks"))
    return copy


def records(root: Path) -> list[dict]:
    return json.loads((root / INSTRUCT_FILE).read_text(encoding="utf-8"))


def write_records(root: Path, payload: list[dict]) -> None:
    (root / INSTRUCT_FILE).write_text(json.dumps(payload), encoding="utf-8")


def answers(record: dict) -> list[dict]:
    return [turn for turn in record["conversations"] if turn["from"] == "gpt"]


def flagged(findings: list[Finding], code: str) -> set[str]:
    return {finding.record_id for finding in findings if finding.code == code}


def errors(findings: list[Finding]) -> list[Finding]:
    return [finding for finding in findings if finding.severity == "error"]


def plant(folder: Path, change) -> set[str]:
    """Apply `change(record) -> bool` to every record; the ids of those it changed."""
    payload = records(folder)
    planted = {record["id"] for record in payload if change(record)}
    write_records(folder, payload)
    assert planted, "the fault suits no record of the demo"
    return planted


def test_the_clean_demo_folder_has_no_grounding_finding(demo):
    assert validate_records(demo, GroundingValidator()) == []


def test_a_flipped_yes_or_no_is_a_label_contradiction(folder):
    def flip(record):
        first = answers(record)[0]
        for before, after in (("No", "Yes"), ("Yes", "No")):
            if first["value"].startswith((f"{before},", f"{before}.")):
                first["value"] = after + first["value"][len(before) :]
                return True
        return False

    planted = plant(folder, flip)
    findings = validate_records(folder, GroundingValidator())
    assert flagged(findings, "label_contradiction") == planted
    assert {finding.code for finding in errors(findings)} == {"label_contradiction"}


OPPOSITE = {
    "top left": "bottom right", "bottom right": "top left",
    "top right": "bottom left", "bottom left": "top right",
    "top": "bottom", "bottom": "top", "left": "right", "right": "left",
}  # fmt: skip


def test_a_location_moved_to_the_opposite_corner_is_a_location_mismatch(folder):
    cells = {facts.sample_id: facts.grid_cells for facts in load_context(folder).samples.values()}

    def move(record):
        allowed = cells[record["metadata"]["sample_id"]]

        def opposite(match):
            word = match.group(0).lower()
            return OPPOSITE[word] if OPPOSITE.get(word, word) not in allowed else match.group(0)

        moved = False
        for turn in answers(record):
            text = GRID_PATTERN.sub(opposite, turn["value"])
            moved, turn["value"] = moved or text != turn["value"], text
        return moved

    planted = plant(folder, move)
    findings = validate_records(folder, GroundingValidator())
    assert flagged(findings, "location_mismatch") == planted
    assert {finding.code for finding in errors(findings)} == {"location_mismatch"}


def test_a_wrong_region_count_is_a_count_mismatch(folder):
    def recount(record):
        changed = False
        for turn in answers(record):
            if "one region" in turn["value"]:
                turn["value"] = turn["value"].replace("one region", "3 separate regions")
                changed = True
        return changed

    planted = plant(folder, recount)
    findings = validate_records(folder, GroundingValidator())
    assert flagged(findings, "count_mismatch") == planted
    assert all("states 3 region(s); the mask has 1" in f.message for f in errors(findings))


def test_a_defect_name_of_another_category_is_unknown(folder):
    # capsule's defects are crack and contamination; scratch belongs to washer.
    def rename(record):
        changed = False
        if record["metadata"]["category"] == "capsule":
            for turn in answers(record):
                if "crack defect" in turn["value"]:
                    turn["value"] = turn["value"].replace("crack defect", "scratch defect")
                    changed = True
        return changed

    planted = plant(folder, rename)
    findings = validate_records(folder, GroundingValidator())
    assert flagged(findings, "unknown_defect_name") == planted
    assert {finding.severity for finding in findings} == {"error"}


def test_locations_of_an_anomaly_without_mask_are_unsupported(folder):
    """A hand-edited samples.jsonl drops one sample's mask; its records still locate it."""
    samples_path = folder / "samples.jsonl"
    lines = samples_path.read_text(encoding="utf-8").splitlines()
    target = "demo/capsule/test/crack/000"
    for index, line in enumerate(lines):
        sample = json.loads(line)
        if sample["id"] == target:
            sample["masks"], sample["annotation"]["mask_rle"] = [], None
            lines[index] = json.dumps(sample)
    samples_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    located = {
        record["id"]
        for record in records(folder)
        if record["metadata"]["sample_id"] == target
        and any(grid_words_in(turn["value"]) for turn in answers(record))
    }
    assert located
    findings = validate_records(folder, GroundingValidator())
    assert flagged(findings, "location_without_mask") == located
    assert {finding.code for finding in errors(findings)} == {"location_without_mask"}


REFUSALS = [
    "I'm sorry, but I can't help with identifying defects in this image.",
    "As an AI language model, I cannot see images.",
    "I cannot analyse this image.",
]


def test_refusals_are_errors(folder):
    counter = iter(range(10**6))

    def refuse(record):
        answers(record)[-1]["value"] = REFUSALS[next(counter) % len(REFUSALS)]
        return True

    planted = plant(folder, refuse)
    findings = validate_records(folder, GroundingValidator())
    assert flagged(findings, "refusal") == planted


def test_answers_cut_mid_sentence_or_with_an_open_bracket_are_truncated(folder):
    def cut(record):
        last = answers(record)[-1]
        words = last["value"].split()
        if len(words) < 6:
            return False
        last["value"] = " ".join(words[:-2])
        return True

    planted = plant(folder, cut)
    findings = validate_records(folder, GroundingValidator())
    assert flagged(findings, "truncated_answer") == planted
    assert errors(findings) == []  # truncation is a warning, and cutting claimed nothing


def test_one_answer_in_most_records_of_a_family_is_boilerplate(folder):
    def stamp(record):
        if record["metadata"]["task_family"] != "detection" or record["metadata"]["anomaly"]:
            return False
        answers(record)[0]["value"] = "No, the object looks normal."
        return True

    planted = plant(folder, stamp)
    detection = sum(r["metadata"]["task_family"] == "detection" for r in records(folder))
    findings = validate_records(folder, GroundingValidator())
    [finding] = findings
    assert finding.code == "repeated_boilerplate" and finding.severity == "warning"
    assert finding.record_id in planted
    assert f"at least {len(planted)} of {detection} detection records" in finding.message
    # Below the share, or with too few records, nothing is reported.
    assert validate_records(folder, GroundingValidator(boilerplate_share=0.9)) == []


# -- freer (LLM-style) text, on hand-made records ---------------------------------------


def context_with(facts: SampleFacts, names: set[str]) -> FolderContext:
    context = FolderContext(root=Path("."), samples={facts.sample_id: facts})
    context.defect_names[(facts.source, facts.category)] = names
    context.defect_names[(facts.source, "pushpins")] = {"broken"}
    return context


LOCO = SampleFacts(
    sample_id="loco/juice_bottle/test/logical_anomalies/000",
    source="loco",
    category="juice_bottle",
    split="test",
    label="anomaly",
    defect_types=("misplaced_label_top",),
    has_mask=True,
    grid_cells=("bottom left",),
    region_count=2,
    image="loco/juice_bottle/test/logical_anomalies/000.png",
)
NORMAL = SampleFacts(
    sample_id="loco/juice_bottle/test/good/000",
    source="loco",
    category="juice_bottle",
    split="test",
    label="normal",
    defect_types=(),
    has_mask=False,
    grid_cells=(),
    region_count=0,
    image="loco/juice_bottle/test/good/000.png",
)


def record_for(facts: SampleFacts, *gpt: str, family: str = "description") -> dict:
    """An instruction record as `check` gets it: its JSON, checked to fit its model."""
    turns = []
    for index, answer in enumerate(gpt):
        question = "<image>\nWhat do you see?" if index == 0 else "And then?"
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    record, fits = check_shape(
        "instruction_record",
        json.dumps(
            {
                "id": f"{facts.sample_id}#{family}",
                "image": facts.image,
                "conversations": turns,
                "metadata": {
                    "anomaly": facts.label == "anomaly",
                    "source": facts.source,
                    "category": facts.category,
                    "sample_id": facts.sample_id,
                    "defect_types": list(facts.defect_types),
                    "task_family": family,
                },
            }
        ),
    )
    assert fits
    return record


def codes(facts: SampleFacts, *gpt: str) -> list[str]:
    validator = GroundingValidator()
    context = context_with(facts, {"misplaced_label_top", "missing_bottom"})
    return [f.code for f in validator.check(record_for(facts, *gpt), "x.json", context)]


@pytest.mark.parametrize(
    "facts, gpt",
    [
        # A defect name holding a grid word states no location.
        (LOCO, ["Yes, a misplaced label top defect in the bottom left, in 2 separate regions."]),
        (LOCO, ["There is a misplaced label top defect. It covers two distinct regions."]),
        # Hedges are no refusal; bounds are no count; adjectives are no defect name.
        (LOCO, ["I cannot be certain of the cause, but it is a misplaced label top defect."]),
        (LOCO, ["It spans at least three regions in the bottom left of the image."]),
        (LOCO, ["It is a small, visible surface defect, and the rest looks normal."]),
        # Normal images: an object's parts may sit at the top; "no defect" is no claim.
        (NORMAL, ["No, the juice bottle looks fine; the label at the top is straight."]),
        (NORMAL, ["The bottle shows no sign of a misplaced label top defect."]),
        (NORMAL, ["No. Nothing abnormal is visible.", "It is a juice bottle (filled)."]),
        # An empty answer is the conversation check's empty_turn (test_validators_basic), not
        # a second finding here.
        (LOCO, ["Yes.", ""]),
        (LOCO, ["", "Yes, in the bottom left."]),
    ],
)
def test_free_text_that_agrees_with_the_facts_passes(facts, gpt):
    assert codes(facts, *gpt) == []


@pytest.mark.parametrize(
    "facts, gpt, expected",
    [
        (LOCO, ["No, the juice bottle looks normal."], ["label_contradiction"]),
        (LOCO, ["The bottle looks normal: no defect is visible."], ["label_contradiction"]),
        (NORMAL, ["The juice bottle has a misplaced label top defect."], ["label_contradiction"]),
        (LOCO, ["Yes, in the top right of the image."], ["location_mismatch"]),
        (LOCO, ["Yes, it forms a single region."], ["count_mismatch"]),
        (NORMAL, ["No, but it has one region that stands out."], ["count_mismatch"]),
        (LOCO, ["Yes, it has a broken defect."], ["unknown_defect_name"]),
        (LOCO, ["Yes, it has a bubble defect."], ["unknown_defect_name"]),
        (LOCO, ['Yes, the label reads "Orange juice.'], ["truncated_answer"]),
    ],
)
def test_free_text_that_contradicts_the_facts_is_flagged(facts, gpt, expected):
    assert codes(facts, *gpt) == expected


def test_boilerplate_counts_stay_bounded_and_never_overstate():
    validator = GroundingValidator(boilerplate_capacity=8, boilerplate_min_records=1)
    context = context_with(NORMAL, set())
    for index in range(2000):
        text = "No, it is normal." if index % 2 == 0 else f"No, object {index} is normal."
        record = record_for(NORMAL, text, family="detection")
        list(validator.check(record, "x.json", context))
    hitters = validator.answers_by_family["detection"]
    assert len(hitters.counts) <= 8
    [finding] = validator.finish(context)
    count = int(finding.message.split("at least ")[1].split()[0])
    # Misra-Gries: at most added / (capacity + 1) below the true 1000.
    assert 1000 - 2000 / 9 <= count <= 1000


def test_each_distinct_answer_is_read_once_in_caches_of_a_fixed_size():
    validator = GroundingValidator(cache_size=16)
    context = context_with(NORMAL, set())
    for index in range(500):
        answers = ["No, it is normal."] if index % 2 == 0 else ["No.", f"Object {index} is normal."]
        record = record_for(NORMAL, *answers, family="detection")
        assert list(validator.check(record, "x.json", context)) == []
    records, answers = validator.checked_record.cache_info(), validator.checked.cache_info()
    assert records.currsize <= 16 and records.hits == 249  # the repeated record: read once
    assert answers.currsize <= 16 and answers.hits == 249  # "No." of the other records
    assert validator.subject.cache_info().currsize == 1  # one sample, one subject


def test_samples_alike_share_what_their_answers_were_found_to_say():
    """The normal samples of a category share a subject, so that a bank's phrasing given for
    each of them is read once; a sample with other facts gets its own."""
    validator = GroundingValidator()
    other = SampleFacts(**{**vars(NORMAL), "sample_id": "loco/juice_bottle/test/good/001"})
    context = context_with(NORMAL, set())
    context.samples[other.sample_id] = other
    context.samples[LOCO.sample_id] = LOCO
    for facts in (NORMAL, other, LOCO):
        list(validator.check(record_for(facts, "No, it looks fine."), "x.json", context))
    assert validator.checked_record.cache_info().hits == 1  # NORMAL's reading, for `other`
    codes = [f.code for f in validator.check(record_for(LOCO, "No, it looks fine."), "x", context)]
    assert codes == ["label_contradiction"]  # LOCO is anomalous: its own subject


def test_an_answer_read_once_flags_every_record_that_gives_it():
    validator = GroundingValidator()
    context = context_with(LOCO, {"misplaced_label_top"})
    flagged = []
    for index in range(3):
        record = record_for(LOCO, "Yes, in the top right of the image.")
        record = {**record, "id": f"record {index}"}
        flagged += [(f.record_id, f.code) for f in validator.check(record, "x.json", context)]
    assert flagged == [(f"record {index}", "location_mismatch") for index in range(3)]
    assert validator.checked_record.cache_info().hits == 2


def test_a_sample_added_to_the_context_later_is_checked_against():
    validator = GroundingValidator()
    context = FolderContext(root=Path("."))
    record = record_for(LOCO, "Yes, in the top right of the image.")
    assert list(validator.check(record, "x.json", context)) == []  # no facts: no location check
    context.samples[LOCO.sample_id] = LOCO
    codes = [f.code for f in validator.check(record, "x.json", context)]
    assert codes == ["location_mismatch"]


def test_a_superscript_before_regions_states_no_count():
    # "²".isdigit() holds but int("²") raises: the count reader must read it as no number.
    assert codes(LOCO, "Yes, it covers ² regions in the bottom left of the image.") == []


# -- the exact shortcuts ----------------------------------------------------------------


class FullReading(GroundingValidator):
    """The validator with its shortcuts turned off: the reading each one stands in for (the
    known defect names right before "defect", and an anomaly's stated location meaning it is
    not said to be normal)."""

    def vocabulary(self, *args):
        plain = super().vocabulary(*args)
        return dataclasses.replace(plain, plain_names=frozenset(), plain_words=0)

    def claims_normal(self, vocabulary, lowered, words=None):
        return super().claims_normal(vocabulary, lowered, None)


SPLICES = [
    "a crack defect", "the defect", "no defects", "a large crack defect", "a hole defect",
    "a broken defect", "a bubble defect", "other defects", "a missing piece defect",
    "a scratch  defect", "crack-defect", "a crack, defect", "a metal nut defect",
    'a defect of the "broken" kind', "an abnormality", "a small surface defect",
    "looks normal", "is free of defects", "nothing abnormal is visible", "in the top left",
    "in the center", "No,", "Yes,", "it is intact", "two regions", "defects",
]  # fmt: skip


def spliced(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(rng.randint(1, 3)):
        words.insert(rng.randint(0, len(words)), rng.choice(SPLICES))
    return " ".join(words)


def test_the_shortcuts_find_exactly_what_the_full_reading_finds(demo):
    context = load_context(demo)
    rng = random.Random(0)
    corpus = []
    for record in records(demo):
        corpus.append(record)
        for _ in range(6):
            variant = json.loads(json.dumps(record))
            for turn in answers(variant):
                turn["value"] = spliced(turn["value"], rng)
            corpus.append(variant)
    found = []
    for validator in (GroundingValidator(), FullReading()):
        found.append(
            [
                (f.record_id, f.code, f.message)
                for r in corpus
                for f in validator.check(r, "x", context)
            ]
        )
    assert found[0] == found[1]
    # The corpus reaches both sides of each shortcut.
    found_codes = {code for _, code, _ in found[0]}
    assert {"unknown_defect_name", "label_contradiction", "location_mismatch"} <= found_codes
    reader, shortcuts = GroundingValidator(), 0
    for record in corpus:
        meta = record["metadata"]
        vocabulary = reader.vocabulary(context, meta["source"], meta["category"], None)
        for turn in answers(record):
            lowered = turn["value"].lower()
            shortcuts += "defect" in lowered and names_only_known_defects(
                lowered, vocabulary.plain_names, vocabulary.plain_words
            )
    assert shortcuts > len(corpus) / 4


def test_the_caches_step_aside_while_no_answer_repeats_and_come_back_when_answers_do():
    validator = GroundingValidator(cache_size=64)
    context = context_with(LOCO, {"misplaced_label_top"})
    use = CacheUse.WINDOW + 64 * CacheUse.PROBE_EVERY * 4  # records: a window, then probes

    def batch(texts: list[str]) -> Batch:
        return Batch("instruction_record", "x.json", 0, [record_for(LOCO, t) for t in texts])

    flagged = 0
    for start in range(0, use, 64):  # every answer new, each with a wrong location
        texts = [f"Yes, in the top right, case {n}." for n in range(start, start + 64)]
        flagged += len(list(validator.check_batch(batch(texts), context)))
    asked = validator.checked_record.cache_info()
    assert flagged == use  # every record read, cache or none
    assert asked.hits == 0 and asked.hits + asked.misses < use / 2  # probes only, after a while
    for _ in range(CacheUse.PROBE_EVERY * 3):  # then the same answer in every record
        texts = ["Yes, in the top right of the image."] * 64
        assert len(list(validator.check_batch(batch(texts), context))) == 64
    again = validator.checked_record.cache_info()
    assert again.hits - asked.hits > 64 * CacheUse.PROBE_EVERY  # asked again, and hit


def test_the_unrolled_character_tests_are_their_lists():
    rng = random.Random(2)
    alphabet = "ab no t\n" + PAIRED + "".join(NEGATIONS)
    for _ in range(5000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        assert has_paired(text) == any(character in text for character in PAIRED), text
        assert has_negation(text) == any(negation in text for negation in NEGATIONS), text
