"""The task families: which (question, answer) rounds each one asks of a sample, and in what words.

Facts are computed here, in code, from the annotation and the description; wording comes from
the question and answer banks (`adinstruct.templates`). Every choice of paraphrase draws from
its own `random.Random(f"{seed}:{sample_id}:{family}:{turn}:{kind}/{bank}")`, so a record depends
only on the seed, the sample and the bank files: never on the order of samples or on others.

Families:

- detection: "is it defective?" -> "Yes, ..." / "No, ..." as the label says;
- description: the defect's type, size, region count and grid words, plus an LLM describer's
  appearance text (normal images: the object and that no anomaly is visible);
- localisation: the grid words and region count (anomalies with a mask only);
- reasoning: is there an anomaly -> what is it and where -> what may have caused it -> how
  could it be prevented (normal images: is there an anomaly -> what does the image show).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adinstruct.builder.describe.knowledge import (
    MEDICAL_MODALITIES,
    MEDICAL_READERS,
    MEDICAL_REPORTS,
    MEDICAL_SCANS,
    THREE_D_MODALITIES,
)
from adinstruct.builder.describe.template import (
    category_name,
    defect_mention,
    defect_names,
    defect_type_phrase,
    frame_phrase,
    is_located,
    location_phrase,
    object_phrase,
    percent_phrase,
    reasoning_sentences,
    regions_phrase,
    size_class,
)
from adinstruct.schemas import Sample
from adinstruct.templates.bank import Kind, QuestionBank, list_banks, load_bank

#: (human question, gpt answer)
Round = tuple[str, str]


@dataclass(frozen=True)
class Phrasebook:
    """Every question and answer bank, loaded once per compose run."""

    questions: Mapping[str, QuestionBank]
    answers: Mapping[str, QuestionBank]

    @classmethod
    def load(cls, templates_dir: Path | None = None) -> Phrasebook:
        """The shipped banks, each replaced by `<templates_dir>/<kind>/<name>.j2` if present."""

        def banks(kind: Kind) -> dict[str, QuestionBank]:
            folder = Path(templates_dir) / kind if templates_dir is not None else None
            return {name: load_bank(name, folder, kind=kind) for name in list_banks(kind, folder)}

        return cls(questions=banks("questions"), answers=banks("answers"))

    def hashes(self) -> dict[str, str]:
        """'questions/detection' -> sha256 of its text: what the manifest records."""
        return {
            f"{bank.kind}/{name}": bank.sha256
            for banks in (self.questions, self.answers)
            for name, bank in sorted(banks.items())
        }


def question_context(sample: Sample) -> dict[str, Any]:
    """What questions may say. Banks branch on `medical`: a medical image is worded as its
    specialist (`reader`: radiologist, ophthalmologist, pathologist) would word it, naming the
    `scan` ("MRI scan") and the `report`; for other images these three are None.

    They branch first on `three_d`: a 3D part (MVTec 3D-AD, Real3D-AD) is shown as several
    views, worded as an inspector looking at "these views of the part"; `frame` names the
    picture its location words are measured on ("the colour image", "the second view").
    """
    medical = sample.modality in MEDICAL_MODALITIES
    three_d = sample.modality in THREE_D_MODALITIES
    return {
        "category": category_name(sample.category),
        "modality": sample.modality,
        "image_word": "images" if sample.view_count > 1 else "image",
        "medical": medical,
        "scan": MEDICAL_SCANS.get(sample.modality) if medical else None,
        "reader": MEDICAL_READERS.get(sample.modality) if medical else None,
        "report": MEDICAL_REPORTS.get(sample.modality) if medical else None,
        "three_d": three_d,
        "frame": frame_phrase(sample) if three_d else None,
    }


def answer_context(sample: Sample) -> dict[str, Any]:
    """The facts answers may state. Facts the sample lacks are None, and printing None fails."""
    annotation, description = sample.annotation, sample.description
    if annotation is None or description is None:
        raise ValueError(f"sample {sample.id} needs an annotation and a description to compose")
    anomaly = sample.label == "anomaly"
    located = anomaly and is_located(annotation)
    names = defect_names(sample) if anomaly else []
    context = question_context(sample)
    normal_object = description.object_description if not anomaly else None
    context.update(
        anomaly=anomaly,
        object=normal_object or object_phrase(sample.category, sample.modality),
        # Defect names come from the release, never from a describer's guess.
        defect=defect_mention(names, sample.modality) if anomaly else None,
        defect_type=defect_type_phrase(names, sample.modality) if anomaly else None,
        located=located,
        location=location_phrase(annotation.grid_cells) if located else None,
        regions=regions_phrase(annotation.region_count) if located else None,
        region_count=annotation.region_count if located else None,
        size=size_class(annotation.area_fraction) if located else None,
        percent=percent_phrase(annotation.area_fraction) if located else None,
        cause=None,
        effect=None,
        prevention=None,
    )
    if anomaly:
        # An LLM may leave a field empty; the knowledge table's possibility stands in for it.
        fallback = reasoning_sentences(names, sample.modality)
        context.update(
            cause=description.likely_cause or fallback[0],
            effect=description.effect or fallback[1],
            prevention=description.prevention or fallback[2],
        )
    return context


@dataclass(frozen=True)
class Speaker:
    """Renders the rounds of one record: one sample, one family."""

    phrasebook: Phrasebook
    seed: int
    sample_id: str
    family: str
    questions: Mapping[str, Any]
    answers: Mapping[str, Any]

    def pick(self, kind: Kind, name: str, turn: str) -> str:
        banks = self.phrasebook.questions if kind == "questions" else self.phrasebook.answers
        bank = banks[name]
        rng = random.Random(f"{self.seed}:{self.sample_id}:{self.family}:{turn}:{kind}/{name}")
        context = self.questions if kind == "questions" else self.answers
        return bank.render(rng.randrange(len(bank)), **context)

    def round(self, turn: str, question: str, answer: str) -> Round:
        return self.pick("questions", question, turn), self.pick("answers", answer, turn)


def detection(speaker: Speaker, sample: Sample) -> list[Round]:
    answer = "detection_yes" if sample.label == "anomaly" else "detection_no"
    return [speaker.round("detect", "detection", answer)]


def description(speaker: Speaker, sample: Sample) -> list[Round]:
    if sample.label == "normal":
        return [speaker.round("describe", "description", "description_normal")]
    question, answer = speaker.round("describe", "description", "description_anomaly")
    assert sample.description is not None  # compose skips undescribed samples
    extra = sample.description.appearance
    if extra and sample.describer != "template":
        # An LLM's appearance adds what the mask cannot say; the template's only repeats it.
        answer = f"{answer} {extra}"
    return [(question, answer)]


def localisation(speaker: Speaker, sample: Sample) -> list[Round]:
    return [speaker.round("locate", "localisation", "localisation")]


def reasoning(speaker: Speaker, sample: Sample) -> list[Round]:
    if sample.label == "normal":
        return [
            speaker.round("detect", "detection", "detection_no"),
            speaker.round("object", "object", "object"),
        ]
    what = "reasoning_what_where" if speaker.answers["located"] else "reasoning_what"
    return [
        speaker.round("detect", "detection", "detection_yes"),
        speaker.round("what", what, "reasoning_what_where"),
        speaker.round("cause", "reasoning_cause", "reasoning_cause"),
        speaker.round("prevent", "reasoning_prevention", "reasoning_prevention"),
    ]


FAMILY_BUILDERS: dict[str, Callable[[Speaker, Sample], list[Round]]] = {
    "detection": detection,
    "description": description,
    "localisation": localisation,
    "reasoning": reasoning,
}
#: In the order a sample's records are written.
FAMILIES: tuple[str, ...] = tuple(FAMILY_BUILDERS)


def is_eligible(family: str, sample: Sample) -> bool:
    """Localisation needs a mask to state; every other family suits every described sample."""
    if family == "localisation":
        return (
            sample.label == "anomaly"
            and sample.annotation is not None
            and is_located(sample.annotation)
        )
    return True
