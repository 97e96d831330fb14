"""`build`: sources -> listing -> annotate -> samples.jsonl, quarantine.jsonl and manifest.json.

The listing of every source is spooled to disk first (no pixels, a few hundred bytes a
sample), which gives the progress bar its total and lets `--limit` draw a seeded subset
without holding the dataset in memory. Results stream to their files in input order.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, Field

from adinstruct import __version__
from adinstruct.builder.annotate import AnnotateStage
from adinstruct.builder.annotate.geometry import DEFAULT_GRID_MIN_SHARE
from adinstruct.builder.annotate.hashing import PHASH_RECIPE
from adinstruct.builder.annotate.renders import DEFAULT_RENDER_SIZE, RenderFolders
from adinstruct.builder.annotate.stage import DEFAULT_MAX_IMAGE_PIXELS
from adinstruct.builder.compose.benchmark import (
    MMAD_FILE,
    TEST_DATA_FILE,
    VISA_DR_FILE,
    BenchmarkPlan,
    plan_benchmark,
)
from adinstruct.builder.describe.base import Describer
from adinstruct.builder.describe.llm import OpenAIDescriber
from adinstruct.builder.describe.pricing import DryRunEstimate, estimate_run
from adinstruct.builder.errors import ConfigError
from adinstruct.builder.gate import Gate, append_quarantine
from adinstruct.builder.images import Placement, place_sample_files
from adinstruct.builder.instruct import (
    INSTRUCT_FILE,
    MIXTURE_FILE,
    InstructConfig,
    make_describer,
    provenance,
    resolve_holdout,
)
from adinstruct.builder.io import atomic_writer, read_samples, record_line, sha256_file, write_json
from adinstruct.builder.progress import Progress
from adinstruct.builder.recipes import roles, to_describe, write_recipes
from adinstruct.builder.redact import redact_command
from adinstruct.builder.runner import make_runner
from adinstruct.builder.sources import SourceBuilder, get_builder
from adinstruct.schemas import (
    Counts,
    LLMUsage,
    Manifest,
    OutputFile,
    QuarantineEntry,
    Sample,
    SourceInfo,
)

WORK_DIR = ".adinstruct-work"
#: Inside the work folder: what annotate draws for 3D samples (`RenderFolders`). Views are
#: placed into DIR/images with their sample; highlight views never leave it, and go with it.
RENDERS_WORK_DIR = "renders"
VALIDATION_FILE = "validation.json"
SAMPLES_FILE = "samples.jsonl"
QUARANTINE_FILE = "quarantine.jsonl"
MANIFEST_FILE = "manifest.json"


class SourceSpec(BaseModel):
    name: str
    root: Path


class BuildConfig(BaseModel):
    sources: list[SourceSpec] = Field(min_length=1)
    out: Path
    limit: int | None = Field(default=None, ge=1, description="At most N samples per source.")
    workers: int | None = Field(default=None, ge=1)
    seed: int = 0
    dry_run: bool = Field(default=False, description="Estimate the LLM requests; write nothing.")
    instruct: InstructConfig | None = Field(
        default=None, description="The recipes: describe, then compose records and items."
    )
    images: Placement = Field(
        default=Placement.copy, description="How images and masks reach DIR/images, DIR/masks."
    )
    validate_output: bool = Field(
        default=True, description="Validate the folder at the end, quarantining bad records."
    )
    views: Literal[4, 9] = Field(
        default=4, description="Rendered views per 3D sample (Anomaly-OV's 4 or 9)."
    )

    def public_config(self, held_out: frozenset[str] = frozenset()) -> dict[str, Any]:
        return {
            "sources": {spec.name: str(spec.root.expanduser().resolve()) for spec in self.sources},
            "limit": self.limit,
            "seed": self.seed,
            "images": self.images.value,
            "annotate": {
                "max_image_pixels": DEFAULT_MAX_IMAGE_PIXELS,
                "grid_min_share": DEFAULT_GRID_MIN_SHARE,
                "phash": PHASH_RECIPE,
                "views": self.views,
                "render_size": DEFAULT_RENDER_SIZE,
            },
            "instruct": provenance(self.instruct, self.seed) | {"held_out": sorted(held_out)}
            if self.instruct
            else None,
        }


def parse_source_spec(text: str) -> SourceSpec:
    name, sep, root = text.partition("=")
    if not sep or not name.strip() or not root.strip():
        raise ConfigError(
            f"--source expects NAME=PATH (for example mvtec=/data/mvtec), got {text!r}"
        )
    return SourceSpec(name=name.strip(), root=Path(root.strip()).expanduser())


@dataclass
class SourceTally:
    """Running counts for one source while its samples flow through the build."""

    listed: int = 0
    selected: int = 0
    by_split: Counter[str] = field(default_factory=Counter)
    by_label: Counter[str] = field(default_factory=Counter)
    by_category: Counter[str] = field(default_factory=Counter)
    quarantined: int = 0

    def count_sample(self, sample: Sample, step: int = 1) -> None:
        """Count a sample written to samples.jsonl (step -1: one that validation moved out)."""
        self.by_split[sample.split] += step
        self.by_label[sample.label] += step
        self.by_category[sample.category] += step
        if step < 0:
            self.quarantined -= step

    def counts(self) -> Counts:
        return Counts(
            total=sum(self.by_label.values()),
            by_split={key: n for key, n in sorted(self.by_split.items()) if n},
            by_label={key: n for key, n in sorted(self.by_label.items()) if n},
            by_category={key: n for key, n in sorted(self.by_category.items()) if n},
            quarantined=self.quarantined,
        )


class QuarantineLog:
    """Appends quarantine entries and counts them per stage, code and source."""

    def __init__(self, handle: IO[str], tallies: dict[str, SourceTally]) -> None:
        self.handle = handle
        self.tallies = tallies
        self.by_stage: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.records = 0

    def add(self, entry: QuarantineEntry) -> None:
        self.handle.write(record_line(entry))
        self.records += 1
        self.by_stage[entry.stage][entry.code] += 1
        if entry.source in self.tallies:
            self.tallies[entry.source].quarantined += 1

    def count(self, stage: str) -> int:
        return sum(self.by_stage[stage].values()) if stage in self.by_stage else 0


def open_builders(config: BuildConfig) -> list[SourceBuilder]:
    builders: list[SourceBuilder] = []
    out = config.out.expanduser().resolve()
    for spec in config.sources:
        builder = get_builder(spec.name)(spec.root)
        if any(existing.name == builder.name for existing in builders):
            raise ConfigError(f"--source {spec.name} is given twice; give each release once")
        if out.is_relative_to(builder.root):
            raise ConfigError(
                f"--out {out} is inside the {builder.name} source root {builder.root}; "
                "adinstruct never writes into a release"
            )
        builders.append(builder)
    return builders


def held_out_sources(config: BuildConfig, builders: list[SourceBuilder]) -> frozenset[str]:
    """The sources the recipes keep out of training, by canonical builder name."""
    if config.instruct is None:
        return frozenset()
    recipe = config.instruct
    if recipe.holdout is not None:
        # --holdout takes the names --source does, aliases included.
        recipe = recipe.model_copy(
            update={"holdout": [get_builder(name).name for name in recipe.holdout]}
        )
    return resolve_holdout(recipe, [builder.name for builder in builders])


def builders_in_use(
    config: BuildConfig, builders: list[SourceBuilder], held_out: frozenset[str]
) -> list[SourceBuilder]:
    """The sources a recipe reads: a held-out source without --recipe visa-dr is not decoded."""
    if config.instruct is None or config.instruct.benchmarks:
        return builders
    return [builder for builder in builders if builder.name not in held_out]


def benchmark_plan(config: BuildConfig, annotated: Path, held_out: frozenset[str]) -> BenchmarkPlan:
    assert config.instruct is not None
    benchmark = config.instruct.benchmark_config(config.seed)
    return plan_benchmark(read_samples(annotated), held_out, benchmark)


def spool_listing(
    builders: list[SourceBuilder],
    spool: Path,
    quarantine: QuarantineLog,
    tallies: dict[str, SourceTally],
    progress: Progress,
) -> None:
    """List every source into the spool file; source-stage problems go straight to quarantine."""
    # Ids are checked for duplicates (000.png beside 000.PNG) by 16-byte digests: small enough
    # that even a million samples cost little, unlike holding the samples themselves.
    seen: set[bytes] = set()
    progress.start("listing")
    with spool.open("w", encoding="utf-8") as handle:
        for builder in builders:
            tally = tallies[builder.name]
            for item in builder.iter_samples():
                if isinstance(item, QuarantineEntry):
                    quarantine.add(item)
                    progress.advance(1, quarantined=1)
                    continue
                digest = hashlib.blake2b(item.id.encode(), digest_size=16).digest()
                if digest in seen:
                    quarantine.add(builder.quarantine(
                        "duplicate_id",
                        f"{item.image_paths[0]} has the same id {item.id} as an earlier file "
                        "(same name with another extension?)",
                        path=item.image_paths[0], sample_id=item.id,
                    ))  # fmt: skip
                    progress.advance(1, quarantined=1)
                    continue
                seen.add(digest)
                handle.write(record_line(item))
                tally.listed += 1
                progress.advance(1)
    progress.finish()


def chosen_positions(tallies: dict[str, SourceTally], limit: int | None, seed: int):
    """Per source, the positions in its listing that --limit keeps: a seeded uniform subset."""
    if limit is None:
        return None
    chosen: dict[str, set[int]] = {}
    for name, tally in tallies.items():
        count = min(limit, tally.listed)
        chosen[name] = set(random.Random(f"{seed}:{name}").sample(range(tally.listed), count))
    return chosen


def read_spool(spool: Path, chosen: dict[str, set[int]] | None) -> Iterator[Sample]:
    position: Counter[str] = Counter()
    with spool.open(encoding="utf-8") as handle:
        for line in handle:
            sample = Sample.model_validate_json(line)
            index = position[sample.source]
            position[sample.source] += 1
            if chosen is None or index in chosen[sample.source]:
                yield sample


def output_file(out: Path, name: str, records: int) -> OutputFile:
    path = out / name
    return OutputFile(
        path=name, records=records, bytes=path.stat().st_size, sha256=sha256_file(path)
    )


def render_folders(work: Path) -> RenderFolders:
    return RenderFolders(work / RENDERS_WORK_DIR)


@contextmanager
def work_folder(out: Path) -> Iterator[Path]:
    """A scratch folder inside the output, removed however the build ends."""
    work = out / WORK_DIR
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def annotate_into(
    spool_handle: IO[str],
    samples: Iterator[Sample],
    stage: AnnotateStage,
    workers: int | None,
    quarantine: QuarantineLog,
    progress: Progress,
) -> int:
    """Stream samples through the stage into the annotated spool; returns how many passed."""
    written = 0
    with make_runner(workers) as runner:
        for result in runner.map(stage, samples):
            if isinstance(result, QuarantineEntry):
                quarantine.add(result)
                progress.advance(1, quarantined=1)
                continue
            spool_handle.write(record_line(result))
            written += 1
            progress.advance(1)
    progress.finish()
    return written


def annotate_sources(
    config: BuildConfig,
    builders: list[SourceBuilder],
    work: Path,
    quarantine: QuarantineLog,
    tallies: dict[str, SourceTally],
    progress: Progress,
) -> tuple[Path, dict[str, dict[str, int]]]:
    """List every source and annotate the chosen samples into a spool in `work`."""
    listing = work / "listing.jsonl"
    spool_listing(builders, listing, quarantine, tallies, progress)
    chosen = chosen_positions(tallies, config.limit, config.seed)
    selected = sum(len(chosen[name]) if chosen else tally.listed for name, tally in tallies.items())
    stage = AnnotateStage(
        roots={builder.name: str(builder.root) for builder in builders},
        renders=str(render_folders(work).root),
        views=config.views,
    )
    progress.start("annotate", total=selected)
    annotated = work / "annotated.jsonl"
    with annotated.open("w", encoding="utf-8") as spool_handle:
        passed = annotate_into(
            spool_handle, read_spool(listing, chosen), stage, config.workers, quarantine, progress
        )
    listed = sum(tally.listed for tally in tallies.values())
    stages = {
        "source": {"out": listed, "quarantined": quarantine.count("source")},
        "annotate": {"in": selected, "out": passed, "quarantined": selected - passed},
    }
    return annotated, stages


def estimate(config: BuildConfig, progress: Progress | None = None) -> DryRunEstimate:
    """--dry-run: list and annotate (local and free), then price the LLM requests; send nothing.

    Nothing in the output folder changes but the LLM cache, which is opened to see what is
    already answered.
    """
    progress = progress or Progress()
    builders = open_builders(config)
    held_out = held_out_sources(config, builders)
    out = config.out.expanduser().resolve()
    tallies = {builder.name: SourceTally() for builder in builders}
    with work_folder(out) as work, (work / QUARANTINE_FILE).open("w") as quarantine_handle:
        quarantine = QuarantineLog(quarantine_handle, tallies)
        used = builders_in_use(config, builders, held_out)
        annotated, _ = annotate_sources(config, used, work, quarantine, tallies, progress)
        if config.instruct is None:
            return DryRunEstimate()
        roots = {builder.name: builder.root for builder in builders}
        describer, engine = make_describer(
            config.instruct, out, roots, annotated, progress, render_folders(work)
        )
        if engine is None or not isinstance(describer, OpenAIDescriber):
            return DryRunEstimate()  # the template describer sends nothing
        plan = benchmark_plan(config, annotated, held_out)
        chosen = to_describe(read_samples(annotated), plan, config.instruct, quarantine.add)
        requests = describer.requests_for(chosen)
        # Batch answers cost less: price them as the batch will be billed.
        return estimate_run(
            requests, engine.prices, engine.cache.contains, batch=config.instruct.llm.batch
        )


def build(
    config: BuildConfig, progress: Progress | None = None, command: list[str] | None = None
) -> Manifest:
    """Run the build and write its folder; structural problems raise AdinstructError first."""
    progress = progress or Progress()
    builders = open_builders(config)
    held_out = held_out_sources(config, builders)
    out = config.out.expanduser().resolve()
    roots = {builder.name: builder.root for builder in builders}
    tallies = {builder.name: SourceTally() for builder in builders}
    engine = None
    clear_stale_outputs(out, config.instruct)
    with (
        work_folder(out) as work,
        atomic_writer(out / QUARANTINE_FILE) as quarantine_handle,
    ):
        quarantine = QuarantineLog(quarantine_handle, tallies)
        used = builders_in_use(config, builders, held_out)
        annotated, stages = annotate_sources(config, used, work, quarantine, tallies, progress)
        describer = None
        if config.instruct is not None:
            describer, engine = make_describer(
                config.instruct, out, roots, annotated, progress, render_folders(work)
            )
        written, outputs = finish_samples(
            out, annotated, config, describer, roots, quarantine, tallies, progress, stages,
            held_out, render_folders(work),
        )  # fmt: skip
    manifest = Manifest(
        toolkit_version=__version__,
        command=redact_command(command or []),
        config=config.public_config(held_out),
        sources=[source_info(builder, tallies[builder.name]) for builder in builders],
        outputs=[
            output_file(out, name, records)
            for name, records in [
                (SAMPLES_FILE, written),
                (QUARANTINE_FILE, quarantine.records),
                *outputs,
            ]
        ],
        stages=stages,
        quarantine_codes={
            name: dict(sorted(codes.items())) for name, codes in sorted(quarantine.by_stage.items())
        },
        llm_usage=engine.totals if engine is not None else LLMUsage(),
    )
    write_json(out / MANIFEST_FILE, manifest.model_dump(mode="json"))
    if config.validate_output:
        manifest = gate_build(out, manifest, tallies, builders, progress)
    return manifest


#: What an earlier build into the same folder may have left that describes that build, not
#: this one: validated against this build's records it would give false findings (an old
#: benchmark against new training records), and the sanity scores are of the old samples.
#: Images, masks, the LLM cache and a demo's synthetic sources stay: they are reused.
STALE_WITHOUT_TRAINING = (INSTRUCT_FILE, MIXTURE_FILE)
STALE_WITHOUT_BENCHMARK = (TEST_DATA_FILE, VISA_DR_FILE, MMAD_FILE)
ALWAYS_STALE = ("sanity", VALIDATION_FILE)


def clear_stale_outputs(out: Path, recipe: InstructConfig | None) -> None:
    stale = list(ALWAYS_STALE)
    if recipe is None or not recipe.trains:
        stale += STALE_WITHOUT_TRAINING
    if recipe is None or not recipe.benchmarks:
        stale += STALE_WITHOUT_BENCHMARK
    for name in stale:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def gate_build(
    out: Path,
    manifest: Manifest,
    tallies: dict[str, SourceTally],
    builders: list[SourceBuilder],
    progress: Progress,
) -> Manifest:
    """Validate the written folder, move records with errors to the quarantine, and record it."""
    result = Gate(out).run(progress)
    result.report.write(out / VALIDATION_FILE)
    counts = {output.path: output.records for output in manifest.outputs}
    counts.update(result.remaining)
    codes = {name: dict(codes) for name, codes in manifest.quarantine_codes.items()}
    if result.moved:
        counts[QUARANTINE_FILE] = append_quarantine(out / QUARANTINE_FILE, result.moved)
        by_code: Counter[str] = Counter(entry.code for entry in result.moved)
        codes["validate"] = dict(sorted(by_code.items()))
        for entry in result.moved:
            if entry.path == SAMPLES_FILE and entry.source in tallies:
                tallies[entry.source].count_sample(Sample.model_validate(entry.record), -1)
    stages = dict(manifest.stages)
    stages["validate"] = {
        "records": result.report.records,
        "errors": result.report.error_count,
        "warnings": result.report.warning_count,
        "quarantined": len(result.moved),
    }
    manifest = manifest.model_copy(update={
        "outputs": [output_file(out, output.path, counts[output.path])
                    for output in manifest.outputs],
        "sources": [source_info(builder, tallies[builder.name]) for builder in builders],
        "stages": stages,
        "quarantine_codes": codes,
        "validation": result.summary(),
    })  # fmt: skip
    write_json(out / MANIFEST_FILE, manifest.model_dump(mode="json"))
    return manifest


def finish_samples(
    out: Path,
    annotated: Path,
    config: BuildConfig,
    describer: Describer | None,
    roots: dict[str, Path],
    quarantine: QuarantineLog,
    tallies: dict[str, SourceTally],
    progress: Progress,
    stages: dict[str, dict[str, int]],
    held_out: frozenset[str] = frozenset(),
    folders: RenderFolders | None = None,
) -> tuple[int, list[tuple[str, int]]]:
    """Write samples.jsonl from the annotated spool, through the recipes when there are any.

    `folders` is where annotate drew the 3D samples' views, placed with their samples.
    Returns the samples written and the recipes' output files with their record counts.
    """
    rendered = folders.views if folders is not None else None
    passed = stages["annotate"]["out"]
    with atomic_writer(out / SAMPLES_FILE) as samples_handle:
        if config.instruct is None or describer is None:
            # Every folder holds the images its samples name, so that it validates on its own.
            for sample in read_samples(annotated):
                samples_handle.write(record_line(sample))
                place_sample_files(sample, roots[sample.source], out, config.images, rendered)
                tallies[sample.source].count_sample(sample)
            return passed, []
        recipe = config.instruct
        plan = benchmark_plan(config, annotated, held_out)
        by_role = roles(read_samples(annotated), plan)
        wanted = (by_role["train"] if recipe.trains else 0) + (
            by_role["benchmark"] if recipe.benchmarks else 0
        )

        def on_sample(sample: Sample) -> None:
            tallies[sample.source].count_sample(sample)
            if sample.description is not None:
                progress.advance(1)

        def on_quarantine(entry: QuarantineEntry) -> None:
            quarantine.add(entry)
            progress.advance(1, quarantined=1)

        progress.start("describe", total=wanted)
        tally = write_recipes(
            out, annotated, samples_handle, describer, recipe, plan, config.seed, roots,
            config.images, on_sample, on_quarantine, rendered,
        )  # fmt: skip
        progress.finish()
    stages["route"] = {
        "train": by_role["train"] if recipe.trains else 0,
        "benchmark": by_role["benchmark"] if recipe.benchmarks else 0,
        "templates": tally.templates,
        "unused": passed - wanted - tally.templates,
    }
    stages["describe"] = {
        "in": wanted, "out": tally.described, "quarantined": wanted - tally.described,
    }  # fmt: skip
    if recipe.trains:
        stages["compose"] = {"in": tally.trained, "records": tally.records}
        stages["compose"].update({f"records_{k}": n for k, n in sorted(tally.by_family.items())})
    if recipe.benchmarks:
        stages["benchmark"] = {
            "detection_items": tally.detection_items,
            "reasoning_items": tally.reasoning_items,
            "mmad_items": tally.mmad_items,
        }
        stages["benchmark"].update({
            "mmad_" + kind.lower().replace(" ", "_"): n
            for kind, n in sorted(tally.mmad_questions.items())
        })  # fmt: skip
    return tally.written, tally.outputs(recipe)


def source_info(builder: SourceBuilder, tally: SourceTally) -> SourceInfo:
    card = builder.card()
    return SourceInfo(
        name=builder.name,
        root=str(builder.root),
        layout=builder.layout,
        license=card.license,
        license_url=card.license_url,
        homepage=card.homepage,
        counts=tally.counts(),
    )
