"""Measure the point renderer against the floor of projecting the points once per view.

    python bench/render.py [--points 100000 1000000] [--views 4 9] [--size 512] [--repeat 3]
                           [--json FILE]

For each cloud size and view count: the best wall time of `render_views` (with per-point
labels, so highlight images and masks are made too), views per second, the floor (per view,
one matrix product of the cloud and its pixel coordinates: no renderer can draw the points
without that), their ratio, and the peak memory numpy allocates during one render
(tracemalloc). Runs on one core: BLAS threads are pinned to 1 before numpy loads. A
measurement, not a test: it exits 0 whether or not the target (1M points to 9 views at
512×512 in under 2 s) is met.
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from adinstruct.builder.annotate.render import (  # noqa: E402
    Camera,
    camera_rotation,
    render_views,
    viewpoints,
)

TARGET_SECONDS = 2.0
TARGET_POINTS, TARGET_VIEWS = 1_000_000, 9


def bumpy_sphere(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((count, 3))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    labels = points[:, 0] > 0.95
    points[labels] *= 1.05
    return points, labels


def best_of(repeat: int, work) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def projection_floor(points: np.ndarray, count: int, size: int) -> None:
    center = points.mean(axis=0)
    planar = np.ascontiguousarray((points - center).astype(np.float32).T)
    for viewpoint in viewpoints(count):
        camera = Camera(camera_rotation(viewpoint), center, size / 3.0, (size / 2, size / 2),
                        (size, size))  # fmt: skip
        camera.pixels(camera.local(planar))


def peak_bytes(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--views", type=int, nargs="+", default=[4, 9])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    print(f"{'points':>9} {'views':>5} {'render s':>9} {'views/s':>8} {'floor s':>8} "
          f"{'ratio':>6} {'peak MB':>8}")  # fmt: skip
    for count in args.points:
        points, labels = bumpy_sphere(count)
        for views in args.views:

            def render(views=views, points=points, labels=labels):
                render_views(points, views, labels=labels, size=args.size)

            seconds = best_of(args.repeat, render)
            floor = best_of(
                args.repeat, lambda v=views, p=points: projection_floor(p, v, args.size)
            )
            peak = peak_bytes(render)
            row = {
                "points": count, "views": views, "size": args.size, "seconds": round(seconds, 4),
                "views_per_second": round(views / seconds, 2), "floor_seconds": round(floor, 4),
                "ratio": round(seconds / floor, 2), "peak_mb": round(peak / 2**20, 1),
            }  # fmt: skip
            rows.append(row)
            print(f"{count:>9,} {views:>5} {seconds:>9.3f} {row['views_per_second']:>8.1f} "
                  f"{floor:>8.3f} {row['ratio']:>6.1f} {row['peak_mb']:>8.1f}")  # fmt: skip
    target = next(
        (r for r in rows if (r["points"], r["views"], r["size"]) == (TARGET_POINTS, TARGET_VIEWS,
                                                                      512)), None,
    )  # fmt: skip
    if target is not None:
        verdict = "met" if target["seconds"] < TARGET_SECONDS else "NOT met"
        print(f"target: 1M points to 9 views at 512x512 in < {TARGET_SECONDS} s: {verdict} "
              f"({target['seconds']:.2f} s)")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
