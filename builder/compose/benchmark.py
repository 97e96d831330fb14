"""The visa-dr recipe's items, from the described test samples of the held-out sources.

- `benchmark/test_data.json`: `{"image", "anomaly"}` for every test image, normal or not, the
  list Anomaly-OV's test_detection.py reads (it takes the class from the path's second part);
- `benchmark/visa_dr.json`: for every anomalous test image, one multi-turn chat, the reasoning
  family's questions (always their first wording, so every item asks the same) with grounded
  reference answers;
- `benchmark/mmad.json`: MMAD-style multiple choice keyed by the image: anomaly detection,
  defect classification (distractors: the category's other defect names), defect localisation
  (the cell with the largest share of the mask against cells the mask does not reach), defect
  description (type, place and size, against the same with another type or place) and object
  classification (the release's other categories), with few-shot templates: normal train
  images of the same category, the nearest by pHash and a seeded random draw.

A multi-image sample (a held-out 3D source: its views, and MVTec 3D-AD's rgb and depth image
before them) lists every image, in order, in its visa_dr.json item, which is asked as one
chat; test_data.json takes one image per item (Anomaly-OV's script opens one), the sample's
first, which also keys its mmad.json item and stands for it among the few-shot templates:
MVTec 3D-AD's rgb image, Real3D-AD's first view.

Every fact comes from the annotation and the release's names, never from a describer's
guess. Where the right option goes is dealt per question type and option count from seeded
shuffled blocks, so each letter is the answer equally often (within one per block).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from adinstruct.builder.compose.families import (
    Phrasebook,
    Speaker,
    answer_context,
    question_context,
    reasoning,
)
from adinstruct.builder.describe.template import (
    category_name,
    defect_mention,
    defect_names,
    is_located,
    percent_phrase,
)
from adinstruct.builder.images import image_reference, mask_reference, shown_images
from adinstruct.schemas import (
    GRID_WORDS,
    DetectionItem,
    MMADItem,
    MMADQuestion,
    ReasoningItem,
    Sample,
)

TEST_DATA_FILE = "benchmark/test_data.json"
VISA_DR_FILE = "benchmark/visa_dr.json"
MMAD_FILE = "benchmark/mmad.json"
LETTERS = "ABCDEFGHIJ"


class BenchmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    max_options: int = Field(default=4, ge=2, le=len(LETTERS))
    templates_per_item: int = Field(
        default=4, ge=0, description="similar_templates and random_templates, each at most."
    )
    template_pool: int = Field(
        default=32, ge=0,
        description="Normal train images kept per category for templates (and placed in DIR).",
    )  # fmt: skip
    templates_dir: Path | None = None


@dataclass(frozen=True)
class TemplateImage:
    image: str  # relative to DIR/images
    phash: int
    sample_id: str


@dataclass
class BenchmarkPlan:
    """What items need beyond their own sample, gathered in one pass over the samples."""

    held_out: frozenset[str]
    #: source -> its categories that have test samples, sorted
    categories: dict[str, list[str]] = field(default_factory=dict)
    #: (source, category) -> the defect names its test anomalies carry, human-readable, sorted
    defect_names: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    #: (source, category) -> the normal train images kept as few-shot templates
    templates: dict[tuple[str, str], list[TemplateImage]] = field(default_factory=dict)

    @cached_property
    def template_ids(self) -> frozenset[str]:
        # Asked for every sample by role(): computed once, not once a sample.
        return frozenset(t.sample_id for pool in self.templates.values() for t in pool)

    def role(self, sample: Sample) -> str | None:
        """'train', 'benchmark', 'template' or None (a held-out sample nothing uses)."""
        if sample.source not in self.held_out:
            return "train"
        if sample.split == "test":
            return "benchmark"
        return "template" if sample.id in self.template_ids else None


def plan_benchmark(
    samples: Iterable[Sample], held_out: frozenset[str], config: BenchmarkConfig
) -> BenchmarkPlan:
    categories: defaultdict[str, set[str]] = defaultdict(set)
    names: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    normals: defaultdict[tuple[str, str], list[TemplateImage]] = defaultdict(list)
    for sample in samples:
        if sample.source not in held_out:
            continue
        key = (sample.source, sample.category)
        if sample.split == "test":
            categories[sample.source].add(sample.category)
            if sample.label == "anomaly":
                names[key].update(defect_names(sample))
        elif sample.label == "normal" and sample.annotation is not None:
            phash = int(sample.annotation.phash, 16)
            normals[key].append(TemplateImage(image_reference(sample), phash, sample.id))
    templates = {}
    for key, pool in sorted(normals.items()):
        if key[1] not in categories.get(key[0], ()):
            continue  # a category without test images asks for no templates
        pool.sort(key=lambda template: template.image)
        count = min(config.template_pool, len(pool))
        chosen = random.Random(f"{config.seed}:{key[0]}/{key[1]}:templates").sample(pool, count)
        templates[key] = sorted(chosen, key=lambda template: template.image)
    return BenchmarkPlan(
        held_out=held_out,
        categories={source: sorted(found) for source, found in sorted(categories.items())},
        defect_names={key: sorted(found) for key, found in sorted(names.items())},
        templates=templates,
    )


def benchmark_skip_reason(sample: Sample) -> str | None:
    """Why a test sample cannot become benchmark items (a quarantine code), or None."""
    if sample.image_paths[0].split("/")[0] != sample.category:
        # test_detection.py reads the class from the path's second component.
        return "benchmark_path_without_class"
    return None


class LetterDealer:
    """Where the right option goes: per (type, option count), every position once per block."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.dealt: Counter[tuple[str, int]] = Counter()

    def position(self, kind: str, options: int) -> int:
        index = self.dealt[(kind, options)]
        self.dealt[(kind, options)] += 1
        block, offset = divmod(index, options)
        order = list(range(options))
        random.Random(f"{self.seed}:{kind}:{options}:{block}").shuffle(order)
        return order[offset]


def capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class BenchmarkSpeaker(Speaker):
    """Questions in their first wording (a benchmark asks every item the same); answers seeded."""

    def pick(self, kind, name, turn):  # type: ignore[no-untyped-def]
        if kind == "questions":
            return self.phrasebook.questions[name].render(0, **self.questions)
        return super().pick(kind, name, turn)


class BenchmarkComposer:
    """Turns described test samples into the three kinds of items, in input order."""

    def __init__(self, plan: BenchmarkPlan, config: BenchmarkConfig) -> None:
        self.plan = plan
        self.config = config
        self.phrasebook = Phrasebook.load(config.templates_dir)
        self.dealer = LetterDealer(config.seed)
        self.by_type: Counter[str] = Counter()

    def detection_item(self, sample: Sample) -> DetectionItem:
        return DetectionItem(image=image_reference(sample), anomaly=sample.label == "anomaly")

    def reasoning_item(self, sample: Sample) -> ReasoningItem | None:
        if sample.label != "anomaly":
            return None
        speaker = BenchmarkSpeaker(
            self.phrasebook, self.config.seed, sample.id, "visa_dr",
            question_context(sample), answer_context(sample),
        )  # fmt: skip
        rounds = reasoning(speaker, sample)
        images = shown_images(sample)
        return ReasoningItem(
            image=images[0] if len(images) == 1 else images,
            questions=[question for question, _ in rounds],
            answers=[answer for _, answer in rounds],
        )

    def mmad_item(self, sample: Sample) -> MMADItem:
        anomaly = sample.label == "anomaly"
        questions = [self.detection_question(sample)]
        if anomaly:
            for build in (self.classification, self.localisation, self.description):
                question = build(sample)
                if question is not None:
                    questions.append(question)
        question = self.object_question(sample)
        if question is not None:
            questions.append(question)
        similar, drawn = self.templates_for(sample)
        return MMADItem(
            conversation=questions,
            mask_path=mask_reference(sample) if anomaly and sample.masks else None,
            similar_templates=similar,
            random_templates=drawn,
        )

    # -- the questions -------------------------------------------------------------------

    def ask(self, bank: str, sample: Sample) -> str:
        return self.phrasebook.questions[bank].render(0, **question_context(sample))

    def choice(
        self, kind: str, bank: str, sample: Sample, correct: str, distractors: list[str]
    ) -> MMADQuestion | None:
        """The question with the right option dealt its letter; None without a distractor."""
        unique = list(dict.fromkeys(d for d in distractors if d != correct))
        if not unique:
            return None
        random.Random(f"{self.config.seed}:{sample.id}:{kind}:distractors").shuffle(unique)
        options = unique[: self.config.max_options - 1]
        position = self.dealer.position(kind, len(options) + 1)
        options.insert(position, correct)
        self.by_type[kind] += 1
        return MMADQuestion(
            question=self.ask(bank, sample),
            options={LETTERS[index]: text for index, text in enumerate(options)},
            answer=LETTERS[position],
            type=kind,  # type: ignore[arg-type]
        )

    def detection_question(self, sample: Sample) -> MMADQuestion:
        yes, no = "Yes", "No"
        correct, other = (yes, no) if sample.label == "anomaly" else (no, yes)
        question = self.choice("Anomaly Detection", "mmad_detection", sample, correct, [other])
        assert question is not None  # there is always the other answer
        return question

    def other_names(self, sample: Sample) -> tuple[list[str], list[str]]:
        names = defect_names(sample)
        known = self.plan.defect_names.get((sample.source, sample.category), [])
        return names, [name for name in known if name not in names]

    def classification(self, sample: Sample) -> MMADQuestion | None:
        names, others = self.other_names(sample)
        if not names:
            return None  # a release that names no defect has nothing to classify
        return self.choice(
            "Defect Classification", "mmad_classification", sample,
            capitalised(" and ".join(names)), [capitalised(name) for name in others],
        )  # fmt: skip

    def free_cells(self, sample: Sample) -> list[str]:
        """Grid cells that hold none of the mask's share: places a distractor may name."""
        assert sample.annotation is not None
        return [word for word in GRID_WORDS if word not in sample.annotation.grid_cells]

    def localisation(self, sample: Sample) -> MMADQuestion | None:
        annotation = sample.annotation
        if annotation is None or not is_located(annotation):
            return None
        return self.choice(
            "Defect Localization", "mmad_localisation", sample,
            capitalised(annotation.grid_cells[0]),
            [capitalised(word) for word in self.free_cells(sample)],
        )  # fmt: skip

    def description(self, sample: Sample) -> MMADQuestion | None:
        annotation = sample.annotation
        assert annotation is not None  # compose skips samples without one
        names, others = self.other_names(sample)
        located = is_located(annotation)
        # A 3D sample's place is on the picture its mask was measured on ("the second view").
        frame = question_context(sample)["frame"] or "the image"

        def text(defect_list: list[str], place: str | None) -> str:
            mention = capitalised(defect_mention(defect_list, sample.modality))
            if place is None:
                return f"{mention} on the {category_name(sample.category)}."
            return (
                f"{mention} in the {place} of {frame}, covering "
                f"{percent_phrase(annotation.area_fraction)} of it."
            )

        place = annotation.grid_cells[0] if located else None
        rng = random.Random(f"{self.config.seed}:{sample.id}:description:places")
        free = self.free_cells(sample) if located else []
        rng.shuffle(free)
        distractors = [text([other], place) for other in others]
        distractors += [text(names, cell) for cell in free[:2]]
        distractors += [text([other], cell) for other, cell in zip(others, free[2:], strict=False)]
        return self.choice(
            "Defect Description", "mmad_description", sample, text(names, place), distractors
        )

    def object_question(self, sample: Sample) -> MMADQuestion | None:
        correct = capitalised(category_name(sample.category))
        others = [
            capitalised(category_name(category))
            for category in self.plan.categories.get(sample.source, [])
            if category != sample.category
        ]
        return self.choice("Object Classification", "mmad_object", sample, correct, others)

    def templates_for(self, sample: Sample) -> tuple[list[str], list[str]]:
        """(the nearest normal train images by pHash, a seeded random draw of them)."""
        pool = self.plan.templates.get((sample.source, sample.category), [])
        count = min(self.config.templates_per_item, len(pool))
        if not count or sample.annotation is None:
            return [], []
        phash = int(sample.annotation.phash, 16)
        nearest = sorted(pool, key=lambda t: ((t.phash ^ phash).bit_count(), t.image))[:count]
        drawn = random.Random(f"{self.config.seed}:{sample.id}:templates").sample(pool, count)
        return [t.image for t in nearest], [t.image for t in drawn]
