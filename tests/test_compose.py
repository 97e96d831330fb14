"""The compose stage: valid LLaVA-OneVision records whose every claim agrees with the annotation."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from adinstruct.builder.annotate import AnnotateStage, measure_mask
from adinstruct.builder.compose import (
    ComposeConfig,
    Phrasebook,
    compose,
    compose_provenance,
    compose_sample,
    records_summary,
    skip_reason,
)
from adinstruct.builder.demo import generate_mvtec_tree
from adinstruct.builder.describe.knowledge import KNOWLEDGE
from adinstruct.builder.describe.template import TemplateDescriber, grid_words_in, humanise
from adinstruct.builder.sources import get_builder
from adinstruct.schemas import Annotation, InstructionRecord, MaskRef, Sample

SIZE = 48
DEFECTS = ["scratch", "crack", "broken_large", "Different Colour Spot", "bent_lead", "hole"]
COUNT = re.compile(r"\b(one region|(\d+) separate regions)\b")
DEFECT_KEYWORDS = sorted({k for entry in KNOWLEDGE for k in entry.keywords if " " not in k})


# -- a synthetic population with real mask geometry ------------------------------------------


def synthetic_sample(index: int) -> Sample:
    """Sample `index`: normal, label-only anomaly, or anomaly with 1-3 rectangles in its mask."""
    rng = random.Random(index)
    kind = ("normal", "masked", "masked", "masked", "label_only")[index % 5]
    category = ("bottle", "metal_nut", "pcb1", "capsules")[index % 4]
    image = f"{category}/test/{kind}/{index:04d}.png"
    annotation = {"width": SIZE, "height": SIZE, "mode": "RGB", "sha256": f"{index:064x}",
                  "phash": f"{index:016x}"}  # fmt: skip
    masks = []
    if kind == "masked":
        mask = np.zeros((SIZE, SIZE), dtype=bool)
        for _ in range(rng.randint(1, 3)):
            row, column = rng.randrange(0, SIZE - 6), rng.randrange(0, SIZE - 6)
            mask[row : row + rng.randint(2, 12), column : column + rng.randint(2, 12)] = True
        geometry = measure_mask(mask)
        annotation.update(
            mask_rle=geometry.mask_rle, bboxes=geometry.bboxes,
            area_fraction=geometry.area_fraction, region_count=geometry.region_count,
            regions=geometry.regions, grid_cells=geometry.grid_cells,
        )  # fmt: skip
        masks = [MaskRef(path=f"{category}/ground_truth/{kind}/{index:04d}_mask.png")]
    defect_types = rng.sample(DEFECTS, rng.choice((0, 1, 1, 2))) if kind != "normal" else []
    return Sample(
        id=f"visa/{image[:-4]}", source="visa", category=category, split="test",
        label="normal" if kind == "normal" else "anomaly", defect_types=defect_types,
        image_paths=[image], masks=masks, annotation=Annotation(**annotation),
    )  # fmt: skip


def population(count: int) -> list[Sample]:
    return list(TemplateDescriber().describe(synthetic_sample(i) for i in range(count)))


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return population(300)


@pytest.fixture(scope="module")
def records(samples) -> list[InstructionRecord]:
    return list(compose(samples, ComposeConfig(seed=7, records_per_sample=3)))


def by_sample(samples: list[Sample]) -> dict[str, Sample]:
    return {sample.id: sample for sample in samples}


def gpt_turns(record: InstructionRecord) -> list[str]:
    return [turn.value for turn in record.conversations if turn.speaker == "gpt"]


# -- shape -----------------------------------------------------------------------------------


def test_every_record_is_valid_llava_onevision(records, samples):
    assert len(records) > 2 * len(samples)
    assert len({record.id for record in records}) == len(records)
    for record in records:
        again = InstructionRecord.model_validate_json(record.model_dump_json())
        assert again == record
        assert '"from": "human"' in record.model_dump_json(indent=1)  # the alias is what is written
        turns = record.conversations
        assert len(turns) % 2 == 0 and len(turns) >= 2
        assert [t.speaker for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert all(turn.value.strip() for turn in turns)
        images = record.image if isinstance(record.image, list) else [record.image]
        assert turns[0].value.startswith("<image>\n")
        assert turns[0].value.count("<image>") == len(images)
        assert all("<image>" not in turn.value for turn in turns[1:])
        assert record.id == f"{record.metadata.sample_id}#{record.metadata.task_family}"


def test_images_and_masks_point_under_the_output_folder(records, samples):
    index = by_sample(samples)
    for record in records:
        sample = index[record.metadata.sample_id]
        assert record.image == f"visa/{sample.image_paths[0]}"
        assert record.image.split("/")[1] == sample.category  # Anomaly-OV's class component
        expected_mask = f"masks/visa/{sample.masks[0].path}" if sample.masks else None
        assert record.metadata.mask == expected_mask
        assert record.metadata.anomaly == (sample.label == "anomaly")
        assert record.metadata.defect_types == sample.defect_types
        assert record.metadata.category == sample.category


def test_several_views_become_a_list_with_one_token_each(samples):
    views = [f"bottle/test/crack/000_C{camera}.png" for camera in range(1, 4)]
    sample = samples[1].model_copy(update={"image_paths": views, "view_count": 3})
    config = ComposeConfig(records_per_sample=3, image_prefix="real/")
    for record in compose([sample], config):
        assert record.image == [f"real/visa/{view}" for view in views]
        assert record.conversations[0].value.startswith("<image>\n<image>\n<image>\n")
        assert record.conversations[0].value.count("<image>") == 3


# -- reproducibility ------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_choices(samples):
    config = ComposeConfig(seed=3)
    first = [record.model_dump_json() for record in compose(samples, config)]
    second = [record.model_dump_json() for record in compose(iter(samples), config)]
    assert first == second
    other = [record.model_dump_json() for record in compose(samples, ComposeConfig(seed=4))]
    assert other != first
    families = {r.id for r in compose(samples, ComposeConfig(seed=4))}
    assert families != {r.id for r in compose(samples, config)}  # the family draw moved too


def test_a_shuffled_stream_gives_the_same_record_per_sample(samples):
    config = ComposeConfig(seed=11)
    in_order = {record.id: record.model_dump_json() for record in compose(samples, config)}
    shuffled = samples[:]
    random.Random(0).shuffle(shuffled)
    assert {r.id: r.model_dump_json() for r in compose(shuffled, config)} == in_order
    # A sample composed alone, without any of the others, comes out the same too.
    alone = compose_sample(samples[17], config, Phrasebook.load())
    assert all(in_order[record.id] == record.model_dump_json() for record in alone)


# -- the family mix --------------------------------------------------------------------------


def test_the_family_mix_follows_the_weights():
    masked = [s for s in population(1000) if s.masks]  # every family suits these
    weights = {"detection": 4.0, "description": 2.0, "localisation": 1.0, "reasoning": 1.0}
    one = Counter(
        r.metadata.task_family
        for r in compose(masked, ComposeConfig(families=weights, records_per_sample=1))
    )
    total = sum(one.values())
    assert total == len(masked)
    for family, weight in weights.items():
        assert one[family] / total == pytest.approx(weight / 8, abs=0.06), one

    two = list(compose(masked, ComposeConfig(families=weights, records_per_sample=2)))
    per_sample = Counter(record.metadata.sample_id for record in two)
    assert set(per_sample.values()) == {2}  # two distinct families each
    counts = Counter(record.metadata.task_family for record in two)
    assert counts["detection"] > counts["description"] > counts["localisation"]


def test_zero_weight_families_never_appear(samples):
    config = ComposeConfig(families={"detection": 1.0, "reasoning": 0.0}, records_per_sample=3)
    assert {r.metadata.task_family for r in compose(samples, config)} == {"detection"}


def test_bad_configs_are_refused():
    with pytest.raises(ValidationError, match="unknown families"):
        ComposeConfig(families={"detection": 1.0, "chitchat": 1.0})
    with pytest.raises(ValidationError, match="above 0"):
        ComposeConfig(families={"detection": 0.0})
    with pytest.raises(ValidationError):
        ComposeConfig(records_per_sample=4)


# -- grounding -------------------------------------------------------------------------------


def test_yes_and_no_agree_with_the_label(records, samples):
    index = by_sample(samples)
    for record in records:
        if record.metadata.task_family in {"detection", "reasoning"}:
            first_answer = gpt_turns(record)[0]
            expected = "Yes" if index[record.metadata.sample_id].label == "anomaly" else "No"
            assert first_answer.startswith(f"{expected},") or first_answer.startswith(
                f"{expected}."
            ), first_answer


def test_place_and_count_claims_are_exactly_the_masks(records, samples):
    index = by_sample(samples)
    seen_localisation = 0
    for record in records:
        sample = index[record.metadata.sample_id]
        allowed = set(sample.annotation.grid_cells) if sample.label == "anomaly" else set()
        for answer in gpt_turns(record):
            places = set(grid_words_in(answer))
            # An answer either names no place, or exactly the cells the mask covers.
            assert places in (set(), allowed), (record.id, answer)
            for phrase, digits in COUNT.findall(answer):
                assert (1 if phrase == "one region" else int(digits)) == (
                    sample.annotation.region_count
                ), answer
        if record.metadata.task_family == "localisation":
            seen_localisation += 1
            (answer,) = gpt_turns(record)
            assert set(grid_words_in(answer)) == allowed and allowed
            assert len(COUNT.findall(answer)) == 1
        if record.metadata.task_family == "description" and sample.masks:
            (answer,) = gpt_turns(record)
            assert set(grid_words_in(answer)) == allowed
    assert seen_localisation > 50


def test_defect_names_come_from_the_release(records, samples):
    index = by_sample(samples)
    for record in records:
        sample = index[record.metadata.sample_id]
        if sample.label != "anomaly" or record.metadata.task_family == "localisation":
            continue
        answers = " ".join(gpt_turns(record))
        for name in sample.defect_types:
            assert humanise(name) in answers, (record.id, answers)
        if not sample.defect_types:
            assert "defect" in answers


def test_normal_records_claim_no_defect_and_no_place(records, samples):
    index = by_sample(samples)
    normal = [r for r in records if index[r.metadata.sample_id].label == "normal"]
    assert normal and not any(r.metadata.task_family == "localisation" for r in normal)
    for record in normal:
        for answer in gpt_turns(record):
            assert grid_words_in(answer) == []
            words = re.findall(r"[a-z]+", answer.lower())
            assert not any(w.startswith(k) for w in words for k in DEFECT_KEYWORDS), answer
        if record.metadata.task_family == "reasoning":
            assert len(record.conversations) == 4  # is there an anomaly -> what is shown


def test_label_only_anomalies_are_never_located(records, samples):
    index = by_sample(samples)
    unlocated = [r for r in records if index[r.metadata.sample_id].annotation.mask_rle is None]
    unlocated = [r for r in unlocated if r.metadata.anomaly]
    assert unlocated
    for record in unlocated:
        assert record.metadata.task_family != "localisation"
        assert record.metadata.mask is None
        for answer in gpt_turns(record):
            assert grid_words_in(answer) == [] and not COUNT.search(answer), answer
        if record.metadata.task_family == "reasoning":
            assert "where" not in record.conversations[2].value.lower()


def test_anomaly_reasoning_runs_four_rounds_with_possible_causes(records):
    reasoning = [r for r in records if r.metadata.task_family == "reasoning" and r.metadata.anomaly]
    assert reasoning
    for record in reasoning:
        assert len(record.conversations) == 8
        assert "may" in record.conversations[5].value  # the cause, as a possibility
        assert "prevent" in record.conversations[7].value


# -- skipping, overrides, summaries ----------------------------------------------------------


def test_undescribed_or_contradicting_samples_are_skipped(samples):
    bare = samples[1].model_copy(update={"description": None})
    contradicting = samples[1].model_copy(
        update={"description": samples[0].description, "id": "visa/x"}
    )
    assert skip_reason(bare) == "no_description"
    assert skip_reason(contradicting) == "description_disagrees"
    assert skip_reason(samples[1].model_copy(update={"annotation": None})) == "no_annotation"
    assert skip_reason(samples[1]) is None
    assert list(compose([bare, contradicting], ComposeConfig())) == []
    with pytest.raises(ValueError, match="no_description"):
        compose_sample(bare, ComposeConfig(), Phrasebook.load())


def test_an_llm_appearance_is_added_to_the_description(samples):
    sample = next(s for s in samples if s.masks)
    extra = "The scratch is thin and shiny."
    llm = sample.model_copy(
        update={
            "describer": "openai:gpt-4o-mini",
            "description": sample.description.model_copy(update={"appearance": extra}),
        }
    )
    config = ComposeConfig(families={"description": 1.0}, records_per_sample=1)
    (record,) = compose([llm], config)
    assert gpt_turns(record)[0].endswith(extra)
    (plain,) = compose([sample], config)
    assert sample.description.appearance not in gpt_turns(plain)[0]  # no repetition


def test_a_templates_folder_changes_the_wording_without_code(tmp_path, samples):
    (tmp_path / "questions").mkdir()
    (tmp_path / "answers").mkdir()
    (tmp_path / "questions" / "detection.j2").write_text("Is this {{ category }} fine?\n")
    (tmp_path / "answers" / "detection_no.j2").write_text("No, this {{ category }} is fine.\n")
    config = ComposeConfig(
        families={"detection": 1.0}, records_per_sample=1, templates_dir=tmp_path
    )
    normal = next(s for s in samples if s.label == "normal" and s.category == "pcb1")
    (record,) = compose([normal], config)
    assert record.conversations[0].value == "<image>\nIs this PCB fine?"
    assert record.conversations[1].value == "No, this PCB is fine."
    banks = compose_provenance(config)["banks"]
    shipped = compose_provenance(ComposeConfig())["banks"]
    assert banks["questions/detection"] != shipped["questions/detection"]
    assert "answers/localisation" in banks


def test_records_summary_counts_by_family_and_label(records):
    summary = records_summary(records)
    assert summary["records"] == len(records)
    assert sum(summary["by_family"].values()) == len(records)
    assert summary["by_label"]["anomaly"] + summary["by_label"]["normal"] == len(records)
    assert summary["by_label"]["normal"] == sum(not r.metadata.anomaly for r in records)


# -- end to end on real files ----------------------------------------------------------------


def test_demo_tree_through_annotate_describe_and_compose(tmp_path: Path):
    tree = generate_mvtec_tree(tmp_path / "demo", n_images=16, image_size=48, categories=2)
    source = get_builder("demo")(tree.root)
    stage = AnnotateStage({"demo": str(tree.root)})
    annotated = [stage.process(sample) for sample in source.iter_samples()]
    described = list(TemplateDescriber().describe(s for s in annotated if isinstance(s, Sample)))
    assert len(described) == 16 and all(isinstance(s, Sample) for s in described)
    records = list(compose(described, ComposeConfig(seed=1)))
    assert len(records) == 2 * len(described)
    index = by_sample(described)
    for record in records:
        sample = index[record.metadata.sample_id]
        assert (tree.root / sample.image_paths[0]).is_file()
        assert record.image == f"demo/{sample.image_paths[0]}"
        for answer in gpt_turns(record):
            assert set(grid_words_in(answer)) in (set(), set(sample.annotation.grid_cells))


# -- medical modalities (added with the BMAD builders) ------------------------------------


def test_industrial_wording_is_untouched_by_the_medical_branches():
    from adinstruct.builder.compose.families import question_context as context_of
    from adinstruct.templates.bank import load_bank

    rgb = Sample(
        id="mvtec_ad/bottle/test/good/000", source="mvtec_ad", category="bottle", split="test",
        label="normal", image_paths=["bottle/test/good/000.png"],
    )  # fmt: skip
    context = context_of(rgb)
    assert context["medical"] is False and context["scan"] is None
    bank = load_bank("detection")
    # The industrial texts, byte for byte as they were before the medical branches.
    assert bank.render(0, **context) == (
        "Are there any defects for the object in the image? Please reply with 'Yes' or 'No'."
    )
    assert bank.render(5, **context) == (
        "As a quality inspector, would you flag this bottle as defective? Reply with 'Yes' or 'No'."
    )
    mri = rgb.model_copy(update={"modality": "mri", "category": "brain"})
    assert bank.render(5, **context_of(mri)) == (
        "As a radiologist, would you report this MRI scan as abnormal? Reply with 'Yes' or 'No'."
    )
