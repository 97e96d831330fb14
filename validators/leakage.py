"""Leakage: benchmark images in the training set, and test images in the train split, found
from the image files in the folder (exact bytes and near duplicates), never from stored hashes.

Near duplicates are found in two steps. The 64-bit pHash of `builder/annotate/hashing.py` picks
candidates within `PHASH_RADIUS` bits, through a multi-index over four 16-bit bands (two hashes
within 11 bits agree to within 2 bits on at least one band: 4 bands x 3 bits > 11), so that no
pair of a 100k-image folder is compared unless it shares a band. A 16x16 grey thumbnail then
confirms the candidate: the mean absolute difference of the two thumbnails, once their mean
brightness is aligned, must stay within `THUMBNAIL_TOLERANCE` grey levels.

Why two steps, measured on the demo folder's 60 PNG renders (`build-dataset demo`, 256x256),
each re-encoded as JPEG and fingerprinted the way this module (and the annotate stage) does:

- re-encoding moves the pHash by 0-8 bits at quality 90 (mean 1.4; 58 of 60 within 6 bits)
  and by 0-16 bits at quality 75 (mean 2.0; 54 within 6, 58 within 10): these renders are low
  in contrast, so many DCT terms sit near the median that sets the bits, and a little JPEG
  noise flips them (the fabric texture is the worst);
- yet distinct renders of one product lie as close as 2 bits: 7 of the demo's 1,770 pairs are
  within 6 bits (4 of them train/test), 30 within 10. No pHash threshold alone keeps the
  re-encodes and drops the distinct renders, and the MVTec releases photograph each product
  the same way, so real folders hold such pairs too;
- the thumbnail tells them apart: a re-encode differs from its PNG by at most 0.34 grey levels
  at quality 90 and 0.05 at 75 (0.51 at 50), while the closest distinct renders differ by
  2.3 levels (3.3 among the pHash candidates).

So the pHash radius is wide, 10 bits (all 60 quality-90 re-encodes, 58 of the quality-75 ones;
4 bands of 16 bits find all within 11 bits at the same cost), and the thumbnail decides, at
1.2 grey levels: over twice the worst re-encode, half the closest distinct pair. On the demo
folder 15 train/test pairs are pHash candidates and the thumbnail confirms none of them.
`tests/test_leakage.py` keeps these measurements true.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from adinstruct.builder.annotate.decode import PIL_DATA_ERRORS
from adinstruct.builder.annotate.hashing import HIGH_BIT_DEPTH_MODES, PHASH_SIDE, phash, sha256_hex
from adinstruct.builder.errors import PathEscapeError
from adinstruct.builder.paths import resolve_inside
from adinstruct.validators.base import Batch, Finding, FolderContext, Validator

IMAGES_DIR = "images"
BENCHMARK_DIR = "benchmark"
SAMPLES_FILE = "samples.jsonl"
#: The benchmark files Anomaly-OV's scripts read, and how each names its images.
BENCHMARK_FILES = ("test_data.json", "visa_dr.json", "mmad.json")

PHASH_RADIUS = 10
THUMBNAIL_SIDE = 16
THUMBNAIL_TOLERANCE = 1.2
BANDS = 4
BAND_BITS = 16


# -- what the benchmark holds -------------------------------------------------------------


@dataclass(frozen=True)
class BenchmarkImage:
    file: str  # relative to the folder: "benchmark/test_data.json"
    image: str  # relative to DIR/images, "<source>/<class>/..."


def benchmark_images(root: Path) -> tuple[list[BenchmarkImage], list[str]]:
    """Every image the benchmark files name, and a problem per file that could not be read.

    test_data.json and visa_dr.json are lists of items with an "image" (visa_dr's may be a list
    of views); mmad.json is a dict keyed by the query image. Missing files are no problem.
    """
    images: list[BenchmarkImage] = []
    problems: list[str] = []
    for name in BENCHMARK_FILES:
        path = root / BENCHMARK_DIR / name
        if not path.is_file():
            continue
        file = f"{BENCHMARK_DIR}/{name}"
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            problems.append(f"{file} could not be read: {error}")
            continue
        if name == "mmad.json":
            if not isinstance(payload, dict):
                problems.append(f"{file} should be an object keyed by image path")
                continue
            paths: Iterable[object] = payload.keys()
        else:
            if not isinstance(payload, list):
                problems.append(f"{file} should be a list of items")
                continue
            paths = [item.get("image") for item in payload if isinstance(item, dict)]
        for entry in paths:
            for image in entry if isinstance(entry, list) else [entry]:
                if isinstance(image, str) and image:
                    images.append(BenchmarkImage(file, image))
    return images, problems


# -- fingerprints -------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprint:
    sha256: str
    phash: int
    thumbnail: np.ndarray  # THUMBNAIL_SIDE² uint8 grey levels: 256 bytes an image


def fingerprint(path: Path) -> Fingerprint:
    """Hashes and thumbnail of one image file, read once and decoded once.

    As in the annotate stage, a JPEG decodes straight to greyscale at a reduced scale (still at
    least 2 x 32 pixels a side), so its pHash is the one samples.jsonl stores for it.
    """
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.draft("L", (2 * PHASH_SIDE, 2 * PHASH_SIDE))
        image.load()
        return Fingerprint(sha256_hex(data), int(phash(image), 16), thumbnail(image))


def thumbnail(image: Image.Image) -> np.ndarray:
    """A THUMBNAIL_SIDE² grey thumbnail in 0-255; deeper images are scaled to their range."""
    if image.mode in HIGH_BIT_DEPTH_MODES or image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        values = (values - low) * (255.0 / max(high - low, 1e-6))
        grey = Image.fromarray(values.astype(np.float32))  # mode F
    else:
        grey = image if image.mode == "L" else image.convert("L")
    small = grey.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(small, dtype=np.float32).round().astype(np.uint8).ravel()


def thumbnail_difference(a: Fingerprint, b: Fingerprint) -> float:
    """Mean absolute difference of two thumbnails in grey levels, mean brightness aligned."""
    difference = a.thumbnail.astype(np.float32) - b.thumbnail
    return float(np.abs(difference - difference.mean()).mean())


def is_near(a: Fingerprint, b: Fingerprint) -> bool:
    return (a.phash ^ b.phash).bit_count() <= PHASH_RADIUS and (
        thumbnail_difference(a, b) <= THUMBNAIL_TOLERANCE
    )


def band_flips(bits: int, max_flips: int) -> list[int]:
    """Every mask of `bits` bits with at most `max_flips` bits set."""
    masks = [0]
    for _ in range(max_flips):
        masks = sorted({mask | (1 << bit) for mask in masks for bit in range(bits)} | set(masks))
    return masks


class HashIndex:
    """Multi-index hashing: 64-bit hashes within `radius` bits of a query, without a scan.

    Split into BANDS bands, two hashes within `radius` bits differ in at most radius // BANDS
    bits on some band, so looking up every band value within that many bits finds them all.
    """

    def __init__(self, radius: int) -> None:
        self.radius = radius
        self.flips = band_flips(BAND_BITS, radius // BANDS)
        self.tables: list[dict[int, list[int]]] = [{} for _ in range(BANDS)]
        self.hashes: list[int] = []
        self.keys: list[str] = []

    def add(self, value: int, key: str) -> None:
        position = len(self.hashes)
        self.hashes.append(value)
        self.keys.append(key)
        for band, table in enumerate(self.tables):
            table.setdefault((value >> (band * BAND_BITS)) & 0xFFFF, []).append(position)

    def near(self, value: int) -> list[tuple[int, str]]:
        """(distance, key) of every indexed hash within the radius, closest first."""
        seen: set[int] = set()
        found = []
        for band, table in enumerate(self.tables):
            band_value = (value >> (band * BAND_BITS)) & 0xFFFF
            for flip in self.flips:
                for position in table.get(band_value ^ flip, ()):
                    if position in seen:
                        continue
                    seen.add(position)
                    distance = (self.hashes[position] ^ value).bit_count()
                    if distance <= self.radius:
                        found.append((distance, self.keys[position]))
        return sorted(found)


@dataclass(frozen=True)
class Match:
    key: str  # of the indexed image
    distance: int  # pHash bits
    exact: bool
    thumbnail_difference: float


class ImageSet:
    """Images of one side of a comparison: exact lookup by sha256, near lookup by pHash."""

    def __init__(self) -> None:
        self.by_sha: dict[str, str] = {}
        self.index = HashIndex(PHASH_RADIUS)
        self.prints: dict[str, Fingerprint] = {}

    def add(self, key: str, print_: Fingerprint) -> None:
        self.by_sha.setdefault(print_.sha256, key)
        self.index.add(print_.phash, key)
        self.prints[key] = print_

    def matches(self, print_: Fingerprint) -> tuple[list[Match], int]:
        """The exact match (if any) or the confirmed near matches; and the pHash candidates."""
        exact = self.by_sha.get(print_.sha256)
        if exact is not None:
            return [Match(exact, 0, True, 0.0)], 0
        candidates = self.index.near(print_.phash)
        confirmed = []
        for distance, key in candidates:
            difference = thumbnail_difference(print_, self.prints[key])
            if difference <= THUMBNAIL_TOLERANCE:
                confirmed.append(Match(key, distance, False, difference))
        return confirmed, len(candidates)


# -- the validator ------------------------------------------------------------------------


class LeakageValidator(Validator):
    """Benchmark images in the instruction set, and test images in the train split."""

    name = "leakage"

    def __init__(self) -> None:
        #: image (relative to DIR/images) -> (file, id) of the first record that shows it
        self.training: dict[str, tuple[str, str]] = {}
        self._prints: dict[Path, Fingerprint | None] = {}
        self.unreadable: dict[str, str] = {}
        #: Training images that the benchmark holds (or nearly): every record showing one leaks,
        #: not only the first, which is the one a finding names.
        self.leaked_images: set[str] = set()
        #: What the last `finish` compared, for reports and benchmarks.
        self.stats: dict[str, int] = {}

    def check_batch(self, batch: Batch, context: FolderContext) -> Iterable[Finding]:
        training, file = self.training, batch.file
        for record in batch.records:
            image = record["image"]
            for shown in (image,) if type(image) is str else image:
                if shown not in training:
                    training[shown] = (file, record["id"])
        return ()

    def finish(self, context: FolderContext) -> Iterable[Finding]:
        self.stats = dict.fromkeys(
            ("images_hashed", "phash_candidates", "exact_pairs", "near_pairs"), 0
        )
        images_root = (context.root / IMAGES_DIR).resolve()
        findings = list(self.benchmark_leaks(context, images_root))
        findings += self.split_leaks(context, images_root)
        if self.unreadable:
            first, reason = next(iter(self.unreadable.items()))
            findings.append(
                self.finding(
                    "warning",
                    "leakage_unchecked",
                    f"{len(self.unreadable)} image(s) could not be read, so their leakage is "
                    f"unchecked; first: {first} ({reason})",
                )
            )
        self.stats["images_hashed"] = sum(print_ is not None for print_ in self._prints.values())
        return findings

    def fingerprint(self, images_root: Path, image: str) -> Fingerprint | None:
        """The image's fingerprint, computed once per run; None (noted) when unreadable."""
        try:
            path = resolve_inside(images_root, image)
        except PathEscapeError as error:
            self.unreadable.setdefault(image, str(error))
            return None
        if path not in self._prints:
            try:
                self._prints[path] = fingerprint(path)
            except (*PIL_DATA_ERRORS, Image.DecompressionBombError) as error:
                self._prints[path] = None
                self.unreadable.setdefault(image, f"{type(error).__name__}: {error}")
        return self._prints[path]

    def image_set(self, images_root: Path, images: Iterable[str]) -> ImageSet:
        indexed = ImageSet()
        for image in images:
            print_ = self.fingerprint(images_root, image)
            if print_ is not None:
                indexed.add(image, print_)
        return indexed

    def benchmark_leaks(self, context: FolderContext, images_root: Path) -> Iterator[Finding]:
        items, problems = benchmark_images(context.root)
        for problem in problems:
            yield self.finding("warning", "benchmark_unreadable", problem)
        if not items or not self.training:
            return
        training = self.image_set(images_root, self.training)
        for item in dict.fromkeys(items):
            print_ = self.fingerprint(images_root, item.image)
            if print_ is None:
                continue
            matches = self.compare(training, print_)
            if not matches:
                continue
            best = matches[0]
            self.leaked_images.update(match.key for match in matches)
            file, record_id = self.training[best.key]
            if best.exact:
                code = "benchmark_image_in_training"
                how = "has the same bytes as"
            else:
                code = "benchmark_near_duplicate_in_training"
                how = f"is a near duplicate ({describe(best)}) of"
            others = f" and {len(matches) - 1} more" if len(matches) > 1 else ""
            yield self.finding(
                "error",
                code,
                f"{item.file} lists {item.image}, which {how} training image {best.key}"
                f"{others} (record {record_id})",
                file=file,
                record_id=record_id,
            )

    def split_leaks(self, context: FolderContext, images_root: Path) -> Iterator[Finding]:
        """Test images that equal or nearly equal a train (or val) image of the same source.

        Splits are a release's own: a test image of one release that resembles a train image
        of another is no split leak (if one of them is benchmarked, the benchmark check finds
        it; if both are trained on, it is a duplicate, not a leak).
        """
        held_in: dict[str, dict[str, Any]] = {}
        for facts in context.samples.values():
            if facts.split != "test":
                held_in.setdefault(facts.source, {})[facts.image] = facts
        tests = [facts for facts in context.samples.values() if facts.split == "test"]
        if not held_in or not tests:
            return
        indexed = {
            source: self.image_set(images_root, images) for source, images in held_in.items()
        }
        for facts in tests:
            seen = indexed.get(facts.source)
            if seen is None:
                continue
            print_ = self.fingerprint(images_root, facts.image)
            if print_ is None:
                continue
            matches = [match for match in self.compare(seen, print_) if match.key != facts.image]
            if not matches:
                continue
            best = matches[0]
            other = held_in[facts.source][best.key]
            how = "has the same bytes as" if best.exact else f"nearly equals ({describe(best)})"
            others = f" and {len(matches) - 1} more" if len(matches) > 1 else ""
            yield self.finding(
                "error",
                "split_leak_exact" if best.exact else "split_leak_near",
                f"test image {facts.image} {how} {other.split} image {best.key} "
                f"(sample {other.sample_id}){others}",
                file=SAMPLES_FILE,
                record_id=facts.sample_id,
            )

    def compare(self, indexed: ImageSet, print_: Fingerprint) -> list[Match]:
        matches, candidates = indexed.matches(print_)
        self.stats["phash_candidates"] += candidates
        if matches:
            self.stats["exact_pairs" if matches[0].exact else "near_pairs"] += len(matches)
        return matches


def describe(match: Match) -> str:
    return (
        f"pHash {match.distance} of 64 bits apart, thumbnails "
        f"{match.thumbnail_difference:.2f} grey levels apart"
    )
