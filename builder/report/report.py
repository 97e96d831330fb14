"""`write_report`: a static HTML page about a built folder, with its pictures beside it.

The page (DIR/report.html) needs no server and no network: CSS and a little JavaScript are
inline, charts are inline SVG, thumbnails are files in DIR/report_files/ referenced relatively,
and a Content-Security-Policy forbids every other load (and every script but the report's own,
by its hash), so a record's text can never fetch or run anything, even if escaping failed.

The folder is streamed once: instruction records and benchmark items first (their counts and
the gallery's seeded reservoirs), then samples (counts, mask areas, the defect heat map, and
the facts of the few samples the gallery shows), then the quarantine. Memory holds counts, a
32×32 heat map, the gallery's candidates and at most MAX_TABLE_ROWS table rows per table.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import shutil
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pycocotools.mask as mask_utils
from markupsafe import Markup

from adinstruct import __version__
from adinstruct.builder.images import shown_paths, split_renders
from adinstruct.builder.io import atomic_writer, replace_directory
from adinstruct.builder.report.charts import (
    AREA_BIN_COUNT,
    BarChart,
    Series,
    area_bin,
    area_histogram,
    bar_chart,
    grid_table,
    heat_map,
)
from adinstruct.builder.report.gallery import (
    BENCHMARK,
    INSTRUCT,
    GalleryItem,
    GallerySampler,
    SampleFacts,
    gallery_items,
    write_thumbnail,
)
from adinstruct.builder.report.sanity import SanityView, draw_sanity_thumbnails, read_sanity
from adinstruct.schemas import RLE
from adinstruct.schemas.records import GRID_WORDS
from adinstruct.validators.base import Finding, RawRecord
from adinstruct.validators.folder import (
    MANIFEST_FILE,
    QUARANTINE_FILE,
    SAMPLES_FILE,
    RecordsFile,
    find_records_files,
    iter_records,
)
from adinstruct.validators.runner import VALIDATION_FILE

REPORT_FILE = "report.html"
FILES_DIR = "report_files"
TEMPLATE = "report.html.j2"
SCRIPT_TEMPLATE = "report.js.j2"
#: Rows a table shows at most, so that a quarantine of a million entries stays a small page.
MAX_TABLE_ROWS = 1000
#: Reading problems listed at most (all are counted).
MAX_READING_PROBLEMS = 20
#: A table cell's text is cut past this (the files hold all of it).
MAX_CELL_CHARS = 600
HEAT_MAP_SIDE = 32

NORMAL = Series("normal", "normal", "normal")
ANOMALY = Series("anomaly", "anomalous", "anomaly")
UNLABELLED = Series("unknown", "unlabelled", "neutral")
LABEL_SERIES = (NORMAL, ANOMALY)

#: The order records are read in: the gallery's strata first, so that the samples pass knows
#: which samples' masks to keep.
READING_ORDER = (
    "instruction_record", "reasoning_item", "detection_item", "mmad_item", "sample",
    "quarantine_entry",
)  # fmt: skip


def write_report(folder: Path, *, gallery_size: int = 48, seed: int = 0) -> Path:
    """Write `folder`/report.html (and its thumbnails in `folder`/report_files/) and return its
    path. Deterministic for a folder and seed; a second run replaces report_files/ whole.

    Raises FolderError when `folder` holds none of the files a build writes.
    """
    root = Path(folder).resolve()
    files = find_records_files(root)
    sanity = read_sanity(root)
    collected = collect(root, files, gallery_size, seed, sanity.gallery_items())
    # Named by hand rather than by mkdtemp, whose 0700 mode would stay on report_files/.
    staging = root / f".{FILES_DIR}.{secrets.token_hex(6)}.tmp"
    staging.mkdir()
    try:
        draw_thumbnails(collected.gallery, root, staging)
        draw_sanity_thumbnails(sanity, root, staging, FILES_DIR)
        html = render(root, collected, sanity)
        replace_directory(staging, root / FILES_DIR)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    target = root / REPORT_FILE
    with atomic_writer(target) as handle:
        handle.write(html)
    return target


# --------------------------------------------------------------------------------------
# Streaming the folder
# --------------------------------------------------------------------------------------


@dataclass
class TableRows:
    """At most `cap` rows of a table, shared fairly between groups (stage and code, say), so a
    code with a million entries does not hide one with three; shown in file order."""

    cap: int
    groups: dict[tuple[str, ...], list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    counts: Counter[tuple[str, ...]] = field(default_factory=Counter)
    total: int = 0

    def add(self, group: tuple[str, ...], row: dict[str, str]) -> None:
        self.total += 1
        self.counts[group] += 1
        kept = self.groups.setdefault(group, [])
        if len(kept) < self.cap:
            kept.append((self.total, row))

    def rows(self) -> list[dict[str, str]]:
        # Water-filling: the smallest groups get all their rows, the others share what is left.
        remaining, chosen = self.cap, []
        ordered = sorted(self.groups.items(), key=lambda item: (len(item[1]), item[0]))
        for position, (_, kept) in enumerate(ordered):
            quota = min(len(kept), remaining // (len(ordered) - position))
            chosen += kept[:quota]
            remaining -= quota
        return [row for _, row in sorted(chosen, key=lambda entry: entry[0])]

    def options(self, position: int) -> list[tuple[str, int]]:
        """The values of one part of the group key, with how many rows (of all) hold each."""
        counted: Counter[str] = Counter()
        for group, count in self.counts.items():
            counted[group[position]] += count
        return sorted(counted.items())


@dataclass
class Collected:
    """Everything the page shows, gathered in one pass over the folder."""

    files: list[RecordsFile]
    records_per_file: Counter[str] = field(default_factory=Counter)
    samples: int = 0
    by_source: dict[str, Counter[str]] = field(default_factory=dict)
    by_category: dict[str, Counter[str]] = field(default_factory=dict)
    by_defect: dict[str, Counter[str]] = field(default_factory=dict)
    by_split: Counter[str] = field(default_factory=Counter)
    anomalous: int = 0
    area_bins: list[int] = field(default_factory=lambda: [0] * AREA_BIN_COUNT)
    anomalies_without_mask: int = 0
    coverage: np.ndarray = field(default_factory=lambda: np.zeros((HEAT_MAP_SIDE,) * 2))
    masks: int = 0
    unreadable_masks: int = 0
    grid_cells: Counter[str] = field(default_factory=Counter)
    families: dict[str, Counter[str]] = field(default_factory=dict)
    instruct_sources: dict[str, Counter[str]] = field(default_factory=dict)
    detection: Counter[str] = field(default_factory=Counter)
    reasoning_items: int = 0
    mmad_items: int = 0
    mmad_types: dict[str, Counter[str]] = field(default_factory=dict)
    quarantine: TableRows = field(default_factory=lambda: TableRows(MAX_TABLE_ROWS))
    reading_problems: list[Finding] = field(default_factory=list)
    reading_problem_count: int = 0
    gallery: list[GalleryItem] = field(default_factory=list)

    @property
    def instruct_records(self) -> int:
        return sum(sum(labels.values()) for labels in self.families.values())

    @property
    def detection_items(self) -> int:
        return sum(self.detection.values())

    def problem(self, finding: Finding) -> None:
        self.reading_problem_count += 1
        if len(self.reading_problems) < MAX_READING_PROBLEMS:
            self.reading_problems.append(finding)


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_text(value: Any, limit: int = MAX_CELL_CHARS) -> str:
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def label_of(anomaly: Any) -> str:
    return "anomaly" if anomaly is True else "normal" if anomaly is False else "unknown"


def collect(
    root: Path,
    files: list[RecordsFile],
    gallery_size: int,
    seed: int,
    also_wanted: Sequence[GalleryItem] = (),
) -> Collected:
    """One pass over the folder; `also_wanted` items (the sanity section's) get their sample
    facts filled in, as the gallery's do."""
    collected = Collected(files=files)
    sampler = GallerySampler(gallery_size, seed)
    ordered = sorted(
        (f for f in files if f.kind in READING_ORDER), key=lambda f: READING_ORDER.index(f.kind)
    )
    gallery: list[GalleryItem] | None = None
    wanted_ids: dict[str, list[GalleryItem]] = {}
    wanted_images: dict[str, list[GalleryItem]] = {}
    for raw in iter_records(root, ordered, collected.problem):
        collected.records_per_file[raw.file] += 1
        kind = raw.kind
        if kind == "instruction_record":
            add_instruction_record(collected, sampler, raw)
        elif kind == "reasoning_item":
            collected.reasoning_items += 1
            sampler.offer(BENCHMARK, "reasoning", raw)
        elif kind == "detection_item":
            collected.detection[label_of(as_dict(raw.data).get("anomaly"))] += 1
        elif kind == "mmad_item":
            add_mmad_item(collected, raw.data)
        elif kind == "sample":
            if gallery is None:  # the records are all read: the gallery is chosen
                gallery = gallery_items(sampler.chosen())
                wanted_ids, wanted_images = index_gallery([*gallery, *also_wanted])
            add_sample(collected, raw.data, wanted_ids, wanted_images)
        elif kind == "quarantine_entry":
            add_quarantine_entry(collected.quarantine, raw.data)
    collected.gallery = gallery if gallery is not None else gallery_items(sampler.chosen())
    return collected


def add_instruction_record(collected: Collected, sampler: GallerySampler, raw: RawRecord) -> None:
    model = raw.model()
    if model is not None:  # read from the model, which the reader validated already
        metadata = model.metadata  # type: ignore[attr-defined]
        family, label, source = metadata.task_family, label_of(metadata.anomaly), metadata.source
    else:  # a record the schema rejects is still counted, as far as it can be read
        metadata = as_dict(as_dict(raw.data).get("metadata"))
        family = as_text(metadata.get("task_family"), 80) or "unknown"
        label = label_of(metadata.get("anomaly"))
        source = as_text(metadata.get("source"), 80) or "unknown"
    collected.families.setdefault(family, Counter())[label] += 1
    collected.instruct_sources.setdefault(source, Counter())[label] += 1
    sampler.offer(INSTRUCT, f"{family}:{label}", raw)


def add_mmad_item(collected: Collected, data: Any) -> None:
    collected.mmad_items += 1
    for question in as_dict(data).get("conversation") or []:
        question = as_dict(question)
        kind = as_text(question.get("type"), 80) or "unknown"
        collected.mmad_types.setdefault(kind, Counter())["questions"] += 1


def index_gallery(
    gallery: list[GalleryItem],
) -> tuple[dict[str, list[GalleryItem]], dict[str, list[GalleryItem]]]:
    """Gallery items by the sample id (instruction records) or image (benchmark items) whose
    sample facts they need."""
    by_id: dict[str, list[GalleryItem]] = {}
    by_image: dict[str, list[GalleryItem]] = {}
    for item in gallery:
        if item.sample_id:
            by_id.setdefault(item.sample_id, []).append(item)
        elif item.image:
            by_image.setdefault(item.image, []).append(item)
    return by_id, by_image


def add_sample(
    collected: Collected,
    data: Any,
    wanted_ids: Mapping[str, list[GalleryItem]],
    wanted_images: Mapping[str, list[GalleryItem]],
) -> None:
    sample = as_dict(data)
    collected.samples += 1
    source = as_text(sample.get("source"), 80) or "unknown"
    category = as_text(sample.get("category"), 80) or "unknown"
    label = sample.get("label") if sample.get("label") in ("normal", "anomaly") else "unknown"
    collected.by_source.setdefault(source, Counter())[label] += 1
    collected.by_category.setdefault(f"{source}/{category}", Counter())[label] += 1
    collected.by_split[as_text(sample.get("split"), 40) or "unknown"] += 1
    annotation = as_dict(sample.get("annotation"))
    defect_types = tuple(as_text(name, 80) for name in sample.get("defect_types") or ())
    if label == "anomaly":
        collected.anomalous += 1
        for name in defect_types or ("(not named)",):
            collected.by_defect.setdefault(name, Counter())["anomaly"] += 1
        add_mask_facts(collected, annotation)
    image_paths = [path for path in sample.get("image_paths") or [] if isinstance(path, str)]
    render_paths = [path for path in sample.get("render_paths") or [] if isinstance(path, str)]
    # The first image its records show (a 3D sample's renders stand in for its cloud).
    shown = shown_paths(source, image_paths, render_paths, str(sample.get("modality", "rgb")))
    image = shown[0] if shown else ""
    items = [*wanted_ids.get(as_text(sample.get("id"), 10_000), ()),
             *wanted_images.get(image, ())]  # fmt: skip
    if items:
        facts = sample_facts(label, defect_types, annotation)
        measured = measured_view(source, render_paths, sample.get("view_count"),
                                 annotation.get("view"))  # fmt: skip
        for item in items:
            item.facts = facts
            if item.label == "unknown":
                item.label = label
            if measured is not None:
                item.image = measured  # the outline belongs on the view the mask is of


def measured_view(source: str, render_paths: list[str], view_count: Any, view: Any) -> str | None:
    """The rendered view a 3D sample's mask was measured on (Real3D-AD), or None.

    `view` counts the views only: the last `view_count` render paths (MVTec 3D-AD's depth
    image comes before them).
    """
    if not all(type(value) is int for value in (view, view_count)) or not render_paths:
        return None
    _, views = split_renders(render_paths, view_count)
    return f"{source}/{views[view]}" if 0 <= view < len(views) else None


def sample_facts(label: str, defect_types: tuple[str, ...], annotation: dict) -> SampleFacts:
    rle = as_dict(annotation.get("mask_rle"))
    try:
        mask_rle = RLE.model_validate(rle) if rle else None
    except ValueError:
        mask_rle = None
    area = annotation.get("area_fraction")
    regions = annotation.get("region_count")
    return SampleFacts(
        label=label,
        defect_types=defect_types,
        grid_cells=tuple(as_text(cell, 20) for cell in annotation.get("grid_cells") or ()),
        area_fraction=float(area) if isinstance(area, int | float) else 0.0,
        region_count=int(regions) if isinstance(regions, int) else 0,
        mask_rle=mask_rle,
    )


def add_mask_facts(collected: Collected, annotation: dict[str, Any]) -> None:
    area = annotation.get("area_fraction")
    rle = as_dict(annotation.get("mask_rle"))
    if not rle or not isinstance(area, int | float) or area <= 0:
        collected.anomalies_without_mask += 1
        return
    collected.area_bins[area_bin(float(area))] += 1
    for cell in annotation.get("grid_cells") or ():
        if cell in GRID_WORDS:
            collected.grid_cells[cell] += 1
    try:
        add_coverage(collected.coverage, rle)
    except (KeyError, TypeError, ValueError, AttributeError):
        collected.unreadable_masks += 1
        return
    collected.masks += 1


def add_coverage(coverage: np.ndarray, rle: dict[str, Any]) -> None:
    """Add the share of each heat-map cell that the mask covers; cells tile the image frame,
    whatever its size, so masks of every size add up in one map."""
    height, width = (int(side) for side in rle["size"])
    encoded = {"size": [height, width], "counts": rle["counts"].encode("ascii")}
    with warnings.catch_warnings():
        # pycocotools' Cython decoder predates numpy 2's copy keyword; harmless, but noisy.
        warnings.filterwarnings("ignore", message="__array__", category=DeprecationWarning)
        mask = mask_utils.decode(encoded)  # H×W uint8, column-major
        x, y, w, h = (int(v) for v in mask_utils.toBbox(encoded))
    if w == 0 or h == 0:
        return
    side = coverage.shape[0]
    row_band, row_pixels = edge_bands(height, side)
    column_band, column_pixels = edge_bands(width, side)
    # Only the mask's bounding box is summed: most defects cover a small part of the image.
    row_starts = band_starts(row_band[y : y + h])
    column_starts = band_starts(column_band[x : x + w])
    crop = mask[y : y + h, x : x + w]
    sums = np.add.reduceat(np.add.reduceat(crop, row_starts, axis=0, dtype=np.int64),
                           column_starts, axis=1)  # fmt: skip
    rows, columns = row_band[y + row_starts], column_band[x + column_starts]
    coverage[np.ix_(rows, columns)] += sums / np.outer(row_pixels[rows], column_pixels[columns])


@lru_cache(maxsize=64)
def edge_bands(length: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The band (of `side`) each pixel of a `length`-pixel edge falls into, floor(r * side /
    length), and how many pixels each band holds. A build has few image sizes: cached."""
    band = np.arange(length) * side // length
    return band, np.bincount(band, minlength=side)


def band_starts(bands: np.ndarray) -> np.ndarray:
    """Where each run of one band starts, for np.add.reduceat."""
    return np.concatenate(([0], np.flatnonzero(bands[1:] != bands[:-1]) + 1))


def add_quarantine_entry(table: TableRows, data: Any) -> None:
    entry = as_dict(data)
    stage = as_text(entry.get("stage"), 80) or "unknown"
    code = as_text(entry.get("code"), 80) or "unknown"
    table.add(
        (stage, code),
        {
            "stage": stage,
            "code": code,
            "source": as_text(entry.get("source"), 120),
            "where": as_text(
                entry.get("sample_id") or entry.get("path") or entry.get("record_key")
            ),
            "reason": as_text(entry.get("reason")),
        },
    )


# --------------------------------------------------------------------------------------
# Thumbnails, and swapping report_files/ in whole
# --------------------------------------------------------------------------------------


def draw_thumbnails(gallery: list[GalleryItem], root: Path, staging: Path) -> None:
    for index, item in enumerate(gallery):
        name = f"gallery-{index:03d}.jpg"
        write_thumbnail(item, root, staging / name)
        if item.thumbnail_width:
            item.thumbnail = f"{FILES_DIR}/{name}"


# --------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------

_HERE = Path(__file__).parent
ENVIRONMENT = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_HERE),
    autoescape=True,  # every record's text is escaped; nothing in a record is markup
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def read_document(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """A JSON object file: (its value, None), (None, why not), or (None, None) when absent."""
    if not path.is_file():
        return None, None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return None, f"{path.name} cannot be read: {error}"
    if not isinstance(value, dict):
        return None, f"{path.name} does not hold a JSON object"
    return value, None


@dataclass(frozen=True)
class Part:
    """One part of a built folder, and whether this folder has it."""

    name: str
    present: bool
    detail: str


def folder_parts(root: Path, collected: Collected, manifest: Any, validation: Any) -> list[Part]:
    counts = collected.records_per_file
    listed = {f.path for f in collected.files}

    def records(path: str, noun: str) -> str:
        return f"{counts[path]:,} {noun}" if counts[path] else "empty"

    instruct = sorted(path for path in listed if path.startswith("instruct/"))
    benchmark = sorted(path for path in listed if path.startswith("benchmark/"))
    return [
        Part(MANIFEST_FILE, manifest is not None, "" if manifest is not None else "absent"),
        Part(SAMPLES_FILE, SAMPLES_FILE in listed,
             records(SAMPLES_FILE, "samples") if SAMPLES_FILE in listed else "absent"),
        Part(QUARANTINE_FILE, QUARANTINE_FILE in listed and counts[QUARANTINE_FILE] > 0,
             records(QUARANTINE_FILE, "entries") if QUARANTINE_FILE in listed else "absent"),
        Part("instruct/", bool(instruct),
             ", ".join(f"{Path(p).name}: {counts[p]:,}" for p in instruct) or "absent"),
        Part("benchmark/", bool(benchmark),
             ", ".join(f"{Path(p).name}: {counts[p]:,}" for p in benchmark) or "absent"),
        Part(VALIDATION_FILE, validation is not None, "" if validation is not None else "absent"),
        Part("images/", (root / "images").is_dir(), "" if (root / "images").is_dir() else "absent"),
        Part("masks/", (root / "masks").is_dir(), "" if (root / "masks").is_dir() else "absent"),
        Part("sanity/", (root / "sanity").is_dir(), "" if (root / "sanity").is_dir() else "absent"),
    ]  # fmt: skip


def source_rows(manifest: dict[str, Any] | None, collected: Collected) -> list[dict[str, Any]]:
    """The manifest's sources with their licences; sources only the samples name come after."""
    rows = []
    named = set()
    for source in (manifest or {}).get("sources") or []:
        source = as_dict(source)
        name = as_text(source.get("name"), 120)
        named.add(name)
        counts = as_dict(source.get("counts"))
        by_label = as_dict(counts.get("by_label"))
        rows.append({
            "name": name,
            "license": as_text(source.get("license"), 120) or "not stated",
            "layout": as_text(source.get("layout"), 120),
            "total": counts.get("total", 0),
            "anomaly": by_label.get("anomaly", 0),
            "normal": by_label.get("normal", 0),
            "categories": len(as_dict(counts.get("by_category"))),
            "quarantined": counts.get("quarantined", 0),
        })  # fmt: skip
    for name, labels in sorted(collected.by_source.items()):
        if name not in named:
            rows.append({
                "name": name, "license": "not in the manifest", "layout": "",
                "total": sum(labels.values()), "anomaly": labels["anomaly"],
                "normal": labels["normal"], "categories": "", "quarantined": "",
            })  # fmt: skip
    return rows


def validation_view(validation: dict[str, Any] | None, manifest: dict[str, Any] | None) -> dict:
    """Totals, validators, codes and finding rows, from validation.json (or the manifest's
    summary when only that is there)."""
    summary = validation or as_dict((manifest or {}).get("validation")) or None
    if summary is None:
        return {"present": False}
    findings = TableRows(MAX_TABLE_ROWS)
    for finding in (validation or {}).get("findings") or []:
        finding = as_dict(finding)
        validator = as_text(finding.get("validator"), 80) or "unknown"
        severity = as_text(finding.get("severity"), 20) or "unknown"
        findings.add((validator, severity), {
            "validator": validator,
            "severity": severity,
            "code": as_text(finding.get("code"), 80),
            "file": as_text(finding.get("file"), 200),
            "record": as_text(finding.get("record_id"), 200),
            "message": as_text(finding.get("message")),
        })  # fmt: skip
    if validation is not None:
        validators = [as_dict(v) for v in validation.get("validators") or []]
        codes = [as_dict(c) for c in validation.get("counts") or []]
    else:  # the manifest keeps per validator totals and per code counts, without severities
        validators = [{"name": name, **as_dict(counts)}
                      for name, counts in as_dict(summary.get("validators")).items()]  # fmt: skip
        codes = [{"validator": name, "code": code, "severity": "", "count": count, "kept": 0}
                 for name, by_code in as_dict(summary.get("codes")).items()
                 for code, count in as_dict(by_code).items()]  # fmt: skip
    return {
        "present": True,
        "from_manifest": validation is None,
        "errors": summary.get("error_count", 0),
        "warnings": summary.get("warning_count", 0),
        "records": summary.get("records", 0),
        "validators": validators,
        "codes": sorted(codes, key=lambda c: (-int(c.get("count") or 0), str(c.get("code")))),
        "findings": findings,
        "cap": (validation or {}).get("max_findings_per_code"),
    }


def charts(collected: Collected) -> dict[str, BarChart | None]:
    def chart(title: str, counts: Mapping[str, Mapping[str, int]], axis: str,
              series: tuple[Series, ...] = LABEL_SERIES) -> BarChart | None:  # fmt: skip
        if not counts:
            return None
        if series == LABEL_SERIES and any(parts.get("unknown") for parts in counts.values()):
            series = (*LABEL_SERIES, UNLABELLED)  # records a hand-edit left without a label
        return bar_chart(title, counts, series, axis_label=axis)

    return {
        "sources": chart("Samples per source", collected.by_source, "samples"),
        "categories": chart("Samples per category", collected.by_category, "samples"),
        "defects": chart("Anomalous samples per defect type", collected.by_defect,
                         "anomalous samples", (ANOMALY,)),
        "families": chart("Instruction records per task family", collected.families, "records"),
        "instruct_sources": chart("Instruction records per source", collected.instruct_sources,
                                  "records"),
        "mmad": chart("MMAD questions per type", collected.mmad_types, "questions",
                      (Series("questions", "questions", "neutral"),)),
    }  # fmt: skip


def inline_script() -> tuple[Markup, str]:
    """The page's script and the CSP source that allows exactly it (its sha256)."""
    script = ENVIRONMENT.get_template(SCRIPT_TEMPLATE).render()
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    # Markup: the file is the toolkit's own JavaScript, never record text.
    return Markup(script), f"'sha256-{digest}'"


def render(root: Path, collected: Collected, sanity: SanityView | None = None) -> str:
    manifest, manifest_problem = read_document(root / MANIFEST_FILE)
    validation, validation_problem = read_document(root / VALIDATION_FILE)
    script, script_source = inline_script()
    mask_count = collected.masks
    llm = as_dict((manifest or {}).get("llm_usage"))
    return ENVIRONMENT.get_template(TEMPLATE).render(
        folder_name=root.name,
        report_version=__version__,
        build_version=as_text((manifest or {}).get("toolkit_version"), 40) or None,
        command=" ".join(as_text(part, 200) for part in (manifest or {}).get("command") or []),
        seed=as_dict((manifest or {}).get("config")).get("seed"),
        problems=[p for p in (manifest_problem, validation_problem) if p],
        parts=folder_parts(root, collected, manifest, validation),
        sources=source_rows(manifest, collected),
        stages=as_dict((manifest or {}).get("stages")),
        llm=llm if llm.get("requests") else None,
        c=collected,
        charts=charts(collected),
        histogram=area_histogram(collected.area_bins, "Mask area of anomalous samples")
        if sum(collected.area_bins)
        else None,
        heat=heat_map(collected.coverage, mask_count) if mask_count else None,
        grid=grid_table(collected.grid_cells, GRID_WORDS, sum(collected.area_bins)),
        gallery=collected.gallery,
        gallery_families=sorted({item.family for item in collected.gallery}),
        quarantine=collected.quarantine,
        quarantine_file=QUARANTINE_FILE in {f.path for f in collected.files},
        quarantine_rows=collected.quarantine.rows(),
        validation=validation_view(validation, manifest),
        sanity=sanity or SanityView(present=False),
        max_rows=MAX_TABLE_ROWS,
        script=script,
        script_source=script_source,
    )
