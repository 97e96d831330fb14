"""`build-dataset`: the command line, thin over the Python API.

Library code raises typed errors; this module turns each into one line on stderr and an exit
status. Heavy modules (datasets, torch) are imported only by the commands that need them.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from adinstruct import __version__
from adinstruct.builder.errors import AdinstructError, ConfigError

app = typer.Typer(
    name="build-dataset",
    help="Build instruction-tuning datasets and benchmarks from anomaly-detection releases.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

QUARANTINE_NAME = "quarantine.jsonl"
#: Where `demo` exports its folder as a Hugging Face dataset.
DEMO_EXPORT = "hf"
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Workers = Annotated[
    int | None,
    typer.Option(min=1, help="Worker processes for decoding (default: one per CPU core)."),
]


def progress_for(quiet: bool):
    from adinstruct.builder.progress import Progress, RichProgress

    return Progress() if quiet or not sys.stderr.isatty() else RichProgress()


def run_build(config, quiet: bool):
    from adinstruct.builder.pipeline import build

    progress = progress_for(quiet)
    try:
        return build(config, progress=progress, command=["build-dataset", *sys.argv[1:]])
    finally:
        progress.close()


def run_estimate(config, quiet: bool):
    from adinstruct.builder.pipeline import estimate

    progress = progress_for(quiet)
    try:
        return estimate(config, progress=progress)
    finally:
        progress.close()


def say(message: str, quiet: bool) -> None:
    if not quiet:
        typer.echo(message, err=True)


def summary(manifest, out: Path) -> str:
    lines = [f"wrote {out}"]
    for source in manifest.sources:
        counts = source.counts
        labels = ", ".join(f"{n} {label}" for label, n in counts.by_label.items())
        lines.append(
            f"  {source.name}: {counts.total} samples ({labels or 'none'}), "
            f"{counts.quarantined} quarantined, licence {source.license}"
        )
    held_out = (manifest.config.get("instruct") or {}).get("held_out") or []
    if held_out:
        lines.append(f"  held out of training: {', '.join(held_out)}")
    for output in manifest.outputs:
        lines.append(f"  {output.path}: {output.records} records")
    if manifest.validation is not None:
        validation = manifest.validation
        lines.append(
            f"  validation: {validation['error_count']} errors, "
            f"{validation['warning_count']} warnings; {validation['quarantined_records']} "
            f"records moved to {QUARANTINE_NAME}; {validation['errors_remaining']} errors "
            "remain (validation.json)"
        )
    return "\n".join(lines)


@app.command()
def sources() -> None:
    """What each source builder reads, and its licence."""
    from rich.console import Console
    from rich.table import Table

    from adinstruct.builder.sources import list_builders

    table = Table(title="adinstruct sources", show_lines=True)
    for column in ("name", "release", "licence", "expects"):
        table.add_column(column, overflow="fold")
    for builder in list_builders():
        aliases = f"\n(also: {', '.join(builder.aliases)})" if builder.aliases else ""
        expects = "\nor ".join(builder.layouts.values())
        card = builder.card()
        table.add_row(builder.name + aliases, card.title, card.license, expects)
    Console().print(table)


@app.command()
def build(
    source: Annotated[
        list[str],
        typer.Option(
            help="NAME=PATH of a release on disk, e.g. mvtec=/data/mvtec_ad (repeatable). "
            "Names: see `build-dataset sources`."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most N samples from each source (seeded).")
    ] = None,
    workers: Workers = None,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    recipe: Annotated[
        list[str] | None,
        typer.Option(
            help="anomaly-instruct: training records in instruct/; visa-dr: the benchmark in "
            "benchmark/ from the held-out sources' test splits (repeatable: both at once)."
        ),
    ] = None,
    holdout: Annotated[
        list[str] | None,
        typer.Option(
            help="Source kept out of training, benchmarked by visa-dr (repeatable; default: "
            "visa when it is given; 'none' to train on every source)."
        ),
    ] = None,
    describer: Annotated[
        str | None,
        typer.Option(
            help="template (offline) or openai; default: openai when OPENAI_API_KEY "
            "is set, else template."
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="LLM for the openai describer.")] = None,
    images: Annotated[
        str, typer.Option(help="How record images reach DIR/images: copy or hardlink.")
    ] = "copy",
    views: Annotated[
        int,
        typer.Option(help="Views rendered of each 3D sample (point cloud): 4 or 9, as Anomaly-OV."),
    ] = 4,
    detail: Annotated[str, typer.Option(help="Image detail for the LLM: low, high, auto.")] = (
        "high"
    ),
    concurrency: Annotated[int, typer.Option(min=1, help="LLM requests in flight.")] = 8,
    rpm: Annotated[float | None, typer.Option(help="LLM requests per minute at most.")] = None,
    tpm: Annotated[float | None, typer.Option(help="LLM tokens per minute at most.")] = None,
    max_failures: Annotated[
        int, typer.Option(min=1, help="Stop the run after this many failed LLM requests.")
    ] = 50,
    prices: Annotated[
        Path | None, typer.Option(help="JSON price table ({model: {input, output}} per 1M).")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="LLM answer cache (default DIR/.cache/llm.sqlite3).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the LLM requests, tokens and cost; send none.")
    ] = False,
    batch: Annotated[
        bool, typer.Option("--batch", help="Send through the OpenAI Batch API (half price).")
    ] = False,
    batch_poll: Annotated[
        float, typer.Option(help="Seconds between polls of a submitted batch.")
    ] = 30.0,
    quiet: Quiet = False,
) -> None:
    """Build a dataset folder from releases on disk."""
    from adinstruct.builder.instruct import LLMOptions, instruct_config
    from adinstruct.builder.pipeline import BuildConfig, parse_source_spec

    llm = LLMOptions(
        detail=detail, concurrency=concurrency, requests_per_minute=rpm, tokens_per_minute=tpm,
        max_failures=max_failures, prices=prices, cache=cache, batch=batch,
        batch_poll_s=batch_poll,
    )  # fmt: skip
    config = BuildConfig(
        sources=[parse_source_spec(text) for text in source],
        out=out,
        limit=limit,
        workers=workers,
        seed=seed,
        dry_run=dry_run,
        images=images,
        views=views,
        instruct=instruct_config(recipe, describer, model, llm, holdout),
    )
    if dry_run:
        typer.echo(run_estimate(config, quiet).summary())
        return
    manifest = run_build(config, quiet)
    say(summary(manifest, out), quiet)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("demo-out"),
    workers: Workers = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic sample.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Generate two small synthetic releases and run every stage on them, offline.

    `demo` is trained on (anomaly-instruct); `demo_holdout`, whose categories training never
    sees, is held out and benchmarked (visa-dr), as Anomaly-OV holds VisA out.
    """
    from adinstruct.builder.demo import generate_demo_tree, generate_holdout_tree, is_generated_tree
    from adinstruct.builder.instruct import RECIPES, instruct_config
    from adinstruct.builder.pipeline import BuildConfig, SourceSpec

    trees = {"demo": generate_demo_tree, "demo_holdout": generate_holdout_tree}
    specs = []
    for name, generate in trees.items():
        source_root = out / "source" / name
        if is_generated_tree(source_root):
            # A second demo into the same folder replaces the synthetic trees the first one
            # wrote; anything else found there is left alone (the generator refuses to mix).
            shutil.rmtree(source_root)
        tree = generate(source_root, seed=seed)
        say(f"generated {tree.total} synthetic images (MVTec AD layout, CC0) in {source_root}",
            quiet)  # fmt: skip
        specs.append(SourceSpec(name=name, root=source_root))
    config = BuildConfig(
        sources=specs,
        out=out,
        workers=workers,
        seed=seed,
        # Offline by design: the template describer, whatever key the environment holds.
        instruct=instruct_config(list(RECIPES), "template", None, holdout=["demo_holdout"]),
    )
    manifest = run_build(config, quiet)
    say(summary(manifest, out), quiet)
    # The whole way to publishing: a folder `datasets.load_dataset` reads, and the report.
    from adinstruct.builder.report.report import write_report

    exported = run_export(out, out / DEMO_EXPORT, "hf", 2000, "copy")
    say(f"  {DEMO_EXPORT}/: a Hugging Face dataset folder, {len(exported.files)} files "
        f"(datasets.load_dataset('{out / DEMO_EXPORT}', 'instruct'))", quiet)  # fmt: skip
    say(f"  {write_report(out).name}: open it in a browser", quiet)


@app.command()
def validate(
    folder: Annotated[Path, typer.Argument(help="A built output folder.")],
    only: Annotated[
        list[str] | None, typer.Option("--validator", help="Run only these (repeatable).")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Check a built folder; exit status 1 when any error-level finding remains."""
    from adinstruct.validators.runner import validate_folder

    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder")
    progress = progress_for(quiet)
    try:
        report = validate_folder(folder, validators=only or None, progress=progress)
    finally:
        progress.close()
    report.write(folder / "validation.json")
    if not quiet:  # rich is imported only to draw (a gate in CI runs --quiet)
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"validation of {folder}")
        for column in ("validator", "errors", "warnings"):
            table.add_column(column)
        for name, errors, warnings in report.summary_table():
            table.add_row(name, str(errors), str(warnings))
        Console(stderr=True).print(table)
    say(f"{report.error_count} errors, {report.warning_count} warnings: "
        f"{folder / 'validation.json'}", quiet)  # fmt: skip
    raise typer.Exit(report.exit_status)


@app.command()
def export(
    folder: Annotated[Path, typer.Argument(help="A built output folder.")],
    to: Annotated[Path, typer.Option(help="Folder to write the export into.")],
    format: Annotated[
        str, typer.Option("--format", help="hf (parquet + card) or llava (JSON + datasets.yaml).")
    ] = "hf",
    shard_records: Annotated[
        int, typer.Option(min=1, help="hf: records per parquet shard at most.")
    ] = 2000,
    images: Annotated[
        str, typer.Option(help="llava: how images reach TO/images: copy or hardlink.")
    ] = "copy",
    quiet: Quiet = False,
) -> None:
    """Export a built folder for LLaVA-style trainers or as a Hugging Face dataset."""
    summary = run_export(folder, to, format, shard_records, images)
    lines = [f"wrote {summary.folder} ({format}): {summary.images} images, {summary.masks} masks, "
             f"{summary.bytes / 1e6:.1f} MB"]  # fmt: skip
    lines += [f"  {file.path}: {file.records} records" for file in summary.files if file.records]
    say("\n".join(lines), quiet)


def run_export(folder: Path, to: Path, format: str, shard_records: int, images: str):
    from adinstruct.builder.images import Placement

    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder: give the output folder of a build")
    if format == "hf":
        from adinstruct.builder.export.hf import export_hf

        return export_hf(folder, to, max_shard_records=shard_records)
    if format == "llava":
        from adinstruct.builder.export.llava import export_llava

        if images not in {placement.value for placement in Placement}:
            raise ConfigError(f"--images must be copy or hardlink, got {images!r}")
        return export_llava(folder, to, placement=Placement(images))
    raise ConfigError(f"--format must be hf or llava, got {format!r}")


@app.command()
def push(
    folder: Annotated[Path, typer.Argument(help="A folder written by `export --format hf`.")],
    repo_id: Annotated[str, typer.Option(help="ORG/NAME of the dataset repository.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = (
        False
    ),
    revision: Annotated[
        str | None, typer.Option(help="Branch to commit to (created when missing).")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Upload an exported folder to the Hugging Face Hub in one commit (token: HF_TOKEN, login)."""
    from adinstruct.builder.export.push import push_folder

    result = push_folder(folder, repo_id, private=private, revision=revision)
    say(f"pushed {len(result.files)} files to {result.repo_id} in commit {result.commit_oid}: "
        f"{result.commit_url}", quiet)  # fmt: skip


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="A built output folder.")],
    gallery: Annotated[int, typer.Option(min=0, help="Records in the gallery.")] = 48,
    seed: Annotated[int, typer.Option(help="Seed of the gallery's draw.")] = 0,
    quiet: Quiet = False,
) -> None:
    """Write DIR/report.html: counts, mask statistics, a gallery and the findings; no server."""
    from adinstruct.builder.report.report import write_report

    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder: give the output folder of a build")
    path = write_report(folder, gallery_size=gallery, seed=seed)
    say(f"wrote {path}", quiet)


@app.command()
def sanity(
    folder: Annotated[Path, typer.Argument(help="A built output folder.")],
    backbone: Annotated[
        str,
        typer.Option(
            help="CLIP weights on disk: open_clip:ARCH@/path/weights.pt, "
            "open_clip:ARCH@local-dir:/folder, or hf:/folder (save_pretrained)."
        ),
    ],
    prompts: Annotated[
        str,
        typer.Option(
            help="winclip (WinCLIP's static ensemble) or alfa (written by an LLM once per "
            "category, cached in DIR/.cache/llm.sqlite3; winclip without OPENAI_API_KEY)."
        ),
    ] = "winclip",
    model: Annotated[str | None, typer.Option(help="LLM for --prompts alfa.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images scored at once.")] = 32,
    quiet: Quiet = False,
) -> None:
    """Score every sample with a CLIP zero-shot detector: metrics, and label and mask flags."""
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder: give the output folder of a build")
    if prompts not in ("winclip", "alfa"):
        raise ConfigError(f"--prompts must be winclip or alfa, got {prompts!r}")
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            "build-dataset sanity needs the detector extra: pip install 'adinstruct[detector]'"
        ) from error
    from adinstruct.builder.instruct import CACHE_FILE
    from adinstruct.validators.detector.backbones import load_backbone
    from adinstruct.validators.detector.prompt_engine import prompt_engine
    from adinstruct.validators.detector.prompts import DEFAULT_PROMPT_MODEL
    from adinstruct.validators.detector.sanity import run_sanity

    loaded = load_backbone(backbone, batch_size=batch_size)
    engine = None
    if prompts == "alfa":
        engine, note = prompt_engine(folder / CACHE_FILE)
        if note:
            say(f"note: {note}", quiet)
    progress = progress_for(quiet)
    try:
        report = run_sanity(
            folder, loaded, prompts=prompts, llm=engine, batch_size=batch_size,  # type: ignore[arg-type]
            prompt_model=model or DEFAULT_PROMPT_MODEL, progress=progress, spec=backbone,
        )  # fmt: skip
    finally:
        progress.close()
    print_sanity(report)
    if report.manifest_note:
        say(f"note: {report.manifest_note}", quiet)
    say(f"{report.metrics.scored} images scored in {report.seconds:.1f} s "
        f"({report.images_per_second:.2f} images/s on {report.metrics.device})", quiet)  # fmt: skip


def print_sanity(report) -> None:
    """The per-category table and the flag counts, on stdout: the command's result."""
    from rich.console import Console
    from rich.table import Table

    def percent(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    metrics = report.metrics
    table = Table(title=f"detector sanity of {report.folder.name} ({metrics.backbone}, "
                  f"{metrics.prompts} prompts)")  # fmt: skip
    for column in ("source", "category", "normal", "anomalous", "image AUROC", "AP", "F1-max",
                   "pixel AUROC", "AUPRO", "flags"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("source", "category") else "right")
    for row in metrics.categories:
        table.add_row(
            row.source, row.category, str(row.normal), str(row.anomaly),
            percent(row.image_auroc), percent(row.average_precision), percent(row.f1_max),
            percent(row.pixel_auroc), percent(row.aupro), str(sum(row.flags.values())),
        )  # fmt: skip
    mean = metrics.mean
    table.add_section()
    table.add_row(
        "mean", f"{len(metrics.categories)} categories", "", "", percent(mean.image_auroc),
        percent(mean.average_precision), percent(mean.f1_max), percent(mean.pixel_auroc),
        percent(mean.aupro), str(sum(metrics.flags.values())),
    )  # fmt: skip
    console = Console(width=max(Console().width, 120))
    console.print(table)
    counts = ", ".join(f"{code} {count}" for code, count in metrics.flags.items())
    console.print(f"flags: {counts or 'none'} ({report.flags_path})")
    console.print(f"metrics: {report.metrics_path}")
    for note in metrics.notes:
        console.print(f"note: {note}")


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"adinstruct {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True)
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug detail.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    from pydantic import ValidationError

    try:
        app()
    except AdinstructError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    except ValidationError as error:
        # An option value the config models refuse (e.g. --detail medium): one line per field.
        for problem in error.errors():
            where = ".".join(str(part) for part in problem["loc"]) or "option"
            typer.echo(f"error: {where}: {problem['msg']}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
