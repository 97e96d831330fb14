"""The `openai` describer: one grounded chat request per sample, sent through the engine.

Requests are built lazily as the engine pulls them, so memory holds only the engine's window of
requests in flight, however long the stream. Answers that do not parse as a Description, or
that contradict the sample's label, are handed back to the engine as invalid, so it retries.

Quarantine codes: llm_refusal (the model refused; the refusal text is the reason), llm_error
(no usable answer after the engine's retries), and, before anything is sent, path_outside_root,
image_unreadable and image_changed (the file no longer matches its annotation).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from adinstruct.builder.describe.base import Describer
from adinstruct.builder.describe.prompt import PromptConfig, PromptInputError, build_request
from adinstruct.builder.describe.requests import ChatRequest, ChatResult
from adinstruct.builder.errors import ConfigError, PathEscapeError
from adinstruct.schemas import Description, QuarantineEntry, Sample

if TYPE_CHECKING:
    from adinstruct.builder.annotate.renders import RenderFolders
    from adinstruct.builder.describe.engine import Engine

#: (source, category) -> the normal sample shown as that category's reference image.
References = Mapping[tuple[str, str], Sample]

# Validation messages go back to the engine (and into its logs); a whole pydantic report
# with the model's answer quoted in it is noise there.
MAX_ERROR_CHARS = 300


class OpenAIDescriber(Describer):
    """Describe samples with any OpenAI-compatible model, grounded in their annotations.

    `references` maps (source, category) to a normal sample of that category (with its
    annotation, as samples.jsonl holds it) to attach as a defect-free reference image. The
    caller prepares it, because a stream cannot know a category's normals before it meets the
    anomalies; `pick_references` makes the usual choice. Without it no reference is sent.
    `renders` is where the annotate stage drew 3D samples (their views, and the highlight
    views that show the describer the defect); builds with 3D sources need it.
    """

    name = "openai"

    def __init__(
        self,
        roots: dict[str, str],
        config: PromptConfig,
        engine: Engine,
        references: References | None = None,
        renders: RenderFolders | None = None,
    ) -> None:
        self.roots = {source: Path(root).resolve() for source, root in roots.items()}
        self.renders = renders
        self.config = config
        self.engine = engine
        self.references = dict(references or {})
        for (source, _category), reference in self.references.items():
            if reference.label != "normal":
                raise ConfigError(f"reference {reference.id} for {source} is not a normal sample")

    @property
    def describer_name(self) -> str:
        return f"openai:{self.config.model}"

    def requests_for(self, samples: Iterable[Sample]) -> Iterator[ChatRequest]:
        """Exactly the requests `describe` would send for `samples` (for the engine's dry run)."""
        for _sample, prepared in self._prepare(samples):
            if isinstance(prepared, ChatRequest):
                yield prepared

    def describe(self, samples: Iterable[Sample]) -> Iterator[Sample | QuarantineEntry]:
        # In input order: a sample waiting for its answer, or a quarantine entry made before
        # sending. The engine answers requests in order, so each result belongs to the first
        # waiting sample; entries ahead of it are yielded first. (Entries wait here for the
        # next result; annotate already quarantines unreadable files, so they are few.)
        slots: deque[Sample | QuarantineEntry] = deque()
        # cache key -> anomaly_present the label demands. Keyed by the request's content, not
        # its id: the batch runner validates answers before it knows which request asked.
        expected: dict[str, bool] = {}

        def requests() -> Iterator[ChatRequest]:
            for sample, prepared in self._prepare(samples):
                if isinstance(prepared, QuarantineEntry):
                    slots.append(prepared)
                    continue
                expected[prepared.cache_key()] = sample.label == "anomaly"
                slots.append(sample)
                yield prepared

        for result in self.engine.run(requests(), validate=_validator(expected)):
            while slots and isinstance(slots[0], QuarantineEntry):
                yield slots.popleft()
            if not slots:
                raise RuntimeError(f"the engine returned {result.request_id} that was never sent")
            sample = slots.popleft()
            assert isinstance(sample, Sample)
            expected.pop(result.cache_key, None)  # answered: memory stays flat
            if result.request_id != sample.id:
                raise RuntimeError(
                    f"the engine answered {result.request_id} where {sample.id} was due; "
                    "results must come in request order"
                )
            expected.pop(sample.id, None)
            yield self._outcome(sample, result)
        while slots:
            leftover = slots.popleft()
            if isinstance(leftover, Sample):
                raise RuntimeError(f"the engine returned no result for {leftover.id}")
            yield leftover

    # -- helpers -------------------------------------------------------------------------

    def _prepare(
        self, samples: Iterable[Sample]
    ) -> Iterator[tuple[Sample, ChatRequest | QuarantineEntry]]:
        for sample in samples:
            try:
                request = build_request(
                    sample, self._root(sample.source), self.config, self._reference(sample),
                    self.renders,
                )  # fmt: skip
            except PathEscapeError as error:
                yield sample, self.quarantine(sample, "path_outside_root", str(error))
            except PromptInputError as error:
                yield sample, self.quarantine(sample, error.code, str(error))
            else:
                yield sample, request

    def _reference(self, sample: Sample) -> tuple[Sample, Path] | None:
        if not self.config.reference_image:
            return None
        reference = self.references.get((sample.source, sample.category))
        if reference is None or reference.id == sample.id:
            return None  # an image compared with itself teaches nothing
        return reference, self._root(reference.source)

    def _root(self, source: str) -> Path:
        try:
            return self.roots[source]
        except KeyError:
            raise ConfigError(
                f"the openai describer has no root for source {source!r}; "
                f"configured: {sorted(self.roots)}"
            ) from None

    def _outcome(self, sample: Sample, result: ChatResult) -> Sample | QuarantineEntry:
        image = sample.image_paths[0]
        if result.status == "refused":
            refusal = result.refusal or "no reason given"
            return self.quarantine(
                sample, "llm_refusal", f"the model refused to describe {image}: {refusal}"
            )
        if result.status == "error":
            error = result.error or "no reason given"
            return self.quarantine(sample, "llm_error", f"no usable answer for {image}: {error}")
        # Checked again here: an answer can come from a cache filled before a stricter check.
        problem = check_answer(result.content, sample.label == "anomaly")
        if problem is not None:
            return self.quarantine(sample, "llm_error", f"answer for {image} rejected: {problem}")
        assert result.content is not None
        description = Description.model_validate_json(result.content)
        return sample.model_copy(
            update={"description": description, "describer": self.describer_name}
        )


def check_answer(content: str | None, anomaly: bool) -> str | None:
    """Why an answer's text is not a Description agreeing with the label, or None if it is."""
    if not content:
        return "the answer is empty"
    try:
        description = Description.model_validate_json(content)
    except ValidationError as error:
        return _shorten(f"the answer is not a valid Description: {error}")
    if description.anomaly_present != anomaly:
        truth = "an anomaly" if anomaly else "normal"
        return f"anomaly_present is {description.anomaly_present} but the image is {truth}"
    if not anomaly and description.defect_type is not None:
        return f"a normal image was given defect_type {description.defect_type!r}"
    return None


def pick_references(samples: Iterable[Sample]) -> dict[tuple[str, str], Sample]:
    """For each (source, category), its first annotated normal training sample, in stream order.

    Training normals never appear in a test benchmark, so showing one as the reference does
    not leak test images into the prompts. Categories without one get no reference.
    """
    references: dict[tuple[str, str], Sample] = {}
    for sample in samples:
        key = (sample.source, sample.category)
        if (
            key not in references
            and sample.label == "normal"
            and sample.split == "train"
            and sample.annotation is not None
        ):
            references[key] = sample
    return references


def _validator(expected: dict[str, bool]) -> Callable[[ChatResult], str | None]:
    def validate(result: ChatResult) -> str | None:
        if result.status != "ok":
            return None
        anomaly = expected.get(result.cache_key)
        if anomaly is None:
            return f"unknown request {result.request_id or result.cache_key}"
        return check_answer(result.content, anomaly)

    return validate


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"
