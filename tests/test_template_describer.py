"""The template describer on annotations made by the real annotate stage from real PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adinstruct.builder.annotate import AnnotateStage
from adinstruct.builder.describe.knowledge import (
    CATEGORY_OBJECTS,
    GENERIC,
    KNOWLEDGE,
    MEDICAL_MODALITIES,
    knowledge_for,
)
from adinstruct.builder.describe.template import (
    TemplateDescriber,
    defect_mention,
    grid_words_in,
    object_phrase,
    percent_phrase,
    size_class,
)
from adinstruct.schemas import GRID_WORDS, Annotation, Description, QuarantineEntry, Sample

SIZE = 90  # divisible by 3: grid cells are 30-pixel bands
DEFECT_WORDS = {keyword for entry in KNOWLEDGE for keyword in entry.keywords} | {
    "defect", "anomal", "abnormal", "damage",
}  # fmt: skip


# -- building the world ---------------------------------------------------------------------


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def make_annotated(
    root: Path,
    name: str,
    boxes: list[tuple[slice, slice]],
    *,
    label: str = "anomaly",
    defect_types: tuple[str, ...] = ("scratch",),
    category: str = "bottle",
) -> Sample:
    """Write an image (and a mask with `boxes` marked) under `root`, then annotate it."""
    image = f"{category}/test/{name}.png"
    rng = np.random.default_rng(len(name))
    write_png(root / image, rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    masks = []
    if boxes:
        mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
        for rows, columns in boxes:
            mask[rows, columns] = 255
        mask_path = f"{category}/ground_truth/{name}_mask.png"
        write_png(root / mask_path, mask)
        masks = [{"path": mask_path}]
    sample = Sample(
        id=f"mvtec_ad/{image[:-4]}",
        source="mvtec_ad",
        category=category,
        split="test",
        label=label,
        defect_types=list(defect_types) if label == "anomaly" else [],
        image_paths=[image],
        masks=masks,
    )
    result = AnnotateStage({"mvtec_ad": str(root)}).process(sample)
    assert isinstance(result, Sample), result
    return result


def describe_one(sample: Sample) -> Description:
    (result,) = TemplateDescriber().describe([sample])
    assert isinstance(result, Sample), result
    assert result.describer == "template"
    assert result.description is not None
    return result.description


def label_only(defect_types: list[str], modality: str = "rgb") -> Sample:
    """An anomaly the release labels without any mask (annotation.mask_rle is None)."""
    return Sample(
        id="folder/parts/ko/007", source="folder", category="parts", split="test",
        label="anomaly", defect_types=defect_types, image_paths=["parts/ko/007.png"],
        modality=modality,
        annotation=Annotation(width=64, height=64, mode="RGB", sha256="a" * 64, phash="b" * 16),
    )  # fmt: skip


def all_text(description: Description) -> str:
    return " ".join(value for value in description.model_dump().values() if isinstance(value, str))


# -- locations, sizes, counts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("boxes", "words"),
    [
        ([(slice(2, 20), slice(2, 20))], ["top left"]),
        ([(slice(35, 55), slice(35, 55))], ["center"]),
        ([(slice(70, 88), slice(35, 55))], ["bottom"]),
        # Two blobs, the larger one first: grid cells come largest share first.
        ([(slice(35, 58), slice(35, 58)), (slice(2, 12), slice(2, 12))], ["center", "top left"]),
    ],
)
def test_location_is_the_annotations_grid_words(tmp_path, boxes, words):
    sample = make_annotated(tmp_path, f"case{len(boxes)}{words[0].replace(' ', '')}", boxes)
    assert sample.annotation.grid_cells == words
    description = describe_one(sample)
    assert description.anomaly_present is True
    assert description.location == " and ".join(words)
    assert grid_words_in(description.location) == words
    # No other field claims a different place.
    assert set(grid_words_in(all_text(description))) == set(words)


def test_appearance_states_size_count_and_place_from_the_mask(tmp_path):
    boxes = [(slice(2, 8), slice(2, 8)), (slice(2, 8), slice(80, 86))]  # two 6×6 specks
    sample = make_annotated(tmp_path, "two_specks", boxes)
    annotation = sample.annotation
    assert annotation.region_count == 2
    assert annotation.area_fraction == pytest.approx(72 / SIZE**2)
    appearance = describe_one(sample).appearance
    assert "2 separate regions" in appearance
    assert size_class(annotation.area_fraction) == "small" and " small," in appearance
    assert "about 0.9% of the image" in appearance
    assert grid_words_in(appearance) == annotation.grid_cells == ["top left", "top right"]

    one = describe_one(make_annotated(tmp_path, "one_blob", [(slice(30, 60), slice(30, 60))]))
    assert "one region" in one.appearance and "separate" not in one.appearance
    assert "medium" not in one.appearance and "large" in one.appearance  # 900/8100 = 11 %


@pytest.mark.parametrize(
    ("fraction", "name"),
    [(0.0001, "tiny"), (0.0049, "tiny"), (0.005, "small"), (0.0199, "small"), (0.02, "medium"),
     (0.0799, "medium"), (0.08, "large"), (0.9, "large")],
)  # fmt: skip
def test_size_classes_follow_the_documented_thresholds(fraction, name):
    assert size_class(fraction) == name


def test_percent_phrases():
    assert percent_phrase(0.0004) == "less than 0.1%"
    assert percent_phrase(0.0123) == "about 1.2%"
    assert percent_phrase(0.456) == "about 46%"


# -- defect names ---------------------------------------------------------------------------


def test_defect_names_are_the_releases_own_made_readable(tmp_path):
    box = [(slice(2, 20), slice(2, 20))]
    single = describe_one(make_annotated(tmp_path, "a", box, defect_types=("broken_large",)))
    assert single.defect_type == "broken large"
    several = describe_one(
        make_annotated(tmp_path, "b", box, defect_types=("Different Colour Spot", "Bent"))
    )
    assert several.defect_type == "different colour spot and bent"
    unnamed = describe_one(make_annotated(tmp_path, "c", box, defect_types=()))
    assert unnamed.defect_type == "defect"
    # annotate writes "unknown" for unnamed mask files: not a name to repeat.
    placeholder = describe_one(make_annotated(tmp_path, "d", box, defect_types=("unknown",)))
    assert placeholder.defect_type == "defect"
    assert describe_one(label_only([], modality="mri")).defect_type == "abnormality"


def test_defect_mentions_read_as_english():
    assert defect_mention(["scratch"]) == "a scratch defect"
    assert defect_mention(["small scratches"]) == "small scratches"
    assert defect_mention(["infection", "bent"]) == "an infection defect and a bent defect"
    assert defect_mention([]) == "a defect"


# -- normal and label-only samples -----------------------------------------------------------


def test_normal_samples_never_mention_defects(tmp_path):
    description = describe_one(make_annotated(tmp_path, "good", [], label="normal"))
    assert description.anomaly_present is False
    assert description.object_description == "a glass bottle"
    for field in ("defect_type", "location", "appearance", "likely_cause", "effect", "prevention"):
        assert getattr(description, field) is None, field
    # Every category phrase in the table, and the fallbacks, stay clear of defect words.
    phrases = [*CATEGORY_OBJECTS.values(), object_phrase("widget"), object_phrase("02"),
               object_phrase("brain", "mri")]  # fmt: skip
    for phrase in phrases:
        words = phrase.lower().split()
        assert not any(w.startswith(k) for w in words for k in DEFECT_WORDS), phrase
        assert grid_words_in(phrase) == [], phrase
    assert object_phrase("widget") == "a widget"
    assert object_phrase("brain", "mri") == "an MRI scan of the brain"


def test_label_only_anomalies_make_no_location_claim():
    description = describe_one(label_only(["missing_screw"]))
    assert description.anomaly_present is True
    assert description.defect_type == "missing screw"
    assert description.location is None
    assert description.appearance is None  # no mask: no size and no count either
    assert grid_words_in(all_text(description)) == []
    assert "may" in description.likely_cause


def test_an_unannotated_sample_is_quarantined():
    sample = label_only(["crack"]).model_copy(update={"annotation": None})
    (entry,) = TemplateDescriber().describe([sample])
    assert isinstance(entry, QuarantineEntry)
    assert (entry.stage, entry.code, entry.sample_id) == ("describe", "not_annotated", sample.id)
    assert "parts/ko/007.png" in entry.reason


# -- causes ---------------------------------------------------------------------------------

RELEASE_NAMES = {
    # name as the release gives it -> the knowledge topic it should find
    "scratch": "scratch", "Small Scratches": "scratch", "abrasion": "scratch",
    "crack": "crack", "Small Cracks": "crack", "hole": "hole", "Small Holes": "hole",
    "pit": "hole", "poke_insulation": "hole", "metal_contamination": "contamination",
    "Foreign Particals on Candle": "contamination", "Dirt": "contamination",
    "Different Colour Spot": "colour", "color": "colour", "Discolor": "colour",
    "broken_large": "breakage", "Middle Breakage": "breakage",
    "Corner or Edge Breakage": "breakage", "Breakage down the middle": "breakage",
    "Chunk Of Wax Missing": "missing part", "missing parts": "missing part",
    "bent_lead": "bend", "Bent": "bend", "deformation": "deformation", "Misshape": "deformation",
    "squeeze": "deformation", "cut_lead": "cut", "faulty_imprint": "print", "print": "print",
    "fold": "fold", "glue_strip": "glue", "thread": "stray thread", "thread_side": "screw thread",
    "Melt": "melt", "Wax Melded out of the candle": "melt", "Burnt": "burn",
    "misplaced": "assembly error", "Wrong Place": "assembly error", "cable_swap": "assembly error",
    "Leak": "leak", "Bubble": "bubble", "Stuck Together": "sticking", "Extra": "excess material",
    "weird candle wick": "generic", "combined": "generic",
}  # fmt: skip


@pytest.mark.parametrize(("name", "topic"), sorted(RELEASE_NAMES.items()))
def test_knowledge_finds_the_topic_of_real_release_names(name, topic):
    assert knowledge_for(name).topic == topic


def test_causes_effects_and_preventions_are_possibilities_without_places():
    for entry in (*KNOWLEDGE, GENERIC):
        for text in (entry.cause, entry.effect, entry.prevention):
            assert grid_words_in(text) == [], (entry.topic, text)
            assert "centre" not in text
    description = describe_one(label_only(["scratch", "Small Scratches", "crack"]))
    # One explanation per topic: scratch and small scratches share one.
    assert description.likely_cause.count("may have been caused by") == 2
    assert description.likely_cause.startswith("The scratch defect may have been caused by")
    assert "could be prevented by" in description.prevention
    for modality in MEDICAL_MODALITIES:
        medical = describe_one(label_only([], modality=modality))
        assert "may" in medical.likely_cause and "cannot be determined" in medical.likely_cause


# -- the stream -------------------------------------------------------------------------------


def test_one_result_per_sample_in_order_and_deterministic(tmp_path):
    samples = [
        make_annotated(tmp_path, "x1", [(slice(2, 20), slice(60, 88))]),
        make_annotated(tmp_path, "x2", [], label="normal"),
        label_only(["crack"]),
    ]
    first = list(TemplateDescriber().describe(iter(samples)))
    second = list(TemplateDescriber().describe(samples))
    assert [result.id for result in first] == [sample.id for sample in samples]
    assert [r.model_dump_json() for r in first] == [r.model_dump_json() for r in second]
    assert all(sample.description is None for sample in samples)  # inputs are left untouched


def test_grid_words_match_whole_compounds_only():
    assert grid_words_in("top left") == ["top left"]
    assert grid_words_in("the top, left and center") == ["top", "left", "center"]
    assert grid_words_in("Bottom Right; topology, leftover, righteous") == ["bottom right"]
    assert set(GRID_WORDS) == set(grid_words_in(", ".join(GRID_WORDS)))
