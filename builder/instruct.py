"""The anomaly-instruct recipe's last leg: describe, place images, compose, write instruct/.

Annotated samples stream in from the build's spool; each is described (template or LLM),
written to samples.jsonl, has its image and masks placed under DIR/images and DIR/masks,
and is composed into instruction records that stream into instruct/anomaly_instruct.json.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adinstruct.builder.compose import ComposeConfig, compose, compose_provenance, skip_reason
from adinstruct.builder.describe.base import Describer
from adinstruct.builder.describe.template import TemplateDescriber
from adinstruct.builder.errors import ConfigError
from adinstruct.builder.images import Placement, place_sample_files
from adinstruct.builder.io import JsonListWriter, atomic_writer, read_samples, record_line
from adinstruct.builder.progress import Progress, StatsOnly
from adinstruct.schemas import QuarantineEntry, Sample

if TYPE_CHECKING:
    from adinstruct.builder.describe.batch import BatchRunner
    from adinstruct.builder.describe.engine import Engine

INSTRUCT_FILE = "instruct/anomaly_instruct.json"
MIXTURE_FILE = "instruct/datasets.yaml"
RECIPES = ("anomaly-instruct",)
#: The LLM answer cache lives in the output folder so that a rerun of the same command finds it.
CACHE_FILE = ".cache/llm.sqlite3"


class LLMOptions(BaseModel):
    """How the openai describer talks to its server; the key itself comes from the environment."""

    model_config = ConfigDict(extra="forbid")

    detail: Literal["low", "high", "auto"] = "high"
    concurrency: int = Field(default=8, ge=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    max_failures: int | None = Field(default=50, ge=1)
    prices: Path | None = Field(default=None, description="JSON price table over the built-in.")
    batch: bool = Field(default=False, description="Send through the Batch API (half price).")
    batch_poll_s: float = Field(default=30.0, gt=0, description="Seconds between batch polls.")
    cache: Path | None = Field(default=None, description="Default: DIR/.cache/llm.sqlite3.")


class InstructConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe: Literal["anomaly-instruct"] = "anomaly-instruct"
    describer: Literal["template", "openai"] = "template"
    model: str | None = None
    images: Placement = Placement.copy
    records_per_sample: int = Field(default=2, ge=1, le=3)
    llm: LLMOptions = Field(default_factory=LLMOptions)

    def compose_config(self, seed: int) -> ComposeConfig:
        return ComposeConfig(seed=seed, records_per_sample=self.records_per_sample)


class InstructTally(BaseModel):
    described: int = 0
    records: int = 0
    by_family: Counter[str] = Field(default_factory=Counter)


def described_stream(
    samples: Iterable[Sample],
    describer: Describer,
    on_sample: Callable[[Sample], None],
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
        on_sample(result)
        yield result


def write_instruct(
    out: Path,
    samples: Iterable[Sample],
    samples_handle: IO[str],
    describer: Describer,
    config: InstructConfig,
    seed: int,
    roots: dict[str, Path],
    on_sample: Callable[[Sample], None],
    on_quarantine: Callable[[QuarantineEntry], None],
) -> InstructTally:
    """Describe, write and place every sample, and stream its records into INSTRUCT_FILE."""
    tally = InstructTally()

    def keep(sample: Sample) -> None:
        samples_handle.write(record_line(sample))
        place_sample_files(sample, roots[sample.source], out, config.images)
        tally.described += 1
        on_sample(sample)

    stream = described_stream(samples, describer, keep, on_quarantine)
    with atomic_writer(out / INSTRUCT_FILE) as handle:
        writer = JsonListWriter(handle)
        for record in compose(stream, config.compose_config(seed)):
            writer.write(record)
            tally.by_family[record.metadata.task_family] += 1
        writer.close()
    tally.records = writer.records
    write_mixture(out)
    return tally


def write_mixture(out: Path) -> None:
    """datasets.yaml in the form LLaVA-OneVision's trainer reads: json_path + sampling_strategy."""
    with atomic_writer(out / MIXTURE_FILE) as handle:
        handle.write("datasets:\n")
        handle.write(f"  - json_path: {(out / INSTRUCT_FILE).as_posix()}\n")
        handle.write("    sampling_strategy: all\n")


def provenance(config: InstructConfig, seed: int) -> dict[str, Any]:
    llm = config.llm.model_dump(mode="json", exclude={"cache", "prices"})
    return {
        "recipe": config.recipe,
        "describer": config.describer,
        "model": config.model,
        "llm": llm if config.describer == "openai" else None,
        "images": config.images.value,
        "compose": compose_provenance(config.compose_config(seed)),
    }


def instruct_config(
    recipe: str | None,
    describer: str | None,
    model: str | None,
    images: str,
    llm: LLMOptions | None = None,
) -> InstructConfig | None:
    """The recipe part of a build from command-line words, with errors a person can act on."""
    if recipe is None:
        if describer or model:
            raise ConfigError("--describer and --model need --recipe anomaly-instruct")
        return None
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; known recipes: {', '.join(RECIPES)}")
    chosen = describer or ("openai" if os.environ.get("OPENAI_API_KEY") else "template")
    if chosen not in ("template", "openai"):
        raise ConfigError(f"unknown describer {chosen!r}; use template or openai")
    if chosen == "openai" and not model:
        raise ConfigError(
            "the openai describer needs --model (OPENAI_API_KEY is set, so it was chosen; "
            "pass --describer template to stay offline)"
        )
    if images not in {placement.value for placement in Placement}:
        raise ConfigError(f"--images must be copy or hardlink, got {images!r}")
    return InstructConfig(
        recipe=recipe, describer=chosen, model=model, images=Placement(images),
        llm=llm or LLMOptions(),
    )  # fmt: skip


def make_describer(
    config: InstructConfig,
    out: Path,
    roots: dict[str, Path],
    annotated: Path,
    progress: Progress,
) -> tuple[Describer, Engine | BatchRunner | None]:
    """The recipe's describer; for openai also the engine, whose totals go into the manifest."""
    if config.describer == "template":
        return TemplateDescriber(), None
    from adinstruct.builder.describe.cache import AnswerCache
    from adinstruct.builder.describe.engine import Engine, EngineConfig
    from adinstruct.builder.describe.llm import OpenAIDescriber, pick_references
    from adinstruct.builder.describe.pricing import PriceTable
    from adinstruct.builder.describe.prompt import PromptConfig

    assert config.model is not None  # instruct_config() insists on it
    options = config.llm
    engine_config = EngineConfig(
        concurrency=options.concurrency,
        requests_per_minute=options.requests_per_minute,
        tokens_per_minute=options.tokens_per_minute,
        max_failures=options.max_failures,
    )
    prices = PriceTable.from_file(options.prices) if options.prices else PriceTable()
    cache = AnswerCache(options.cache or out / CACHE_FILE)
    # The describe bar counts samples itself; the engine only reports its running figures.
    stats = StatsOnly(progress)
    engine: Engine | BatchRunner = Engine(engine_config, cache, prices, stats)
    if options.batch:
        from adinstruct.builder.describe.batch import BatchRunner

        # Same requests, same cache, same run() contract: the describer cannot tell them apart.
        engine = BatchRunner(engine_config, cache, prices, options.batch_poll_s, progress=stats)
    describer = OpenAIDescriber(
        roots={name: str(root) for name, root in roots.items()},
        config=PromptConfig(model=config.model, detail=options.detail),
        engine=engine,
        references=pick_references(read_samples(annotated)),
    )
    return describer, engine
