"""Synthetic release trees in each release's exact layout, with its quirks and planted faults.

Every writer returns `Tree`: the root and what a correct build must report for it, so that
tests compare a build with what was planted rather than with hard-coded numbers.
"""

from __future__ import annotations

import csv
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from adinstruct.builder.sources.base import SourceBuilder
from adinstruct.schemas import QuarantineEntry, Sample

SIZE = 64


@dataclass
class Expected:
    category: str
    split: str
    label: str
    defect_types: list[str] = field(default_factory=list)
    #: COCO [x, y, w, h] of the union mask, when the sample has one.
    bbox: tuple[int, int, int, int] | None = None
    mode: str = "RGB"


@dataclass
class Tree:
    root: Path
    samples: dict[str, Expected] = field(default_factory=dict)
    #: Quarantine codes a build must report, with the offending file (relative to the root).
    faults: list[tuple[str, str]] = field(default_factory=list)
    #: The same for files the listing accepts and a later stage (annotate) rejects.
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def expect(self, sample_id: str, **facts) -> None:
        self.samples[sample_id] = Expected(**facts)


def listed(builder: SourceBuilder) -> tuple[dict[str, Sample], list[QuarantineEntry]]:
    """What a source builder lists: its samples by id (ids must be unique) and its quarantine
    entries, in order."""
    samples: dict[str, Sample] = {}
    entries: list[QuarantineEntry] = []
    for item in builder.iter_samples():
        if isinstance(item, QuarantineEntry):
            entries.append(item)
        else:
            assert item.id not in samples, f"duplicate id {item.id}"
            samples[item.id] = item
    return samples, entries


def write_image(path: Path, *, mode: str = "RGB", size: int = SIZE, seed: int = 0) -> Path:
    """A small textured image; the seed makes each file's content (and hash) distinct."""
    # Seeded by the file's name and folder: two files of a tree never share their pixels
    # (identical images would be train/test leaks, which the end-of-build validation removes).
    rng = np.random.default_rng([seed, zlib.crc32("/".join(path.parts[-4:]).encode())])
    channels = {"RGB": 3, "L": 1}[mode]
    pixels = rng.integers(40, 200, size=(size, size, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


def write_mask(
    path: Path,
    boxes: list[tuple[int, int, int, int]],
    *,
    values: list[int] | None = None,
    size: int = SIZE,
    mode: str = "L",
) -> Path:
    """A mask with filled boxes (x0, y0, x1, y1 exclusive), each with its own pixel value."""
    mask = np.zeros((size, size), dtype=np.uint8)
    for box, value in zip(boxes, values or [255] * len(boxes), strict=True):
        x0, y0, x1, y1 = box
        mask[y0:y1, x0:x1] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask, "L")
    if mode == "RGBA":  # a colour-mapped mask, as BMAD's brain subset ships them
        rgba = np.zeros((size, size, 4), dtype=np.uint8)
        rgba[..., 0] = mask
        rgba[..., 3] = 255
        image = Image.fromarray(rgba, "RGBA")
    image.save(path)
    return path


def union_bbox(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[2] for b in boxes)
    y1 = max(b[3] for b in boxes)
    return (x0, y0, x1 - x0, y1 - y0)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# -- MVTec AD (and MPDD, which shares the layout) ------------------------------------------


def write_mvtec_ad(root: Path, *, faults: bool = False, source: str = "mvtec_ad") -> Tree:
    tree = Tree(root)
    write_text(root / "license.txt", "CC BY-NC-SA 4.0\n")
    write_text(root / "readme.txt", "MVTec AD\n")
    for category, mode in (("bottle", "RGB"), ("grid", "L")):
        base = root / category
        write_text(base / "license.txt", "CC BY-NC-SA 4.0\n")
        write_text(base / "readme.txt", f"{category}\n")
        for split, count in (("train", 2), ("test", 1)):
            for index in range(count):
                name = f"{index:03d}"
                write_image(base / split / "good" / f"{name}.png", mode=mode)
                tree.expect(f"{source}/{category}/{split}/good/{name}", category=category,
                            split=split, label="normal", mode=mode)  # fmt: skip
        defects = {"broken_large": [(4, 4, 20, 12)], "contamination": [(40, 40, 60, 60)]}
        if category == "grid":
            defects = {"bent": [(10, 30, 30, 34), (50, 2, 54, 6)]}
        for defect, boxes in defects.items():
            write_image(base / "test" / defect / "000.png", mode=mode)
            write_mask(base / "ground_truth" / defect / "000_mask.png", boxes)
            tree.expect(f"{source}/{category}/test/{defect}/000", category=category, split="test",
                        label="anomaly", defect_types=[defect], bbox=union_bbox(boxes),
                        mode=mode)  # fmt: skip
    # Some copies of the release carry upper-case suffixes.
    write_image(root / "bottle/test/contamination/001.PNG")
    write_mask(root / "bottle/ground_truth/contamination/001_mask.PNG", [(0, 0, 8, 8)])
    tree.expect(f"{source}/bottle/test/contamination/001", category="bottle", split="test",
                label="anomaly", defect_types=["contamination"], bbox=(0, 0, 8, 8))  # fmt: skip
    if faults:
        plant_mvtec_faults(tree, source)
    return tree


def plant_mvtec_faults(tree: Tree, source: str) -> None:
    base = tree.root / "bottle"
    # A truncated image whose mask is fine.
    write_image(base / "test/broken_large/001.png")
    write_mask(base / "ground_truth/broken_large/001_mask.png", [(1, 1, 5, 5)])
    truncate(base / "test/broken_large/001.png")
    tree.faults.append(("image_truncated", "bottle/test/broken_large/001.png"))
    # An empty mask on an anomalous image.
    write_image(base / "test/broken_large/002.png")
    write_mask(base / "ground_truth/broken_large/002_mask.png", [])
    tree.faults.append(("mask_empty", "bottle/ground_truth/broken_large/002_mask.png"))
    # A mask whose size differs from its image.
    write_image(base / "test/broken_large/003.png")
    write_mask(base / "ground_truth/broken_large/003_mask.png", [(1, 1, 5, 5)], size=32)
    tree.faults.append(("mask_size_mismatch", "bottle/ground_truth/broken_large/003_mask.png"))
    # An anomalous image without a mask, and a mask without an image.
    write_image(base / "test/broken_large/004.png")
    tree.faults.append(("mask_missing", "bottle/test/broken_large/004.png"))
    write_mask(base / "ground_truth/broken_large/099_mask.png", [(1, 1, 5, 5)])
    tree.faults.append(("mask_orphan", "bottle/ground_truth/broken_large/099_mask.png"))


# -- VisA ----------------------------------------------------------------------------------


VISA_ROWS_HEADER = ["object", "split", "label", "image", "mask"]


def write_visa_raw(root: Path, *, faults: bool = False) -> Tree:
    """The raw release: split CSVs at the root, `.JPG` images, id-valued masks."""
    tree = Tree(root)
    rows: list[list[str]] = []
    # pcb1's table: 1 Bent, 2 Melt, 3 Scratch, 4 Missing. candle: 1 Chunk Of Wax Missing, ...
    plans = {
        "pcb1": {"anomalies": {"000": ([(2, 2, 10, 10), (30, 30, 40, 44)], [1, 3], "bent,scratch"),
                               "001": ([(50, 0, 64, 6)], [4], "missing")}},
        "candle": {"anomalies": {"000": ([(20, 20, 30, 30)], [1], "chunk of wax missing")}},
    }  # fmt: skip
    for category, plan in plans.items():
        base = root / category / "Data"
        anno_rows = []
        for index, split in enumerate(("train", "train", "test")):
            relative = f"{category}/Data/Images/Normal/{index:04d}.JPG"
            write_image(root / relative)
            rows.append([category, split, "normal", relative, ""])
            anno_rows.append([relative, "normal", ""])
            tree.expect(f"visa/{category}/Data/Images/Normal/{index:04d}", category=category,
                        split=split, label="normal")  # fmt: skip
        for stem, (boxes, values, label) in plan["anomalies"].items():
            relative = f"{category}/Data/Images/Anomaly/{stem}.JPG"
            mask_relative = f"{category}/Data/Masks/Anomaly/{stem}.png"
            write_image(root / relative)
            write_mask(base / "Masks" / "Anomaly" / f"{stem}.png", boxes, values=values)
            rows.append([category, "test", "anomaly", relative, mask_relative])
            anno_rows.append([relative, label, mask_relative])
            tree.expect(f"visa/{category}/Data/Images/Anomaly/{stem}", category=category,
                        split="test", label="anomaly", defect_types=label.split(","),
                        bbox=union_bbox(boxes))  # fmt: skip
        write_csv(root / category / "image_anno.csv", ["image", "label", "mask"], anno_rows)
    if faults:
        rows.append(["pcb1", "test", "anomaly", "../outside/000.JPG", "pcb1/Data/Masks/x.png"])
        tree.faults.append(("path_outside_root", "../outside/000.JPG"))
        rows.append(["pcb1", "test", "anomaly", "pcb1/Data/Images/Anomaly/000.JPG", "/etc/passwd"])
        tree.faults.append(("path_outside_root", "/etc/passwd"))
        outside = root.parent / "outside" / "000.JPG"
        write_image(outside)
    for name in ("1cls", "2cls_fewshot", "2cls_highshot"):
        write_csv(root / "split_csv" / f"{name}.csv", VISA_ROWS_HEADER, rows)
    write_text(root / "LICENSE-DATASET", "CC BY 4.0\n")
    return tree


def write_visa_pytorch(root: Path) -> Tree:
    """The `VisA_pytorch/1cls` copy that the release's prepare script writes."""
    tree = Tree(root)
    base = root / "1cls" / "pcb1"
    write_image(base / "train/good/0000.JPG")
    write_image(base / "test/good/0001.JPG")
    write_image(base / "test/bad/000.JPG")
    write_mask(base / "ground_truth/bad/000.png", [(5, 5, 9, 9)])
    tree.expect("visa/pcb1/train/good/0000", category="pcb1", split="train", label="normal")
    tree.expect("visa/pcb1/test/good/0001", category="pcb1", split="test", label="normal")
    tree.expect("visa/pcb1/test/bad/000", category="pcb1", split="test", label="anomaly",
                bbox=(5, 5, 4, 4))  # fmt: skip
    return tree


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


# -- MVTec LOCO AD -------------------------------------------------------------------------


LOCO_CONFIG = [
    {"defect_name": "missing_almonds", "pixel_value": 232, "saturation_threshold": 1,
     "relative_saturation": True},
    {"defect_name": "box_damage", "pixel_value": 7, "saturation_threshold": 2000,
     "relative_saturation": False},
]  # fmt: skip


def write_mvtec_loco(root: Path) -> Tree:
    tree = Tree(root)
    base = root / "breakfast_box"
    write_text(root / "license.txt", "CC BY-NC-SA 4.0\n")
    write_text(base / "defects_config.json", json.dumps(LOCO_CONFIG))
    for split_folder, split in (("train", "train"), ("validation", "val"), ("test", "test")):
        write_image(base / split_folder / "good" / "000.png")
        tree.expect(f"mvtec_loco/breakfast_box/{split_folder}/good/000", category="breakfast_box",
                    split=split, label="normal")  # fmt: skip
    write_image(base / "test/logical_anomalies/000.png")
    write_mask(base / "ground_truth/logical_anomalies/000/000.png", [(0, 0, 10, 10)], values=[232])
    write_mask(base / "ground_truth/logical_anomalies/000/001.png", [(40, 40, 50, 50)], values=[7])
    tree.expect("mvtec_loco/breakfast_box/test/logical_anomalies/000", category="breakfast_box",
                split="test", label="anomaly", defect_types=["box_damage", "missing_almonds"],
                bbox=(0, 0, 50, 50))  # fmt: skip
    write_image(base / "test/structural_anomalies/000.png")
    write_mask(base / "ground_truth/structural_anomalies/000/000.png", [(8, 8, 16, 16)],
               values=[7])  # fmt: skip
    tree.expect("mvtec_loco/breakfast_box/test/structural_anomalies/000",
                category="breakfast_box", split="test", label="anomaly",
                defect_types=["box_damage"], bbox=(8, 8, 8, 8))  # fmt: skip
    return tree


# -- BTAD ----------------------------------------------------------------------------------


def write_btad(root: Path) -> Tree:
    """Products 01 (.png) and 03 (.bmp, as the release keeps it); `ok`/`ko`, no defect names."""
    tree = Tree(root)
    for product, suffix in (("01", ".png"), ("03", ".bmp")):
        base = root / product
        write_image(base / "train" / "ok" / f"0000{suffix}")
        write_image(base / "test" / "ok" / f"0000{suffix}")
        write_image(base / "test" / "ko" / f"0000{suffix}")
        write_mask(base / "ground_truth" / "ko" / f"0000{suffix}", [(3, 3, 9, 9)])
        tree.expect(f"btad/{product}/train/ok/0000", category=product, split="train",
                    label="normal")  # fmt: skip
        tree.expect(f"btad/{product}/test/ok/0000", category=product, split="test",
                    label="normal")  # fmt: skip
        tree.expect(f"btad/{product}/test/ko/0000", category=product, split="test",
                    label="anomaly", bbox=(3, 3, 6, 6))  # fmt: skip
    return tree


# -- Real-IAD ------------------------------------------------------------------------------


def write_real_iad(root: Path, *, faults: bool = False, resolution: str = "256") -> Tree:
    tree = Tree(root)
    category = "audiojack"
    images = root / f"realiad_{resolution}" / category
    train, test = [], []
    for camera in ("C1", "C2"):
        image = f"OK/S0001/{category}_0001_OK_{camera}_20230922093209.jpg"
        write_image(images / image)
        train.append({"category": category, "anomaly_class": "OK", "image_path": image,
                      "mask_path": None})  # fmt: skip
        tree.expect(f"real_iad/realiad_{resolution}/{category}/{Path(image).with_suffix('')}",
                    category=category, split="train", label="normal")  # fmt: skip
    for camera in ("C1", "C2"):
        image = f"NG/AK/S0002/{category}_0002_NG_AK_{camera}_20230922094000.jpg"
        mask = image.replace(".jpg", ".png")
        write_image(images / image)
        write_mask(images / mask, [(10, 10, 20, 20)])
        test.append({"category": category, "anomaly_class": "AK", "image_path": image,
                     "mask_path": mask})  # fmt: skip
        tree.expect(f"real_iad/realiad_{resolution}/{category}/{Path(image).with_suffix('')}",
                    category=category, split="test", label="anomaly", defect_types=["pit"],
                    bbox=(10, 10, 10, 10))  # fmt: skip
    if faults:
        test.append({"category": category, "anomaly_class": "AK",
                     "image_path": "../../../../outside.jpg", "mask_path": "../x.png"})  # fmt: skip
        tree.faults.append(("path_outside_root", "../../../../outside.jpg"))
    index = {"meta": {"prefix": category, "normal_class": "OK", "pre_transform": None},
             "train": train, "test": test}  # fmt: skip
    write_text(root / "realiad_jsons" / f"{category}.json", json.dumps(index))
    return tree


# -- a user's folder -----------------------------------------------------------------------


def write_folder(root: Path) -> Tree:
    tree = Tree(root)
    write_image(root / "normal" / "a.png")
    write_image(root / "normal" / "b.jpg")
    write_image(root / "anomaly" / "c.png")
    write_mask(root / "masks" / "c_mask.png", [(0, 0, 4, 4)])
    write_image(root / "anomaly" / "scratch" / "d.png")
    write_mask(root / "masks" / "scratch" / "d.png", [(60, 60, 64, 64)])
    category = root.name
    for stem in ("a", "b"):
        tree.expect(f"folder/normal/{stem}", category=category, split="test", label="normal")
    tree.expect("folder/anomaly/c", category=category, split="test", label="anomaly",
                bbox=(0, 0, 4, 4))  # fmt: skip
    tree.expect("folder/anomaly/scratch/d", category=category, split="test", label="anomaly",
                defect_types=["scratch"], bbox=(60, 60, 4, 4))  # fmt: skip
    return tree


def write_visa_benchmark(
    root: Path, *, categories: tuple[str, ...] = ("candle", "capsules"), train: int = 6,
    test_normal: int = 3, anomalies: int = 4,
) -> Tree:  # fmt: skip
    """A raw VisA tree to benchmark on: every image distinct, anomaly i of a category showing
    defect id i + 1 of the release's table, its box in a different grid cell each time."""
    from adinstruct.builder.sources.visa import id_to_class

    tree = Tree(root)
    rows: list[list[str]] = []
    for category in categories:
        names = id_to_class()[category]
        anno_rows = []
        normals = [("train", index) for index in range(train)]
        normals += [("test", train + index) for index in range(test_normal)]
        for split, index in normals:
            relative = f"{category}/Data/Images/Normal/{index:04d}.JPG"
            write_image(root / relative)
            rows.append([category, split, "normal", relative, ""])
            anno_rows.append([relative, "normal", ""])
            tree.expect(f"visa/{relative.removesuffix('.JPG')}", category=category,
                        split=split, label="normal")  # fmt: skip
        for index in range(anomalies):
            relative = f"{category}/Data/Images/Anomaly/{index:03d}.JPG"
            mask_relative = f"{category}/Data/Masks/Anomaly/{index:03d}.png"
            write_image(root / relative)
            cell_x, cell_y = (index * 2) % 3, (index * 2) // 3 % 3
            x0, y0 = cell_x * SIZE // 3 + 4, cell_y * SIZE // 3 + 4
            box = (x0, y0, x0 + 10, y0 + 10)
            write_mask(root / mask_relative, [box], values=[index + 1])
            name = names[index + 1].lower()  # image_anno.csv writes the table's names so
            rows.append([category, "test", "anomaly", relative, mask_relative])
            anno_rows.append([relative, name, mask_relative])
            tree.expect(f"visa/{relative.removesuffix('.JPG')}", category=category,
                        split="test", label="anomaly", defect_types=[name],
                        bbox=union_bbox([box]))  # fmt: skip
        write_csv(root / category / "image_anno.csv", ["image", "label", "mask"], anno_rows)
    for name in ("1cls", "2cls_fewshot", "2cls_highshot"):
        write_csv(root / "split_csv" / f"{name}.csv", VISA_ROWS_HEADER, rows)
    write_text(root / "LICENSE-DATASET", "CC BY 4.0\n")
    return tree
