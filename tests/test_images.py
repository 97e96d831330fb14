"""Images and masks that records point at are placed under the output folder, never outside it."""

from __future__ import annotations

import os

import pytest
import trees

from adinstruct.builder.errors import PathEscapeError
from adinstruct.builder.images import (
    Placement,
    image_reference,
    mask_reference,
    place_sample_files,
)
from adinstruct.schemas import MaskRef, Sample


def sample_of(image: str, mask: str | None = None) -> Sample:
    return Sample(
        id="mvtec_ad/" + image.rsplit(".", 1)[0], source="mvtec_ad", category="bottle",
        split="test", label="anomaly" if mask else "normal", image_paths=[image],
        masks=[MaskRef(path=mask)] if mask else [],
    )  # fmt: skip


@pytest.mark.parametrize("placement", list(Placement))
def test_files_land_where_the_records_say(tmp_path, placement):
    tree = trees.write_mvtec_ad(tmp_path / "release")
    sample = sample_of(
        "bottle/test/broken_large/000.png", "bottle/ground_truth/broken_large/000_mask.png"
    )
    out = tmp_path / "out"
    assert place_sample_files(sample, tree.root, out, placement) == 2
    image = out / "images" / image_reference(sample)
    mask = out / mask_reference(sample)
    assert image.read_bytes() == (tree.root / sample.image_paths[0]).read_bytes()
    assert mask.read_bytes() == (tree.root / sample.masks[0].path).read_bytes()
    linked = os.path.samefile(image, tree.root / sample.image_paths[0])
    assert linked == (placement is Placement.hardlink)
    # Placing again is a no-op, and leaves no temporary file behind.
    place_sample_files(sample, tree.root, out, placement)
    assert not list(out.rglob(".*.tmp"))


def test_a_changed_release_file_is_placed_again(tmp_path):
    tree = trees.write_mvtec_ad(tmp_path / "release")
    sample = sample_of("bottle/train/good/000.png")
    out = tmp_path / "out"
    place_sample_files(sample, tree.root, out, Placement.copy)
    trees.write_image(tree.root / sample.image_paths[0], seed=99)
    place_sample_files(sample, tree.root, out, Placement.copy)
    placed = out / "images" / image_reference(sample)
    assert placed.read_bytes() == (tree.root / sample.image_paths[0]).read_bytes()


def test_escaping_paths_are_refused(tmp_path):
    tree = trees.write_mvtec_ad(tmp_path / "release")
    with pytest.raises(PathEscapeError):
        place_sample_files(sample_of("../x.png"), tree.root, tmp_path / "out", Placement.copy)
