"""The synthetic demo and held-out trees are MVTec AD's exact layout, their masks match what
they report, and they are deterministic for a seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adinstruct.builder.demo import (
    CATALOGUE,
    DEMO_CATEGORIES,
    HOLDOUT_CATEGORIES,
    DemoTree,
    TreeExistsError,
    generate_demo_tree,
    generate_holdout_tree,
    generate_mvtec_tree,
    is_generated_tree,
)

SIZE = 128  # small images keep the whole file fast; the layout does not depend on size


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoTree:
    return generate_demo_tree(tmp_path_factory.mktemp("demo") / "mvtec", seed=0, image_size=SIZE)


@pytest.fixture(scope="module")
def holdout(tmp_path_factory: pytest.TempPathFactory) -> DemoTree:
    root = tmp_path_factory.mktemp("holdout") / "mvtec"
    return generate_holdout_tree(root, seed=0, image_size=SIZE)


@pytest.fixture(params=["demo", "holdout"])
def tree(request: pytest.FixtureRequest) -> DemoTree:
    """Each generated sample in turn, for the checks that hold for any tree."""
    return request.getfixturevalue(request.param)


def relative_files(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def expected_files(tree: DemoTree) -> set[str]:
    files = {"license.txt", "readme.txt"}
    for category in tree.categories:
        files |= {f"{category.name}/license.txt", f"{category.name}/readme.txt"}
        files |= set(category.normal_images)
        files |= {anomaly.image for anomaly in category.anomalies}
        files |= {anomaly.mask for anomaly in category.anomalies}
    return files


def test_layout_is_exactly_mvtec(tree: DemoTree) -> None:
    root = tree.root
    assert relative_files(root) == expected_files(tree)
    assert {path.name for path in root.iterdir() if path.is_dir()} == {
        category.name for category in tree.categories
    }
    for category in tree.categories:
        folder = root / category.name
        assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
            "ground_truth",
            "test",
            "train",
        ]
        assert [p.name for p in (folder / "train").iterdir()] == ["good"]
        assert {p.name for p in (folder / "test").iterdir()} == {"good", *category.defect_names}
        assert {p.name for p in (folder / "ground_truth").iterdir()} == set(category.defect_names)
        assert not (folder / "ground_truth" / "good").exists()
        for split_folder in [*(folder / "train").iterdir(), *(folder / "test").iterdir()]:
            names = sorted(p.name for p in split_folder.iterdir())
            assert names == [f"{index:03d}.png" for index in range(len(names))]
        for defect in category.defect_names:
            images = sorted(p.stem for p in (folder / "test" / defect).iterdir())
            masks = sorted(p.name for p in (folder / "ground_truth" / defect).iterdir())
            assert masks == [f"{stem}_mask.png" for stem in images]


def test_demo_mixes_objects_textures_and_one_greyscale_category(demo: DemoTree) -> None:
    kinds = {category.kind for category in demo.categories}
    modes = [category.mode for category in demo.categories]
    assert kinds == {"object", "texture"}
    assert modes.count("L") == 1
    assert 3 <= len(demo.categories) <= 6
    assert demo.total < 150
    for category in demo.categories:
        assert len(category.defect_names) == 2
        assert category.counts["train"] == {"normal": 6, "anomaly": 0}
        assert category.counts["test"] == {"normal": 3, "anomaly": 6}


def test_image_modes_and_sizes(tree: DemoTree) -> None:
    for category in tree.categories:
        paths = [*category.normal_images, *(a.image for a in category.anomalies)]
        for relative in paths:
            with Image.open(tree.root / relative) as image:
                assert image.mode == category.mode, relative
                assert image.size == (SIZE, SIZE), relative


def test_every_mask_matches_its_image_and_the_report(tree: DemoTree) -> None:
    assert tree.anomalies()
    for anomaly in tree.anomalies():
        with (
            Image.open(tree.root / anomaly.image) as image,
            Image.open(tree.root / anomaly.mask) as mask_image,
        ):
            assert mask_image.mode == "L", anomaly.mask
            assert mask_image.size == image.size, anomaly.mask
            mask = np.asarray(mask_image)
        assert set(np.unique(mask).tolist()) == {0, 255}, anomaly.mask
        defect_pixels = mask == 255
        assert 0 < defect_pixels.sum() < defect_pixels.size
        assert int(defect_pixels.sum()) == anomaly.mask_pixels
        rows = np.flatnonzero(defect_pixels.any(axis=1))
        cols = np.flatnonzero(defect_pixels.any(axis=0))
        x, y, width, height = anomaly.mask_bbox
        assert (x, y) == (cols[0], rows[0])
        assert (x + width - 1, y + height - 1) == (cols[-1], rows[-1])
        assert anomaly.image.split("/")[2] == anomaly.defect


def test_defects_alter_the_image_inside_the_mask(tree: DemoTree) -> None:
    # The defect must be visible where the mask says: pixels inside the mask differ from the
    # surrounding ring of pixels more than sensor noise would explain.
    from scipy import ndimage

    for anomaly in tree.anomalies():
        image = np.asarray(Image.open(tree.root / anomaly.image), dtype=np.float32)
        mask = np.asarray(Image.open(tree.root / anomaly.mask)) > 0
        ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
        inside, around = image[mask], image[ring]
        assert abs(inside.mean() - around.mean()) > 8 or abs(inside.std() - around.std()) > 8, (
            anomaly.image
        )


def test_reported_counts_equal_the_files(tree: DemoTree) -> None:
    pngs = [path for path in tree.root.rglob("*.png") if "ground_truth" not in path.parts]
    masks = list(tree.root.rglob("*_mask.png"))
    assert len(pngs) == tree.total == tree.normal + tree.anomalous
    assert len(masks) == tree.anomalous
    for category in tree.categories:
        folder = tree.root / category.name
        counts = category.counts
        assert len(list((folder / "train" / "good").iterdir())) == counts["train"]["normal"]
        assert len(list((folder / "test" / "good").iterdir())) == counts["test"]["normal"]
        for defect, count in category.defect_counts.items():
            assert len(list((folder / "test" / defect).iterdir())) == count
        assert sum(category.defect_counts.values()) == counts["test"]["anomaly"]
        assert category.total == sum(n for split in counts.values() for n in split.values())


def test_same_seed_same_bytes_other_seed_other_images(demo: DemoTree, tmp_path: Path) -> None:
    again = generate_demo_tree(tmp_path / "again", seed=0, image_size=SIZE)
    assert again.model_dump(exclude={"root"}) == demo.model_dump(exclude={"root"})
    for relative in expected_files(demo):
        assert (demo.root / relative).read_bytes() == (again.root / relative).read_bytes(), relative

    other = generate_demo_tree(tmp_path / "other", seed=1, image_size=SIZE)
    images = [p for p in expected_files(demo) if p.endswith(".png")]
    differing = [p for p in images if (demo.root / p).read_bytes() != (other.root / p).read_bytes()]
    assert len(differing) == len(images)


def test_report_round_trips_through_json(tree: DemoTree) -> None:
    again = DemoTree.model_validate_json(tree.model_dump_json())
    assert again == tree
    assert (again.total, again.normal, again.anomalous) == (tree.total, tree.normal, tree.anomalous)


def test_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(TreeExistsError, match="not an empty folder"):
        generate_demo_tree(tmp_path, image_size=64)
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_catalogue_keeps_the_demo_order_and_appends_the_held_out_categories() -> None:
    # A category's index keys its images' random streams and `categories=2` takes the first
    # two, so reordering the demo's entries would silently change every tree and benchmark.
    assert CATALOGUE == DEMO_CATEGORIES + HOLDOUT_CATEGORIES
    assert [spec.name for spec in DEMO_CATEGORIES] == ["washer", "fabric", "capsule", "grid"]
    assert [spec.name for spec in HOLDOUT_CATEGORIES] == ["nut", "wood"]


def test_holdout_has_only_unseen_categories_with_the_planted_counts(
    demo: DemoTree, holdout: DemoTree
) -> None:
    assert [category.name for category in holdout.categories] == ["nut", "wood"]
    assert not {c.name for c in holdout.categories} & {c.name for c in demo.categories}
    assert {category.kind for category in holdout.categories} == {"object", "texture"}
    assert (holdout.total, holdout.normal, holdout.anomalous) == (30, 18, 12)
    for category in holdout.categories:
        assert category.counts == {
            "train": {"normal": 6, "anomaly": 0},
            "test": {"normal": 3, "anomaly": 6},
        }
        assert category.defect_counts == dict.fromkeys(category.defect_names, 3)
        assert sorted(a.defect for a in category.anomalies) == sorted(category.defect_names * 3)


def test_holdout_is_a_generated_tree_and_is_never_overwritten(holdout: DemoTree) -> None:
    assert is_generated_tree(holdout.root)
    readme = (holdout.root / "readme.txt").read_text(encoding="utf-8")
    assert "nut (RGB), wood (RGB)" in readme
    before = relative_files(holdout.root)
    with pytest.raises(TreeExistsError, match="not an empty folder"):
        generate_holdout_tree(holdout.root, image_size=64)
    assert relative_files(holdout.root) == before


def test_holdout_same_seed_same_bytes_other_seed_other_images(
    holdout: DemoTree, tmp_path: Path
) -> None:
    again = generate_holdout_tree(tmp_path / "again", seed=0, image_size=SIZE)
    assert again.model_dump(exclude={"root"}) == holdout.model_dump(exclude={"root"})
    for relative in expected_files(holdout):
        assert (holdout.root / relative).read_bytes() == (again.root / relative).read_bytes()

    other = generate_holdout_tree(tmp_path / "other", seed=1, image_size=SIZE)
    images = [p for p in expected_files(holdout) if p.endswith(".png")]
    differing = [
        p for p in images if (holdout.root / p).read_bytes() != (other.root / p).read_bytes()
    ]
    assert len(differing) == len(images)


def mean_colours(tree: DemoTree) -> dict[str, np.ndarray]:
    """Each category's images as their mean RGB colour, one row per image."""
    colours = {}
    for category in tree.categories:
        paths = [*category.normal_images, *(a.image for a in category.anomalies)]
        colours[category.name] = np.array(
            [
                np.asarray(Image.open(tree.root / p).convert("RGB"), np.float32).mean(axis=(0, 1))
                for p in paths
            ]
        )
    return colours


def test_held_out_categories_look_unlike_every_demo_category(
    demo: DemoTree, holdout: DemoTree
) -> None:
    # A held-out category that rendered like a demo one would test nothing zero-shot. Even
    # the crudest feature, an image's mean colour, must tell every category apart: each
    # image lies nearest its own category's centre, and far from every other's.
    colours = {**mean_colours(demo), **mean_colours(holdout)}
    centres = {name: rows.mean(axis=0) for name, rows in colours.items()}
    for name, rows in colours.items():
        to_own = np.linalg.norm(rows - centres[name], axis=1)
        for other, centre in centres.items():
            if other != name:
                assert (np.linalg.norm(rows - centre, axis=1) > to_own).all(), (name, other)
    for held_out in HOLDOUT_CATEGORIES:
        for shown in DEMO_CATEGORIES:
            gap = np.linalg.norm(colours[held_out.name] - centres[shown.name], axis=1).min()
            assert gap > 20, (held_out.name, shown.name, gap)


def test_mvtec_tree_at_scale_has_the_requested_counts(tmp_path: Path) -> None:
    tree = generate_mvtec_tree(tmp_path / "bench", n_images=30, image_size=SIZE, seed=3)
    assert tree.total == 30
    assert tree.anomalous == 10
    assert len([p for p in tree.root.rglob("*.png") if "ground_truth" not in p.parts]) == 30
    assert len(list(tree.root.rglob("*_mask.png"))) == 10
    assert len(tree.categories) == 2
    assert {category.kind for category in tree.categories} == {"object", "texture"}
    for category in tree.categories:
        assert category.counts["train"]["normal"] > 0
        assert category.counts["test"]["normal"] > 0
        assert all(count > 0 for count in category.defect_counts.values())


def test_workers_do_not_change_the_bytes(tmp_path: Path) -> None:
    serial = generate_mvtec_tree(tmp_path / "one", n_images=8, image_size=64, workers=1)
    pooled = generate_mvtec_tree(tmp_path / "two", n_images=8, image_size=64, workers=2)
    assert serial.model_dump(exclude={"root"}) == pooled.model_dump(exclude={"root"})
    for path in relative_files(serial.root):
        assert (serial.root / path).read_bytes() == (pooled.root / path).read_bytes(), path


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"n_images": 10, "categories": 9}, "categories"),
        ({"n_images": 1, "categories": 2}, "n_images"),
        ({"n_images": 10, "anomaly_fraction": 1.0}, "anomaly_fraction"),
        ({"n_images": 10, "image_size": 8}, "image_size"),
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, arguments: dict, message: str) -> None:
    arguments = {"image_size": 64, **arguments}
    with pytest.raises(ValueError, match=message):
        generate_mvtec_tree(tmp_path / "bad", **arguments)
    assert not (tmp_path / "bad").exists()
