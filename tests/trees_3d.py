"""Synthetic 3D releases in their exact layouts: MVTec 3D-AD and Real3D-AD.

The shapes are simple (a box on a plane, a sphere) with a planted dent or bump whose points
are marked anomalous, so that tests can check what a build or a render reports against what
was planted. The file writers here are independent of the readers under test: a TIFF written
tag by tag as tifffile writes MVTec 3D-AD's xyz files, PCD files as PCL writes them.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trees
from PIL import Image

GRID = 48


# -- file writers ------------------------------------------------------------------------


def write_xyz_tiff(
    path: Path,
    xyz: np.ndarray,
    *,
    rows_per_strip: int | None = None,
    big_endian: bool = False,
    compression: int = 1,
) -> Path:
    """An H×W×3 float32 TIFF (contiguous samples), optionally in several strips; a compression
    other than 1 only sets the tag (the bytes stay raw), to test that it is refused."""
    height, width, samples = xyz.shape
    order = ">" if big_endian else "<"
    data = np.ascontiguousarray(xyz, dtype=f"{order}f4").tobytes()
    rows = rows_per_strip or height
    strip_size = rows * width * samples * 4
    strips = [data[start : start + strip_size] for start in range(0, len(data), strip_size)]
    header_size = 8
    offsets, position = [], header_size
    for strip in strips:
        offsets.append(position)
        position += len(strip)
    tags: list[tuple[int, int, list[int]]] = [  # (tag, type: 3 short / 4 long, values)
        (256, 4, [width]), (257, 4, [height]), (258, 3, [32] * samples), (259, 3, [compression]),
        (262, 3, [2]), (273, 4, offsets), (277, 3, [samples]), (278, 4, [rows]),
        (279, 4, [len(strip) for strip in strips]), (284, 3, [1]), (339, 3, [3] * samples),
    ]  # fmt: skip
    ifd_offset = position
    extra_at = ifd_offset + 2 + 12 * len(tags) + 4
    entries, extra = b"", b""
    for number, kind, values in tags:
        code = "H" if kind == 3 else "I"
        packed = struct.pack(f"{order}{len(values)}{code}", *values)
        if len(packed) <= 4:
            entries += struct.pack(f"{order}HHI", number, kind, len(values)) + packed.ljust(
                4, b"\0"
            )
        else:
            entries += struct.pack(f"{order}HHII", number, kind, len(values), extra_at + len(extra))
            extra += packed
    magic = (b"MM" if big_endian else b"II") + struct.pack(f"{order}HI", 42, ifd_offset)
    ifd = struct.pack(f"{order}H", len(tags)) + entries + struct.pack(f"{order}I", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(magic + b"".join(strips) + ifd + extra)
    return path


def write_pcd(
    path: Path, points: np.ndarray, *, binary: bool, intensity: np.ndarray | None = None
) -> Path:
    """A PCD v0.7 file with x y z (FLOAT 4) and optionally an intensity field (FLOAT 8)."""
    count = len(points)
    fields, sizes, types = ["x", "y", "z"], ["4", "4", "4"], ["F", "F", "F"]
    if intensity is not None:
        fields.append("intensity"), sizes.append("8"), types.append("F")
    header = (
        "# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\n"
        f"FIELDS {' '.join(fields)}\nSIZE {' '.join(sizes)}\nTYPE {' '.join(types)}\n"
        f"COUNT {' '.join(['1'] * len(fields))}\nWIDTH {count}\nHEIGHT 1\n"
        f"VIEWPOINT 0 0 0 1 0 0 0\nPOINTS {count}\nDATA {'binary' if binary else 'ascii'}\n"
    )
    if binary:
        dtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
        if intensity is not None:
            dtype.append(("intensity", "<f8"))
        records = np.empty(count, dtype=dtype)
        for axis, name in enumerate("xyz"):
            records[name] = points[:, axis]
        if intensity is not None:
            records["intensity"] = intensity
        body = records.tobytes()
    else:
        columns = [points.astype(np.float32).astype(np.float64)]
        if intensity is not None:
            columns.append(intensity[:, None])
        table = np.hstack(columns)
        body = "".join(" ".join(f"{value:.9g}" for value in row) + "\n" for row in table).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode() + body)
    return path


def write_point_labels(path: Path, points: np.ndarray, labels: np.ndarray) -> Path:
    rows = zip(points, labels, strict=True)
    lines = [f"{x:.6f} {y:.6f} {z:.6f} {int(label)}" for (x, y, z), label in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# -- shapes ------------------------------------------------------------------------------


@dataclass
class Organised:
    """An organised cloud in a sensor's frame (z away from the sensor) and its defect mask."""

    xyz: np.ndarray
    mask: np.ndarray


def box_on_plane(
    size: int = GRID, *, defect: str | None = None, seed: int = 0, missing: str = "zeros"
) -> Organised:
    """A box standing on a plane, seen from above; a dent (pushed away) or a bump (toward the
    sensor) on the box's top face. The border rows are missing (zeros or NaN)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    x = (cols - size / 2) * 0.1
    y = (rows - size / 2) * 0.1
    z = np.full((size, size), 10.0, dtype=np.float32)  # the plane, 10 units from the sensor
    top = (abs(cols - size / 2) < size / 4) & (abs(rows - size / 2) < size / 4)
    z[top] = 8.0  # the box's top face, nearer the sensor
    z += rng.normal(0, 0.002, z.shape).astype(np.float32)
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        spot = (abs(cols - size * 0.6) < size / 12) & (abs(rows - size * 0.45) < size / 12)
        mask = spot & top
        z[mask] += 0.6 if defect == "dent" else -0.6
    xyz = np.stack([x, y, z], axis=-1).astype(np.float32)
    blank = np.float32(0.0) if missing == "zeros" else np.float32(np.nan)
    xyz[:2] = blank
    xyz[:, -1] = blank
    return Organised(xyz=xyz, mask=mask)


def sphere(count: int, *, defect: str | None = None, seed: int = 0):
    """Points on a unit sphere; a bulge (outward) or sink (inward) around +x, marked."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((count, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    labels = np.zeros(count, dtype=bool)
    if defect is not None:
        labels = points[:, 0] > 0.93
        points[labels] *= 1.12 if defect == "bulge" else 0.9
    return points, labels


# -- release trees -----------------------------------------------------------------------


def rgb_of(xyz: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(40, 200, size=(*xyz.shape[:2], 3), dtype=np.uint8)


def write_mvtec_3d_sample(folder: Path, stem: str, shape: Organised, seed: int) -> None:
    (folder / "rgb").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_of(shape.xyz, seed)).save(folder / "rgb" / f"{stem}.png")
    write_xyz_tiff(folder / "xyz" / f"{stem}.tiff", shape.xyz)


def write_mvtec_3d(root: Path, *, faults: bool = False, broken: bool = False) -> trees.Tree:
    """<cat>/{train,validation}/good/{rgb,xyz}/, <cat>/test/<good|defect>/{rgb,xyz,gt}/.

    `faults`: files the listing quarantines; `broken`: files it lists and annotate rejects
    (a truncated xyz, an xyz whose grid is not its rgb's size), in `tree.rejected`.
    """
    tree = trees.Tree(root=root)
    seed = 0
    for category in ("bagel", "foam"):
        for split_folder, split in (("train", "train"), ("validation", "val")):
            for index in range(2):
                seed += 1
                stem = f"{index:03d}"
                folder = root / category / split_folder / "good"
                write_mvtec_3d_sample(folder, stem, box_on_plane(seed=seed), seed)
                tree.expect(f"mvtec_3d_ad/{category}/{split_folder}/good/rgb/{stem}",
                            category=category, split=split, label="normal")  # fmt: skip
        seed += 1
        write_mvtec_3d_sample(root / category / "test" / "good", "000", box_on_plane(seed=seed),
                              seed)  # fmt: skip
        tree.expect(f"mvtec_3d_ad/{category}/test/good/rgb/000", category=category, split="test",
                    label="normal")  # fmt: skip
        for defect in ("crack", "hole"):
            seed += 1
            folder = root / category / "test" / defect
            shape = box_on_plane(defect="dent" if defect == "hole" else "bump", seed=seed,
                                 missing="nan" if defect == "hole" else "zeros")  # fmt: skip
            write_mvtec_3d_sample(folder, "000", shape, seed)
            (folder / "gt").mkdir(exist_ok=True)
            Image.fromarray(shape.mask.astype(np.uint8) * 255).save(folder / "gt" / "000.png")
            tree.expect(f"mvtec_3d_ad/{category}/test/{defect}/rgb/000", category=category,
                        split="test", label="anomaly", defect_types=[defect])  # fmt: skip
    if faults:
        folder = root / "bagel" / "test" / "crack"
        write_mvtec_3d_sample(folder, "001", box_on_plane(defect="bump", seed=99), 99)
        tree.faults.append(("mask_missing", "bagel/test/crack/rgb/001.png"))
        trees.write_image(folder / "rgb" / "002.png")  # an rgb image without its xyz
        Image.fromarray(np.zeros((GRID, GRID), np.uint8)).save(folder / "gt" / "002.png")
        tree.faults.append(("xyz_missing", "bagel/test/crack/rgb/002.png"))
    if broken:
        folder = root / "bagel" / "test" / "hole"
        shape = box_on_plane(defect="dent", seed=98)
        write_mvtec_3d_sample(folder, "001", shape, 98)
        Image.fromarray(shape.mask.astype(np.uint8) * 255).save(folder / "gt" / "001.png")
        truncate(folder / "xyz" / "001.tiff", keep=0.5)
        tree.rejected.append(("cloud_unreadable", "bagel/test/hole/xyz/001.tiff"))
        folder = root / "foam" / "test" / "good"
        write_mvtec_3d_sample(folder, "001", box_on_plane(seed=97), 97)
        write_xyz_tiff(folder / "xyz" / "001.tiff", box_on_plane(GRID // 2, seed=97).xyz)
        tree.rejected.append(("cloud_size_mismatch", "foam/test/good/xyz/001.tiff"))
    return tree


def truncate(path: Path, *, keep: float) -> Path:
    """Cut a file to the first `keep` share of its bytes, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_real3d(
    root: Path, *, faults: bool = False, broken: bool = False, points: int = 2000
) -> trees.Tree:
    """<cls>/train/*_{prototype,template}.pcd, <cls>/test/*.pcd, <cls>/gt/<stem>.txt.

    `faults`: files the listing quarantines; `broken`: files it lists and annotate rejects
    (a truncated binary cloud, labels for fewer points than the cloud has, labels marking no
    point), in `tree.rejected`.
    """
    tree = trees.Tree(root=root)
    seed = 0
    for category in ("airplane", "shell"):
        for index, name in enumerate(("1_prototype", "2_template")):
            seed += 1
            cloud, _ = sphere(points, seed=seed)
            write_pcd(root / category / "train" / f"{name}.pcd", cloud, binary=index == 1)
            tree.expect(f"real3d_ad/{category}/train/{name}", category=category, split="train",
                        label="normal")  # fmt: skip
        seed += 1
        cloud, _ = sphere(points, seed=seed)
        write_pcd(root / category / "test" / "3_good.pcd", cloud, binary=True)
        tree.expect(f"real3d_ad/{category}/test/3_good", category=category, split="test",
                    label="normal")  # fmt: skip
        for name, defect in (("4_bulge", "bulge"), ("5_sink_cut", "sink")):
            seed += 1
            cloud, labels = sphere(points, defect=defect, seed=seed)
            write_pcd(root / category / "test" / f"{name}.pcd", cloud, binary=defect == "sink")
            write_point_labels(root / category / "gt" / f"{name}.txt", cloud, labels)
            tree.expect(f"real3d_ad/{category}/test/{name}", category=category, split="test",
                        label="anomaly", defect_types=[defect])  # fmt: skip
    if faults:
        cloud, _ = sphere(points, defect="bulge", seed=77)
        write_pcd(root / "airplane" / "test" / "6_bulge.pcd", cloud, binary=True)
        tree.faults.append(("point_labels_missing", "airplane/test/6_bulge.pcd"))
        (root / "airplane" / "gt" / "99_sink.txt").write_text("0 0 0 1\n")
        tree.faults.append(("point_labels_orphan", "airplane/gt/99_sink.txt"))
    if broken:
        cloud, labels = sphere(points, defect="sink", seed=71)
        write_pcd(root / "airplane" / "test" / "7_sink.pcd", cloud, binary=True)
        write_point_labels(root / "airplane" / "gt" / "7_sink.txt", cloud, labels)
        truncate(root / "airplane" / "test" / "7_sink.pcd", keep=0.6)
        tree.rejected.append(("cloud_unreadable", "airplane/test/7_sink.pcd"))
        cloud, labels = sphere(points, defect="bulge", seed=72)
        write_pcd(root / "shell" / "test" / "8_bulge.pcd", cloud, binary=False)
        write_point_labels(root / "shell" / "gt" / "8_bulge.txt", cloud[:-5], labels[:-5])
        tree.rejected.append(("point_labels_mismatch", "shell/gt/8_bulge.txt"))
        cloud, _ = sphere(points, seed=73)
        write_pcd(root / "airplane" / "test" / "9_bulge.pcd", cloud, binary=True)
        write_point_labels(root / "airplane" / "gt" / "9_bulge.txt", cloud, np.zeros(points))
        tree.rejected.append(("mask_empty", "airplane/gt/9_bulge.txt"))
    return tree
