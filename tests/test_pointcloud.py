"""The numpy-only readers of .pcd files, MVTec 3D-AD's xyz TIFFs and Real3D-AD's labels."""

from __future__ import annotations

import numpy as np
import pytest
import trees_3d
from PIL import Image, UnidentifiedImageError

from adinstruct.builder.annotate.pointcloud import (
    PointCloudError,
    organised_points,
    read_pcd,
    read_pcd_fields,
    read_point_labels,
    read_xyz_tiff,
    valid_points,
)


@pytest.mark.parametrize("binary", [False, True])
def test_pcd_round_trips_points_and_extra_fields(tmp_path, binary):
    points, _ = trees_3d.sphere(500, seed=3)
    intensity = np.linspace(0, 1, 500)
    path = trees_3d.write_pcd(tmp_path / "cloud.pcd", points, binary=binary, intensity=intensity)
    read = read_pcd(path)
    assert read.shape == (500, 3) and read.dtype == np.float64
    np.testing.assert_allclose(read, points.astype(np.float32), rtol=0, atol=1e-6)
    fields = read_pcd_fields(path)
    assert list(fields) == ["x", "y", "z", "intensity"]
    np.testing.assert_allclose(fields["intensity"], intensity, atol=1e-9)


@pytest.mark.parametrize("binary", [False, True])
def test_pcd_points_with_nan_are_dropped(tmp_path, binary):
    points, _ = trees_3d.sphere(100, seed=4)
    points[[3, 50, 99]] = np.nan
    read = read_pcd(trees_3d.write_pcd(tmp_path / "holes.pcd", points, binary=binary))
    assert len(read) == 97 and np.isfinite(read).all()
    np.testing.assert_allclose(read[3], points[4].astype(np.float32), atol=1e-6)


def test_binary_compressed_pcd_is_refused_by_name(tmp_path):
    path = trees_3d.write_pcd(tmp_path / "packed.pcd", np.zeros((4, 3)), binary=True)
    path.write_bytes(path.read_bytes().replace(b"DATA binary", b"DATA binary_compressed"))
    with pytest.raises(PointCloudError, match=r"packed\.pcd.*binary_compressed"):
        read_pcd(path, "airplane/test/packed.pcd")


def test_truncated_and_malformed_pcds_name_the_file(tmp_path):
    path = trees_3d.write_pcd(tmp_path / "short.pcd", np.ones((10, 3)), binary=True)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(PointCloudError, match=r"short\.pcd is truncated"):
        read_pcd(path)
    ascii_path = trees_3d.write_pcd(tmp_path / "few.pcd", np.ones((10, 3)), binary=False)
    ascii_path.write_bytes(ascii_path.read_bytes() + b"1 2\n")
    with pytest.raises(PointCloudError, match=r"few\.pcd: ASCII body has 32 values"):
        read_pcd(ascii_path)
    no_z = tmp_path / "flat.pcd"
    no_z.write_bytes(b"FIELDS x y\nSIZE 4 4\nTYPE F F\nCOUNT 1 1\nPOINTS 1\nDATA ascii\n1 2\n")
    with pytest.raises(PointCloudError, match=r"flat\.pcd has no 'z' field"):
        read_pcd(no_z)


@pytest.mark.parametrize(
    ("rows_per_strip", "big_endian"), [(None, False), (5, False), (None, True)]
)
def test_xyz_tiff_round_trips(tmp_path, rows_per_strip, big_endian):
    shape = trees_3d.box_on_plane(defect="dent", missing="nan")
    path = trees_3d.write_xyz_tiff(
        tmp_path / "000.tiff", shape.xyz, rows_per_strip=rows_per_strip, big_endian=big_endian
    )
    read = read_xyz_tiff(path)
    assert read.shape == shape.xyz.shape and read.dtype == np.float32
    np.testing.assert_array_equal(read, shape.xyz)


def test_pil_cannot_open_three_channel_float_tiffs(tmp_path):
    # Why the module has its own reader: PIL's float mode has one channel.
    path = trees_3d.write_xyz_tiff(tmp_path / "000.tiff", trees_3d.box_on_plane().xyz)
    with pytest.raises(UnidentifiedImageError):
        Image.open(path)


@pytest.mark.parametrize("missing", ["zeros", "nan"])
def test_missing_points_are_dropped(tmp_path, missing):
    shape = trees_3d.box_on_plane(missing=missing)
    xyz = read_xyz_tiff(trees_3d.write_xyz_tiff(tmp_path / "000.tiff", shape.xyz))
    points, pixels = organised_points(xyz)
    height, width = xyz.shape[:2]
    # The writer blanks the first two rows and the last column.
    assert len(points) == (height - 2) * (width - 1)
    assert np.isfinite(points).all() and (points != 0).any(axis=1).all()
    assert not valid_points(xyz)[:2].any() and not valid_points(xyz)[:, -1].any()
    np.testing.assert_array_equal(points[0], xyz[2, 0])
    assert pixels[0] == 2 * width


def test_compressed_or_non_float_tiffs_are_refused_by_name(tmp_path):
    xyz = trees_3d.box_on_plane().xyz
    lzw = trees_3d.write_xyz_tiff(tmp_path / "lzw.tiff", xyz, compression=5)
    with pytest.raises(PointCloudError, match=r"lzw\.tiff is LZW-compressed"):
        read_xyz_tiff(lzw)
    grey = tmp_path / "grey.tiff"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(grey)
    with pytest.raises(PointCloudError, match=r"grey\.tiff is not an xyz point cloud"):
        read_xyz_tiff(grey)
    short = trees_3d.write_xyz_tiff(tmp_path / "short.tiff", xyz)
    short.write_bytes(short.read_bytes()[:1000])
    with pytest.raises(PointCloudError, match=r"short\.tiff"):
        read_xyz_tiff(short)


def test_point_labels_read_points_and_flags(tmp_path):
    points, labels = trees_3d.sphere(300, defect="sink", seed=5)
    path = trees_3d.write_point_labels(tmp_path / "4_sink.txt", points, labels)
    read_points, read_labels = read_point_labels(path)
    np.testing.assert_allclose(read_points, points, atol=1e-6)
    np.testing.assert_array_equal(read_labels, labels)
    assert read_labels.sum() == labels.sum() > 0
    bad = tmp_path / "bad.txt"
    bad.write_text("1 2 3\n")
    with pytest.raises(PointCloudError, match=r"bad\.txt"):
        read_point_labels(bad)
