"""The MVTec 3D-AD and Real3D-AD builders over synthetic trees in their exact layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trees_3d
from trees import listed

from adinstruct.builder.annotate.pointcloud import read_pcd, read_point_labels, read_xyz_tiff
from adinstruct.builder.errors import LayoutError
from adinstruct.builder.sources.mvtec_3d import MVTec3DAD
from adinstruct.builder.sources.real3d import Real3DAD, defect_words
from adinstruct.schemas import Sample


def assert_planted(tree, samples: dict[str, Sample], modality: str) -> None:
    assert set(samples) == set(tree.samples)
    for sample_id, expected in tree.samples.items():
        sample = samples[sample_id]
        facts = (sample.category, sample.split, sample.label, sample.defect_types)
        assert facts == (expected.category, expected.split, expected.label,
                         expected.defect_types), sample_id  # fmt: skip
        assert sample.modality == modality and sample.view_count == 1
        for path in sample.image_paths + [mask.path for mask in sample.masks]:
            assert (tree.root / path).is_file(), path


def test_mvtec_3d_ad_lists_rgb_with_its_cloud_and_mask(tmp_path):
    tree = trees_3d.write_mvtec_3d(tmp_path / "mvtec3d")
    builder = MVTec3DAD(tree.root)
    assert builder.name == "mvtec_3d_ad" and builder.card().license == "CC-BY-NC-SA-4.0"
    samples, entries = listed(builder)
    assert entries == []
    assert_planted(tree, samples, "depth")
    crack = samples["mvtec_3d_ad/bagel/test/crack/rgb/000"]
    assert crack.image_paths == ["bagel/test/crack/rgb/000.png"]
    assert crack.extra == {"xyz": "bagel/test/crack/xyz/000.tiff"}
    assert [(m.path, m.defect_type) for m in crack.masks] == [("bagel/test/crack/gt/000.png",
                                                              "crack")]  # fmt: skip
    assert samples["mvtec_3d_ad/foam/validation/good/rgb/001"].split == "val"
    assert samples["mvtec_3d_ad/foam/train/good/rgb/000"].masks == []
    # The cloud it names is one the reader takes, with the planted defect's points valid.
    xyz = read_xyz_tiff(tree.root / crack.extra["xyz"])
    assert xyz.shape == (trees_3d.GRID, trees_3d.GRID, 3)


def test_mvtec_3d_ad_quarantines_unpaired_files(tmp_path):
    tree = trees_3d.write_mvtec_3d(tmp_path / "mvtec3d", faults=True)
    (tree.root / "foam/test/hole/xyz/007.tiff").write_bytes(b"")
    samples, entries = listed(MVTec3DAD(tree.root))
    assert set(samples) == set(tree.samples)
    found = {(entry.code, entry.path) for entry in entries}
    assert found == {*tree.faults, ("rgb_missing", "foam/test/hole/xyz/007.tiff")}
    missing = next(entry for entry in entries if entry.code == "mask_missing")
    assert "bagel/test/crack/gt/001.png" in missing.reason
    assert missing.sample_id == "mvtec_3d_ad/bagel/test/crack/rgb/001"


def test_mvtec_3d_ad_accepts_one_category_and_refuses_other_trees(tmp_path):
    tree = trees_3d.write_mvtec_3d(tmp_path / "mvtec3d")
    samples, _ = listed(MVTec3DAD(tree.root / "bagel"))
    assert {s.category for s in samples.values()} == {"bagel"}
    assert len(samples) == sum(1 for e in tree.samples.values() if e.category == "bagel")
    with pytest.raises(LayoutError, match="MVTec 3D-AD"):
        MVTec3DAD(tmp_path)  # holds only mvtec3d/, which is the root, not a category
    plain = tmp_path / "plain" / "bottle" / "train" / "good"
    plain.mkdir(parents=True)
    with pytest.raises(LayoutError, match="train/good/rgb"):
        MVTec3DAD(tmp_path / "plain")


def test_real3d_ad_lists_prototypes_tests_and_point_labels(tmp_path):
    tree = trees_3d.write_real3d(tmp_path / "real3d")
    builder = Real3DAD(tree.root)
    assert builder.name == "real3d_ad" and builder.card().license == "CC-BY-4.0"
    samples, entries = listed(builder)
    assert entries == []
    assert_planted(tree, samples, "point_cloud")
    sink = samples["real3d_ad/shell/test/5_sink_cut"]
    assert sink.image_paths == ["shell/test/5_sink_cut.pcd"]
    assert sink.extra == {"cut": "true", "point_labels": "shell/gt/5_sink_cut.txt"}
    assert sink.masks == []  # per-point labels are no pixel mask: renders make those
    assert samples["real3d_ad/airplane/train/2_template"].split == "train"
    assert samples["real3d_ad/airplane/test/3_good"].extra == {}
    # The files it names are ones the readers take: the labels mark the planted bulge.
    bulge = samples["real3d_ad/airplane/test/4_bulge"]
    points, labels = read_point_labels(tree.root / bulge.extra["point_labels"])
    assert labels.any() and len(points) == len(read_pcd(tree.root / bulge.image_paths[0]))


def test_real3d_ad_quarantines_unpaired_and_stray_files(tmp_path):
    tree = trees_3d.write_real3d(tmp_path / "real3d", faults=True)
    stray, _ = trees_3d.sphere(10)
    trees_3d.write_pcd(tree.root / "shell" / "train" / "scan.pcd", stray, binary=True)
    samples, entries = listed(Real3DAD(tree.root))
    assert set(samples) == set(tree.samples)
    found = {(entry.code, entry.path) for entry in entries}
    assert found == {*tree.faults, ("unexpected_file", "shell/train/scan.pcd")}


def test_real3d_ad_normal_labels_travel_for_annotate_to_check(tmp_path):
    tree = trees_3d.write_real3d(tmp_path / "real3d")
    cloud, _ = trees_3d.sphere(50)
    trees_3d.write_point_labels(tree.root / "airplane/gt/3_good.txt", cloud, np.zeros(50))
    samples, entries = listed(Real3DAD(tree.root))
    assert entries == []  # not an orphan: it belongs to a listed cloud
    assert samples["real3d_ad/airplane/test/3_good"].extra == {
        "point_labels": "airplane/gt/3_good.txt"
    }


@pytest.mark.parametrize(
    ("stem", "words"),
    [("4_bulge", ["bulge"]), ("482_bulge_cut", ["bulge"]), ("7", []), ("2_Sink", ["sink"])],
)
def test_defect_names_come_from_file_names(stem, words):
    assert defect_words(stem) == words


def test_real3d_ad_refuses_a_tree_without_clouds(tmp_path: Path):
    (tmp_path / "airplane" / "train").mkdir(parents=True)
    with pytest.raises(LayoutError, match="Real3D-AD"):
        Real3DAD(tmp_path)
