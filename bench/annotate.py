"""Measure the build against a decode-only floor, and its peak memory at two sizes of tree.

    python bench/annotate.py [--images 1000] [--size 1024] [--workdir DIR] [--keep]

Writes a synthetic MVTec AD tree (and one a quarter of its size), times decoding every image
and mask once with PIL (the floor: no build can read the pixels faster), then times
`build-dataset build ... --workers 1` and `--workers 2` on each tree as subprocesses and
records their peak resident memory. A measurement, not a test: it exits 0 whether or not the
targets are met, 1 when a build fails and 2 when there is no `build-dataset` to run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from adinstruct.builder.demo import DemoTree, generate_mvtec_tree

RATIO_TARGET = 1.3
#: "Peak memory does not grow with image count": at the full count the peak may exceed the
#: peak at a quarter of it by this share (allocator noise, a longer list of small records).
MEMORY_GROWTH_TOLERANCE = 0.10
POLL_SECONDS = 0.05
WORKER_COUNTS = (1, 2)


# --------------------------------------------------------------------------------------
# Peak memory of a process tree
# --------------------------------------------------------------------------------------


def read_peak_rss_kb(pid: int) -> int | None:
    """VmHWM of a live process in kB; None once it has exited (a zombie has no Vm lines)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc/<pid>/task/<tid>/children (every thread's)."""
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return children
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", encoding="ascii") as listing:
                children.extend(int(child) for child in listing.read().split())
        except FileNotFoundError:
            continue
    return children


#: Processes that multiprocessing starts beside the workers; they hold no work of the build.
HELPER_MARKERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def read_command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as raw:
            return raw.read().replace(b"\0", b" ").decode("utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


class PeakMemoryMonitor(threading.Thread):
    """Peak resident memory of a build's main process and, separately, of each worker.

    Why polling is correct here: each poll reads VmHWM, the kernel's high-water mark of a
    process's resident set. It never decreases, so a poll need not land on the moment of the
    peak; it only has to see the process once late in its life. What it can miss is growth in
    a process's last POLL_SECONDS (a zombie has no VmHWM left to read) and a worker that lives
    shorter than that; pool workers live for the whole build, and the main process's last
    moments are covered by wait4 (see `measure_build`).

    getrusage(RUSAGE_CHILDREN) or wait4 alone cannot tell the main process from its workers:
    they give one maximum over the processes that were reaped, and with a forkserver pool the
    workers are the forkserver's children, which the build never reaps, so they are not even
    in that maximum. Roles: the process we started is `main`; a direct child of it running
    multiprocessing's resource tracker or forkserver is a `helper`; any other descendant is a
    `worker` (spawn and fork pools: children of main; forkserver pools: its grandchildren).
    """

    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True)
        self.root_pid = root_pid
        self.peaks_kb: dict[int, int] = {}
        self.roles: dict[int, str] = {}
        self._stopped = threading.Event()

    def role_of(self, pid: int, parent: int | None) -> str:
        if pid == self.root_pid:
            return "main"
        if parent == self.root_pid and any(
            marker in read_command_line(pid) for marker in HELPER_MARKERS
        ):
            return "helper"
        return "worker"

    def poll(self) -> None:
        pending: list[tuple[int, int | None]] = [(self.root_pid, None)]
        while pending:
            pid, parent = pending.pop()
            peak = read_peak_rss_kb(pid)
            if peak is not None:
                if pid not in self.roles:
                    self.roles[pid] = self.role_of(pid, parent)
                self.peaks_kb[pid] = max(self.peaks_kb.get(pid, 0), peak)
            pending.extend((child, pid) for child in child_pids(pid))

    def run(self) -> None:
        self.poll()
        while not self._stopped.wait(POLL_SECONDS):
            self.poll()

    def stop(self) -> None:
        self._stopped.set()
        self.join()

    def largest_kb(self, role: str) -> int | None:
        peaks = [kb for pid, kb in self.peaks_kb.items() if self.roles[pid] == role]
        return max(peaks) if peaks else None

    def count(self, role: str) -> int:
        return sum(1 for found in self.roles.values() if found == role)


# --------------------------------------------------------------------------------------
# The measurements
# --------------------------------------------------------------------------------------


@dataclass
class BuildRun:
    images: int
    workers: int
    seconds: float
    exit_code: int
    main_peak_mb: float | None
    largest_worker_mb: float | None  # None: the build ran in one process
    helper_peak_mb: float | None  # multiprocessing's forkserver or resource tracker
    reaped_peak_mb: float  # wait4: exact peak of the largest of main and what main reaped
    workers_seen: int
    samples_written: int | None
    stderr_tail: str = ""


@dataclass
class SizeResult:
    images: int
    floor_seconds: float
    files_decoded: int
    generate_seconds: float | None  # None when a kept tree was reused
    builds: dict[int, BuildRun] = field(default_factory=dict)


def prepare_tree(
    bench_dir: Path, n_images: int, size: int, workers: int
) -> tuple[DemoTree, float | None]:
    """Generate a tree, or reuse one that a `--keep` run left complete (its report beside it)."""
    root = bench_dir / f"tree-{n_images}x{size}"
    report = bench_dir / f"tree-{n_images}x{size}.json"
    if report.is_file() and root.is_dir():
        return DemoTree.model_validate_json(report.read_text(encoding="utf-8")), None
    if root.exists():
        shutil.rmtree(root)  # an interrupted generation of ours; its report was never written
    start = time.perf_counter()
    tree = generate_mvtec_tree(root, n_images=n_images, image_size=size, workers=workers)
    seconds = time.perf_counter() - start
    report.write_text(tree.model_dump_json(), encoding="utf-8")
    return tree, seconds


def tree_files(tree: DemoTree) -> list[Path]:
    files = []
    for category in tree.categories:
        files += [tree.root / image for image in category.normal_images]
        for anomaly in category.anomalies:
            files += [tree.root / anomaly.image, tree.root / anomaly.mask]
    return files


def decode_floor(tree: DemoTree) -> tuple[float, int]:
    """Seconds to open and decode every image and mask once, in this one process."""
    files = tree_files(tree)  # listed before the clock starts: the floor is decoding only
    start = time.perf_counter()
    for path in files:
        with Image.open(path) as image:
            image.load()
    return time.perf_counter() - start, len(files)


def find_build_command() -> list[str] | None:
    """The `build-dataset` of this interpreter's environment, or the module; None if neither."""
    if importlib.util.find_spec("adinstruct.builder.cli") is None:
        return None
    beside_python = Path(sys.executable).with_name("build-dataset")
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return [str(beside_python)]
    on_path = shutil.which("build-dataset")
    # A console script elsewhere on PATH (a pyenv shim, another venv) may run another Python.
    return (
        [on_path]
        if on_path and not is_version_shim(on_path)
        else [sys.executable, "-m", "adinstruct.builder.cli"]
    )


def is_version_shim(path: str) -> bool:
    return "shims" in Path(path).parts


def count_lines(path: Path) -> int | None:
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip())


def measure_build(command: list[str], tree: DemoTree, out: Path, workers: int) -> BuildRun:
    if out.exists():
        shutil.rmtree(out)
    argv = [*command, "build", "--source", f"mvtec={tree.root}", "--out", str(out)]
    argv += ["--workers", str(workers), "--quiet"]
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
        monitor = PeakMemoryMonitor(process.pid)
        monitor.start()
        # os.wait4 instead of Popen.wait: it also returns the finished child's rusage.
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        monitor.stop()
        stderr.seek(0)
        tail = stderr.read().decode("utf-8", errors="replace")[-2000:]

    def megabytes(kb: int | None) -> float | None:
        return None if kb is None else kb / 1024

    reaped_kb = usage.ru_maxrss  # kB on Linux
    main_kb = monitor.largest_kb("main")
    if not monitor.peaks_kb.keys() - {process.pid}:
        # No other process ever ran, so wait4's figure is the main process's exact peak,
        # including the last moments that polling cannot see.
        main_kb = reaped_kb
    return BuildRun(
        images=tree.total,
        workers=workers,
        seconds=seconds,
        exit_code=process.returncode,
        main_peak_mb=megabytes(main_kb),
        largest_worker_mb=megabytes(monitor.largest_kb("worker")),
        helper_peak_mb=megabytes(monitor.largest_kb("helper")),
        reaped_peak_mb=reaped_kb / 1024,
        workers_seen=monitor.count("worker"),
        samples_written=count_lines(out / "samples.jsonl"),
        stderr_tail=tail,
    )


def time_start_up(command: list[str]) -> float:
    """Seconds for `build-dataset --version`: interpreter and CLI start-up, in every build."""
    start = time.perf_counter()
    subprocess.run([*command, "--version"], capture_output=True, check=False)
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def show(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_table(results: list[SizeResult]) -> None:
    header = ["images", "floor s"]
    for workers in WORKER_COUNTS:
        header += [f"build w{workers} s", f"ratio w{workers}"]
    header += ["main w1 MB", "main w2 MB", "worker w2 MB"]
    rows = []
    for result in results:
        row = [str(result.images), show(result.floor_seconds, 2)]
        for workers in WORKER_COUNTS:
            run = result.builds.get(workers)
            row += [
                show(run and run.seconds, 2),
                show(run and run.seconds / result.floor_seconds, 2),
            ]
        one, two = result.builds.get(1), result.builds.get(2)
        row += [show(one and one.main_peak_mb), show(two and two.main_peak_mb)]
        row += [show(two and two.largest_worker_mb)]
        rows.append(row)
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    print(
        "floor: every image and mask decoded once with PIL in one process; build: wall time of\n"
        "the whole `build-dataset build` subprocess, start-up included; MB: peak resident memory\n"
        "(VmHWM) of the main process and of its largest worker (pool helpers excluded)."
    )


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def print_targets(small: SizeResult, large: SizeResult) -> None:
    print()
    print(f"targets (at {large.images} images; memory from {small.images} to {large.images})")
    for workers in WORKER_COUNTS:
        run = large.builds[workers]
        ratio = run.seconds / large.floor_seconds
        print(
            f"  build/floor <= {RATIO_TARGET} with {workers} worker(s): {ratio:.2f}  "
            + verdict(ratio <= RATIO_TARGET)
        )
    checks = [
        ("main process, 1 worker", lambda r: r.builds[1].main_peak_mb),
        ("main process, 2 workers", lambda r: r.builds[2].main_peak_mb),
        ("largest worker, 2 workers", lambda r: r.builds[2].largest_worker_mb),
    ]
    limit = f"+{MEMORY_GROWTH_TOLERANCE:.0%}"
    for label, peak_of in checks:
        before, after = peak_of(small), peak_of(large)
        if before is None or after is None:
            print(f"  peak memory not growing, {label}: not measured (no such process seen)")
            continue
        growth = after / before - 1
        met = growth <= MEMORY_GROWTH_TOLERANCE
        print(
            f"  peak memory not growing (<= {limit}), {label}: "
            f"{before:.0f} -> {after:.0f} MB ({growth:+.0%})  {verdict(met)}"
        )


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="images in the large tree")
    parser.add_argument("--size", type=int, default=1024, help="image side in pixels")
    parser.add_argument("--workdir", type=Path, help="where trees and outputs go (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep trees and outputs; reuse trees")
    parser.add_argument(
        "--generate-workers", type=int, default=os.cpu_count() or 1, help="processes drawing trees"
    )
    parser.add_argument("--json", type=Path, help="also write the measurements to this file")
    return parser.parse_args()


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> int:
    arguments = parse_arguments()
    if not sys.platform.startswith("linux"):
        note("this benchmark reads /proc and wait4's kB units: it runs on Linux only")
        return 2
    if arguments.workdir is None:
        bench_dir = Path(tempfile.mkdtemp(prefix="adinstruct-bench-annotate-"))
    else:
        bench_dir = arguments.workdir / "adinstruct-bench-annotate"
        bench_dir.mkdir(parents=True, exist_ok=True)
    try:
        return run(arguments, bench_dir)
    finally:
        if arguments.keep:
            note(f"kept {bench_dir}")
        else:
            shutil.rmtree(bench_dir, ignore_errors=True)


def run(arguments: argparse.Namespace, bench_dir: Path) -> int:
    sizes = [max(2, arguments.images // 4), arguments.images]
    results: list[SizeResult] = []
    trees: dict[int, DemoTree] = {}
    for n_images in sizes:
        note(f"writing a {n_images}-image tree of {arguments.size}x{arguments.size} images ...")
        tree, generate_seconds = prepare_tree(
            bench_dir, n_images, arguments.size, arguments.generate_workers
        )
        note(
            f"  {tree.total} images ({tree.anomalous} anomalous, with masks) "
            + (f"in {generate_seconds:.1f} s" if generate_seconds is not None else "(reused)")
        )
        floor_seconds, files = decode_floor(tree)
        note(f"  floor: {files} files decoded in {floor_seconds:.2f} s")
        results.append(SizeResult(n_images, floor_seconds, files, generate_seconds))
        trees[n_images] = tree

    command = find_build_command()
    if command is None:
        print_table(results)
        note(
            "\nerror: cannot run the build: module adinstruct.builder.cli is not installed and "
            "no `build-dataset` is on PATH. Install adinstruct (pip install -e .) and rerun."
        )
        return 2
    note(f"build command: {' '.join(command)}; start-up {time_start_up(command):.2f} s per run")

    for result in results:
        for workers in WORKER_COUNTS:
            out = bench_dir / f"out-{result.images}-w{workers}"
            note(f"building {result.images} images with {workers} worker(s) ...")
            build_run = measure_build(command, trees[result.images], out, workers)
            if not arguments.keep:
                shutil.rmtree(out, ignore_errors=True)
            if build_run.exit_code != 0:
                note(
                    f"error: the build exited with status {build_run.exit_code}:\n"
                    + build_run.stderr_tail
                )
                return 1
            written = build_run.samples_written
            if written is not None and written != result.images:
                note(f"  warning: samples.jsonl has {written} lines for {result.images} images")
            helper = build_run.helper_peak_mb
            note(
                f"  {build_run.seconds:.2f} s; {build_run.workers_seen} worker process(es) seen"
                + (f"; pool helpers peak {helper:.0f} MB" if helper is not None else "")
            )
            result.builds[workers] = build_run

    print()
    print(f"annotate benchmark: {arguments.size}x{arguments.size} PNG, MVTec AD layout")
    print_table(results)
    print_targets(results[0], results[-1])
    if arguments.json:
        arguments.json.write_text(
            json.dumps([asdict(r) for r in results], indent=2), encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
