"""The report's gallery: a seeded sample of records across task families and labels, each drawn
as a thumbnail with its mask outlined, next to its conversation.

Records are offered one at a time while the folder is streamed; each stratum (task family and
label of instruction records, and the reasoning benchmark) keeps a reservoir of at most the
gallery's size, so memory does not grow with the folder. The gallery then takes from the
strata in turn, so that a rare family is shown as often as a common one.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adinstruct.builder.annotate.geometry import as_binary, rle_decode
from adinstruct.builder.describe.overlay import OUTLINE_COLOURS, as_rgb_array, outline_ring
from adinstruct.builder.errors import PathEscapeError
from adinstruct.builder.paths import resolve_inside
from adinstruct.schemas import RLE
from adinstruct.validators.base import RawRecord

THUMBNAIL_SIDE = 320
THUMBNAIL_QUALITY = 85
#: The outline on a thumbnail, in thumbnail pixels: thick enough to see at a glance.
THUMBNAIL_OUTLINE = 3
#: A conversation longer than this is cut in the page (the file holds all of it).
MAX_TURNS = 12
MAX_TURN_CHARS = 1500
IMAGE_TOKEN = "<image>"

INSTRUCT = "instruct"
BENCHMARK = "benchmark"
#: Strata kept apart at most; past them (a hand-edited file with a family per record, say)
#: records share one "other" stratum, so that memory stays bounded by the gallery's size.
MAX_STRATA = 64


@dataclass
class Reservoir:
    """Algorithm R: a uniform sample of at most `capacity` of the items offered."""

    capacity: int
    rng: random.Random
    seen: int = 0
    items: list[Any] = field(default_factory=list)

    def offer(self, make_item: Callable[[], Any]) -> None:
        """`make_item` is called only for an item that is kept (parsing it costs)."""
        self.seen += 1
        if len(self.items) < self.capacity:
            self.items.append(make_item())
            return
        slot = self.rng.randrange(self.seen)
        if slot < self.capacity:
            self.items[slot] = make_item()


@dataclass(frozen=True)
class Candidate:
    kind: str  # INSTRUCT or BENCHMARK
    file: str  # relative to the folder
    data: Any  # the record's JSON value


class GallerySampler:
    """Seeded stratified reservoirs; `chosen()` interleaves them into the gallery's order."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = max(size, 0)
        self.seed = seed
        self.strata: dict[tuple[int, str], Reservoir] = {}

    def offer(self, kind: str, stratum: str, raw: RawRecord) -> None:
        """Offer one record of a stratum; its JSON is parsed only if a reservoir keeps it."""
        if not self.size:
            return
        # Benchmark strata sort after the instruction strata (key 1 after 0).
        key = (0 if kind == INSTRUCT else 1, stratum)
        if key not in self.strata and len(self.strata) >= MAX_STRATA:
            key = (key[0], "other")
        reservoir = self.strata.get(key)
        if reservoir is None:
            # One generator per stratum, seeded by its name: what one stratum draws does not
            # depend on how many records the others hold.
            rng = random.Random(f"{self.seed}:{kind}:{stratum}")
            reservoir = self.strata[key] = Reservoir(self.size, rng)
        reservoir.offer(lambda: Candidate(kind, raw.file, raw.data))

    def chosen(self) -> list[Candidate]:
        queues = []
        for key in sorted(self.strata):
            reservoir = self.strata[key]
            items = list(reservoir.items)
            reservoir.rng.shuffle(items)  # a reservoir keeps file order until it is full
            queues.append(items)
        picked: list[Candidate] = []
        while len(picked) < self.size and any(queues):
            for queue in queues:
                if queue and len(picked) < self.size:
                    picked.append(queue.pop(0))
        return picked


@dataclass(frozen=True)
class SampleFacts:
    """What the gallery shows of a record's sample (and the mask it outlines)."""

    label: str
    defect_types: tuple[str, ...]
    grid_cells: tuple[str, ...]
    area_fraction: float
    region_count: int
    mask_rle: RLE | None


@dataclass(frozen=True)
class TurnPart:
    text: str
    image_token: bool  # the <image> placeholder, drawn as a chip


@dataclass(frozen=True)
class Turn:
    speaker: str
    parts: tuple[TurnPart, ...]


@dataclass
class GalleryItem:
    kind: str
    family: str
    label: str  # anomaly, normal, or unknown (a benchmark item whose sample is not listed)
    record_id: str
    file: str
    source: str
    category: str
    image: str | None  # relative to DIR/images: the first view
    views: int
    mask: str | None  # relative to DIR
    sample_id: str | None
    turns: list[Turn]
    cut_turns: int = 0
    facts: SampleFacts | None = None
    thumbnail: str | None = None  # relative to report.html
    thumbnail_width: int = 0
    thumbnail_height: int = 0
    problem: str | None = None  # why there is no thumbnail
    outline: str | None = None  # where the outline came from: "annotation" or "mask file"

    @property
    def defect_types(self) -> tuple[str, ...]:
        return self.facts.defect_types if self.facts else ()


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def split_turn(speaker: str, value: str) -> Turn:
    if len(value) > MAX_TURN_CHARS:
        value = f"{value[:MAX_TURN_CHARS]}… ({len(value) - MAX_TURN_CHARS:,} more characters)"
    pieces = value.split(IMAGE_TOKEN)
    parts: list[TurnPart] = []
    for index, piece in enumerate(pieces):
        if index:
            parts.append(TurnPart(IMAGE_TOKEN, image_token=True))
        if piece:
            parts.append(TurnPart(piece.removeprefix("\n") if index else piece, False))
    return Turn(speaker, tuple(parts))


def first_image(value: Any) -> tuple[str | None, int]:
    """The first view of a record's `image` (a path or a list of paths), and how many views."""
    if isinstance(value, str):
        return value, 1
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0], len(value)
    return None, 0


def instruct_item(candidate: Candidate) -> GalleryItem:
    data = candidate.data if isinstance(candidate.data, dict) else {}
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    image, views = first_image(data.get("image"))
    turns = [
        split_turn(text_of(turn.get("from")), text_of(turn.get("value")))
        for turn in data.get("conversations") or []
        if isinstance(turn, dict)
    ]
    anomaly = metadata.get("anomaly")
    return GalleryItem(
        kind=INSTRUCT,
        family=text_of(metadata.get("task_family")) or "unknown",
        label="anomaly" if anomaly is True else "normal" if anomaly is False else "unknown",
        record_id=text_of(data.get("id")),
        file=candidate.file,
        source=text_of(metadata.get("source")),
        category=text_of(metadata.get("category")),
        image=image,
        views=views,
        mask=metadata.get("mask") if isinstance(metadata.get("mask"), str) else None,
        sample_id=text_of(metadata.get("sample_id")) or None,
        turns=turns[:MAX_TURNS],
        cut_turns=max(0, len(turns) - MAX_TURNS),
    )


def benchmark_item(candidate: Candidate) -> GalleryItem:
    """A reasoning item (visa_dr.json): its questions with their reference answers."""
    data = candidate.data if isinstance(candidate.data, dict) else {}
    image, views = first_image(data.get("image"))
    questions = [text_of(q) for q in data.get("questions") or []]
    answers = [text_of(a) for a in data.get("answers") or []]
    turns = []
    for index, question in enumerate(questions):
        turns.append(split_turn("human", question))
        answer = answers[index] if index < len(answers) else "(no reference answer)"
        turns.append(split_turn("gpt", answer))
    parts = (image or "").split("/")
    return GalleryItem(
        kind=BENCHMARK,
        family="reasoning benchmark",
        label="unknown",  # the sample's label, once the samples are read
        record_id=image or "",
        file=candidate.file,
        source=parts[0] if len(parts) > 1 else "",
        category=parts[1] if len(parts) > 2 else "",
        image=image,
        views=views,
        mask=None,
        sample_id=None,
        turns=turns[:MAX_TURNS],
        cut_turns=max(0, len(turns) - MAX_TURNS),
    )


def gallery_items(candidates: list[Candidate]) -> list[GalleryItem]:
    return [
        instruct_item(candidate) if candidate.kind == INSTRUCT else benchmark_item(candidate)
        for candidate in candidates
    ]


# --------------------------------------------------------------------------------------
# Thumbnails
# --------------------------------------------------------------------------------------


def load_thumbnail(path: Path) -> Image.Image:
    """The image at `path`, decoded at about the thumbnail's size (JPEG decodes reduced)."""
    with Image.open(path) as image:
        image.draft("RGB", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        pixels = Image.fromarray(as_rgb_array(image))
    pixels.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.LANCZOS)
    return pixels


def mask_at(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask scaled to `size` (width, height); a cell with any defect pixel is set, so
    that a speck smaller than a thumbnail pixel is still outlined."""
    scaled = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)
    return np.asarray(scaled) > 0


def read_mask_file(path: Path) -> np.ndarray:
    with Image.open(path) as mask:
        # Colour masks are read by brightness; single-band masks (L, P, I;16) by their values.
        values = np.asarray(mask.convert("L") if len(mask.getbands()) > 1 else mask)
    return as_binary(values)


def contrasting_colour(covered: np.ndarray) -> tuple[int, int, int]:
    """The outline colour (as the describer's overlay picks from) farthest from what it covers."""
    if covered.size == 0:
        return OUTLINE_COLOURS[0][1]
    mean = covered.reshape(-1, 3).astype(np.float64).mean(axis=0)
    distances = [float(np.linalg.norm(mean - colour)) for _, colour in OUTLINE_COLOURS]
    return OUTLINE_COLOURS[distances.index(max(distances))][1]


def write_thumbnail(item: GalleryItem, root: Path, target: Path) -> None:
    """Draw `item`'s image with its mask outlined into `target` (a JPEG), or say why not in
    `item.problem`. `root` is the resolved folder; nothing outside it is opened."""
    if item.image is None:
        item.problem = "the record names no image"
        return
    try:
        images_root = resolve_inside(root, "images")
        thumbnail = load_thumbnail(resolve_inside(images_root, item.image))
    except PathEscapeError as error:
        item.problem = f"not shown: {error}"
        return
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        item.problem = f"images/{item.image} cannot be shown: {error}"
        return
    mask = None
    try:
        if item.facts is not None and item.facts.mask_rle is not None:
            mask, item.outline = rle_decode(item.facts.mask_rle), "annotation"
        elif item.mask is not None:
            mask, item.outline = read_mask_file(resolve_inside(root, item.mask)), "mask file"
    except (PathEscapeError, OSError, ValueError) as error:
        item.problem = f"mask not outlined: {error}"
        mask, item.outline = None, None
    pixels = np.array(thumbnail)
    if mask is not None and mask.any():
        ring = outline_ring(mask_at(mask, thumbnail.size), THUMBNAIL_OUTLINE)
        pixels[ring] = contrasting_colour(pixels[ring])
    # Fixed options and no metadata: the same pixels always give the same bytes.
    Image.fromarray(pixels).save(
        target, format="JPEG", quality=THUMBNAIL_QUALITY, subsampling=0, optimize=False
    )
    item.thumbnail_width, item.thumbnail_height = thumbnail.size
