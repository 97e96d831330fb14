"""Validate a generated folder of many records: records per second, peak memory, and the floor.

    python bench/validate.py [--records 100000] [--workdir DIR]

Builds the demo, repeats its instruction records (each with a fresh id) up to --records, and
runs `build-dataset validate` on folders of a tenth and of all the records as subprocesses,
reading their peak RSS from wait4. The floor is reading and parsing the same records file
with the standard library in this process. Targets (issue 4): every validator together at
25,000 records/s or more on one core, memory independent of the record count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RECORDS_PER_S = 25_000


def script() -> list[str]:
    installed = Path(sys.executable).parent / "build-dataset"
    return (
        [str(installed)]
        if installed.is_file()
        else [sys.executable, "-m", "adinstruct.builder.cli"]
    )


def make_folder(base: Path, demo: Path, records: int) -> Path:
    folder = base / f"records-{records}"
    shutil.copytree(demo, folder, symlinks=True)
    path = folder / "instruct" / "anomaly_instruct.json"
    originals = json.loads(path.read_text(encoding="utf-8"))
    with path.open("w", encoding="utf-8") as handle:
        handle.write("[")
        for index in range(records):
            record = dict(originals[index % len(originals)])
            record["id"] = f"{record['id']}~{index}"
            handle.write(("," if index else "") + "\n" + json.dumps(record))
        handle.write("\n]\n")
    (folder / "manifest.json").unlink()  # its checksums no longer match the grown file
    return folder


def floor_seconds(folder: Path) -> float:
    started = time.perf_counter()
    records = json.loads((folder / "instruct" / "anomaly_instruct.json").read_text("utf-8"))
    sum(len(r["conversations"]) for r in records)
    return time.perf_counter() - started


def run_validate(folder: Path) -> tuple[float, float, int]:
    started = time.perf_counter()
    process = subprocess.Popen([*script(), "validate", str(folder), "--quiet"])
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    return seconds, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    options = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="adinstruct-bench-validate-", dir=options.workdir))
    try:
        demo = base / "demo"
        subprocess.run([*script(), "demo", "--out", str(demo), "--quiet"], check=True)
        print(f"{'records':>9} {'floor s':>8} {'validate s':>11} {'records/s':>10} "
              f"{'ratio':>6} {'peak MB':>8}")  # fmt: skip
        peaks = []
        rates = []
        for count in (options.records // 10, options.records):
            folder = make_folder(base, demo, count)
            floor = floor_seconds(folder)
            seconds, peak_mb, code = run_validate(folder)
            rate = count / seconds
            peaks.append(peak_mb)
            rates.append(rate)
            print(f"{count:>9} {floor:>8.2f} {seconds:>11.2f} {rate:>10,.0f} "
                  f"{seconds / floor:>6.1f} {peak_mb:>8.1f}   (exit {code})")  # fmt: skip
            shutil.rmtree(folder)
        print("floor: json.loads of the records file and one pass over it; ratio: validate/floor")
        rate_met = "MET" if rates[-1] >= TARGET_RECORDS_PER_S else "MISSED"
        print(f"target {TARGET_RECORDS_PER_S:,} records/s at {options.records:,}: "
              f"{rates[-1]:,.0f}  {rate_met}")  # fmt: skip
        growth = peaks[1] / peaks[0] - 1
        memory_met = "MET" if growth <= 0.10 else "MISSED"
        print(f"memory independent of the record count (<= +10%): "
              f"{peaks[0]:.0f} -> {peaks[1]:.0f} MB ({growth:+.0%})  {memory_met}")  # fmt: skip
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
