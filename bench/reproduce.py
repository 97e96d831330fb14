"""Reproduce WinCLIP's zero-shot figures on MVTec AD and VisA with adinstruct's detector.

    python bench/reproduce.py --mvtec /data/mvtec_anomaly_detection --visa /data/VisA_20220922 \
        --weights /models/vit_b_16_plus_240-laion400m_e31.pt [--arch ViT-B-16-plus-240]
        [--batch-size 32] [--device cuda] [--pixel-size 240] [--limit N]
        [--model gpt-4o-mini] [--cache FILE] [--json FILE]

Every test image of each release is listed by its adinstruct source builder (nothing is
annotated: masks are read from the builders' mask paths, every value above 0 a defect, which
is how VisA's id-valued masks read too), scored by `ZeroShotScorer` on the backbone
open_clip:ARCH@WEIGHTS, and each category's image AUROC, pixel AUROC and AUPRO are printed
beside WinCLIP's published zero-shot means (Jeong et al., CVPR 2023: MVTec AD 91.8 / 85.1 /
64.6, VisA 78.1 / 79.6 / 56.8; the paper's per-category figures are not carried here).
Each image is encoded once and scored twice: with WinCLIP's static prompt ensemble, and with
ALFA-style prompts written by an LLM (OPENAI_API_KEY or OPENAI_BASE_URL; answers cached in
--cache), whose columns say why they are missing when no LLM is configured.

Pixel metrics are computed on a --pixel-size square grid (default 240, the model's input):
maps interpolated to it from the patch grid, masks area-downsampled (validators/detector/
evaluation.py). `--arch` takes a built-in open_clip architecture or a model config JSON file
(registered with open_clip.add_model_config; the tests pass a tiny one), and `--weights` a
state-dict file or `local-dir:/folder`. Nothing is downloaded. On two CPU cores the real
model scores about 0.05–0.1 images a second (so the 1,725 + 2,162 test images take half a
day; `--limit N` keeps N normal and N anomalous images per category); a GPU takes minutes.
Exits 0 after printing, 2 when the releases or the weights cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from adinstruct.builder.annotate.decode import (
    PIL_DATA_ERRORS,
    DecodeError,
    MaskSizeMismatch,
    mask_values,
    read_file,
)
from adinstruct.builder.annotate.stage import DEFAULT_MAX_IMAGE_PIXELS
from adinstruct.builder.describe.overlay import as_rgb_array
from adinstruct.builder.describe.template import category_name
from adinstruct.builder.errors import AdinstructError, PathEscapeError
from adinstruct.builder.paths import resolve_inside
from adinstruct.builder.sources import get_builder
from adinstruct.schemas import QuarantineEntry, Sample

DEFAULT_ARCH = "ViT-B-16-plus-240"
#: WinCLIP's zero-shot means (image AUROC, pixel AUROC, AUPRO), in percent.
PUBLISHED = {"mvtec_ad": (91.8, 85.1, 64.6), "visa": (78.1, 79.6, 56.8)}
RELEASES = (("mvtec_ad", "mvtec"), ("visa", "visa"))
METRIC_NAMES = ("image AUROC", "pixel AUROC", "AUPRO")
STATIC, ALFA = "static", "ALFA"
NO_LLM = "no LLM configured (set OPENAI_API_KEY or OPENAI_BASE_URL)"


@dataclass
class CategoryResult:
    dataset: str
    category: str
    images: int
    #: prompt kind -> (image AUROC, pixel AUROC, AUPRO), None where undefined.
    figures: dict[str, tuple[float | None, float | None, float | None]] = field(
        default_factory=dict
    )


@dataclass
class DatasetRun:
    dataset: str
    categories: list[CategoryResult] = field(default_factory=list)
    listing_problems: int = 0
    unreadable: int = 0
    images: int = 0
    seconds: float = 0.0


def list_test_samples(dataset: str, alias: str, root: Path, limit: int | None):
    """(builder, {category: [test samples]}, listing problems) of one release."""
    builder = get_builder(alias)(root)
    by_category: dict[str, list[Sample]] = defaultdict(list)
    problems = 0
    for item in builder.iter_samples():
        if isinstance(item, QuarantineEntry):
            problems += 1
        elif item.split == "test":
            by_category[item.category].append(item)
    if limit is not None:
        for category, samples in by_category.items():
            normal = [s for s in samples if s.label == "normal"][:limit]
            anomalous = [s for s in samples if s.label == "anomaly"][:limit]
            by_category[category] = normal + anomalous
    return builder, dict(sorted(by_category.items())), problems


def load_pixels(root: Path, sample: Sample, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The image's RGB pixels, and its masks' union downsampled (None for a normal image)."""
    from adinstruct.validators.detector.evaluation import downsample_mask

    with Image.open(resolve_inside(root, sample.image_paths[0])) as opened:
        opened.load()
        pixels = as_rgb_array(opened)
    if sample.label == "normal":
        return pixels, None
    height, width = pixels.shape[:2]
    union = np.zeros((height, width), dtype=bool)
    for reference in sample.masks:
        data = read_file(resolve_inside(root, reference.path), reference.path)
        union |= mask_values(data, reference.path, (width, height), DEFAULT_MAX_IMAGE_PIXELS) > 0
    return pixels, downsample_mask(union, size) if sample.masks else None


def run_dataset(dataset, alias, root, scorer, prompt_sets, args) -> DatasetRun:
    from adinstruct.validators.detector.evaluation import CategoryInputs, score_at_size

    started = time.perf_counter()
    builder, by_category, problems = list_test_samples(dataset, alias, root, args.limit)
    run = DatasetRun(dataset, listing_problems=problems)
    for category, samples in by_category.items():
        kinds = prompt_sets(category)
        inputs = {kind: CategoryInputs(size=args.pixel_size) for kind in kinds}
        category_started = time.perf_counter()
        for start in range(0, len(samples), args.batch_size):
            batch, masks, labels = [], [], []
            for sample in samples[start : start + args.batch_size]:
                try:
                    pixels, mask = load_pixels(builder.root, sample, args.pixel_size)
                except (PathEscapeError, DecodeError, MaskSizeMismatch, *PIL_DATA_ERRORS) as error:
                    print(f"skipped {sample.id}: {error}", file=sys.stderr)
                    run.unreadable += 1
                    continue
                batch.append(pixels)
                masks.append(mask)
                labels.append(sample.label == "anomaly")
            if not batch:
                continue
            results = score_at_size(scorer, batch, list(kinds.values()), args.pixel_size)
            for kind, (scores, maps) in zip(kinds, results, strict=True):
                for anomalous, score, anomaly_map, mask in zip(
                    labels, scores, maps, masks, strict=True
                ):
                    inputs[kind].add(anomalous, float(score), anomaly_map, mask)
        result = CategoryResult(dataset, category, inputs[STATIC].count)
        for kind, gathered in inputs.items():
            metrics = gathered.metrics()
            result.figures[kind] = (metrics.image_auroc, metrics.pixel_auroc, metrics.aupro)
        run.categories.append(result)
        run.images += result.images
        print(f"{dataset}/{category}: {result.images} test images in "
              f"{time.perf_counter() - category_started:.1f} s", file=sys.stderr)  # fmt: skip
    run.seconds = time.perf_counter() - started
    return run


# --------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return float(np.mean(present)) if present else None


def table(runs: list[DatasetRun], alfa_missing: str | None) -> list[str]:
    """A Markdown table: each category, then each dataset's mean beside the paper's."""
    header = ["dataset", "category", "test images"]
    header += [f"static {name}" for name in METRIC_NAMES]
    header += ["ALFA"] if alfa_missing else [f"ALFA {name}" for name in METRIC_NAMES]
    header += [f"WinCLIP paper {name}" for name in METRIC_NAMES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def cells(figures: dict, kind: str) -> list[str]:
        if kind == ALFA and alfa_missing:
            return [f"missing: {alfa_missing}"]
        if kind not in figures:
            return ["missing: no ALFA prompts for this category"] + ["–"] * 2
        return [percent(value) for value in figures[kind]]

    for run in runs:
        for result in run.categories:
            row = [run.dataset, result.category, str(result.images)]
            row += cells(result.figures, STATIC) + cells(result.figures, ALFA) + ["–"] * 3
            lines.append("| " + " | ".join(row) + " |")
        means = {
            kind: tuple(
                mean([r.figures[kind][index] for r in run.categories if kind in r.figures])
                for index in range(3)
            )
            for kind in (STATIC, ALFA)
        }
        if not any(ALFA in r.figures for r in run.categories):
            means.pop(ALFA)
        row = [run.dataset, "mean", str(run.images)]
        row += cells(means, STATIC) + cells(means, ALFA)
        row += [f"{value:.1f}" for value in PUBLISHED[run.dataset]]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def named(values: tuple) -> dict[str, float | None]:
    return dict(zip(METRIC_NAMES, values, strict=True))


def as_json(runs: list[DatasetRun], alfa_missing: str | None) -> dict:
    datasets = []
    for run in runs:
        categories = [
            {"category": r.category, "images": r.images}
            | {kind: named(values) for kind, values in r.figures.items()}
            for r in run.categories
        ]
        datasets.append({
            "dataset": run.dataset, "images": run.images, "seconds": round(run.seconds, 2),
            "listing_problems": run.listing_problems, "unreadable": run.unreadable,
            "categories": categories,
        })  # fmt: skip
    published = {name: named(values) for name, values in PUBLISHED.items()}
    return {"alfa_missing": alfa_missing, "published": published, "datasets": datasets}


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mvtec", type=Path, help="MVTec AD root (mvtec_anomaly_detection/)")
    parser.add_argument("--visa", type=Path, help="VisA root (VisA_20220922/, with split_csv/)")
    parser.add_argument("--weights", required=True, help="state-dict file or local-dir:/folder")
    parser.add_argument("--arch", default=DEFAULT_ARCH, help="open_clip architecture or JSON")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default=None, help="default: cuda, else mps, else cpu")
    parser.add_argument("--pixel-size", type=int, default=240, help="grid of pixel metrics")
    parser.add_argument("--limit", type=int, default=None, help="N normal + N anomalous a class")
    parser.add_argument("--model", default=None, help="LLM for ALFA's prompts")
    parser.add_argument("--cache", type=Path, default=Path(".cache/reproduce-llm.sqlite3"),
                        help="ALFA's cached prompt answers")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.mvtec is None and args.visa is None:
        parser.error("give --mvtec ROOT, --visa ROOT or both")
    if args.batch_size < 1 or args.pixel_size < 8 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size and --limit must be at least 1, --pixel-size at least 8")
    return args


def architecture(arch: str) -> str:
    """The open_clip name of `arch`; a config JSON file is registered under its stem."""
    path = Path(arch)
    if path.suffix == ".json" and path.is_file():
        import open_clip

        open_clip.add_model_config(path)
        return path.stem
    return arch


def main() -> int:
    args = parse_args()
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: the detector needs torch: pip install 'adinstruct[detector]'",
              file=sys.stderr)  # fmt: skip
        return 2
    from adinstruct.validators.detector.backbones import load_backbone
    from adinstruct.validators.detector.prompt_engine import prompt_engine
    from adinstruct.validators.detector.prompts import (
        DEFAULT_PROMPT_MODEL,
        PromptError,
        alfa_prompts,
        winclip_prompts,
    )
    from adinstruct.validators.detector.scoring import ZeroShotScorer

    try:
        spec = f"open_clip:{architecture(args.arch)}@{args.weights}"
        backbone = load_backbone(spec, device=args.device, batch_size=args.batch_size)
    except AdinstructError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    engine, _ = prompt_engine(args.cache)
    alfa_missing = None if engine is not None else NO_LLM
    model = args.model or DEFAULT_PROMPT_MODEL
    scorer = ZeroShotScorer(backbone)

    def prompt_sets(category: str) -> dict:
        name = category_name(category)
        kinds = {STATIC: winclip_prompts(name)}
        if engine is not None:
            try:
                kinds[ALFA] = alfa_prompts(name, engine, model=model)
            except PromptError as error:
                print(f"no ALFA prompts for {category}: {error}", file=sys.stderr)
        return kinds

    print(f"backbone  {spec} on {backbone.device}, grid {backbone.grid}")
    print(f"prompts   WinCLIP static ensemble; ALFA: "
          f"{f'written by {model}' if engine is not None else alfa_missing}")  # fmt: skip
    print(f"pixels    metrics on a {args.pixel_size}×{args.pixel_size} grid")
    runs = []
    for dataset, alias in RELEASES:
        root = args.mvtec if dataset == "mvtec_ad" else args.visa
        if root is None:
            continue
        try:
            runs.append(run_dataset(dataset, alias, root, scorer, prompt_sets, args))
        except AdinstructError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    print()
    print("\n".join(table(runs, alfa_missing)))
    print()
    for run in runs:
        rate = run.images / run.seconds if run.seconds else 0.0
        print(f"{run.dataset}: {run.images} test images in {run.seconds:.1f} s "
              f"({rate:.3f} images/s); {run.listing_problems} listing problems, "
              f"{run.unreadable} unreadable")  # fmt: skip
    if args.json:
        payload = as_json(runs, alfa_missing)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
