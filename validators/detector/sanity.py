"""`run_sanity`: the reference CLIP detector over a built folder, per category: metrics, and
flags on the labels and masks its scores call into question (the rules are in flags.py).

Reads DIR/samples.jsonl and the images under DIR/images/<source>/<image_paths[0]>, never
anything outside DIR; writes DIR/sanity/metrics.json (per source and category: image AUROC,
AP, F1-max, and pixel AUROC and AUPRO where the category has masks; counts; the backbone, the
prompts and the rules), DIR/sanity/flags.jsonl (one line per flag) and DIR/sanity/maps/ (the
anomaly map of each flagged image, a greyscale PNG of the probabilities on the pixel-metric
grid), swapped in whole, then adds the summary to DIR/manifest.json, keeping the rest of it.

One pass lists the samples by category (a byte offset each); each category is then scored in
batches, so memory is one batch of images plus one category's metric inputs (evaluation.py),
whatever the folder's size. An image that cannot be read, a line that is no sample and a
mask that does not decode become flags, and the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import IO, TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adinstruct import __version__
from adinstruct.builder.annotate.decode import PIL_DATA_ERRORS
from adinstruct.builder.annotate.geometry import rle_decode
from adinstruct.builder.describe.overlay import as_rgb_array
from adinstruct.builder.describe.template import category_name
from adinstruct.builder.errors import ConfigError, PathEscapeError
from adinstruct.builder.io import replace_directory, write_json
from adinstruct.builder.paths import resolve_inside
from adinstruct.builder.progress import Progress
from adinstruct.schemas import LLMUsage, Manifest, Sample
from adinstruct.schemas.records import Label
from adinstruct.validators.detector.backbones import Backbone, first_line
from adinstruct.validators.detector.evaluation import (
    PIXEL_SIZE,
    CategoryInputs,
    Metrics,
    downsample_mask,
    score_at_size,
)
from adinstruct.validators.detector.flags import (
    ANOMALY_SCORES_LOW,
    FLAG_CODES,
    MASK_MISSES_MAP,
    NORMAL_SCORES_HIGH,
    UNREADABLE_IMAGE,
    UNREADABLE_MASK,
    UNREADABLE_SAMPLE,
    LabelRule,
    SanityThresholds,
    anomaly_low_message,
    label_rule,
    mask_contrast,
    mask_message,
    mask_rule_skipped,
    normal_high_message,
)
from adinstruct.validators.detector.prompt_engine import NO_LLM_NOTE
from adinstruct.validators.detector.prompts import (
    DEFAULT_PROMPT_MODEL,
    PromptError,
    PromptSet,
    alfa_prompt_sets,
    alfa_prompts,
    winclip_prompts,
)
from adinstruct.validators.detector.scoring import ZeroShotScorer

if TYPE_CHECKING:
    from adinstruct.builder.describe.engine import Engine

SANITY_DIR = "sanity"
METRICS_FILE = "metrics.json"
FLAGS_FILE = "flags.jsonl"
MAPS_DIR = "maps"
SAMPLES_FILE = "samples.jsonl"
MANIFEST_FILE = "manifest.json"
IMAGES_DIR = "images"
#: Map files written at most, so that a detector flagging half a large folder fills no disk.
MAX_MAP_FILES = 1000
PromptMode = Literal["winclip", "alfa"]


# --------------------------------------------------------------------------------------
# What the files hold
# --------------------------------------------------------------------------------------


class Flag(BaseModel):
    """One line of flags.jsonl."""

    model_config = ConfigDict(extra="forbid")

    sample_id: str | None
    code: str
    score: float | None = Field(description="The image score, or the mask's contrast.")
    threshold: float | None
    message: str
    source: str | None = None
    category: str | None = None
    label: Label | None = None
    split: str | None = None
    image: str | None = Field(default=None, description="Relative to DIR/images.")
    map: str | None = Field(default=None, description="The map's PNG, relative to DIR.")
    line: int | None = Field(default=None, description="Line of samples.jsonl (from 1).")


class CategoryReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    category: str
    prompt_name: str = Field(description="How the prompts name the category.")
    prompts: Literal["winclip", "llm"]
    prompt_note: str | None = None
    samples: int
    scored: int
    normal: int
    anomaly: int
    with_mask: int = Field(description="Anomalous images counted at pixel level.")
    by_split: dict[str, int]
    image_auroc: float | None
    average_precision: float | None
    f1_max: float | None
    f1_threshold: float | None
    image_note: str | None
    pixel_auroc: float | None
    aupro: float | None
    pixel_note: str | None
    normal_scores: dict[str, float | int] | None
    anomaly_scores: dict[str, float | int] | None
    normal_scores_high_above: float | None
    anomaly_scores_low_below: float | None
    label_flags_skipped: str | None
    mask_flags_skipped: str | None
    flags: dict[str, int]


class MeanMetrics(BaseModel):
    """Means over the categories that have each metric (macro averages, as papers report)."""

    model_config = ConfigDict(extra="forbid")

    image_auroc: float | None = None
    average_precision: float | None = None
    f1_max: float | None = None
    image_categories: int = 0
    pixel_auroc: float | None = None
    aupro: float | None = None
    pixel_categories: int = 0


class SanityMetrics(BaseModel):
    """metrics.json."""

    model_config = ConfigDict(extra="forbid")

    toolkit_version: str = __version__
    backbone: str
    device: str
    prompts: PromptMode
    prompt_model: str | None
    notes: list[str]
    pixel_size: int
    pixel_note: str
    rules: SanityThresholds
    samples: int
    scored: int
    unreadable: int
    categories: list[CategoryReport]
    mean: MeanMetrics
    mean_by_source: dict[str, MeanMetrics]
    flags: dict[str, int]
    llm_usage: LLMUsage | None = None


@dataclass
class SanityReport:
    """What `run_sanity` wrote, and how long it took (not in the files: they stay the same
    for the same folder and backbone)."""

    folder: Path
    metrics: SanityMetrics
    seconds: float
    #: Why manifest.json was not updated; None when it was.
    manifest_note: str | None = None

    @property
    def metrics_path(self) -> Path:
        return self.folder / SANITY_DIR / METRICS_FILE

    @property
    def flags_path(self) -> Path:
        return self.folder / SANITY_DIR / FLAGS_FILE

    @property
    def flag_counts(self) -> dict[str, int]:
        return self.metrics.flags

    @property
    def images_per_second(self) -> float:
        return self.metrics.scored / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        """The manifest's `sanity` entry: no local path, so that it can be published."""
        metrics = self.metrics
        return {
            "backbone": public_spec(metrics.backbone),
            "prompts": metrics.prompts,
            "pixel_size": metrics.pixel_size,
            "samples": metrics.samples,
            "scored": metrics.scored,
            "unreadable": metrics.unreadable,
            "categories": len(metrics.categories),
            "mean": metrics.mean.model_dump(),
            "flags": metrics.flags,
            "files": [f"{SANITY_DIR}/{METRICS_FILE}", f"{SANITY_DIR}/{FLAGS_FILE}"],
        }


def public_spec(spec: str) -> str:
    """A backbone spec with each local path cut to its last component."""
    kind, _, rest = spec.partition(":")
    if kind == "hf" and rest:
        return f"hf:{PurePath(rest).name}"
    if kind == "open_clip" and "@" in rest:
        arch, _, weights = rest.partition("@")
        prefix = "local-dir:" if weights.startswith("local-dir:") else ""
        return f"open_clip:{arch}@{prefix}{PurePath(weights.removeprefix(prefix)).name}"
    return spec


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


@dataclass
class SampleIndex:
    """Byte offsets of samples.jsonl's lines by (source, category), in first-seen order."""

    groups: dict[tuple[str, str], list[tuple[int, int]]] = field(default_factory=dict)
    bad_lines: list[Flag] = field(default_factory=list)
    lines: int = 0


def index_samples(path: Path) -> SampleIndex:
    index = SampleIndex()
    offset = 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            index.lines += 1
            try:
                data = json.loads(line)
                key = (data["source"], data["category"])
                if not all(isinstance(part, str) for part in key):
                    raise TypeError("source and category must be strings")
            except (ValueError, KeyError, TypeError) as error:
                index.bad_lines.append(Flag(
                    sample_id=None, code=UNREADABLE_SAMPLE, score=None, threshold=None,
                    line=number, message=f"{SAMPLES_FILE} line {number} is not a sample: {error}",
                ))  # fmt: skip
                continue
            index.groups.setdefault(key, []).append((start, number))
    return index


def run_sanity(
    folder: Path,
    backbone: Backbone,
    *,
    prompts: PromptMode = "winclip",
    llm: Engine | None = None,
    prompt_model: str = DEFAULT_PROMPT_MODEL,
    batch_size: int = 32,
    progress: Progress | None = None,
    thresholds: SanityThresholds | None = None,
    pixel_size: int = PIXEL_SIZE,
    spec: str | None = None,
) -> SanityReport:
    """Score every sample of `folder`, write DIR/sanity/ and the manifest's summary.

    `prompts` "alfa" asks `llm` for each category's prompts (WinCLIP's static ensemble
    without one, noted in metrics.json); `spec` is the backbone's spec string, for the record.
    Raises ConfigError when the folder has no samples.jsonl or no images/ folder.
    """
    started = time.perf_counter()
    if prompts not in ("winclip", "alfa"):
        raise ConfigError(f"prompts must be winclip or alfa, not {prompts!r}")
    if batch_size < 1 or pixel_size < 8:
        raise ConfigError("batch_size must be at least 1 and pixel_size at least 8")
    root = Path(folder).expanduser().resolve()
    samples_path = root / SAMPLES_FILE
    if not samples_path.is_file():
        raise ConfigError(f"{root} has no {SAMPLES_FILE}: give the output folder of a build")
    images_root = resolve_inside(root, IMAGES_DIR)
    if not images_root.is_dir():
        raise ConfigError(f"{root} has no {IMAGES_DIR}/ folder: the images were never placed")
    thresholds = thresholds or SanityThresholds()
    progress = progress or Progress()

    index = index_samples(samples_path)
    notes: list[str] = []
    if prompts == "alfa" and llm is None:
        notes.append(NO_LLM_NOTE)
    names = {key: category_name(key[1]) for key in index.groups}
    prompt_sets = category_prompts(sorted(set(names.values())), prompts, llm, prompt_model)
    scorer = ZeroShotScorer(backbone)

    staging = root / f".{SANITY_DIR}.{secrets.token_hex(6)}.tmp"
    (staging / MAPS_DIR).mkdir(parents=True)
    try:
        maps = MapWriter(staging / MAPS_DIR)
        reports: list[CategoryReport] = []
        counts: Counter[str] = Counter()
        scored = 0
        progress.start("sanity", total=index.lines)
        with (staging / FLAGS_FILE).open("w", encoding="utf-8") as flags_out:
            for flag in index.bad_lines:
                write_flag(flags_out, flag, counts)
            progress.advance(len(index.bad_lines))
            with samples_path.open("rb") as samples:
                for key, lines in index.groups.items():
                    prompt_set, prompt_note = prompt_sets[names[key]]
                    run = CategoryRun(
                        key, lines, samples, images_root, scorer, prompt_set, pixel_size,
                        batch_size, progress,
                    )  # fmt: skip
                    run.score_all()
                    report, flags = run.finish(thresholds, maps, names[key], prompt_note)
                    for flag in flags:
                        write_flag(flags_out, flag, counts)
                    reports.append(report)
                    scored += report.scored
                    progress.stats(f"{len(reports)}/{len(index.groups)} categories, "
                                   f"{sum(counts.values())} flags")  # fmt: skip
        progress.finish()
        metrics = SanityMetrics(
            backbone=spec or backbone.name,
            device=str(backbone.device),
            prompts=prompts,
            prompt_model=prompt_model if prompts == "alfa" and llm is not None else None,
            notes=notes,
            pixel_size=pixel_size,
            pixel_note=(
                f"pixel AUROC, AUPRO and mask contrast on a {pixel_size}×{pixel_size} grid: maps "
                "interpolated to it from the patch grid, masks area-downsampled (a cell is a "
                "defect when half covered; a mask that would vanish keeps every cell it touches)"
            ),
            rules=thresholds,
            samples=index.lines,
            scored=scored,
            unreadable=counts[UNREADABLE_IMAGE] + counts[UNREADABLE_SAMPLE],
            categories=reports,
            mean=mean_metrics(reports),
            mean_by_source={
                source: mean_metrics([r for r in reports if r.source == source])
                for source in dict.fromkeys(report.source for report in reports)
            },
            flags={code: counts[code] for code in FLAG_CODES if counts[code]},
            llm_usage=llm.totals if llm is not None and prompts == "alfa" else None,
        )
        write_json(staging / METRICS_FILE, metrics.model_dump(mode="json"))
        replace_directory(staging, root / SANITY_DIR)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report = SanityReport(root, metrics, time.perf_counter() - started)
    report.manifest_note = record_in_manifest(root, report.summary())
    return report


def category_prompts(
    names: list[str], mode: PromptMode, llm: Engine | None, model: str
) -> dict[str, tuple[PromptSet, str | None]]:
    """Each prompt name's set, and a note when ALFA's could not be had for it."""
    if mode == "winclip" or llm is None or not names:
        return {name: (winclip_prompts(name), None) for name in names}
    try:
        asked = alfa_prompt_sets(names, llm, model=model)
        return {name: (prompt_set, None) for name, prompt_set in asked.items()}
    except PromptError:
        pass  # one category failed: ask each alone (the others come from the cache)
    sets: dict[str, tuple[PromptSet, str | None]] = {}
    for name in names:
        try:
            sets[name] = (alfa_prompts(name, llm, model=model), None)
        except PromptError as error:
            sets[name] = (winclip_prompts(name), f"{error}; WinCLIP's static prompts instead")
    return sets


def write_flag(handle: IO[str], flag: Flag, counts: Counter[str]) -> None:
    handle.write(flag.model_dump_json() + "\n")
    counts[flag.code] += 1


def record_in_manifest(root: Path, summary: dict[str, Any]) -> str | None:
    """Set the manifest's `sanity` and rewrite it atomically; or say why it was left alone."""
    path = root / MANIFEST_FILE
    if not path.is_file():
        return f"no {MANIFEST_FILE}: the summary is in {SANITY_DIR}/{METRICS_FILE} only"
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return f"{MANIFEST_FILE} cannot be read ({error}): left as it is"
    if not isinstance(payload, dict):
        return f"{MANIFEST_FILE} does not hold a JSON object: left as it is"
    payload["sanity"] = summary
    try:
        Manifest.model_validate(payload)
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        return f"{MANIFEST_FILE} does not validate ({where}: {problem['msg']}): left as it is"
    write_json(path, payload)
    return None


def mean_metrics(reports: list[CategoryReport]) -> MeanMetrics:
    def mean(values: list[float | None]) -> float | None:
        present = [value for value in values if value is not None]
        return float(np.mean(present)) if present else None

    with_image = [r for r in reports if r.image_auroc is not None]
    with_pixel = [r for r in reports if r.pixel_auroc is not None]
    return MeanMetrics(
        image_auroc=mean([r.image_auroc for r in with_image]),
        average_precision=mean([r.average_precision for r in with_image]),
        f1_max=mean([r.f1_max for r in with_image]),
        image_categories=len(with_image),
        pixel_auroc=mean([r.pixel_auroc for r in with_pixel]),
        aupro=mean([r.aupro for r in with_pixel]),
        pixel_categories=len(with_pixel),
    )


# --------------------------------------------------------------------------------------
# One category
# --------------------------------------------------------------------------------------


@dataclass
class Member:
    """What a category keeps of each scored image until its flags are decided."""

    sample: Sample
    line: int
    image: str
    anomaly_map: np.ndarray
    contrast: float | None


@dataclass
class Prepared:
    sample: Sample
    line: int
    image: str
    pixels: np.ndarray
    mask: np.ndarray | None  # downsampled; None without a (readable) mask


class MapWriter:
    """Writes flagged images' maps, at most MAX_MAP_FILES of them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.written = 0

    def write(self, sample_id: str, anomaly_map: np.ndarray) -> str | None:
        name = f"{hashlib.sha256(sample_id.encode()).hexdigest()[:20]}.png"
        path = self.folder / name
        if not path.exists():
            if self.written >= MAX_MAP_FILES:
                return None
            grey = np.rint(np.clip(anomaly_map, 0.0, 1.0) * 255).astype(np.uint8)
            Image.fromarray(grey, "L").save(path, format="PNG")
            self.written += 1
        return f"{SANITY_DIR}/{MAPS_DIR}/{name}"


class CategoryRun:
    """Reads, scores and judges the samples of one (source, category)."""

    def __init__(
        self,
        key: tuple[str, str],
        lines: list[tuple[int, int]],
        samples: IO[bytes],
        images_root: Path,
        scorer: ZeroShotScorer,
        prompt_set: PromptSet,
        pixel_size: int,
        batch_size: int,
        progress: Progress,
    ) -> None:
        self.source, self.category = key
        self.lines = lines
        self.samples = samples
        self.images_root = images_root
        self.scorer = scorer
        self.prompt_set = prompt_set
        self.batch_size = batch_size
        self.progress = progress
        self.inputs = CategoryInputs(size=pixel_size)
        self.members: list[Member] = []
        self.problems: list[Flag] = []
        self.by_split: Counter[str] = Counter()

    def score_all(self) -> None:
        batch: list[Prepared] = []
        for prepared in self.prepared():
            batch.append(prepared)
            if len(batch) == self.batch_size:
                self.score_batch(batch)
                self.progress.advance(len(batch))
                batch = []
        if batch:
            self.score_batch(batch)
            self.progress.advance(len(batch))

    def prepared(self) -> Iterator[Prepared]:
        for offset, number in self.lines:
            self.samples.seek(offset)
            line = self.samples.readline()
            try:
                sample = Sample.model_validate_json(line)
            except ValidationError as error:
                problem = error.errors()[0]
                where = ".".join(str(part) for part in problem["loc"]) or "line"
                self.problem(None, UNREADABLE_SAMPLE, number, None,
                             f"{SAMPLES_FILE} line {number} is not a valid sample: "
                             f"{where}: {problem['msg']}")  # fmt: skip
                continue
            self.by_split[sample.split] += 1
            image = f"{sample.source}/{sample.image_paths[0]}"
            try:
                pixels = read_image(self.images_root, image)
            except PathEscapeError as error:
                self.problem(sample, UNREADABLE_IMAGE, number, image, f"not read: {error}")
                continue
            except (*PIL_DATA_ERRORS, Image.DecompressionBombError) as error:
                self.problem(sample, UNREADABLE_IMAGE, number, image,
                             f"{IMAGES_DIR}/{image} cannot be read: {error}")  # fmt: skip
                continue
            yield Prepared(sample, number, image, pixels, self.mask_of(sample, number, pixels))

    def mask_of(self, sample: Sample, number: int, pixels: np.ndarray) -> np.ndarray | None:
        annotation = sample.annotation
        if annotation is None or annotation.mask_rle is None:
            return None
        try:
            mask = rle_decode(annotation.mask_rle)
        except (ValueError, TypeError) as error:
            self.problem(sample, UNREADABLE_MASK, number, None,
                         f"the annotation's mask_rle does not decode: {error}")  # fmt: skip
            return None
        if mask.shape != pixels.shape[:2]:
            height, width = pixels.shape[:2]
            self.problem(sample, UNREADABLE_MASK, number, None,
                         f"the annotation's mask is {mask.shape[1]}×{mask.shape[0]} but "
                         f"images/{sample.source}/{sample.image_paths[0]} is "
                         f"{width}×{height}")  # fmt: skip
            return None
        return downsample_mask(mask, self.inputs.size)

    def score_batch(self, batch: list[Prepared]) -> None:
        try:
            [(scores, maps)] = score_at_size(
                self.scorer, [p.pixels for p in batch], [self.prompt_set], self.inputs.size
            )
        except (RuntimeError, ValueError) as error:
            if len(batch) > 1:  # find the image the backbone refuses; score the rest
                for prepared in batch:
                    self.score_batch([prepared])
                return
            prepared = batch[0]
            self.problem(prepared.sample, UNREADABLE_IMAGE, prepared.line, prepared.image,
                         f"the backbone cannot score {IMAGES_DIR}/{prepared.image}: "
                         f"{first_line(error)}")  # fmt: skip
            return
        for prepared, score, anomaly_map in zip(batch, scores, maps, strict=True):
            anomalous = prepared.sample.label == "anomaly"
            mask = prepared.mask if anomalous else None
            self.inputs.add(anomalous, float(score), anomaly_map, mask)
            contrast = mask_contrast(anomaly_map, mask) if mask is not None else None
            self.members.append(
                Member(prepared.sample, prepared.line, prepared.image, anomaly_map, contrast)
            )

    def problem(
        self, sample: Sample | None, code: str, line: int, image: str | None, message: str
    ) -> None:
        if code != UNREADABLE_MASK:  # the sample is not scored: count it done
            self.progress.advance(1)
        self.problems.append(Flag(
            sample_id=sample.id if sample else None, code=code, score=None, threshold=None,
            message=message, source=self.source, category=self.category,
            label=sample.label if sample else None, split=sample.split if sample else None,
            image=image, line=line,
        ))  # fmt: skip

    def finish(
        self,
        thresholds: SanityThresholds,
        maps: MapWriter,
        prompt_name: str,
        prompt_note: str | None,
    ) -> tuple[CategoryReport, list[Flag]]:
        metrics = self.inputs.metrics()
        labels = np.array(self.inputs.labels, dtype=bool)
        scores = np.array(self.inputs.scores)
        rule = label_rule(labels, scores, metrics.image_auroc, thresholds)
        mask_skipped = mask_rule_skipped(metrics.pixel_auroc, thresholds)
        flags = list(self.problems)
        for member, score in zip(self.members, scores, strict=True):
            flags += self.judge(member, float(score), rule, mask_skipped, thresholds, maps)
        counts = Counter(flag.code for flag in flags)
        report = self.report(metrics, rule, mask_skipped, prompt_name, prompt_note, counts)
        return report, flags

    def judge(
        self,
        member: Member,
        score: float,
        rule: LabelRule,
        mask_skipped: str | None,
        thresholds: SanityThresholds,
        maps: MapWriter,
    ) -> list[Flag]:
        k = thresholds.spread_multiple
        found: list[tuple[str, float, float, str]] = []
        label = member.sample.label
        if rule.normal_high is not None and label == "normal" and score > rule.normal_high:
            found.append((NORMAL_SCORES_HIGH, score, rule.normal_high,
                          normal_high_message(score, rule, k)))  # fmt: skip
        if rule.anomaly_low is not None and label == "anomaly" and score < rule.anomaly_low:
            found.append((ANOMALY_SCORES_LOW, score, rule.anomaly_low,
                          anomaly_low_message(score, rule, k)))  # fmt: skip
        contrast, floor = member.contrast, thresholds.min_mask_contrast
        if mask_skipped is None and contrast is not None and contrast < floor:
            found.append((MASK_MISSES_MAP, contrast, floor, mask_message(contrast, floor)))
        flags = []
        for code, value, threshold, message in found:
            sample = member.sample
            flags.append(Flag(
                sample_id=sample.id, code=code, score=value, threshold=threshold,
                message=message, source=sample.source, category=sample.category,
                label=sample.label, split=sample.split, image=member.image,
                map=maps.write(sample.id, member.anomaly_map), line=member.line,
            ))  # fmt: skip
        return flags

    def report(
        self,
        metrics: Metrics,
        rule: LabelRule,
        mask_skipped: str | None,
        prompt_name: str,
        prompt_note: str | None,
        counts: Counter[str],
    ) -> CategoryReport:
        labels = self.inputs.labels
        return CategoryReport(
            source=self.source,
            category=self.category,
            prompt_name=prompt_name,
            prompts=self.prompt_set.source,
            prompt_note=prompt_note,
            samples=len(self.lines),
            scored=self.inputs.count,
            normal=labels.count(False),
            anomaly=labels.count(True),
            with_mask=sum(1 for mask in self.inputs.masks if mask.any()),
            by_split=dict(sorted(self.by_split.items())),
            image_auroc=metrics.image_auroc,
            average_precision=metrics.average_precision,
            f1_max=metrics.f1_max,
            f1_threshold=metrics.f1_threshold,
            image_note=metrics.image_note,
            pixel_auroc=metrics.pixel_auroc,
            aupro=metrics.aupro,
            pixel_note=metrics.pixel_note,
            normal_scores=rule.normal.as_dict() if rule.normal else None,
            anomaly_scores=rule.anomalous.as_dict() if rule.anomalous else None,
            normal_scores_high_above=rule.normal_high,
            anomaly_scores_low_below=rule.anomaly_low,
            label_flags_skipped=rule.skipped,
            mask_flags_skipped=mask_skipped,
            flags={code: counts[code] for code in FLAG_CODES if counts[code]},
        )


def read_image(images_root: Path, image: str) -> np.ndarray:
    """H×W×3 uint8 pixels of DIR/images/`image`; PathEscapeError when it leads outside."""
    with Image.open(resolve_inside(images_root, image)) as opened:
        opened.load()
        return as_rgb_array(opened)
