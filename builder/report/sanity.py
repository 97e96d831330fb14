"""The report's "Detector sanity" section, from DIR/sanity/ (`build-dataset sanity`): the
per-category metrics, the flag counts per code, and the flagged samples, each drawn with its
mask outlined and again under the detector's anomaly map.

flags.jsonl is streamed: the first MAX_SHOWN flags of each code are kept, and the section
shows MAX_SHOWN of them, shared fairly between codes; the counts cover every line. The
samples pass of the report fills in each shown sample's mask (its annotation's RLE), as it
does for the gallery. Nothing outside DIR is opened.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adinstruct.builder.errors import PathEscapeError
from adinstruct.builder.paths import resolve_inside
from adinstruct.builder.report.charts import RAMP
from adinstruct.builder.report.gallery import (
    THUMBNAIL_QUALITY,
    THUMBNAIL_SIDE,
    GalleryItem,
    load_thumbnail,
    write_thumbnail,
)

SANITY_DIR = "sanity"
METRICS_FILE = "metrics.json"
FLAGS_FILE = "flags.jsonl"
#: Flagged samples drawn at most.
MAX_SHOWN = 48
#: How much of the map colour covers the image in the overlay.
MAP_OPACITY = 0.6
CODE_MEANINGS = {
    "normal_scores_high": "labelled normal, scores like an anomaly",
    "anomaly_scores_low": "labelled anomalous, scores like a normal image",
    "mask_misses_map": "the map is no higher on the mask than off it",
    "unreadable_image": "the image could not be read or scored",
    "unreadable_mask": "the annotation's mask does not decode or fit",
    "unreadable_sample": "a samples.jsonl line is no valid sample",
}


@dataclass
class FlagItem:
    code: str
    message: str
    score: float | None
    threshold: float | None
    item: GalleryItem  # the thumbnail with the mask outlined, and the sample's facts
    map: str | None  # the map's PNG, relative to DIR
    map_thumbnail: str | None = None
    map_problem: str | None = None


@dataclass
class SanityView:
    present: bool
    problem: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    categories: list[dict[str, Any]] = field(default_factory=list)
    mean: dict[str, Any] = field(default_factory=dict)
    counts: list[tuple[str, int, str]] = field(default_factory=list)  # code, count, meaning
    total: int = 0
    unreadable_lines: int = 0
    items: list[FlagItem] = field(default_factory=list)

    def gallery_items(self) -> list[GalleryItem]:
        return [flag.item for flag in self.items]

    def codes(self) -> list[tuple[str, int]]:
        return [(code, count) for code, count, _ in self.counts]


def as_number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def as_count(value: Any) -> int:
    number = as_number(value)
    return int(number) if number is not None and number >= 0 else 0


def as_text(value: Any, limit: int = 600) -> str:
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return text if len(text) <= limit else f"{text[:limit]}…"


def read_sanity(root: Path) -> SanityView:
    """What DIR/sanity/ holds; `present` is False when there is no metrics.json."""
    path = root / SANITY_DIR / METRICS_FILE
    if not path.is_file():
        return SanityView(present=False)
    name = f"{SANITY_DIR}/{METRICS_FILE}"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return SanityView(present=False, problem=f"{name} cannot be read: {error}")
    if not isinstance(metrics, dict):
        return SanityView(present=False, problem=f"{name} does not hold a JSON object")
    view = SanityView(present=True, metrics=header(metrics))
    rows = metrics.get("categories") if isinstance(metrics.get("categories"), list) else []
    view.categories = [category_row(row) for row in rows if isinstance(row, dict)]
    mean = metrics.get("mean") if isinstance(metrics.get("mean"), dict) else {}
    view.mean = {key: as_number(mean.get(key)) for key in METRIC_KEYS}
    read_flags(root / SANITY_DIR / FLAGS_FILE, view)
    return view


METRIC_KEYS = ("image_auroc", "average_precision", "f1_max", "pixel_auroc", "aupro")


def header(metrics: dict[str, Any]) -> dict[str, Any]:
    """The run's facts the section states, each present whatever a hand edit left out."""
    notes = metrics.get("notes") if isinstance(metrics.get("notes"), list) else []
    return {
        "backbone": as_text(metrics.get("backbone"), 300) or "unknown",
        "device": as_text(metrics.get("device"), 40) or "an unknown device",
        "prompts": as_text(metrics.get("prompts"), 40) or "unknown",
        "prompt_model": as_text(metrics.get("prompt_model"), 120) or None,
        "samples": as_count(metrics.get("samples")),
        "scored": as_count(metrics.get("scored")),
        "pixel_note": as_text(metrics.get("pixel_note")) or "pixel metrics on a fixed grid",
        "notes": [as_text(note) for note in notes],
    }


def category_row(row: dict[str, Any]) -> dict[str, Any]:
    flags = row.get("flags") if isinstance(row.get("flags"), dict) else {}
    return {
        "source": as_text(row.get("source"), 120),
        "category": as_text(row.get("category"), 120),
        "normal": as_count(row.get("normal")),
        "anomaly": as_count(row.get("anomaly")),
        **{key: as_number(row.get(key)) for key in METRIC_KEYS},
        "flags": sum(as_count(count) for count in flags.values()),
        "label_flags_skipped": as_text(row.get("label_flags_skipped")) or None,
        "mask_flags_skipped": as_text(row.get("mask_flags_skipped")) or None,
    }


def read_flags(path: Path, view: SanityView) -> None:
    counts: Counter[str] = Counter()
    kept: dict[str, list[dict[str, Any]]] = {}
    if path.is_file():
        with path.open(encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    flag = json.loads(line)
                except ValueError:
                    view.unreadable_lines += 1
                    continue
                if not isinstance(flag, dict):
                    view.unreadable_lines += 1
                    continue
                code = as_text(flag.get("code"), 80) or "unknown"
                counts[code] += 1
                group = kept.setdefault(code, [])
                if len(group) < MAX_SHOWN:
                    group.append(flag)
    view.total = sum(counts.values())
    order = {code: position for position, code in enumerate(CODE_MEANINGS)}
    ranked = sorted(counts.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))
    view.counts = [(code, count, CODE_MEANINGS.get(code, "")) for code, count in ranked]
    view.items = [flag_item(flag) for flag in fair_share(kept, MAX_SHOWN)]


def fair_share(groups: dict[str, list[dict[str, Any]]], cap: int) -> list[dict[str, Any]]:
    """At most `cap` entries: the smallest groups whole, the others sharing what is left."""
    remaining, chosen = cap, []
    ordered = sorted(groups.items(), key=lambda item: (len(item[1]), item[0]))
    for position, (_, entries) in enumerate(ordered):
        quota = min(len(entries), remaining // (len(ordered) - position))
        chosen.append(entries[:quota])
        remaining -= quota
    by_code = dict(zip([code for code, _ in ordered], chosen, strict=True))
    return [flag for code in groups for flag in by_code[code]]


def flag_item(flag: dict[str, Any]) -> FlagItem:
    code = as_text(flag.get("code"), 80) or "unknown"
    label = flag.get("label") if flag.get("label") in ("normal", "anomaly") else "unknown"
    sample_id = as_text(flag.get("sample_id"), 10_000) or None
    line = flag.get("line")
    image = flag.get("image") if isinstance(flag.get("image"), str) else None
    item = GalleryItem(
        kind="sanity",
        family=code,
        label=label,
        record_id=sample_id or (f"samples.jsonl line {line}" if line else "(no sample id)"),
        file=f"{SANITY_DIR}/{FLAGS_FILE}",
        source=as_text(flag.get("source"), 120),
        category=as_text(flag.get("category"), 120),
        image=image,
        views=1,
        mask=None,
        sample_id=sample_id,
        turns=[],
    )
    return FlagItem(
        code=code,
        message=as_text(flag.get("message")),
        score=as_number(flag.get("score")),
        threshold=as_number(flag.get("threshold")),
        item=item,
        map=flag.get("map") if isinstance(flag.get("map"), str) else None,
    )


# --------------------------------------------------------------------------------------
# Thumbnails
# --------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def ramp_table() -> np.ndarray:
    """(256, 3) uint8: RAMP sampled at 256 levels."""
    levels = np.linspace(0.0, 1.0, 256)
    stops = np.array([stop for stop, _ in RAMP])
    colours = np.array([colour for _, colour in RAMP], dtype=np.float64)
    table = np.stack([np.interp(levels, stops, colours[:, c]) for c in range(3)], axis=1)
    return np.rint(table).astype(np.uint8)


def draw_sanity_thumbnails(view: SanityView, root: Path, staging: Path, files_dir: str) -> None:
    """Each shown flag's image (mask outlined) and its map over the image, into `staging`."""
    for index, flag in enumerate(view.items):
        name = f"sanity-{index:03d}.jpg"
        write_thumbnail(flag.item, root, staging / name)
        if flag.item.thumbnail_width:
            flag.item.thumbnail = f"{files_dir}/{name}"
        if flag.map is None:
            continue
        map_name = f"sanity-map-{index:03d}.jpg"
        try:
            draw_map(flag, root, staging / map_name)
        except PathEscapeError as error:
            flag.map_problem = f"map not shown: {error}"
            continue
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            flag.map_problem = f"{flag.map} cannot be shown: {error}"
            continue
        flag.map_thumbnail = f"{files_dir}/{map_name}"


def draw_map(flag: FlagItem, root: Path, target: Path) -> None:
    """The map stretched to its own range on RAMP, laid over the image's thumbnail."""
    assert flag.map is not None
    with Image.open(resolve_inside(root, flag.map)) as opened:
        values = np.asarray(opened.convert("L"), dtype=np.float64)
    item = flag.item
    size = (item.thumbnail_width, item.thumbnail_height) if item.thumbnail_width else None
    low, high = float(values.min()), float(values.max())
    stretched = (values - low) / (high - low) if high > low else np.zeros_like(values)
    coloured = Image.fromarray(ramp_table()[np.rint(stretched * 255).astype(np.uint8)])
    coloured = coloured.resize(size or (THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
    pixels = np.asarray(coloured, dtype=np.float64)
    if size is not None and item.image is not None:
        base = load_thumbnail(resolve_inside(resolve_inside(root, "images"), item.image))
        pixels = MAP_OPACITY * pixels + (1 - MAP_OPACITY) * np.asarray(base, dtype=np.float64)
    Image.fromarray(np.rint(pixels).astype(np.uint8)).save(
        target, format="JPEG", quality=THUMBNAIL_QUALITY, subsampling=0, optimize=False
    )
