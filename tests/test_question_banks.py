"""Question and answer banks: every shipped paraphrase renders strictly; user folders override."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from adinstruct.builder.compose.families import answer_context, question_context
from adinstruct.builder.describe.template import TemplateDescriber, grid_words_in
from adinstruct.schemas import RLE, Annotation, Sample
from adinstruct.templates.bank import BankError, bank_hash, list_banks, load_bank

REPO_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"
REQUIRED_QUESTIONS = {
    "detection", "description", "localisation", "reasoning_cause", "reasoning_prevention",
    "reasoning_what_where", "reasoning_what", "object",
}  # fmt: skip
ANOMALY_OV_DETECTION = (
    "Are there any defects for the object in the image? Please reply with 'Yes' or 'No'."
)
#: Which answer banks compose uses for which kind of sample.
ANSWERS_FOR = {
    "located": ["detection_yes", "description_anomaly", "localisation", "reasoning_what_where",
                "reasoning_cause", "reasoning_prevention"],
    "label_only": ["detection_yes", "description_anomaly", "reasoning_what_where",
                   "reasoning_cause", "reasoning_prevention"],
    "normal": ["detection_no", "description_normal", "object"],
}  # fmt: skip


def described(sample: Sample) -> Sample:
    (result,) = TemplateDescriber().describe([sample])
    return result


def sample_of(kind: str, *, category: str = "metal_nut", modality: str = "rgb") -> Sample:
    anomaly = kind != "normal"
    mask = {}
    if kind == "located":
        mask = dict(
            mask_rle=RLE(size=(60, 60), counts="PY18"), area_fraction=0.031, region_count=2,
            grid_cells=["top right", "center"],
        )  # fmt: skip
    annotation = Annotation(
        width=60, height=60, mode="RGB", sha256="c" * 64, phash="d" * 16, **mask
    )
    sample = Sample(
        id=f"mvtec_ad/{category}/test/{kind}/000", source="mvtec_ad", category=category,
        split="test", label="anomaly" if anomaly else "normal",
        defect_types=["bent", "scratch"] if anomaly else [],
        image_paths=[f"{category}/test/{kind}/000.png"], modality=modality, annotation=annotation,
    )  # fmt: skip
    return described(sample)


def test_the_shipped_banks_are_listed():
    assert set(list_banks()) >= REQUIRED_QUESTIONS
    assert set(ANSWERS_FOR["located"]) | set(ANSWERS_FOR["normal"]) <= set(list_banks("answers"))


@pytest.mark.parametrize("name", list_banks())
@pytest.mark.parametrize(
    "sample", [sample_of("located"), sample_of("normal", category="01"),
               sample_of("label_only", category="brain", modality="mri")],
    ids=["located", "btad-normal", "mri"],
)  # fmt: skip
def test_every_question_paraphrase_renders_strictly(name, sample):
    bank = load_bank(name)
    assert len(bank) >= 3, f"{name} needs variety"
    rendered = [bank.render(index, **question_context(sample)) for index in range(len(bank))]
    assert len(set(rendered)) == len(rendered), "duplicate paraphrases"
    for text in rendered:
        assert text and "<image>" not in text and "{" not in text
        assert text.endswith(("?", ".")), text


def test_detection_holds_anomaly_ovs_own_wording():
    bank = load_bank("detection")
    context = question_context(sample_of("normal"))
    assert ANOMALY_OV_DETECTION in [bank.render(i, **context) for i in range(len(bank))]


@pytest.mark.parametrize("kind", sorted(ANSWERS_FOR))
def test_every_answer_paraphrase_renders_with_the_facts_it_may_state(kind):
    sample = sample_of(kind)
    context = answer_context(sample)
    expected_places = set(sample.annotation.grid_cells) if kind == "located" else set()
    for name in ANSWERS_FOR[kind]:
        bank = load_bank(name, kind="answers")
        for index in range(len(bank)):
            text = bank.render(index, **context)
            assert "None" not in text and "{" not in text, (name, index, text)
            places = set(grid_words_in(text))
            # Every paraphrase that names a place names exactly the mask's cells.
            assert places in (set(), expected_places), (name, index, text)
            if name in {"localisation", "description_anomaly"} and kind == "located":
                assert places == expected_places and "2 separate regions" in text, text
            if kind == "normal":
                assert "scratch" not in text and "bent" not in text


def test_an_undefined_variable_names_the_bank_and_paraphrase(tmp_path):
    (tmp_path / "detection.j2").write_text("Fine {{ category }}?\n{# --- #}\nIs {{ colour }} ok?\n")
    bank = load_bank("detection", folder=tmp_path)
    assert bank.render(0, category="nut") == "Fine nut?"
    with pytest.raises(BankError, match=r"detection\.j2, paraphrase 2: 'colour' is undefined"):
        bank.render(1, category="nut")


def test_printing_a_missing_fact_fails_instead_of_writing_none(tmp_path):
    (tmp_path / "localisation.j2").write_text("It is in the {{ location }}.\n")
    bank = load_bank("localisation", folder=tmp_path, kind="answers")
    with pytest.raises(BankError, match="None"):
        bank.render(0, location=None)


def test_a_user_folder_overrides_a_bank_and_falls_back_for_the_rest(tmp_path):
    text = (
        "{# my wording #}\nIs the {{ category }} OK?\n{# --- #}\nAny fault on the {{ category }}?"
    )
    (tmp_path / "detection.j2").write_text(text, encoding="utf-8")
    (tmp_path / "extra_bank.j2").write_text("Something about the {{ category }}?\n")
    own = load_bank("detection", folder=tmp_path)
    assert len(own) == 2 and own.render(1, category="screw") == "Any fault on the screw?"
    assert own.origin == str(tmp_path / "detection.j2")
    assert bank_hash("detection", folder=tmp_path) == hashlib.sha256(text.encode()).hexdigest()
    assert bank_hash("detection", folder=tmp_path) != bank_hash("detection")
    # Banks the folder lacks come from the package; its extra banks are listed too.
    assert load_bank("object", folder=tmp_path).origin.startswith("adinstruct.templates/")
    assert "extra_bank" in list_banks(folder=tmp_path) and "extra_bank" not in list_banks()


def test_shipped_banks_are_read_through_the_package_and_hashed_by_their_text():
    for kind in ("questions", "answers"):
        for name in list_banks(kind):
            bank = load_bank(name, kind=kind)
            file_text = (REPO_TEMPLATES / kind / f"{name}.j2").read_text(encoding="utf-8")
            assert bank.origin == f"adinstruct.templates/{kind}/{name}.j2"
            assert bank.text == file_text
            assert bank_hash(name, kind=kind) == hashlib.sha256(file_text.encode()).hexdigest()


@pytest.mark.parametrize("name", ["../detection", "Detection", "questions/detection", ""])
def test_bank_names_cannot_leave_the_folder(name):
    with pytest.raises(BankError, match="bank name"):
        load_bank(name)


def test_an_unknown_bank_lists_the_available_ones():
    with pytest.raises(BankError, match=r"no questions bank 'nonesuch'.*detection"):
        load_bank("nonesuch")


def test_broken_banks_fail_at_load_with_their_file(tmp_path):
    (tmp_path / "object.j2").write_text("{# only a comment #}\n{# --- #}\n")
    with pytest.raises(BankError, match="no paraphrase"):
        load_bank("object", folder=tmp_path)
    (tmp_path / "object.j2").write_text("What is {% if %}?\n")
    with pytest.raises(BankError, match=r"object\.j2, paraphrase 1"):
        load_bank("object", folder=tmp_path)
    (tmp_path / "object.j2").write_text("<image>\nWhat is it?\n")
    with pytest.raises(BankError, match="<image>"):
        load_bank("object", folder=tmp_path).render(0)


# -- medical wording ----------------------------------------------------------------------

MEDICAL = ["mri", "ct", "oct", "xray", "histopathology"]
INDUSTRIAL_WORDS = ("defect", "inspector", "production", "product", "manufactur", "flaw")
#: Paraphrases whose wording suits every image, kept the same for medical ones.
NEUTRAL_ANSWERS = {("localisation", 1)}


@pytest.mark.parametrize("modality", MEDICAL)
def test_medical_images_get_their_own_wording_in_every_bank(modality):
    for kind, samples in (("located", ["located"]), ("label_only", ["label_only"]),
                          ("normal", ["normal"])):  # fmt: skip
        medical = sample_of(samples[0], category="brain", modality=modality)
        medical = medical.model_copy(update={"defect_types": []})  # BMAD names none
        industrial = sample_of(samples[0], category="brain", modality="grey")
        for bank_kind in ("questions", "answers"):
            names = list_banks() if bank_kind == "questions" else ANSWERS_FOR[kind]
            for name in names:
                bank = load_bank(name, kind=bank_kind)
                make = question_context if bank_kind == "questions" else answer_context
                for index in range(len(bank)):
                    text = bank.render(index, **make(medical))
                    assert not any(word in text.lower() for word in INDUSTRIAL_WORDS), text
                    if kind != "located":
                        assert grid_words_in(text) == [] and "region" not in text, text
                    if (name, index) not in NEUTRAL_ANSWERS:
                        assert text != bank.render(index, **make(industrial)), (name, index)


def test_each_modality_names_its_own_reader():
    bank = load_bank("detection")
    readers = {"mri": "radiologist", "xray": "radiologist", "oct": "ophthalmologist",
               "histopathology": "pathologist"}  # fmt: skip
    for modality, reader in readers.items():
        context = question_context(sample_of("normal", category="retina", modality=modality))
        texts = [bank.render(index, **context) for index in range(len(bank))]
        assert any(f"As a {reader}," in text for text in texts), texts
    effect = answer_context(sample_of("label_only", category="retina", modality="oct"))["effect"]
    assert effect == "It may need assessment by an ophthalmologist."


# -- 3D wording (MVTec 3D-AD, Real3D-AD) --------------------------------------------------

#: Paraphrases that suit every part however it is shown, kept the same for 3D ones.
NEUTRAL_3D = {("reasoning_cause", 0), ("reasoning_prevention", 0)}


def three_d_sample(kind: str, modality: str, view: int | None = 1) -> Sample:
    """A described 3D sample; Real3D-AD's geometry measured on view `view`."""
    sample = sample_of(kind, category="bagel", modality=modality)
    update = {"view_count": 4, "render_paths": [f"renders/x/view_{i:02d}.png" for i in range(4)]}
    if kind == "located" and modality == "point_cloud":
        update["annotation"] = sample.annotation.model_copy(update={"view": view})
    return sample.model_copy(update=update)


@pytest.mark.parametrize("modality", ["depth", "point_cloud"])
def test_3d_parts_get_an_inspectors_wording_of_their_views_in_every_bank(modality):
    frame = "the colour image" if modality == "depth" else "the second view"
    for kind in ("located", "label_only", "normal"):
        three_d = three_d_sample(kind, modality)
        industrial = sample_of(kind, category="bagel", modality="rgb")
        if kind == "located":  # unlocated clouds name no view: the frame is then unused
            assert question_context(three_d)["frame"] == frame
        for bank_kind in ("questions", "answers"):
            names = list_banks() if bank_kind == "questions" else ANSWERS_FOR[kind]
            make = question_context if bank_kind == "questions" else answer_context
            for name in names:
                bank = load_bank(name, kind=bank_kind)
                texts = [bank.render(index, **make(three_d)) for index in range(len(bank))]
                if bank_kind == "questions":
                    assert len(set(texts)) == len(texts), name
                for index, text in enumerate(texts):
                    assert "None" not in text and "{" not in text, (name, index, text)
                    # A location is always "of" the picture it was measured on.
                    assert "of the image" not in text, (name, index, text)
                    places = set(grid_words_in(text))
                    if kind == "located":
                        assert places in (set(), set(three_d.annotation.grid_cells)), text
                        if places:
                            assert frame in text, (name, index, text)
                    elif bank_kind == "answers":
                        assert places == set() and "region" not in text, (name, index, text)
                    if (name, index) not in NEUTRAL_3D:
                        assert text != bank.render(index, **make(industrial)), (name, index)
    questions = " ".join(
        load_bank(name).render(0, **question_context(three_d_sample("normal", modality)))
        for name in list_banks()
    )
    assert "views" in questions and "MRI" not in questions


def test_real3d_locations_name_the_view_the_mask_was_measured_on():
    bank = load_bank("localisation", kind="answers")
    for view, ordinal in ((0, "first"), (3, "fourth")):
        context = answer_context(three_d_sample("located", "point_cloud", view=view))
        assert bank.render(0, **context) == (
            f"There is a bent defect and a scratch defect in the top right and center of the "
            f"{ordinal} view, forming 2 separate regions."
        )


def test_the_3d_detection_question_keeps_anomaly_ovs_wording_for_views():
    context = question_context(three_d_sample("normal", "point_cloud"))
    assert load_bank("detection").render(0, **context) == (
        "Are there any defects for the object in these views? Please reply with 'Yes' or 'No'."
    )
