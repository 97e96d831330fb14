"""Source builders over synthetic trees in each release's exact layout: listing only, no pixels."""

from __future__ import annotations

from pathlib import Path

import pytest
import trees

from adinstruct.builder.errors import ConfigError, LayoutError
from adinstruct.builder.sources import get_builder, list_builders
from adinstruct.schemas import QuarantineEntry, Sample


def listing(name: str, root: Path, **options) -> tuple[dict[str, Sample], list[QuarantineEntry]]:
    return trees.listed(get_builder(name)(root, **options))


def assert_matches(tree: trees.Tree, samples: dict[str, Sample]) -> None:
    assert set(samples) == set(tree.samples)
    for sample_id, expected in tree.samples.items():
        sample = samples[sample_id]
        assert (sample.category, sample.split, sample.label) == (
            expected.category, expected.split, expected.label,
        ), sample_id  # fmt: skip
        if expected.label == "anomaly" and expected.bbox is not None:
            assert sample.masks, f"{sample_id} lost its mask"
        if expected.label == "normal":
            assert sample.masks == [] and sample.defect_types == []
        for path in sample.image_paths + [mask.path for mask in sample.masks]:
            assert (tree.root / path).is_file(), path


def test_mvtec_ad_lists_every_image_with_its_mask(tmp_path):
    tree = trees.write_mvtec_ad(tmp_path / "mvtec")
    samples, entries = listing("mvtec", tree.root)
    assert entries == []
    assert_matches(tree, samples)
    crack = samples["mvtec_ad/bottle/test/broken_large/000"]
    assert crack.defect_types == ["broken_large"]
    assert crack.masks[0].path == "bottle/ground_truth/broken_large/000_mask.png"
    assert crack.masks[0].defect_type == "broken_large"
    upper = samples["mvtec_ad/bottle/test/contamination/001"]
    assert upper.image_paths == ["bottle/test/contamination/001.PNG"]
    assert upper.masks[0].path.endswith("001_mask.PNG")
    # The release's single-channel categories are marked as such before any pixel is read.
    assert samples["mvtec_ad/grid/train/good/000"].modality == "grey"
    assert samples["mvtec_ad/bottle/train/good/000"].modality == "rgb"


def test_mvtec_pairing_failures_name_both_files(tmp_path):
    tree = trees.write_mvtec_ad(tmp_path / "mvtec", faults=True)
    samples, entries = listing("mvtec_ad", tree.root)
    by_code = {entry.code: entry for entry in entries}
    missing = by_code["mask_missing"]
    assert missing.path == "bottle/test/broken_large/004.png"
    assert "bottle/ground_truth/broken_large/004_mask.png" in missing.reason
    orphan = by_code["mask_orphan"]
    assert orphan.path == "bottle/ground_truth/broken_large/099_mask.png"
    assert "bottle/test/broken_large/099" in orphan.reason
    # Pixel faults are the annotate stage's to find: listing keeps those samples.
    assert "mvtec_ad/bottle/test/broken_large/001" in samples


def test_listing_reads_no_pixels(tmp_path):
    tree = trees.write_mvtec_ad(tmp_path / "mvtec")
    for path in tree.root.rglob("*.png"):
        path.write_bytes(b"not an image at all")
    samples, entries = listing("mvtec_ad", tree.root)
    # Garbage pixels are the annotate stage's business: every sample is still listed.
    assert set(samples) == set(tree.samples) and entries == []


def test_single_category_root_is_accepted(tmp_path):
    tree = trees.write_mvtec_ad(tmp_path / "mvtec")
    samples, _ = listing("mvtec_ad", tree.root / "grid")
    assert {s.category for s in samples.values()} == {"grid"}
    assert "mvtec_ad/train/good/000" in samples


def test_mpdd_shares_the_layout(tmp_path):
    tree = trees.write_mvtec_ad(tmp_path / "mpdd", source="mpdd")
    samples, entries = listing("mpdd", tree.root)
    assert entries == []
    assert_matches(tree, samples)
    assert get_builder("mpdd").card().license == "CC-BY-NC-SA-4.0"


def test_visa_raw_reads_split_csv_and_names_defects(tmp_path):
    tree = trees.write_visa_raw(tmp_path / "VisA")
    samples, entries = listing("visa", tree.root)
    assert entries == []
    assert_matches(tree, samples)
    pcb = samples["visa/pcb1/Data/Images/Anomaly/000"]
    assert pcb.image_paths == ["pcb1/Data/Images/Anomaly/000.JPG"]
    assert pcb.defect_types == ["bent", "scratch"]  # from image_anno.csv
    assert pcb.masks[0].value_names == {1: "Bent", 2: "Melt", 3: "Scratch", 4: "Missing"}
    assert samples["visa/candle/Data/Images/Normal/0002"].split == "test"


def test_visa_paths_outside_the_root_are_quarantined_never_opened(tmp_path):
    tree = trees.write_visa_raw(tmp_path / "VisA", faults=True)
    samples, entries = listing("visa", tree.root)
    escaped = sorted(entry.path for entry in entries if entry.code == "path_outside_root")
    assert escaped == sorted(path for code, path in tree.faults if code == "path_outside_root")
    assert all("outside the source root" in entry.reason for entry in entries)
    assert all(".." not in path for s in samples.values() for path in s.image_paths)


def test_visa_other_split_files(tmp_path):
    tree = trees.write_visa_raw(tmp_path / "VisA")
    samples, _ = listing("visa", tree.root, split_file="2cls_highshot")
    assert len(samples) == len(tree.samples)
    with pytest.raises(ConfigError, match="split file"):
        get_builder("visa")(tree.root, split_file="3cls")


def test_visa_pytorch_copy_has_no_defect_names(tmp_path):
    tree = trees.write_visa_pytorch(tmp_path / "VisA_pytorch")
    for root in (tree.root, tree.root / "1cls"):
        samples, entries = listing("visa", root)
        assert entries == []
        assert_matches(trees.Tree(tree.root / "1cls", tree.samples), samples)
        bad = samples["visa/pcb1/test/bad/000"]
        assert bad.defect_types == [] and bad.extra == {"anomaly_folder": "bad"}
    assert get_builder("visa")(tree.root).layout == "pytorch-1cls"


def test_mvtec_loco_lists_a_folder_of_masks_per_image(tmp_path):
    tree = trees.write_mvtec_loco(tmp_path / "loco")
    samples, entries = listing("loco", tree.root)
    assert entries == []
    assert_matches(tree, samples)
    logical = samples["mvtec_loco/breakfast_box/test/logical_anomalies/000"]
    assert [m.path for m in logical.masks] == [
        "breakfast_box/ground_truth/logical_anomalies/000/000.png",
        "breakfast_box/ground_truth/logical_anomalies/000/001.png",
    ]
    assert logical.masks[0].value_names == {232: "missing_almonds", 7: "box_damage"}
    assert logical.extra == {"anomaly_type": "logical"}
    assert samples["mvtec_loco/breakfast_box/validation/good/000"].split == "val"


def test_btad_ok_ko_and_bmp(tmp_path):
    tree = trees.write_btad(tmp_path / "BTAD")
    samples, entries = listing("btad", tree.root)
    assert entries == []
    assert_matches(tree, samples)
    assert samples["btad/03/test/ko/0000"].masks[0].path == "03/ground_truth/ko/0000.bmp"
    assert samples["btad/01/test/ko/0000"].defect_types == []


def test_real_iad_index_groups_camera_views(tmp_path):
    tree = trees.write_real_iad(tmp_path / "Real-IAD", faults=True)
    samples, entries = listing("realiad", tree.root)
    assert [(e.code, e.path) for e in entries] == tree.faults
    assert_matches(tree, samples)
    anomalous = [s for s in samples.values() if s.label == "anomaly"]
    assert {s.group for s in anomalous} == {"audiojack/S0002"}
    assert {s.extra["camera"] for s in anomalous} == {"C1", "C2"}
    assert all(s.extra["anomaly_class"] == "AK" for s in anomalous)


def test_real_iad_resolution_must_exist(tmp_path):
    tree = trees.write_real_iad(tmp_path / "Real-IAD")
    with pytest.raises(LayoutError, match="realiad_1024"):
        get_builder("real_iad")(tree.root, resolution="1024")


def test_folder_of_own_images(tmp_path):
    tree = trees.write_folder(tmp_path / "widgets")
    samples, entries = listing("folder", tree.root)
    assert entries == []
    assert_matches(tree, samples)
    assert samples["folder/anomaly/scratch/d"].masks[0].path == "masks/scratch/d.png"


@pytest.mark.parametrize("builder", list_builders(), ids=lambda b: b.name)
def test_wrong_root_says_what_was_expected(builder, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.txt").write_text("nothing here")
    with pytest.raises(LayoutError) as raised:
        builder(tmp_path / "photos")
    message = str(raised.value)
    assert builder.name in message and "Expected" in message and str(tmp_path) in message
    with pytest.raises(LayoutError, match="does not exist"):
        builder(tmp_path / "missing")


def test_every_builder_records_its_licence():
    licences = {builder.name: builder.card().license for builder in list_builders()}
    assert licences["mvtec_ad"] == "CC-BY-NC-SA-4.0"
    assert licences["visa"] == "CC-BY-4.0"
    assert licences["btad"] == "CC-BY-SA-4.0"  # the authors' README, not anomalib's reading
    assert licences["folder"] == "unknown"


def test_unknown_source_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"known sources: .*mvtec_ad"):
        get_builder("kitti")


def test_every_builder_has_a_catalog_card():
    for builder in list_builders():
        card = builder.card()
        assert card.name == builder.name and card.title and card.license


def test_index_files_linked_from_outside_are_never_read(tmp_path):
    secret = tmp_path / "elsewhere" / "secret.json"
    secret.parent.mkdir()
    secret.write_text('[{"defect_name": "leaked", "pixel_value": 1}]')
    tree = trees.write_mvtec_loco(tmp_path / "loco")
    config = tree.root / "breakfast_box" / "defects_config.json"
    config.unlink()
    config.symlink_to(secret)
    samples, entries = listing("mvtec_loco", tree.root)
    assert [entry.code for entry in entries] == ["bad_defects_config"]
    assert "outside the source root" in entries[0].reason
    assert all(m.value_names is None for s in samples.values() for m in s.masks)

    visa = trees.write_visa_raw(tmp_path / "VisA")
    split = visa.root / "split_csv" / "1cls.csv"
    (tmp_path / "elsewhere" / "1cls.csv").write_bytes(split.read_bytes())
    split.unlink()
    split.symlink_to(tmp_path / "elsewhere" / "1cls.csv")
    with pytest.raises(LayoutError, match="outside the source root"):
        listing("visa", visa.root)
