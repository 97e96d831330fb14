"""The recipes' last leg: describe, place images, and write instruct/ and benchmark/.

Annotated samples stream in from the build's spool, each with a role the plan gives it:

- train (a held-in source, any split): described, composed into instruction records that
  stream into instruct/anomaly_instruct.json (--recipe anomaly-instruct);
- benchmark (a held-out source's test split): described, turned into detection, reasoning
  and MMAD items in benchmark/ (--recipe visa-dr);
- template (a held-out normal train image kept as an MMAD few-shot template): placed only;
- none (a held-out sample nothing uses): left out of the folder.

Every sample that goes into the folder is written to samples.jsonl and has its image and
masks placed under DIR/images and DIR/masks. One describer (and one LLM engine) serves both
recipes, so a build with both pays for each description once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import IO

from pydantic import BaseModel, Field

from adinstruct.builder.compose import compose_sample, skip_reason
from adinstruct.builder.compose.benchmark import (
    MMAD_FILE,
    TEST_DATA_FILE,
    VISA_DR_FILE,
    BenchmarkComposer,
    BenchmarkPlan,
    benchmark_skip_reason,
)
from adinstruct.builder.compose.families import Phrasebook
from adinstruct.builder.describe.base import Describer
from adinstruct.builder.images import Placement, image_reference, place_sample_files
from adinstruct.builder.instruct import INSTRUCT_FILE, InstructConfig, write_mixture
from adinstruct.builder.io import (
    JsonListWriter,
    JsonObjectWriter,
    atomic_writer,
    read_samples,
    record_line,
)
from adinstruct.schemas import QuarantineEntry, Sample


class RecipeTally(BaseModel):
    described: int = 0
    trained: int = Field(default=0, description="Described samples of held-in sources.")
    written: int = Field(default=0, description="Samples written to samples.jsonl.")
    records: int = 0
    by_family: Counter[str] = Field(default_factory=Counter)
    detection_items: int = 0
    reasoning_items: int = 0
    mmad_items: int = 0
    mmad_questions: Counter[str] = Field(default_factory=Counter)
    templates: int = 0

    def outputs(self, config: InstructConfig) -> list[tuple[str, int]]:
        """The recipe files written, with their record counts, for the manifest."""
        files = [(INSTRUCT_FILE, self.records)] if config.trains else []
        if config.benchmarks:
            files += [
                (TEST_DATA_FILE, self.detection_items),
                (VISA_DR_FILE, self.reasoning_items),
                (MMAD_FILE, self.mmad_items),
            ]
        return files


def roles(samples: Iterable[Sample], plan: BenchmarkPlan) -> Counter[str]:
    """How many samples take each role: the describe bar's total comes from it."""
    return Counter(str(plan.role(sample)) for sample in samples)


def to_describe(
    samples: Iterable[Sample],
    plan: BenchmarkPlan,
    config: InstructConfig,
    on_quarantine: Callable[[QuarantineEntry], None],
) -> Iterator[Sample]:
    """The samples a recipe describes; a test image the benchmark cannot name is quarantined."""
    for sample in samples:
        role = plan.role(sample)
        if role == "train" and config.trains:
            yield sample
        elif role == "benchmark" and config.benchmarks:
            reason = benchmark_skip_reason(sample)
            if reason is None:
                yield sample
                continue
            on_quarantine(QuarantineEntry(
                stage="compose", code=reason, source=sample.source, path=sample.image_paths[0],
                sample_id=sample.id, sample=sample,
                reason=f"{sample.image_paths[0]} does not start with its category folder "
                f"{sample.category!r}, and the benchmark names classes by the path's second "
                "part ('<source>/<class>/...'); lay the release out with one folder per "
                "category",
            ))  # fmt: skip


def described(
    samples: Iterable[Sample],
    describer: Describer,
    on_quarantine: Callable[[QuarantineEntry], None],
) -> Iterator[Sample]:
    """Described samples that compose can use; the others become quarantine entries."""
    for result in describer.describe(samples):
        if isinstance(result, QuarantineEntry):
            on_quarantine(result)
            continue
        reason = skip_reason(result)
        if reason is not None:
            on_quarantine(QuarantineEntry(
                stage="compose", code=reason, source=result.source, path=result.image_paths[0],
                sample_id=result.id, sample=result,
                reason=f"{result.id} cannot be composed into records: {reason.replace('_', ' ')}",
            ))  # fmt: skip
            continue
        yield result


class RecipeWriters:
    """The recipe files, each written atomically: all appear at the end, or none."""

    def __init__(self, out: Path, config: InstructConfig, stack: ExitStack) -> None:
        def open_file(name: str) -> IO[str]:
            return stack.enter_context(atomic_writer(out / name))

        self.instruct = JsonListWriter(open_file(INSTRUCT_FILE)) if config.trains else None
        self.detection = self.reasoning = self.mmad = None
        if config.benchmarks:
            self.detection = JsonListWriter(open_file(TEST_DATA_FILE))
            self.reasoning = JsonListWriter(open_file(VISA_DR_FILE))
            self.mmad = JsonObjectWriter(open_file(MMAD_FILE))

    def close(self) -> None:
        for writer in (self.instruct, self.detection, self.reasoning, self.mmad):
            if writer is not None:
                writer.close()


def write_recipes(
    out: Path,
    annotated: Path,
    samples_handle: IO[str],
    describer: Describer,
    config: InstructConfig,
    plan: BenchmarkPlan,
    seed: int,
    roots: dict[str, Path],
    placement: Placement,
    on_sample: Callable[[Sample], None],
    on_quarantine: Callable[[QuarantineEntry], None],
    rendered: Path | None = None,
) -> RecipeTally:
    """Describe, write and place every sample a recipe uses, and stream out its records.

    `rendered` holds the 3D samples' views as annotate drew them (`RenderFolders.views`).
    """
    tally = RecipeTally()
    compose_config = config.compose_config(seed)
    phrasebook = Phrasebook.load(compose_config.templates_dir)
    composer = BenchmarkComposer(plan, config.benchmark_config(seed))

    def keep(sample: Sample) -> None:
        samples_handle.write(record_line(sample))
        place_sample_files(sample, roots[sample.source], out, placement, rendered)
        tally.written += 1
        on_sample(sample)

    with ExitStack() as stack:
        writers = RecipeWriters(out, config, stack)
        stream = to_describe(read_samples(annotated), plan, config, on_quarantine)
        for sample in described(stream, describer, on_quarantine):
            keep(sample)
            tally.described += 1
            if plan.role(sample) == "train":
                assert writers.instruct is not None
                tally.trained += 1
                for record in compose_sample(sample, compose_config, phrasebook):
                    writers.instruct.write(record)
                    tally.by_family[record.metadata.task_family] += 1
                    tally.records += 1
            else:
                write_benchmark_items(sample, composer, writers, tally)
        if config.benchmarks:
            # Templates last: their order in samples.jsonl then never depends on how far
            # the describer has read ahead.
            for sample in read_samples(annotated):
                if plan.role(sample) == "template":
                    keep(sample)
                    tally.templates += 1
        writers.close()
    tally.mmad_questions = composer.by_type
    if config.trains:
        write_mixture(out)
    return tally


def write_benchmark_items(
    sample: Sample, composer: BenchmarkComposer, writers: RecipeWriters, tally: RecipeTally
) -> None:
    assert writers.detection and writers.reasoning and writers.mmad
    writers.detection.write(composer.detection_item(sample))
    tally.detection_items += 1
    reasoning = composer.reasoning_item(sample)
    if reasoning is not None:
        writers.reasoning.write(reasoning)
        tally.reasoning_items += 1
    writers.mmad.write(image_reference(sample), composer.mmad_item(sample))
    tally.mmad_items += 1
