"""Synthetic BMAD subsets in each of the three layouts SOURCES.md lists, as small PNGs.

    readme:        <split>/{good,Ungood}/img/x.png  + <split>/Ungood/anomaly_mask/x.png
    label-folders: <split>/{good,Ungood}/img/x.png  + <split>/{good,Ungood}/label/x.png
    split-folders: <split>/img/{good,Ungood}/x.png  + <split>/label/{good,Ungood}/x.png

Brain slices and masks are RGBA, saved through a grey colour map as BMAD's scripts save them
(R = G = B, alpha 255 everywhere); the other subsets are greyscale, histopathology RGB. The
label-only subsets (Retina_OCT2017, Chest, Histopathology) have no mask folder at all. Every
writer returns the repo's `Tree`: the subset folder and what a build must report for it.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from trees import SIZE, Tree, union_bbox, write_image, write_mask

LAYOUTS = ("readme", "label-folders", "split-folders")


@dataclass(frozen=True)
class SubsetPlan:
    folder: str  # the subset's folder name in BMAD
    category: str
    modality: str
    has_masks: bool
    mode: str  # PIL mode of its images


SUBSETS: dict[str, SubsetPlan] = {
    "bmad_brain": SubsetPlan("Brain", "brain", "mri", True, "RGBA"),
    "bmad_liver": SubsetPlan("Liver", "liver", "ct", True, "L"),
    "bmad_retina_resc": SubsetPlan("Retina_RESC", "retina", "oct", True, "L"),
    "bmad_retina_oct2017": SubsetPlan("Retina_OCT2017", "retina", "oct", False, "L"),
    "bmad_chest": SubsetPlan("Chest", "chest", "xray", False, "L"),
    "bmad_histopathology": SubsetPlan("Histopathology", "lymph_node", "histopathology", False,
                                      "RGB"),
}  # fmt: skip

#: (split folder, split, label folder, stem, mask boxes): boxes in different grid cells.
PLANTED: tuple[tuple[str, str, str, str, list[tuple[int, int, int, int]]], ...] = (
    ("train", "train", "good", "00001", []),
    ("train", "train", "good", "00002", []),
    ("valid", "val", "good", "00010", []),
    ("valid", "val", "Ungood", "00011", [(4, 4, 14, 14)]),
    ("test", "test", "good", "00020", []),
    ("test", "test", "Ungood", "00021", [(44, 44, 60, 60)]),
    ("test", "test", "Ungood", "00022", [(26, 2, 36, 10), (2, 50, 8, 60)]),
)


def image_path(root: Path, layout: str, split: str, label: str, stem: str) -> Path:
    if layout == "split-folders":
        return root / split / "img" / label / f"{stem}.png"
    return root / split / label / "img" / f"{stem}.png"


def mask_path(root: Path, layout: str, split: str, label: str, stem: str) -> Path:
    if layout == "split-folders":
        return root / split / "label" / label / f"{stem}.png"
    if layout == "label-folders":
        return root / split / label / "label" / f"{stem}.png"
    return root / split / label / "anomaly_mask" / f"{stem}.png"


def write_slice(path: Path, mode: str) -> Path:
    """A small image; RGBA ones are a grey slice through a grey colour map, alpha 255."""
    if mode != "RGBA":
        return write_image(path, mode=mode)
    rng = np.random.default_rng(zlib.crc32("/".join(path.parts[-5:]).encode()))
    grey = rng.integers(40, 200, size=(SIZE, SIZE), dtype=np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def write_colour_mapped_mask(path: Path, boxes: list[tuple[int, int, int, int]]) -> Path:
    """A mask as plt.imsave(cmap="gray") writes it: white boxes on black, alpha 255 everywhere."""
    grey = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        grey[y0:y1, x0:x1] = 255
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def write_subset_mask(path: Path, plan: SubsetPlan, boxes: list[tuple[int, int, int, int]]):
    if plan.mode == "RGBA":
        return write_colour_mapped_mask(path, boxes)
    return write_mask(path, boxes)


def write_bmad(root: Path, source: str, layout: str = "readme", *, faults: bool = False) -> Tree:
    """The subset `source` (a builder name) in `layout`, written at `root` (the subset folder).

    With `faults`, a masked subset also gets an Ungood image without mask (mask_missing) and a
    mask without image (mask_orphan); every subset gets an image linked from outside the root
    (path_outside_root) and a folder that is neither good nor Ungood (unknown_label_folder).
    """
    plan = SUBSETS[source]
    tree = Tree(root)
    for split_folder, split, label, stem, boxes in PLANTED:
        image = write_slice(image_path(root, layout, split_folder, label, stem), plan.mode)
        anomaly = label == "Ungood"
        facts = {"category": plan.category, "split": split, "mode": plan.mode,
                 "label": "anomaly" if anomaly else "normal"}  # fmt: skip
        if plan.has_masks and (anomaly or layout != "readme"):
            # The label-folder layouts also hold an all-black mask for every good image.
            write_subset_mask(mask_path(root, layout, split_folder, label, stem), plan, boxes)
        if anomaly and plan.has_masks:
            facts["bbox"] = union_bbox(boxes)
        tree.expect(f"{source}/{image.relative_to(root).with_suffix('').as_posix()}", **facts)
    if faults:
        plant_faults(tree, plan, layout)
    return tree


def plant_faults(tree: Tree, plan: SubsetPlan, layout: str) -> None:
    root = tree.root
    if plan.has_masks:
        lost = write_slice(image_path(root, layout, "test", "Ungood", "00030"), plan.mode)
        tree.faults.append(("mask_missing", lost.relative_to(root).as_posix()))
        orphan = mask_path(root, layout, "test", "Ungood", "00031")
        write_subset_mask(orphan, plan, [(1, 1, 5, 5)])
        tree.faults.append(("mask_orphan", orphan.relative_to(root).as_posix()))
    outside = write_slice(root.parent / "outside" / "secret.png", plan.mode)
    link = image_path(root, layout, "test", "good", "00040")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside)
    tree.faults.append(("path_outside_root", link.relative_to(root).as_posix()))
    stray = image_path(root, layout, "test", "unsure", "00050")
    write_slice(stray, plan.mode)
    folder = stray.parent if layout == "split-folders" else stray.parent.parent
    tree.faults.append(("unknown_label_folder", folder.relative_to(root).as_posix()))
