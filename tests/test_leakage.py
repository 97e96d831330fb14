"""Leakage and zero-shot integrity over a real demo build, with benchmark files written by hand.

The demo's train and test images are distinct renders, some of them within a few pHash bits
of each other: a clean folder must pass, and copies or JPEG re-encodes must not.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import shutil
from pathlib import Path

import pytest
from built_folders import build_demo_folder, validate_records
from PIL import Image

from adinstruct.validators.base import Finding
from adinstruct.validators.leakage import (
    PHASH_RADIUS,
    HashIndex,
    LeakageValidator,
    fingerprint,
    is_near,
)
from adinstruct.validators.zero_shot import ZeroShotValidator


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo_folder(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def folder(demo, tmp_path) -> Path:
    copy = tmp_path / "folder"
    shutil.copytree(demo, copy, ignore=shutil.ignore_patterns("source", "masks"))
    return copy


def demo_images(root: Path) -> list[Path]:
    return sorted((root / "images").rglob("*.png"))


def jpeg(path: Path, quality: int) -> bytes:
    buffer = io.BytesIO()
    with Image.open(path) as image:
        image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_benchmark(root: Path, name: str, payload) -> None:
    (root / "benchmark").mkdir(exist_ok=True)
    (root / "benchmark" / name).write_text(json.dumps(payload), encoding="utf-8")


def place(root: Path, image: str, data: bytes) -> str:
    path = root / "images" / image
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return image


def by_code(findings: list[Finding]) -> dict[str, list[Finding]]:
    grouped: dict[str, list[Finding]] = {}
    for finding in findings:
        grouped.setdefault(finding.code, []).append(finding)
    return grouped


# -- the threshold, measured ----------------------------------------------------------------


def test_the_threshold_keeps_re_encodes_and_drops_distinct_renders(demo, tmp_path):
    """What leakage.py's docstring claims, measured again on the demo's 60 renders."""
    prints = {path: fingerprint(path) for path in demo_images(demo)}
    caught = {}
    for quality in (90, 75):
        encoded = tmp_path / f"q{quality}.jpg"
        caught[quality] = 0
        for path, original in prints.items():
            encoded.write_bytes(jpeg(path, quality))
            caught[quality] += is_near(original, fingerprint(encoded))
    # Measured with Pillow 13's libjpeg: 60 and 58 of 60; other JPEG encoders round differently.
    assert caught[90] >= 58 and caught[75] >= 54
    near_pairs = [pair for pair in itertools.combinations(prints.values(), 2) if is_near(*pair)]
    assert near_pairs == []


def test_the_hash_index_finds_exactly_the_hashes_within_its_radius():
    rng = random.Random(0)
    stored = [rng.getrandbits(64) for _ in range(3000)]
    # Plant neighbours at every distance up to the radius and a little beyond.
    for distance in range(PHASH_RADIUS + 3):
        for _ in range(20):
            base = rng.choice(stored)
            flips = sum(1 << bit for bit in rng.sample(range(64), distance))
            stored.append(base ^ flips)
    index = HashIndex(PHASH_RADIUS)
    for position, value in enumerate(stored):
        index.add(value, str(position))
    for query in rng.sample(stored, 200):
        expected = sorted(
            ((value ^ query).bit_count(), str(position))
            for position, value in enumerate(stored)
            if (value ^ query).bit_count() <= PHASH_RADIUS
        )
        assert index.near(query) == expected


# -- the clean folder ----------------------------------------------------------------------


def test_the_clean_demo_folder_has_no_leak(demo):
    leakage = LeakageValidator()
    assert validate_records(demo, leakage, ZeroShotValidator()) == []
    # Train/test pairs within the pHash radius exist, and the thumbnails reject all of them.
    assert leakage.stats == {
        "images_hashed": 60,
        "phash_candidates": 15,
        "exact_pairs": 0,
        "near_pairs": 0,
    }


# -- the benchmark in the training set -----------------------------------------------------


def test_benchmark_copies_and_re_encodes_of_training_images_are_caught(folder):
    images = folder / "images"
    train = images / "demo/capsule/train/good/000.png"
    copy = place(folder, "bench/cls/000.png", train.read_bytes())
    q90 = place(folder, "bench/cls/001.jpg", jpeg(images / "demo/washer/train/good/003.png", 90))
    q75 = place(folder, "bench/cls/002.jpg", jpeg(images / "demo/grid/train/good/001.png", 75))
    fresh = io.BytesIO()
    Image.new("RGB", (256, 256), (90, 140, 200)).save(fresh, "PNG")
    distinct = place(folder, "bench/cls/003.png", fresh.getvalue())
    items = [{"image": image, "anomaly": False} for image in (copy, q90, distinct)]
    write_benchmark(folder, "test_data.json", items)
    write_benchmark(folder, "visa_dr.json", [{"image": q75, "questions": ["What is wrong?"]}])
    # mmad.json names the query image by its key; this one is a training image itself.
    write_benchmark(folder, "mmad.json", {"demo/capsule/test/crack/001.png": {"conversation": []}})

    leakage = LeakageValidator()
    findings = by_code(validate_records(folder, leakage))
    assert set(findings) == {"benchmark_image_in_training", "benchmark_near_duplicate_in_training"}
    exact = {listed(f): f for f in findings["benchmark_image_in_training"]}
    near = {listed(f): f for f in findings["benchmark_near_duplicate_in_training"]}
    assert set(exact) == {copy, "demo/capsule/test/crack/001.png"}
    assert set(near) == {q90, q75}
    assert all(f.severity == "error" for group in findings.values() for f in group)
    # Each finding points at a training record that shows the image, for quarantine.
    assert exact[copy].record_id.startswith("demo/capsule/train/good/000#")
    assert exact[copy].file == "instruct/anomaly_instruct.json"
    assert near[q90].record_id.startswith("demo/washer/train/good/003#")
    assert near[q75].record_id.startswith("demo/grid/train/good/001#")
    assert leakage.leaked_images == {
        "demo/capsule/train/good/000.png",
        "demo/washer/train/good/003.png",
        "demo/grid/train/good/001.png",
        "demo/capsule/test/crack/001.png",
    }


def listed(finding: Finding) -> str:
    """The benchmark image a finding names: '<file> lists <image>, which ...'."""
    return finding.message.split(" lists ")[1].split(",")[0]


def test_a_benchmark_file_that_is_not_json_is_reported_and_the_rest_still_checked(folder):
    (folder / "benchmark").mkdir()
    (folder / "benchmark" / "test_data.json").write_text("[{", encoding="utf-8")
    findings = validate_records(folder, LeakageValidator(), ZeroShotValidator())
    assert [(f.code, f.severity) for f in findings] == [("benchmark_unreadable", "warning")]


# -- train and test splits -----------------------------------------------------------------


def test_test_images_equal_or_re_encoded_from_train_images_are_split_leaks(folder):
    images = folder / "images" / "demo" / "capsule"
    (images / "test/good/000.png").write_bytes((images / "train/good/002.png").read_bytes())
    # Re-encoded as JPEG and saved back as PNG: other bytes, nearly the same pixels.
    with Image.open(io.BytesIO(jpeg(images / "train/good/004.png", 90))) as decoded:
        decoded.save(images / "test/good/001.png")

    findings = by_code(validate_records(folder, LeakageValidator()))
    assert set(findings) == {"split_leak_exact", "split_leak_near"}
    [exact] = findings["split_leak_exact"]
    [near] = findings["split_leak_near"]
    assert exact.record_id == "demo/capsule/test/good/000" and exact.file == "samples.jsonl"
    assert "train image demo/capsule/train/good/002.png" in exact.message
    assert near.record_id == "demo/capsule/test/good/001"
    assert "train image demo/capsule/train/good/004.png" in near.message


def test_files_are_hashed_from_disk_not_from_samples_jsonl(folder):
    """The stored sha256 and pHash still describe the original image: they are not read."""
    images = folder / "images" / "demo" / "washer"
    (images / "test/good/002.png").write_bytes((images / "train/good/000.png").read_bytes())
    findings = validate_records(folder, LeakageValidator())
    assert [f.code for f in findings] == ["split_leak_exact"]


def test_unreadable_images_are_noted_once(folder):
    (folder / "images" / "demo" / "grid" / "test" / "good" / "000.png").write_bytes(b"not a png")
    findings = validate_records(folder, LeakageValidator())
    assert [(f.code, f.severity) for f in findings] == [("leakage_unchecked", "warning")]
    assert "demo/grid/test/good/000.png" in findings[0].message


# -- zero-shot integrity -------------------------------------------------------------------


@pytest.mark.parametrize(
    "image, expected",
    [
        # The benchmark evaluates a source and a class that training uses.
        (
            "demo/capsule/test/good/000.png",
            {"benchmark_source_in_training", "benchmark_category_in_training"},
        ),
        # Another release, but a class that training already shows.
        ("visa/capsule/Data/Images/Normal/0000.JPG", {"benchmark_category_in_training"}),
        ("visa/Capsule/Data/Images/Normal/0000.JPG", {"benchmark_category_in_training"}),
        # Unseen source and class: what Anomaly-OV's zero-shot setting asks for.
        ("visa/candle/Data/Images/Normal/0000.JPG", set()),
    ],
)
def test_benchmark_sources_and_categories_must_be_unseen_in_training(folder, image, expected):
    write_benchmark(folder, "test_data.json", [{"image": image, "anomaly": False}])
    findings = validate_records(folder, ZeroShotValidator())
    assert {f.code for f in findings} == expected
    assert all(f.severity == "error" for f in findings)
    if "benchmark_source_in_training" in expected:
        [source] = [f for f in findings if f.code == "benchmark_source_in_training"]
        assert "120 training records come from it" in source.message
