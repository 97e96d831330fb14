"""The annotate stage on real files in release-shaped trees: facts, quarantine codes, pickling."""

from __future__ import annotations

import hashlib
import pickle
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import fft, ndimage

from adinstruct.builder.annotate import AnnotateStage, dct_hash, hamming, rle_decode
from adinstruct.builder.errors import ConfigError
from adinstruct.schemas import MaskRef, QuarantineEntry, Sample

SIZE = 90  # divisible by 3, so grid cells are 30 px bands

IMAGE = "bottle/test/crack/000.png"
MASK = "bottle/ground_truth/crack/000_mask.png"


# -- building the world ---------------------------------------------------------------------


def textured_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random picture: structure at several scales, like a photograph has."""
    noise = np.random.default_rng(seed).random((height, width, 3))
    field = ndimage.gaussian_filter(noise, sigma=(max(height // 25, 1), max(width // 25, 1), 0))
    field = (field - field.min()) / (field.max() - field.min())
    return (field * 255).astype(np.uint8)


def write_image(root: Path, relative: str, pixels: np.ndarray, **save_options) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save_options)
    return path


def write_bytes(root: Path, relative: str, data: bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def rectangle_mask(rows: slice, columns: slice, value: int = 255, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[rows, columns] = value
    return mask


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width×height greyscale pixels: a decompression bomb."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 256))
        + chunk(b"IEND", b"")
    )


def make_sample(
    image: str = IMAGE,
    masks: list[str | MaskRef] | None = None,
    *,
    label: str = "anomaly",
    defect_types: list[str] | None = None,
    source: str = "mvtec_ad",
    image_paths: list[str] | None = None,
) -> Sample:
    mask_refs = [MaskRef(path=m) if isinstance(m, str) else m for m in masks or []]
    if defect_types is None:
        defect_types = ["crack"] if label == "anomaly" else []
    return Sample(
        id=f"{source}/{image.rsplit('.', 1)[0]}",
        source=source,
        category=image.split("/")[0],
        split="test",
        label=label,
        defect_types=defect_types,
        image_paths=image_paths or [image],
        masks=mask_refs,
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    release = tmp_path / "mvtec_ad"
    release.mkdir()
    return release


@pytest.fixture
def stage(root: Path) -> AnnotateStage:
    return AnnotateStage({"mvtec_ad": str(root)})


def annotated(result: Sample | QuarantineEntry) -> Sample:
    assert isinstance(result, Sample), f"quarantined: {result}"
    assert result.annotation is not None
    return result


def quarantined(result: Sample | QuarantineEntry, code: str | set[str]) -> QuarantineEntry:
    assert isinstance(result, QuarantineEntry), f"expected quarantine, got {result}"
    codes = {code} if isinstance(code, str) else code
    assert result.code in codes, result.reason
    assert result.stage == "annotate"
    assert result.sample is not None
    assert result.sample_id == result.sample.id
    return result


# -- facts of a good sample -----------------------------------------------------------------


def test_planted_rectangle_geometry(root, stage):
    write_image(root, IMAGE, textured_rgb(SIZE, SIZE))
    mask = rectangle_mask(slice(10, 25), slice(65, 85))  # 15 rows × 20 columns, top right
    write_image(root, MASK, mask)
    sample = annotated(stage.process(make_sample(masks=[MASK])))
    annotation = sample.annotation
    assert (annotation.width, annotation.height, annotation.mode) == (SIZE, SIZE, "RGB")
    assert annotation.bboxes == [(65, 10, 20, 15)]
    assert annotation.area_fraction == 300 / (SIZE * SIZE)
    assert annotation.region_count == 1
    assert annotation.grid_cells == ["top right"]
    assert annotation.regions[0].location == "top right"
    assert annotation.regions[0].area == 300
    np.testing.assert_array_equal(rle_decode(annotation.mask_rle), mask > 0)
    # One mask file without value names: the release does not tell defects apart.
    assert annotation.defects == []
    assert sample.defect_types == ["crack"]


def test_sha256_is_over_the_file_bytes(root, stage):
    path = write_image(root, IMAGE, textured_rgb(SIZE, SIZE))
    annotation = annotated(stage.process(make_sample())).annotation
    assert annotation.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_greyscale_image_records_mode_l(root, stage):
    write_image(root, "grid/test/good/000.png", textured_rgb(SIZE, SIZE)[..., 0])
    sample = make_sample("grid/test/good/000.png", label="normal")
    assert annotated(stage.process(sample)).annotation.mode == "L"


def test_anomaly_without_masks_has_no_mask_fields(root, stage):
    write_image(root, IMAGE, textured_rgb(SIZE, SIZE))
    annotation = annotated(stage.process(make_sample())).annotation
    assert annotation.mask_rle is None
    assert annotation.bboxes == [] and annotation.region_count == 0
    assert annotation.grid_cells == [] and annotation.defects == []


def test_normal_image_with_an_empty_mask_is_kept(root, stage):
    image = "bottle/test/good/000.png"
    write_image(root, image, textured_rgb(SIZE, SIZE))
    write_image(root, "bottle/ground_truth/good/000_mask.png", np.zeros((SIZE, SIZE), np.uint8))
    sample = make_sample(image, ["bottle/ground_truth/good/000_mask.png"], label="normal")
    annotation = annotated(stage.process(sample)).annotation
    assert annotation.area_fraction == 0.0
    assert annotation.region_count == 0
    assert not rle_decode(annotation.mask_rle).any()


def test_bmp_image_with_png_mask(tmp_path):
    root = tmp_path / "btad"
    write_image(root, "03/test/ko/0000.bmp", textured_rgb(SIZE, SIZE))
    write_image(root, "03/ground_truth/ko/0000.png", rectangle_mask(slice(40, 50), slice(0, 5)))
    sample = make_sample("03/test/ko/0000.bmp", ["03/ground_truth/ko/0000.png"], source="btad")
    annotation = annotated(AnnotateStage({"btad": str(root)}).process(sample)).annotation
    assert annotation.bboxes == [(0, 40, 5, 10)]
    assert annotation.grid_cells == ["left"]


# -- perceptual hash ------------------------------------------------------------------------


def test_phash_survives_jpeg_and_separates_different_images(root, stage):
    picture = textured_rgb(256, 256, seed=3)
    write_image(root, "a/original.png", picture)
    write_image(root, "a/reencoded.jpg", picture, quality=70)
    write_image(root, "a/other.png", textured_rgb(256, 256, seed=4))
    hashes = {
        name: annotated(stage.process(make_sample(f"a/{name}", label="normal"))).annotation.phash
        for name in ("original.png", "reencoded.jpg", "other.png")
    }
    assert all(len(value) == 16 and value == value.lower() for value in hashes.values())
    assert hamming(hashes["original.png"], hashes["reencoded.jpg"]) <= 4
    assert hamming(hashes["original.png"], hashes["other.png"]) >= 16


def test_dct_hash_matches_scipys_dct_and_the_documented_bits():
    for seed in range(5):
        pixels = np.random.default_rng(seed).random((32, 32)) * 255
        block = fft.dctn(pixels, type=2, norm="ortho")[:8, :8].ravel()
        bits = block > np.median(block[1:]) + 1e-9 * np.abs(block).max()
        assert dct_hash(pixels) == np.packbits(bits).tobytes().hex()
    # A flat image has only its DC term above the (zero) median of the AC terms.
    assert dct_hash(np.full((32, 32), 7.0)) == "8000000000000000"
    assert dct_hash(np.full((32, 32), 200.0)) == "8000000000000000"
    assert hamming("8000000000000000", "0000000000000001") == 2


def test_phash_of_a_16_bit_image_is_not_clipped(root, stage):
    picture = textured_rgb(128, 128, seed=5)[..., 0]
    write_image(root, "d/depth8.png", picture)
    write_image(root, "d/depth16.png", picture.astype(np.uint16) * 257)
    depth8 = annotated(stage.process(make_sample("d/depth8.png", label="normal"))).annotation
    depth16 = annotated(stage.process(make_sample("d/depth16.png", label="normal"))).annotation
    assert depth16.mode.startswith("I")
    assert hamming(depth8.phash, depth16.phash) <= 2


# -- broken images --------------------------------------------------------------------------


def test_truncated_png_is_quarantined_with_its_name(root, stage):
    path = write_image(root, IMAGE, textured_rgb(SIZE, SIZE))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    entry = quarantined(stage.process(make_sample()), {"image_truncated", "image_unreadable"})
    assert IMAGE in entry.reason
    assert entry.path == IMAGE
    assert entry.source == "mvtec_ad"


def test_truncated_jpeg_is_image_truncated(root, stage):
    image = "candle/Data/Images/Anomaly/000.JPG"
    path = write_image(root, image, textured_rgb(SIZE, SIZE), format="JPEG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    entry = quarantined(stage.process(make_sample(image)), "image_truncated")
    assert image in entry.reason and "truncated" in entry.reason


def test_non_image_file_is_unreadable(root, stage):
    write_bytes(root, IMAGE, b"this is a text file, not a PNG\n")
    entry = quarantined(stage.process(make_sample()), "image_unreadable")
    assert IMAGE in entry.reason
    # No memory addresses: identical builds write identical quarantine files.
    assert "0x" not in entry.reason


def test_missing_image_is_unreadable(root, stage):
    entry = quarantined(stage.process(make_sample()), "image_unreadable")
    assert IMAGE in entry.reason


def test_decompression_bomb_over_twice_pils_limit(root, stage):
    path = write_bytes(root, IMAGE, png_with_declared_size(20_000, 20_000))
    assert path.stat().st_size < 1_000
    entry = quarantined(stage.process(make_sample()), "image_too_large")
    assert IMAGE in entry.reason


def test_decompression_bomb_between_pils_warning_and_error(root, stage):
    # 100 M pixels: over PIL's warning threshold and over our default limit, under PIL's error.
    write_bytes(root, IMAGE, png_with_declared_size(10_000, 10_000))
    entry = quarantined(stage.process(make_sample()), "image_too_large")
    assert IMAGE in entry.reason


def test_configured_pixel_limit_is_checked_before_decoding(root):
    write_image(root, IMAGE, textured_rgb(SIZE, SIZE))
    stage = AnnotateStage({"mvtec_ad": str(root)}, max_image_pixels=1_000)
    entry = quarantined(stage.process(make_sample()), "image_too_large")
    assert IMAGE in entry.reason and "90×90" in entry.reason and "1,000" in entry.reason


# -- broken masks ---------------------------------------------------------------------------


def test_mask_of_another_size_names_both_files_and_sizes(root, stage):
    write_image(root, IMAGE, textured_rgb(SIZE, SIZE))
    write_image(root, MASK, np.full((48, 64), 255, np.uint8))
    entry = quarantined(stage.process(make_sample(masks=[MASK])), "mask_size_mismatch")
    assert entry.reason == f"mask {MASK} is 64×48 but its image {IMAGE} is 90×90"
    assert entry.path == MASK


def test_empty_mask_on_an_anomaly(root, stage):
    write_image(root, IMAGE, textured_rgb(SIZE, SIZE))
    write_image(root, MASK, np.zeros((SIZE, SIZE), np.uint8))
    entry = quarantined(stage.process(make_sample(masks=[MASK])), "mask_empty")
    assert MASK in entry.reason and entry.path == MASK


def test_defect_pixels_on_a_normal_image(root, stage):
    image = "bottle/test/good/000.png"
    write_image(root, image, textured_rgb(SIZE, SIZE))
    write_image(root, MASK, rectangle_mask(slice(0, 3), slice(0, 3)))
    entry = quarantined(stage.process(make_sample(image, [MASK], label="normal")), "mask_on_normal")
    assert MASK in entry.reason and image in entry.reason


def test_truncated_mask_is_unreadable(root, stage):
    write_image(root, IMAGE, textured_rgb(SIZE, SIZE))
    path = write_image(root, MASK, (textured_rgb(SIZE, SIZE)[..., 0] > 128).astype(np.uint8) * 255)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    entry = quarantined(stage.process(make_sample(masks=[MASK])), "mask_unreadable")
    assert MASK in entry.reason and entry.path == MASK


# -- mask encodings and per-defect masks ----------------------------------------------------


def test_visa_style_multi_valued_mask(tmp_path):
    root = tmp_path / "visa"
    image = "pcb1/Data/Images/Anomaly/000.JPG"
    mask_path = "pcb1/Data/Masks/Anomaly/000.png"
    write_image(root, image, textured_rgb(SIZE, SIZE), format="JPEG")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[5:15, 5:15] = 1  # Bent, top left, 100 px
    mask[70:80, 40:60] = 3  # Scratch, bottom, 200 px
    mask[72:74, 80:82] = 3  # a second Scratch region, bottom right, 4 px
    write_image(root, mask_path, mask)
    value_names = {1: "Bent", 2: "Melt", 3: "Scratch", 4: "Missing"}
    sample = make_sample(
        image, [MaskRef(path=mask_path, value_names=value_names)], defect_types=[], source="visa"
    )
    result = annotated(AnnotateStage({"visa": str(root)}).process(sample))
    annotation = result.annotation
    assert [defect.defect_type for defect in annotation.defects] == ["Bent", "Scratch"]
    assert result.defect_types == ["Bent", "Scratch"]
    bent, scratch = annotation.defects
    assert bent.area_fraction == 100 / SIZE**2 and bent.region_count == 1
    assert bent.grid_cells == ["top left"]
    assert scratch.area_fraction == 204 / SIZE**2 and scratch.region_count == 2
    assert scratch.grid_cells == ["bottom"]
    np.testing.assert_array_equal(rle_decode(bent.rle), mask == 1)
    np.testing.assert_array_equal(rle_decode(scratch.rle), mask == 3)
    assert annotation.area_fraction == 304 / SIZE**2
    assert annotation.region_count == 3


def test_values_missing_from_the_table_and_palette_masks(tmp_path):
    root = tmp_path / "visa"
    image = "pcb1/Data/Images/Anomaly/001.JPG"
    mask_path = "pcb1/Data/Masks/Anomaly/001.png"
    write_image(root, image, textured_rgb(SIZE, SIZE), format="JPEG")
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[0:10, 0:10] = 2
    mask[50:60, 50:60] = 7
    palette_mask = Image.fromarray(mask).convert("P")  # P mode: the values are palette indices
    (root / mask_path).parent.mkdir(parents=True)
    palette_mask.save(root / mask_path)
    assert Image.open(root / mask_path).mode == "P"
    sample = make_sample(
        image, [MaskRef(path=mask_path, value_names={2: "Melt"})], defect_types=[], source="visa"
    )
    result = annotated(AnnotateStage({"visa": str(root)}).process(sample))
    assert result.defect_types == ["Melt", "unknown id 7"]


def test_sixteen_bit_mask_keeps_its_values(tmp_path):
    root = tmp_path / "release"
    write_image(root, "c/img.png", textured_rgb(SIZE, SIZE))
    mask = np.zeros((SIZE, SIZE), np.uint16)
    mask[10:20, 10:20] = 300
    write_image(root, "c/mask.png", mask)
    sample = make_sample(
        "c/img.png",
        [MaskRef(path="c/mask.png", value_names={300: "deep"})],
        defect_types=[],
        source="release",
    )
    result = annotated(AnnotateStage({"release": str(root)}).process(sample))
    assert result.defect_types == ["deep"]
    assert result.annotation.area_fraction == 100 / SIZE**2


def test_rgba_colour_mapped_mask_is_binarised_ignoring_alpha(tmp_path):
    root = tmp_path / "bmad"
    image = "Brain/test/Ungood/img/00001.png"
    mask_path = "Brain/test/Ungood/label/00001.png"
    write_image(root, image, textured_rgb(SIZE, SIZE)[..., 0])
    colour_map = np.zeros((SIZE, SIZE, 4), np.uint8)
    colour_map[..., 3] = 255  # opaque everywhere: alpha must not count as defect
    colour_map[30:40, 30:50] = (255, 40, 0, 255)
    colour_map[60, 60] = (0, 0, 9, 255)  # a dark blue pixel is still defect
    write_image(root, mask_path, colour_map)
    sample = make_sample(image, [mask_path], defect_types=[], source="bmad")
    annotation = annotated(AnnotateStage({"bmad": str(root)}).process(sample)).annotation
    assert annotation.area_fraction == 201 / SIZE**2
    assert annotation.bboxes == [(30, 30, 20, 10), (60, 60, 1, 1)]
    assert annotation.defects == []


def test_loco_style_mask_folder_maps_pixel_values(tmp_path):
    root = tmp_path / "loco"
    image = "juice_bottle/test/logical_anomalies/005.png"
    folder = "juice_bottle/ground_truth/logical_anomalies/005"
    write_image(root, image, textured_rgb(SIZE, SIZE))
    write_image(root, f"{folder}/000.png", rectangle_mask(slice(0, 10), slice(0, 10), 255))
    write_image(root, f"{folder}/001.png", rectangle_mask(slice(60, 70), slice(60, 70), 190))
    write_image(root, f"{folder}/002.png", rectangle_mask(slice(0, 10), slice(70, 80), 255))
    value_names = {255: "missing_banana", 190: "wrong_fill_level"}
    masks = [MaskRef(path=f"{folder}/{n:03d}.png", value_names=value_names) for n in range(3)]
    sample = make_sample(image, masks, defect_types=[], source="loco")
    result = annotated(AnnotateStage({"loco": str(root)}).process(sample))
    defects = {defect.defect_type: defect for defect in result.annotation.defects}
    assert list(defects) == ["missing_banana", "wrong_fill_level"]
    assert result.defect_types == ["missing_banana", "wrong_fill_level"]
    # Two files with the same pixel value merge into one defect with two regions.
    assert defects["missing_banana"].region_count == 2
    assert defects["missing_banana"].area_fraction == 200 / SIZE**2
    assert defects["missing_banana"].grid_cells == ["top left", "top right"]
    assert defects["wrong_fill_level"].grid_cells == ["bottom right"]
    assert result.annotation.region_count == 3


def test_several_mask_files_group_by_defect_type(tmp_path):
    root = tmp_path / "eyecandies"
    write_image(root, "c/img.png", textured_rgb(SIZE, SIZE))
    write_image(root, "c/dent.png", rectangle_mask(slice(0, 5), slice(0, 5)))
    write_image(root, "c/bump.png", rectangle_mask(slice(50, 55), slice(50, 60)))
    masks = [
        MaskRef(path="c/dent.png", defect_type="dent"),
        MaskRef(path="c/bump.png", defect_type="bump"),
    ]
    sample = make_sample("c/img.png", masks, defect_types=["bump", "dent"], source="eyecandies")
    result = annotated(AnnotateStage({"eyecandies": str(root)}).process(sample))
    assert [d.defect_type for d in result.annotation.defects] == ["bump", "dent"]
    assert [d.area_fraction for d in result.annotation.defects] == [50 / SIZE**2, 25 / SIZE**2]
    assert result.defect_types == ["bump", "dent"]


def test_jpeg_records_its_header_size_and_mode(tmp_path):
    # pHash decodes JPEGs at reduced scale; the recorded size and mode must not follow it.
    root = tmp_path / "visa"
    image = "pcb1/Data/Images/Anomaly/002.JPG"
    mask_path = "pcb1/Data/Masks/Anomaly/002.png"
    write_image(root, image, textured_rgb(384, 512), format="JPEG")
    mask = np.zeros((384, 512), np.uint8)
    mask[300:340, 400:500] = 1
    write_image(root, mask_path, mask)
    sample = make_sample(image, [mask_path], source="visa")
    annotation = annotated(AnnotateStage({"visa": str(root)}).process(sample)).annotation
    assert (annotation.width, annotation.height, annotation.mode) == (512, 384, "RGB")
    assert annotation.bboxes == [(400, 300, 100, 40)]
    assert annotation.grid_cells == ["bottom right"]


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "I;16", "RGB", "I"])
def test_mask_modes_binarise_alike(tmp_path, mode):
    root = tmp_path / "release"
    write_image(root, "c/img.png", textured_rgb(SIZE, SIZE))
    grey = rectangle_mask(slice(20, 30), slice(40, 70), value=255)
    grey[5, 5] = 1  # a faint pixel is still defect
    mask = Image.fromarray(grey).convert(mode)
    mask_path = "c/mask.tif" if mode == "I" else "c/mask.png"  # PNG cannot hold 32-bit ints
    mask.save(root / mask_path)
    assert Image.open(root / mask_path).mode == mask.mode
    sample = make_sample("c/img.png", [mask_path], source="release")
    annotation = annotated(AnnotateStage({"release": str(root)}).process(sample)).annotation
    expected = np.asarray(mask.convert("L")) > 0
    np.testing.assert_array_equal(rle_decode(annotation.mask_rle), expected)
    assert annotation.region_count == int(expected[5, 5]) + 1


# -- paths ----------------------------------------------------------------------------------


def test_image_path_escaping_the_root(root, stage):
    write_image(root.parent, "outside.png", textured_rgb(SIZE, SIZE))
    entry = quarantined(stage.process(make_sample("../outside.png")), "path_outside_root")
    assert entry.path == "../outside.png"


def test_symlink_leading_outside_the_root(root, stage):
    outside = write_image(root.parent, "outside.png", textured_rgb(SIZE, SIZE))
    link = root / IMAGE
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    entry = quarantined(stage.process(make_sample()), "path_outside_root")
    assert entry.path == IMAGE


def test_mask_or_second_view_escaping_the_root(root, stage):
    write_image(root, IMAGE, textured_rgb(SIZE, SIZE))
    write_image(root.parent, "outside_mask.png", rectangle_mask(slice(0, 5), slice(0, 5)))
    entry = quarantined(
        stage.process(make_sample(masks=["../outside_mask.png"])), "path_outside_root"
    )
    assert entry.path == "../outside_mask.png"
    two_views = make_sample(image_paths=[IMAGE, "/etc/hostname"])
    assert quarantined(stage.process(two_views), "path_outside_root").path == "/etc/hostname"


def test_unknown_source_is_a_programming_error(stage):
    with pytest.raises(KeyError, match="no root for source 'visa'"):
        stage.process(make_sample(source="visa"))


# -- the stage as a runner sees it ----------------------------------------------------------


def test_stage_pickles_and_processes_identically(root, stage):
    write_image(root, IMAGE, textured_rgb(SIZE, SIZE))
    write_image(root, MASK, rectangle_mask(slice(30, 60), slice(0, 40)))
    sample = make_sample(masks=[MASK])
    restored = pickle.loads(pickle.dumps(stage))
    assert vars(restored) == vars(stage)
    assert restored.process(sample).model_dump() == stage.process(sample).model_dump()


def test_processing_leaves_no_state_on_the_stage(root, stage):
    write_image(root, IMAGE, textured_rgb(SIZE, SIZE))
    write_image(root, MASK, rectangle_mask(slice(30, 60), slice(0, 40)))
    before = pickle.dumps(stage)
    for _ in range(3):
        annotated(stage.process(make_sample(masks=[MASK])))
    assert pickle.dumps(stage) == before


def test_memory_stays_flat_over_many_samples(root, stage):
    write_image(root, IMAGE, textured_rgb(SIZE * 4, SIZE * 4))
    write_image(root, MASK, rectangle_mask(slice(30, 200), slice(0, 300), size=SIZE * 4))
    sample = make_sample(masks=[MASK])
    for _ in range(3):
        annotated(stage.process(sample))
    tracemalloc.start()
    try:
        annotated(stage.process(sample))
        baseline, _ = tracemalloc.get_traced_memory()
        for _ in range(20):
            annotated(stage.process(sample))
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # numpy reports its buffers to tracemalloc; one kept mask would be 130 kB.
    assert grown - baseline < 50_000


@pytest.mark.parametrize(
    "options", [{"max_image_pixels": 0}, {"grid_min_share": -0.1}, {"grid_min_share": 1.5}]
)
def test_bad_configuration_is_refused(tmp_path, options):
    with pytest.raises(ConfigError):
        AnnotateStage({"mvtec_ad": str(tmp_path)}, **options)
