"""Read the point clouds of the 3D releases with numpy only.

* `.pcd` (PCL's format, Real3D-AD): ASCII and binary bodies, any numeric fields (x, y, z
  required). `binary_compressed` (LZF) is refused with a message naming the file.
* MVTec 3D-AD's organised xyz TIFF: H×W×3 float32, uncompressed, as tifffile writes it.
  PIL cannot decode three-channel float TIFFs (its float mode "F" has one channel), so this
  module parses the few TIFF tags those files use. Missing points are zeros or NaN.
* Real3D-AD's ground truth `gt/<stem>.txt`: one `x y z label` line per point.

Every failure is a `PointCloudError` whose message names the file, so that the annotate stage
can quarantine the sample with it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: A cloud larger than this is refused before its body is parsed (a corrupt header could
#: otherwise ask for terabytes).
MAX_POINTS = 50_000_000

#: PCD (TYPE, SIZE) -> numpy type code: FLOAT 4/8, signed and unsigned integers 1/2/4/8.
PCD_TYPES = {
    **{("F", size): f"f{size}" for size in (4, 8)},
    **{(kind, size): f"{kind.lower()}{size}" for kind in "IU" for size in (1, 2, 4, 8)},
}
PCD_DATA_KINDS = ("ascii", "binary", "binary_compressed")


class PointCloudError(ValueError):
    """A point-cloud file that cannot be read; the message names the file and why."""


# -- PCD ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PCDHeader:
    fields: tuple[str, ...]
    sizes: tuple[int, ...]
    types: tuple[str, ...]
    counts: tuple[int, ...]
    width: int
    height: int
    points: int
    data: str

    def dtype(self, name: str) -> np.dtype:
        """The little-endian record of one point, as binary bodies store it."""
        parts = []
        for field, size, kind, count in zip(
            self.fields, self.sizes, self.types, self.counts, strict=True
        ):
            code = PCD_TYPES.get((kind, size))
            if code is None:
                raise PointCloudError(f"{name}: field {field!r} has unsupported TYPE {kind} "
                                      f"SIZE {size}")  # fmt: skip
            parts.append((field, "<" + code, (count,)) if count > 1 else (field, "<" + code))
        return np.dtype(parts)


def read_pcd(path: Path, name: str | None = None) -> np.ndarray:
    """The finite points of a `.pcd` file as an (N, 3) float64 array of x, y, z."""
    fields = read_pcd_fields(path, name)
    xyz = np.stack([fields["x"], fields["y"], fields["z"]], axis=1).astype(np.float64)
    return xyz[np.isfinite(xyz).all(axis=1)]


def read_pcd_fields(path: Path, name: str | None = None) -> dict[str, np.ndarray]:
    """Every field of a `.pcd` file by name, one value (or row of COUNT values) per point."""
    name = name or str(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PointCloudError(f"cannot read {name}: {error.strerror or error}") from error
    header, body_start = parse_pcd_header(data, name)
    for required in ("x", "y", "z"):
        if required not in header.fields:
            raise PointCloudError(
                f"{name} has no {required!r} field (fields: {' '.join(header.fields)})"
            )
    if header.data == "binary_compressed":
        raise PointCloudError(
            f"{name} is a binary_compressed PCD, which adinstruct does not read; convert it "
            "to binary or ascii first (e.g. pcl_convert_pcd_ascii_binary IN OUT 1)"
        )
    if header.data == "binary":
        records = _binary_records(data[body_start:], header, name)
    else:
        records = _ascii_records(data[body_start:], header, name)
    return {field: np.ascontiguousarray(records[field]) for field in header.fields}


def parse_pcd_header(data: bytes, name: str) -> tuple[PCDHeader, int]:
    """The header of a PCD file and the byte offset where its body starts."""
    values: dict[str, list[str]] = {}
    offset = 0
    while True:
        end = data.find(b"\n", offset)
        if end < 0:
            raise PointCloudError(f"{name}: PCD header has no DATA line")
        line = data[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *rest = line.split()
        values[key.upper()] = rest
        if key.upper() == "DATA":
            break
    try:
        fields = tuple(values["FIELDS"])
        count = len(fields)
        sizes = tuple(int(v) for v in values.get("SIZE", ["4"] * count))
        types = tuple(v.upper() for v in values.get("TYPE", ["F"] * count))
        counts = tuple(int(v) for v in values.get("COUNT", ["1"] * count))
        width = int(values.get("WIDTH", ["0"])[0])
        height = int(values.get("HEIGHT", ["1"])[0])
        points = int(values["POINTS"][0]) if "POINTS" in values else width * height
        kind = values["DATA"][0].lower() if values["DATA"] else ""
    except (KeyError, ValueError, IndexError) as error:
        raise PointCloudError(f"{name}: malformed PCD header ({error})") from error
    if not (len(sizes) == len(types) == len(counts) == count):
        raise PointCloudError(f"{name}: PCD header's FIELDS, SIZE, TYPE and COUNT differ in length")
    if kind not in PCD_DATA_KINDS:
        raise PointCloudError(f"{name}: unknown PCD DATA kind {kind!r}")
    if not 0 <= points <= MAX_POINTS:
        raise PointCloudError(f"{name} declares {points:,} points (limit {MAX_POINTS:,})")
    header = PCDHeader(fields, sizes, types, counts, width, height, points, kind)
    return header, offset


def _binary_records(body: bytes, header: PCDHeader, name: str) -> np.ndarray:
    dtype = header.dtype(name)
    needed = dtype.itemsize * header.points
    if len(body) < needed:
        raise PointCloudError(
            f"{name} is truncated: {header.points:,} points need {needed:,} bytes of binary "
            f"data, the file has {len(body):,}"
        )
    return np.frombuffer(body, dtype=dtype, count=header.points)


def _ascii_records(body: bytes, header: PCDHeader, name: str) -> np.ndarray:
    columns = sum(header.counts)
    try:
        flat = np.array(body.split(), dtype=np.float64)
    except ValueError as error:
        raise PointCloudError(f"{name}: ASCII PCD body holds a non-number ({error})") from error
    if flat.size != columns * header.points:
        raise PointCloudError(
            f"{name}: ASCII body has {flat.size:,} values, but {header.points:,} points of "
            f"{columns} values need {columns * header.points:,}"
        )
    table = flat.reshape(header.points, columns)
    records = np.empty(header.points, dtype=header.dtype(name))
    column = 0
    for field, count in zip(header.fields, header.counts, strict=True):
        part = table[:, column : column + count]
        records[field] = part[:, 0] if count == 1 else part
        column += count
    return records


# -- Real3D-AD ground truth -------------------------------------------------------------


def read_point_labels(path: Path, name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points (N, 3) float64 and labels (N,) bool of a `x y z label` text file."""
    name = name or str(path)
    try:
        text = path.read_bytes()
    except OSError as error:
        raise PointCloudError(f"cannot read {name}: {error.strerror or error}") from error
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise PointCloudError(f"{name} holds no points")
    columns = len(lines[0].split())
    try:
        flat = np.array(text.split(), dtype=np.float64)
    except ValueError as error:
        raise PointCloudError(f"{name} holds a non-number ({error})") from error
    if columns < 4 or flat.size != columns * len(lines):
        raise PointCloudError(f"{name}: every line must be 'x y z label' with the same columns")
    table = flat.reshape(len(lines), columns)
    points, labels = table[:, :3], table[:, 3] > 0
    keep = np.isfinite(points).all(axis=1)
    return points[keep], labels[keep]


# -- MVTec 3D-AD organised xyz TIFF ----------------------------------------------------

TIFF_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8), 13: ("I", 4), 18: ("Q", 8)}
TAG_WIDTH, TAG_LENGTH, TAG_BITS, TAG_COMPRESSION = 256, 257, 258, 259
TAG_STRIP_OFFSETS, TAG_SAMPLES, TAG_ROWS_PER_STRIP, TAG_STRIP_COUNTS = 273, 277, 278, 279
TAG_PLANAR, TAG_TILE_WIDTH, TAG_SAMPLE_FORMAT = 284, 322, 339
SAMPLE_FORMAT_FLOAT = 3
COMPRESSION_NAMES = {5: "LZW", 7: "JPEG", 8: "Deflate", 32773: "PackBits", 32946: "Deflate",
                     50000: "Zstandard"}  # fmt: skip


def read_xyz_tiff(path: Path, name: str | None = None) -> np.ndarray:
    """An organised point cloud (H, W, 3) float32 from an uncompressed float TIFF.

    Reads the first image of the file: strips (one or many), little- or big-endian, classic or
    BigTIFF, contiguous or planar samples, 32- or 64-bit floats. Anything else (compression,
    tiles, integer samples) raises PointCloudError naming the file and the feature.
    """
    name = name or str(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PointCloudError(f"cannot read {name}: {error.strerror or error}") from error
    try:
        return _decode_xyz_tiff(data, name)
    except (struct.error, IndexError) as error:
        raise PointCloudError(f"{name} is truncated or not a TIFF ({error})") from error


def _decode_xyz_tiff(data: bytes, name: str) -> np.ndarray:
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        raise PointCloudError(f"{name} is not a TIFF file")
    (magic,) = struct.unpack_from(order + "H", data, 2)
    if magic == 42:
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        count_format, entry_format, inline = "H", "HHI", 4
    elif magic == 43:
        (ifd,) = struct.unpack_from(order + "Q", data, 8)
        count_format, entry_format, inline = "Q", "HHQ", 8
    else:
        raise PointCloudError(f"{name} is not a TIFF file (magic {magic})")
    tags = _read_ifd(data, order, ifd, count_format, entry_format, inline)

    def tag(number: int, default: list[int] | None = None) -> list[int]:
        if number in tags:
            return tags[number]
        if default is None:
            raise PointCloudError(f"{name}: TIFF lacks tag {number}")
        return default

    width, height = tag(TAG_WIDTH)[0], tag(TAG_LENGTH)[0]
    samples = tag(TAG_SAMPLES, [1])[0]
    bits = set(tag(TAG_BITS, [1]))
    compression = tag(TAG_COMPRESSION, [1])[0]
    sample_format = set(tag(TAG_SAMPLE_FORMAT, [1]))
    if compression != 1:
        kind = COMPRESSION_NAMES.get(compression, f"scheme {compression}")
        raise PointCloudError(
            f"{name} is {kind}-compressed; adinstruct reads only uncompressed xyz TIFFs "
            "(as MVTec 3D-AD ships them)"
        )
    if TAG_TILE_WIDTH in tags:
        raise PointCloudError(f"{name} is a tiled TIFF; adinstruct reads only striped ones")
    if samples != 3 or sample_format != {SAMPLE_FORMAT_FLOAT} or len(bits) != 1:
        raise PointCloudError(
            f"{name} is not an xyz point cloud: expected 3 float samples per pixel, found "
            f"{samples} sample(s) of format {sorted(sample_format)} and {sorted(bits)} bits"
        )
    depth = bits.pop()
    if depth not in (32, 64):
        raise PointCloudError(f"{name}: float samples of {depth} bits are not supported")
    if width * height > MAX_POINTS:
        raise PointCloudError(f"{name} declares {width}×{height} points (limit {MAX_POINTS:,})")
    offsets, counts = tag(TAG_STRIP_OFFSETS), tag(TAG_STRIP_COUNTS)
    if len(offsets) != len(counts):
        raise PointCloudError(f"{name}: TIFF strip offsets and byte counts differ in number")
    body = b"".join(data[start : start + size] for start, size in zip(offsets, counts, strict=True))
    dtype = np.dtype(f"{order}f{depth // 8}")
    needed = width * height * 3 * dtype.itemsize
    if len(body) < needed:
        raise PointCloudError(
            f"{name} is truncated: {width}×{height}×3 floats need {needed:,} bytes, its strips "
            f"hold {len(body):,}"
        )
    values = np.frombuffer(body, dtype=dtype, count=width * height * 3)
    planar = tag(TAG_PLANAR, [1])[0]
    if planar == 2:
        cloud = values.reshape(3, height, width).transpose(1, 2, 0)
    else:
        cloud = values.reshape(height, width, 3)
    return cloud.astype(np.float32)


def _read_ifd(
    data: bytes, order: str, offset: int, count_format: str, entry_format: str, inline: int
) -> dict[int, list[int]]:
    """Tag number -> its integer values, for the integer-typed tags of one IFD."""
    (entries,) = struct.unpack_from(order + count_format, data, offset)
    position = offset + struct.calcsize(order + count_format)
    entry_size = struct.calcsize(order + entry_format) + inline
    pointer = "I" if inline == 4 else "Q"
    tags: dict[int, list[int]] = {}
    for _ in range(entries):
        number, kind, count = struct.unpack_from(order + entry_format, data, position)
        value_at = position + struct.calcsize(order + entry_format)
        position += entry_size
        if kind not in TIFF_TYPES:
            continue  # rationals, ASCII and the like: no tag this reader needs
        code, size = TIFF_TYPES[kind]
        if count * size > inline:  # the values live elsewhere; the entry holds their offset
            (value_at,) = struct.unpack_from(order + pointer, data, value_at)
        tags[number] = list(struct.unpack_from(f"{order}{count}{code}", data, value_at))
    return tags


# -- organised clouds ---------------------------------------------------------------------


def valid_points(xyz: np.ndarray) -> np.ndarray:
    """Which pixels of an organised cloud hold a point: finite and not all-zero."""
    finite = np.isfinite(xyz).all(axis=-1)
    return finite & (xyz != 0).any(axis=-1)


def organised_points(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points (N, 3) float64 of an organised cloud, and their flat pixel indices (N,)."""
    keep = valid_points(xyz)
    pixels = np.flatnonzero(keep)
    return xyz.reshape(-1, 3)[pixels].astype(np.float64), pixels
