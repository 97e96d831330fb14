"""The annotate stage on 3D samples: clouds read, views drawn, annotation measured, files placed.

Every test runs the real stage over the synthetic trees of `trees_3d` (both PCD flavours, the
xyz TIFF) and reads back the files it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import trees_3d
from PIL import Image

from adinstruct.builder.annotate import AnnotateStage
from adinstruct.builder.annotate.geometry import rle_decode
from adinstruct.builder.annotate.render import BACKGROUND, HIGHLIGHT, render_views
from adinstruct.builder.annotate.renders import (
    RenderFolders,
    is_rendered,
    measured_view,
    splat_radius,
    visible_anomaly,
)
from adinstruct.builder.compose.families import question_context
from adinstruct.builder.errors import ConfigError
from adinstruct.builder.images import Placement, image_reference, place_sample_files, shown_images
from adinstruct.builder.sources.mvtec_3d import MVTec3DAD
from adinstruct.builder.sources.real3d import Real3DAD
from adinstruct.schemas import QuarantineEntry, Sample

POINTS = 20_000


def listed(builder) -> dict[str, Sample]:
    return {item.id: item for item in builder.iter_samples() if isinstance(item, Sample)}


def stage_for(builder, folder: Path, views: int = 4) -> AnnotateStage:
    return AnnotateStage({builder.name: str(builder.root)}, renders=str(folder), views=views)


def non_background(path: Path) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return int((pixels != np.array(BACKGROUND, dtype=np.uint8)).any(axis=-1).sum())


@dataclass
class Annotated:
    """One synthetic tree, annotated once for the whole module."""

    tree: object
    builder: object
    folders: RenderFolders
    samples: dict[str, Sample]
    results: dict[str, Sample | QuarantineEntry]


def annotate_tree(tree, builder, folder: Path) -> Annotated:
    folders = RenderFolders(folder)
    stage = stage_for(builder, folders.root)
    samples = listed(builder)
    results = {sample_id: stage.process(sample) for sample_id, sample in samples.items()}
    return Annotated(tree, builder, folders, samples, results)


@pytest.fixture(scope="module")
def real3d(tmp_path_factory) -> Annotated:
    base = tmp_path_factory.mktemp("real3d")
    tree = trees_3d.write_real3d(base / "real3d", broken=True, points=POINTS)
    return annotate_tree(tree, Real3DAD(tree.root), base / "renders")


@pytest.fixture(scope="module")
def mvtec3d(tmp_path_factory) -> Annotated:
    base = tmp_path_factory.mktemp("mvtec3d")
    tree = trees_3d.write_mvtec_3d(base / "mvtec3d", broken=True)
    return annotate_tree(tree, MVTec3DAD(tree.root), base / "renders")


def test_a_real3d_anomaly_gets_views_highlights_and_an_annotation_from_its_labels(real3d):
    folders = real3d.folders
    result = real3d.results["real3d_ad/airplane/test/4_bulge"]
    assert isinstance(result, Sample), result
    assert result.view_count == 4
    assert result.render_paths == [
        f"airplane/renders/test/4_bulge/view_{index:02d}.png" for index in range(4)
    ]
    for relative in result.render_paths:
        assert non_background(folders.view_file("real3d_ad", relative)) > 5_000
    # The annotation: the first view's file facts, the geometry of the view that shows most.
    annotation = result.annotation
    first = Image.open(folders.view_file("real3d_ad", result.render_paths[0]))
    assert (annotation.width, annotation.height, annotation.mode) == (512, 512, "RGB")
    assert annotation.view is not None and annotation.region_count == 1
    assert annotation.grid_cells and 0 < annotation.area_fraction < 0.2
    # The measured mask lies where the highlight view of that view paints the planted points.
    highlights = folders.highlight_files(result)
    assert [path.name for path in highlights] == [f"highlight_{i:02d}.png" for i in range(4)]
    painted = np.asarray(Image.open(highlights[annotation.view]).convert("RGB"))
    red = (np.abs(painted.astype(int) - HIGHLIGHT).sum(axis=-1) < 120) & (painted[..., 0] > 100)
    mask = rle_decode(annotation.mask_rle).astype(bool)
    assert red.any() and (red & mask).sum() > 0.8 * red.sum()
    # The training views never show the highlight colour.
    plain = np.asarray(first.convert("RGB")).astype(int)
    assert not ((np.abs(plain - HIGHLIGHT).sum(axis=-1) < 60).any())
    # Nothing drawn for the describer lies among the files records show.
    assert not list(folders.views.rglob("highlight_*"))
    assert first.size == (512, 512) and first.mode == "RGB"


def test_normal_clouds_get_views_and_no_highlights(real3d):
    normals = [s for s in real3d.samples.values() if s.label == "normal"]
    assert {s.split for s in normals} == {"train", "test"}
    for sample in normals:
        result = real3d.results[sample.id]
        assert isinstance(result, Sample), result
        assert result.annotation.mask_rle is None and result.annotation.view is None
        assert len(result.render_paths) == 4 and real3d.folders.highlight_files(result) == []
        folder = real3d.folders.describer / "real3d_ad" / Path(result.render_paths[0]).parent
        assert not folder.exists()


def test_broken_clouds_are_quarantined_with_the_file_named(real3d, mvtec3d):
    found = set()
    for annotated in (real3d, mvtec3d):
        for sample_id, result in annotated.results.items():
            if isinstance(result, QuarantineEntry):
                assert result.stage == "annotate" and result.path in result.reason, result
                assert result.sample_id == sample_id
                found.add((result.code, result.path))
    assert found == set(real3d.tree.rejected) | set(mvtec3d.tree.rejected)
    by_code = dict(found)
    assert by_code["point_labels_mismatch"] == "shell/gt/8_bulge.txt"


def test_label_count_mismatch_states_both_counts(real3d):
    result = real3d.results["real3d_ad/shell/test/8_bulge"]
    assert isinstance(result, QuarantineEntry) and result.code == "point_labels_mismatch"
    assert f"{POINTS - 5:,} points" in result.reason and f"has {POINTS:,}" in result.reason
    assert "shell/test/8_bulge.pcd" in result.reason


def test_a_normal_cloud_with_labelled_points_is_quarantined(tmp_path):
    tree = trees_3d.write_real3d(tmp_path / "real3d", points=2000)
    cloud, labels = trees_3d.sphere(2000, defect="bulge", seed=3)
    trees_3d.write_pcd(tree.root / "shell/test/3_good.pcd", cloud, binary=True)
    trees_3d.write_point_labels(tree.root / "shell/gt/3_good.txt", cloud, labels)
    builder = Real3DAD(tree.root)
    result = stage_for(builder, tmp_path / "r").process(
        listed(builder)["real3d_ad/shell/test/3_good"]
    )
    assert isinstance(result, QuarantineEntry) and result.code == "mask_on_normal"
    assert result.path == "shell/gt/3_good.txt"


def test_mvtec_3d_ad_gets_a_depth_image_beside_its_rgb_and_views(mvtec3d, tmp_path):
    builder = mvtec3d.builder
    folders = RenderFolders(tmp_path / "renders")
    plain = AnnotateStage({builder.name: str(builder.root)})
    sample = listed(builder)["mvtec_3d_ad/bagel/test/crack/rgb/000"]
    result = stage_for(builder, folders.root, views=9).process(sample)
    assert isinstance(result, Sample), result
    assert result.view_count == 9 and len(result.render_paths) == 10
    depth, *views = result.render_paths
    assert depth == "bagel/test/crack/depth/000.png"
    assert views[0] == "bagel/renders/test/crack/xyz/000/view_00.png"
    depth_pixels = np.asarray(Image.open(folders.view_file("mvtec_3d_ad", depth)))
    assert depth_pixels.shape == (trees_3d.GRID, trees_3d.GRID)  # aligned with rgb and gt
    assert (depth_pixels[:2] == 0).all()  # the missing rows stay black
    for relative in views:
        assert non_background(folders.view_file("mvtec_3d_ad", relative)) > 1_000
    # The annotation is the rgb's and its gt mask's, exactly as for a 2D image.
    as_image = plain._annotate_image(sample)[0].annotation
    assert result.annotation == as_image and result.annotation.view is None
    assert len(folders.highlight_files(result)) == 9
    # Records show the rgb, the depth image, then the views: never the xyz.
    shown = shown_images(result)
    assert shown[:2] == ["mvtec_3d_ad/bagel/test/crack/rgb/000.png",
                         "mvtec_3d_ad/bagel/test/crack/depth/000.png"]  # fmt: skip
    assert len(shown) == 11 and not any(path.endswith(".tiff") for path in shown)
    assert image_reference(result) == shown[0]


def test_placing_a_3d_sample_never_copies_its_cloud(real3d, mvtec3d, tmp_path):
    out = tmp_path / "out"
    for annotated in (real3d, mvtec3d):
        root = annotated.builder.root
        kept = [result for result in annotated.results.values() if isinstance(result, Sample)]
        for result in kept:
            placed = place_sample_files(result, root, out, Placement.copy, annotated.folders.views)
            assert placed == len(shown_images(result)) + len(result.masks)
            for image in shown_images(result):
                assert (out / "images" / image).is_file()
        with pytest.raises(ValueError, match="render folder"):
            place_sample_files(kept[0], root, out, Placement.copy)
    files = [path for path in (out / "images").rglob("*") if path.is_file()]
    assert files and all(path.suffix == ".png" for path in files)
    assert not [path for path in files if "highlight" in path.name or "mask_" in path.name]


def test_question_context_names_the_measured_view(real3d):
    result = real3d.results["real3d_ad/shell/test/4_bulge"]
    context = question_context(result)
    assert context["three_d"] is True and context["medical"] is False
    ordinals = ["first", "second", "third", "fourth"]
    assert context["frame"] == f"the {ordinals[result.annotation.view]} view"
    assert is_rendered(result)


def test_a_3d_sample_without_a_render_folder_is_a_configuration_error(real3d):
    builder = real3d.builder
    stage = AnnotateStage({builder.name: str(builder.root)})
    with pytest.raises(ConfigError, match="render folder"):
        stage.process(real3d.samples["real3d_ad/shell/test/3_good"])


# -- the helpers, on clouds drawn here -----------------------------------------------------


@pytest.mark.parametrize(("points", "radius"), [(640_000, 1), (200_000, 2), (20_000, 4),
                                                (100, 8)])  # fmt: skip
def test_splat_radius_follows_the_point_spacing(points, radius):
    assert splat_radius(points, 512) == radius


def test_visible_anomaly_joins_fragments_and_drops_specks():
    points, labels = trees_3d.sphere(POINTS, defect="bulge", seed=5)
    radius = splat_radius(POINTS, 512)
    views = render_views(points, 4, labels=labels, size=512, splat_radius=radius)
    masks = [visible_anomaly(view, radius) for view in views]
    for view, mask in zip(views, masks, strict=True):
        assert not (mask & ~view.coverage).any()
    best = measured_view(masks)
    assert best is not None and masks[best].sum() == max(mask.sum() for mask in masks)
    from scipy import ndimage

    _, fragments = ndimage.label(views[best].anomaly_mask, structure=np.ones((3, 3)))
    _, regions = ndimage.label(masks[best], structure=np.ones((3, 3)))
    assert fragments > 1 and regions == 1
    assert measured_view([np.zeros((4, 4), bool)] * 3) is None


def test_the_gate_takes_a_3d_samples_rendered_images_along(real3d, mvtec3d):
    from adinstruct.builder.gate import record_images

    for annotated in (real3d, mvtec3d):
        for result in annotated.results.values():
            if isinstance(result, Sample):
                data = result.model_dump(mode="json")
                assert record_images(data, None) == shown_images(result)
