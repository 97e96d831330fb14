"""The point splatter: views show the object, depth order holds, highlights stay out of training
images, and the same cloud always gives the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
import trees_3d

from adinstruct.builder.annotate.render import (
    BACKGROUND,
    Viewpoint,
    depth_image,
    render_folder,
    render_views,
    viewpoints,
    write_views,
)

SIZE = 128


@pytest.mark.parametrize("count", [4, 9])
def test_views_show_the_framed_object(count):
    points, _ = trees_3d.sphere(20_000, seed=1)
    views = render_views(points, count, size=SIZE)
    assert len(views) == count == len(viewpoints(count))
    assert len({(v.viewpoint.azimuth, v.viewpoint.elevation) for v in views}) == count
    for view in views:
        assert view.image.shape == (SIZE, SIZE, 3) and view.image.dtype == np.uint8
        assert 0.5 < view.coverage.mean() < 0.95  # a disc filling most of a square
        background = view.image[~view.coverage]
        assert (background == BACKGROUND).all()
        assert (view.image[view.coverage] != BACKGROUND).any(axis=1).all()
        rows, cols = np.nonzero(view.coverage)
        # Framed to fill the view: the object spans all but the margins.
        assert cols.max() - cols.min() >= 0.85 * SIZE and rows.max() - rows.min() >= 0.85 * SIZE
        assert view.highlight is None and view.anomaly_mask is None


def test_nearer_shape_wins_where_two_overlap():
    far, _ = trees_3d.sphere(40_000, seed=2)
    near = trees_3d.sphere(10_000, seed=6)[0] * 0.5 + [0.0, 0.0, 2.0]  # a smaller one above
    points = np.vstack([far, near])
    blue = np.tile(np.array([30, 30, 230], np.uint8), (len(far), 1))
    red = np.tile(np.array([230, 30, 30], np.uint8), (len(near), 1))
    colors = np.vstack([blue, red])
    above, below = Viewpoint(0.0, 90.0), Viewpoint(0.0, -90.0)
    top, bottom = render_views(points, [above, below], colors=colors, size=SIZE, lighting=0)
    for view, winner in ((top, 0), (bottom, 2)):
        cols, rows, _ = view.camera.project(near[np.abs(near[:, 0]) + np.abs(near[:, 1]) < 0.1])
        centre = view.image[rows, cols].astype(int)
        # From above the red sphere hides the blue one's middle; from below the blue one wins.
        assert (centre[:, winner] > centre[:, 2 - winner] + 60).all()


def test_anomalous_points_fall_inside_the_highlight_only():
    points, labels = trees_3d.sphere(40_000, defect="bulge", seed=3)
    for view in render_views(points, 9, labels=labels, size=SIZE):
        assert view.highlight is not None and view.anomaly_mask is not None
        mask = view.anomaly_mask
        # Training images never show the answer: no highlight colour anywhere in them.
        image = view.image.astype(int)
        assert (np.abs(image[..., 0] - image[..., 2]) <= 1).all()
        highlight = view.highlight.astype(int)
        assert (highlight[mask][:, 0] > highlight[mask][:, 2] + 60).all()
        assert (view.highlight[~mask] == view.image[~mask]).all()
        # Highlighted pixels lie where anomalous points land, up to the splat radius.
        cols, rows, _ = view.camera.project(points[labels])
        footprint = np.zeros_like(mask)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                footprint[np.clip(rows + dy, 0, SIZE - 1), np.clip(cols + dx, 0, SIZE - 1)] = True
        assert not (mask & ~footprint).any()
    # The bulge around +x: seen head-on, every anomalous point lands in the highlight; from the
    # opposite side, none is visible.
    facing, behind = render_views(
        points, [Viewpoint(0.0, 0.0), Viewpoint(180.0, 0.0)], labels=labels, size=SIZE
    )
    cols, rows, _ = facing.camera.project(points[labels])
    assert facing.anomaly_mask[rows, cols].mean() > 0.98
    assert not behind.anomaly_mask.any()


def test_renders_are_deterministic_to_the_byte(tmp_path):
    points, labels = trees_3d.sphere(10_000, defect="sink", seed=4)
    first = write_views(render_views(points, 4, labels=labels, size=SIZE), tmp_path / "a")
    second = write_views(render_views(points, 4, labels=labels, size=SIZE), tmp_path / "b")
    assert first == second
    assert first["view"] == [f"view_{i:02d}.png" for i in range(4)]
    assert len(first["highlight"]) == len(first["mask"]) == 4
    for name in [*first["view"], *first["highlight"], *first["mask"]]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    shuffled = np.random.default_rng(0).permutation(len(points))
    again = render_views(points[shuffled], 4, labels=labels[shuffled], size=SIZE)
    # Reordering the points changes which of two equally near points wins, never coverage.
    original = render_views(points, 4, labels=labels, size=SIZE)
    for a, b in zip(original, again, strict=True):
        assert (a.coverage == b.coverage).all()


def test_splat_radius_closes_gaps_of_sparse_clouds():
    points, _ = trees_3d.sphere(3000, seed=5)
    bare, splatted = (
        render_views(points, [Viewpoint(0, 30)], size=SIZE, splat_radius=r)[0] for r in (0, 2)
    )
    assert splatted.coverage.sum() > 2 * bare.coverage.sum()


def test_invalid_clouds_are_refused():
    with pytest.raises(ValueError, match="finite"):
        render_views(np.array([[0.0, 0.0, np.nan]]))
    with pytest.raises(ValueError, match="one entry per point"):
        render_views(np.zeros((3, 3)), labels=np.array([True]))


def test_depth_image_is_aligned_with_the_rgb_and_mask():
    shape = trees_3d.box_on_plane(defect="bump", missing="nan")
    depth = depth_image(shape.xyz)
    assert depth.shape == shape.xyz.shape[:2] and depth.dtype == np.uint8
    assert (depth[:2] == 0).all() and (depth[:, -1] == 0).all()  # missing points are black
    size = shape.xyz.shape[0]
    top, plane = depth[size // 2, size // 3], depth[size - 3, size // 2]
    assert top > plane > 0  # the box's top face is nearer the sensor than the plane
    assert depth[shape.mask].mean() > depth[size // 2 + size // 6, size // 2]  # the bump


def test_render_folder_names_the_cloud():
    assert render_folder("airplane/test/4_bulge.pcd") == "airplane/renders/test/4_bulge"
    assert render_folder("4_bulge.pcd") == "renders/4_bulge"
