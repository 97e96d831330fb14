"""The offline describer: a grounded Description from the annotation alone, the same every run.

Every fact comes from the sample: defect names as the release gives them, the grid words of
`annotation.grid_cells`, the region count and the area fraction. Causes, effects and
preventions come from a keyword table (`knowledge.py`) and are worded as possibilities.

The phrasing helpers here are shared with the compose stage, so that a description and the
answers built from it say the same thing in the same words:

- locations join grid words with commas and "and": "top left", "top left and center";
- region counts read "one region" or "<n> separate regions" (digits from two on);
- sizes are classed by the area fraction: tiny < 0.5 %, small < 2 %, medium < 8 %, else large;
- a 3D sample's location is "of" the picture it was measured on (`frame_phrase`): "the colour
  image" (MVTec 3D-AD's rgb) or "the second view" (Real3D-AD), never just "the image".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from adinstruct.builder.describe.base import Describer
from adinstruct.builder.describe.knowledge import (
    CATEGORY_NAMES,
    CATEGORY_OBJECTS,
    GENERIC,
    MEDICAL_CAUSE,
    MEDICAL_EFFECT,
    MEDICAL_EFFECT_BY_READER,
    MEDICAL_IMAGES,
    MEDICAL_MODALITIES,
    MEDICAL_PREVENTION,
    MEDICAL_READERS,
    ORDINALS,
    THREE_D_MODALITIES,
    DefectKnowledge,
    knowledge_for,
)
from adinstruct.schemas import GRID_WORDS, Annotation, Description, QuarantineEntry, Sample

#: Upper bounds (area fraction) of each size class; anything larger is "large".
SIZE_CLASSES: tuple[tuple[float, str], ...] = ((0.005, "tiny"), (0.02, "small"), (0.08, "medium"))

#: Names that say nothing about the defect: annotate writes "unknown" for unnamed mask files.
UNNAMED = frozenset({"", "unknown", "good", "ok", "none"})

# Longest alternatives first, so "top left" is one match and not "top" plus "left".
GRID_PATTERN = re.compile(
    r"\b(" + "|".join(sorted(GRID_WORDS, key=len, reverse=True)) + r")\b", re.IGNORECASE
)


class TemplateDescriber(Describer):
    """Describes each annotated sample offline; a sample without annotation is quarantined."""

    name = "template"

    def describe(self, samples: Iterable[Sample]) -> Iterator[Sample | QuarantineEntry]:
        for sample in samples:
            if sample.annotation is None:
                yield self.quarantine(
                    sample,
                    "not_annotated",
                    f"{sample.image_paths[0]} has no annotation; run annotate before describe",
                )
                continue
            yield sample.model_copy(
                update={"description": describe_sample(sample), "describer": self.name}
            )


def describe_sample(sample: Sample) -> Description:
    """The Description the annotation supports; raises ValueError without an annotation."""
    annotation = sample.annotation
    if annotation is None:
        raise ValueError(f"sample {sample.id} has no annotation; describe runs after annotate")
    if sample.label == "normal":
        return Description(
            anomaly_present=False,
            object_description=object_phrase(sample.category, sample.modality),
        )
    names = defect_names(sample)
    located = is_located(annotation)
    cause, effect, prevention = reasoning_sentences(names, sample.modality)
    appearance = None
    if located:
        frame = frame_phrase(sample) if sample.modality in THREE_D_MODALITIES else "the image"
        appearance = (
            f"The anomalous area is {size_class(annotation.area_fraction)}, covering "
            f"{percent_phrase(annotation.area_fraction)} of {frame}, and forms "
            f"{regions_phrase(annotation.region_count)} in the "
            f"{location_phrase(annotation.grid_cells)} of {frame}."
        )
    return Description(
        anomaly_present=True,
        defect_type=defect_type_phrase(names, sample.modality),
        location=location_phrase(annotation.grid_cells) if located else None,
        appearance=appearance,
        likely_cause=cause,
        effect=effect,
        prevention=prevention,
    )


# -- facts in words ------------------------------------------------------------------------


def is_located(annotation: Annotation) -> bool:
    """Whether the annotation has a mask with regions, i.e. any location may be claimed."""
    return (
        annotation.mask_rle is not None
        and annotation.region_count > 0
        and bool(annotation.grid_cells)
    )


def humanise(name: str) -> str:
    """'broken_large' -> 'broken large'; 'Different Colour Spot' -> 'different colour spot'."""
    text = " ".join(name.replace("_", " ").replace("-", " ").split())
    # Keep acronyms ("PCB") as written; lower-case words that are merely capitalised.
    return " ".join(
        word if word.isupper() and len(word) > 1 else word.lower() for word in text.split()
    )


def defect_names(sample: Sample) -> list[str]:
    """The sample's defect names, human-readable, unnamed placeholders dropped, in order."""
    names: list[str] = []
    for raw in sample.defect_types:
        name = humanise(raw)
        if name.lower() not in UNNAMED and name not in names:
            names.append(name)
    return names


def neutral_word(modality: str) -> str:
    return "abnormality" if modality in MEDICAL_MODALITIES else "defect"


def defect_type_phrase(names: list[str], modality: str = "rgb") -> str:
    """'scratch', 'scratch and crack', or the neutral word when the release names none."""
    return join_words(names) if names else neutral_word(modality)


def defect_noun(name: str, modality: str = "rgb") -> str:
    """A name as a noun phrase without article: 'scratch defect', 'small scratches'."""
    word = neutral_word(modality)
    if name == "other":
        return f'{word} of the "other" kind'
    if is_plural(name) or name.endswith(("defect", "anomaly", "abnormality")):
        return name  # "small scratches", "missing parts" read well as they are
    # A bare "bent" or "color" is no noun; "a bent defect" reads as one.
    return f"{name} {word}"


def defect_mention(names: list[str], modality: str = "rgb") -> str:
    """The defects with articles: 'a scratch defect', 'a bent defect and small scratches'."""
    if not names:
        return with_article(neutral_word(modality))
    nouns = [defect_noun(name, modality) for name in names]
    return join_words([noun if is_plural(noun) else with_article(noun) for noun in nouns])


def is_plural(noun: str) -> bool:
    return noun.endswith("s") and not noun.endswith("ss")


def with_article(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def join_words(words: Iterable[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(words)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def location_phrase(grid_cells: Iterable[str]) -> str:
    """The grid words of the mask, largest share first: 'top left and center'."""
    return join_words(grid_cells)


def frame_phrase(sample: Sample) -> str:
    """The picture a 3D sample's grid facts are measured on, as answers name it.

    MVTec 3D-AD: "the colour image" (its gt mask is the rgb's, which the depth image matches
    pixel for pixel). Real3D-AD: the view the annotation was measured on, by its place among
    the record's views ("the second view"; see `renders.measured_view`).
    """
    if sample.modality != "point_cloud":
        return "the colour image"
    annotation = sample.annotation
    view = annotation.view if annotation is not None and annotation.view is not None else 0
    return f"the {ORDINALS[view]} view" if view < len(ORDINALS) else f"view {view + 1}"


def regions_phrase(region_count: int) -> str:
    return "one region" if region_count == 1 else f"{region_count} separate regions"


def size_class(area_fraction: float) -> str:
    for upper, name in SIZE_CLASSES:
        if area_fraction < upper:
            return name
    return "large"


def percent_phrase(area_fraction: float) -> str:
    """'about 1.2%', 'about 14%', or 'less than 0.1%' for specks."""
    value = area_fraction * 100
    if value < 0.1:
        return "less than 0.1%"
    return f"about {value:.1f}%" if value < 10 else f"about {value:.0f}%"


def category_name(category: str) -> str:
    """How a question names the category: 'metal nut', 'PCB', 'object' for bare numbers."""
    if category in CATEGORY_NAMES:
        return CATEGORY_NAMES[category]
    if category.isdigit():
        return "object"  # BTAD's products are called 01, 02, 03
    return humanise(category)


def object_phrase(category: str, modality: str = "rgb") -> str:
    """What a normal image of the category shows: 'a metal nut', 'an MRI scan of the brain'."""
    if category in CATEGORY_OBJECTS:
        return CATEGORY_OBJECTS[category]
    if modality in MEDICAL_IMAGES:
        return f"{MEDICAL_IMAGES[modality]} of the {humanise(category)}"
    if category.isdigit():
        return f"an industrial product (class {category})"
    return with_article(humanise(category))


def reasoning_sentences(names: list[str], modality: str = "rgb") -> tuple[str, str, str]:
    """(likely cause, effect, prevention) sentences, each worded as a possibility."""
    if modality in MEDICAL_MODALITIES:
        return MEDICAL_CAUSE, medical_effect(modality), MEDICAL_PREVENTION
    # One explanation per distinct entry: "scratch" and "small scratches" share one.
    entries: dict[str, tuple[str, DefectKnowledge]] = {}
    for name in names:
        entry = knowledge_for(name)
        entries.setdefault(entry.topic, (name, entry))
    if len(entries) <= 1:
        entry = next(iter(entries.values()))[1] if entries else GENERIC
        return (
            f"It may have been caused by {entry.cause}.",
            f"It could {entry.effect}.",
            f"It could be prevented by {entry.prevention}.",
        )
    subjects = [(f"the {defect_noun(name, modality)}", entry) for name, entry in entries.values()]

    def sentence(clause: str, field: str) -> str:
        text = "; ".join(
            f"{subject} {clause} {getattr(entry, field)}" for subject, entry in subjects
        )
        return text[:1].upper() + text[1:] + "."

    return (
        sentence("may have been caused by", "cause"),
        sentence("could", "effect"),
        sentence("could be prevented by", "prevention"),
    )


def medical_effect(modality: str) -> str:
    """'It may need assessment by a radiologist.' (a clinician for a modality not listed)."""
    reader = MEDICAL_READERS.get(modality)
    if reader is None:
        return MEDICAL_EFFECT
    return MEDICAL_EFFECT_BY_READER.format(article=with_article(reader).split()[0], reader=reader)


def grid_words_in(text: str) -> list[str]:
    """The grid words a text mentions, in order, each compound ('top left') matched whole."""
    return [match.lower() for match in GRID_PATTERN.findall(text)]
