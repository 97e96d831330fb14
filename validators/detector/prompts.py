"""Text prompts for the zero-shot detector: WinCLIP's static ensemble, or ALFA's LLM-written ones.

WinCLIP (Jeong et al., "WinCLIP: Zero-/Few-Shot Anomaly Classification and Segmentation",
CVPR 2023) composes a prompt from a state ("flawless {}", "{} with defect") and a photo
template ("a cropped photo of the {}."), and averages the embeddings of every composition per
state class. The state lists and the 22 templates below are those of the paper's
supplementary material (its Table of the compositional prompt ensemble), which is also the list
APRIL-GAN and MVFA use. anomalib's port (`models/image/winclip/prompting.py`) keeps 21 of them:
it drops "a cropped photo of a {}." and "a jpeg corrupted photo of a {}." and repeats "a jpeg
corrupted photo of the {}."; CLIP's ImageNet templates ("a bad photo of a {}.", ...) are a
different list that WinCLIP does not use.

ALFA (Zhu et al., "Do LLMs Understand Visual Anomalies?", 2024) asks an LLM, once per category,
for descriptions of what a normal and an anomalous object of that category look like; the
scorer then weights them per image by their contextual fit (scoring.py). The request goes
through the project's describe engine, so the answer is cached like every LLM answer and a
rerun sends nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from adinstruct.builder.describe.requests import ChatRequest, ChatResult, ResponseSchema
from adinstruct.builder.errors import AdinstructError

if TYPE_CHECKING:  # the engine pulls in the HTTP stack only when a run starts
    from adinstruct.builder.describe.engine import Engine

log = logging.getLogger(__name__)

NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALOUS_STATES = (
    "damaged {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)
TEMPLATES = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of the {}.",
    "a dark photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a photo of a {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for anomaly detection.",
    "a photo of a {} for anomaly detection.",
)

#: The LLM's default model for prompt writing: a small one does, the task is short text.
DEFAULT_PROMPT_MODEL = "gpt-4o-mini"
#: How many descriptions per state class the LLM is asked for.
DEFAULT_PROMPT_COUNT = 8

Weighting = Literal["ensemble", "contextual"]


class PromptError(AdinstructError):
    """The LLM gave no usable prompts for a category; the message says why."""


@dataclass(frozen=True)
class PromptSet:
    """The normal and anomalous texts for one category, and how the scorer combines them.

    `ensemble` averages each class's embeddings (WinCLIP); `contextual` weights them per image
    by how well each fits the image (ALFA's run-time prompt adaptation).
    """

    category: str
    normal: tuple[str, ...]
    anomalous: tuple[str, ...]
    weighting: Weighting
    source: Literal["winclip", "llm"]


def category_phrase(category: str) -> str:
    """ "metal_nut" -> "metal nut": CLIP reads words, not identifiers."""
    return " ".join(category.replace("_", " ").replace("-", " ").split())


def winclip_prompts(category: str) -> PromptSet:
    """States × templates for `category`, in the order of the lists above."""
    name = category_phrase(category)

    def compose(states: Iterable[str]) -> tuple[str, ...]:
        return tuple(
            template.format(state.format(name)) for state in states for template in TEMPLATES
        )

    return PromptSet(
        category=category,
        normal=compose(NORMAL_STATES),
        anomalous=compose(ANOMALOUS_STATES),
        weighting="ensemble",
        source="winclip",
    )


# -- ALFA: prompts written by an LLM -------------------------------------------------------

PROMPT_SCHEMA = ResponseSchema(
    name="anomaly_prompts",
    json_schema={
        "type": "object",
        "properties": {
            "normal": {"type": "array", "items": {"type": "string"}},
            "anomalous": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["normal", "anomalous"],
        "additionalProperties": False,
    },
)

SYSTEM_PROMPT = (
    "You write text prompts for a CLIP model that detects visual anomalies in photos taken for "
    "industrial inspection. Each prompt is one short caption of at most 15 words that names "
    "the object and describes what is visible."
)


def prompt_request(
    category: str, *, model: str = DEFAULT_PROMPT_MODEL, count: int = DEFAULT_PROMPT_COUNT
) -> ChatRequest:
    """The request for one category's prompts; its cache key depends on nothing else."""
    name = category_phrase(category)
    user = (
        f"Object category: {name}.\n"
        f"Write {count} captions of a photo of a normal, defect-free {name}, each describing a "
        f"different aspect of its expected appearance (shape, surface, colour, parts), and "
        f"{count} captions of a photo of an anomalous {name}, each naming one concrete, visible "
        f"defect that occurs on this kind of object and where it is. "
        'Answer with JSON: {"normal": [...], "anomalous": [...]}.'
    )
    return ChatRequest(
        request_id=f"prompts/{category}",
        model=model,
        messages=[{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}],
        response_schema=PROMPT_SCHEMA,
        # Prompts are a fixed part of the detector, not a sample of the model's range: the
        # steadiest answer is the one to keep (and the cache keeps it across runs anyway).
        temperature=0.0,
    )


def parse_prompt_answer(content: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(normal, anomalous) from the answer's JSON; ValueError says what is wrong with it."""
    try:
        answer = json.loads(content or "")
    except ValueError as error:
        raise ValueError(f"the answer is not JSON ({error})") from None
    if not isinstance(answer, dict):
        raise ValueError("the answer is not a JSON object")
    lists = []
    for field in ("normal", "anomalous"):
        values = answer.get(field)
        if not isinstance(values, list):
            raise ValueError(f"{field!r} is not a list")
        texts = [" ".join(value.split()) for value in values if isinstance(value, str)]
        unique = tuple(dict.fromkeys(text for text in texts if text))
        if not unique:
            raise ValueError(f"{field!r} holds no non-empty text")
        lists.append(unique)
    return lists[0], lists[1]


def _prompt_problem(result: ChatResult) -> str | None:
    """The engine's validator: an answer without prompts is asked for again."""
    try:
        parse_prompt_answer(result.content)
    except ValueError as error:
        return str(error)
    return None


def alfa_prompt_sets(
    categories: Iterable[str],
    llm: Engine | None = None,
    *,
    model: str = DEFAULT_PROMPT_MODEL,
    count: int = DEFAULT_PROMPT_COUNT,
) -> dict[str, PromptSet]:
    """One prompt set per category; with an engine, all categories are asked in one run."""
    categories = list(dict.fromkeys(categories))
    if llm is None:
        return {category: winclip_prompts(category) for category in categories}
    requests = [prompt_request(category, model=model, count=count) for category in categories]
    # Read every answer before judging any: each is cached as it arrives, so one category's
    # failure costs the others nothing on the rerun.
    results = list(llm.run(requests, _prompt_problem))
    sets = {}
    for category, result in zip(categories, results, strict=True):
        if result.status != "ok":
            reason = result.refusal if result.status == "refused" else result.error
            raise PromptError(
                f"the LLM gave no detector prompts for category {category!r} "
                f"({result.status}: {reason})"
            )
        normal, anomalous = parse_prompt_answer(result.content)
        sets[category] = PromptSet(
            category=category,
            normal=normal,
            anomalous=anomalous,
            weighting="contextual",
            source="llm",
        )
        log.debug("prompts for %s: %s", category, "cached" if result.from_cache else "asked")
    return sets


def alfa_prompts(
    category: str,
    llm: Engine | None = None,
    *,
    model: str = DEFAULT_PROMPT_MODEL,
    count: int = DEFAULT_PROMPT_COUNT,
) -> PromptSet:
    """ALFA's LLM-written prompts for `category`; without an engine, WinCLIP's static ensemble."""
    return alfa_prompt_sets([category], llm, model=model, count=count)[category]
