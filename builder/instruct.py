"""The recipes' configuration: which recipes, which sources are held out, which describer.

`recipes.py` runs them; this module turns command-line words into an `InstructConfig` with
errors a person can act on, and builds the describer (and for an LLM, its engine).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from adinstruct.builder.compose import ComposeConfig, compose_provenance
from adinstruct.builder.compose.benchmark import BenchmarkConfig
from adinstruct.builder.describe.base import Describer
from adinstruct.builder.describe.prompt import template_hashes
from adinstruct.builder.describe.template import TemplateDescriber
from adinstruct.builder.errors import ConfigError
from adinstruct.builder.io import atomic_writer, read_samples
from adinstruct.builder.progress import Progress, StatsOnly

if TYPE_CHECKING:
    from adinstruct.builder.annotate.renders import RenderFolders
    from adinstruct.builder.describe.batch import BatchRunner
    from adinstruct.builder.describe.engine import Engine

INSTRUCT_FILE = "instruct/anomaly_instruct.json"
MIXTURE_FILE = "instruct/datasets.yaml"
Recipe = Literal["anomaly-instruct", "visa-dr"]
RECIPES: tuple[Recipe, ...] = ("anomaly-instruct", "visa-dr")
#: Held out of training by default when given, as Anomaly-OV keeps VisA for its benchmark.
DEFAULT_HOLDOUT = "visa"
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

    recipes: list[Recipe] = Field(default_factory=lambda: ["anomaly-instruct"], min_length=1)
    holdout: list[str] | None = Field(
        default=None,
        description=f"Sources kept out of training (and benchmarked by visa-dr); None: "
        f"{DEFAULT_HOLDOUT!r} when it is given, [] for none.",
    )
    describer: Literal["template", "openai"] = "template"
    model: str | None = None
    records_per_sample: int = Field(default=2, ge=1, le=3)
    llm: LLMOptions = Field(default_factory=LLMOptions)

    def compose_config(self, seed: int) -> ComposeConfig:
        return ComposeConfig(seed=seed, records_per_sample=self.records_per_sample)

    def benchmark_config(self, seed: int) -> BenchmarkConfig:
        return BenchmarkConfig(seed=seed)

    @property
    def trains(self) -> bool:
        return "anomaly-instruct" in self.recipes

    @property
    def benchmarks(self) -> bool:
        return "visa-dr" in self.recipes


def write_mixture(out: Path) -> None:
    """datasets.yaml in the form LLaVA-OneVision's trainer reads: json_path + sampling_strategy."""
    with atomic_writer(out / MIXTURE_FILE) as handle:
        handle.write("datasets:\n")
        handle.write(f"  - json_path: {(out / INSTRUCT_FILE).as_posix()}\n")
        handle.write("    sampling_strategy: all\n")


def provenance(config: InstructConfig, seed: int) -> dict[str, Any]:
    llm = config.llm.model_dump(mode="json", exclude={"cache", "prices"})
    return {
        "recipes": list(config.recipes),
        "describer": config.describer,
        "model": config.model,
        "llm": llm if config.describer == "openai" else None,
        "prompt_templates": template_hashes() if config.describer == "openai" else None,
        "compose": compose_provenance(config.compose_config(seed)),
        "benchmark": config.benchmark_config(seed).model_dump(mode="json")
        if config.benchmarks
        else None,
    }


def instruct_config(
    recipe: str | list[str] | None,
    describer: str | None,
    model: str | None,
    llm: LLMOptions | None = None,
    holdout: list[str] | None = None,
) -> InstructConfig | None:
    """The recipe part of a build from command-line words, with errors a person can act on.

    `holdout` is what --holdout said: None for the default, ["none"] to hold nothing out.
    """
    recipes = [recipe] if isinstance(recipe, str) else list(recipe or [])
    if not recipes:
        if describer or model or holdout:
            raise ConfigError("--describer, --model and --holdout need a --recipe "
                              f"({' or '.join(RECIPES)})")  # fmt: skip
        return None
    unknown = [name for name in recipes if name not in RECIPES]
    if unknown:
        raise ConfigError(f"unknown recipe {unknown[0]!r}; known recipes: {', '.join(RECIPES)}")
    chosen = describer or ("openai" if os.environ.get("OPENAI_API_KEY") else "template")
    if chosen not in ("template", "openai"):
        raise ConfigError(f"unknown describer {chosen!r}; use template or openai")
    if chosen == "openai" and not model:
        raise ConfigError(
            "the openai describer needs --model (OPENAI_API_KEY is set, so it was chosen; "
            "pass --describer template to stay offline)"
        )
    if holdout is not None and "none" in holdout:
        if len(holdout) > 1:
            raise ConfigError("--holdout none holds nothing out; do not name sources beside it")
        holdout = []
    return InstructConfig(
        recipes=list(dict.fromkeys(recipes)), holdout=holdout, describer=chosen, model=model,
        llm=llm or LLMOptions(),
    )  # fmt: skip


def resolve_holdout(config: InstructConfig, sources: list[str]) -> frozenset[str]:
    """The held-out sources among `sources` (canonical builder names), or a ConfigError.

    `config.holdout` names are canonical already (the pipeline maps aliases).
    """
    given = set(sources)
    if config.holdout is None:
        held = {DEFAULT_HOLDOUT} & given
    else:
        held = set(config.holdout)
        strangers = sorted(held - given)
        if strangers:
            raise ConfigError(
                f"--holdout {strangers[0]} is not one of the --source names ({', '.join(sources)})"
            )
    if config.benchmarks and not held:
        if config.trains:
            raise ConfigError(
                "--recipe visa-dr benchmarks a held-out source, and none is held out "
                f"(no {DEFAULT_HOLDOUT} source is given): pass --holdout NAME"
            )
        held = set(given)  # a benchmark-only build: every source is benchmarked
    if config.benchmarks and not config.trains:
        unused = sorted(given - held)
        if unused:
            raise ConfigError(
                f"--source {unused[0]} is neither held out for --recipe visa-dr nor trained "
                "on (no --recipe anomaly-instruct): drop it, or pass --holdout for it"
            )
    if config.trains and held >= given:
        raise ConfigError(
            f"every source is held out ({', '.join(sorted(held))}), so --recipe "
            "anomaly-instruct has nothing to train on"
        )
    return frozenset(held)


def make_describer(
    config: InstructConfig,
    out: Path,
    roots: dict[str, Path],
    annotated: Path,
    progress: Progress,
    renders: RenderFolders | None = None,
) -> tuple[Describer, Engine | BatchRunner | None]:
    """The recipe's describer; for openai also the engine, whose totals go into the manifest.

    `renders` is where annotate drew the 3D samples' views and highlight views.
    """
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
        renders=renders,
    )
    return describer, engine
