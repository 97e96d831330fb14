"""Validate a generated folder of many records: records per second, peak memory, and the floor.

    python bench/validate.py [--records 100000] [--workdir DIR] [--distinct-answers]

Builds the demo, repeats its instruction records (each with a fresh id; with
--distinct-answers every gpt answer made distinct, as an LLM describer's are) up to --records, and
runs `build-dataset validate` on folders of a tenth and of all the records as subprocesses,
reading their wall time, CPU time and peak RSS from wait4; the demo folder itself is
validated first, which shows the fixed start-up (imports, compiling the schemas, decoding every
image once) that the rates include. The floor is reading and parsing the same records file
with the standard library, in a subprocess of its own: wait4's peak of a child counts the
peak of the process that spawned it (a child starts as its copy), so the bench itself never
holds the records, and prints its own peak, below which no child's figure can read. Targets
(issue 4): every validator together at 25,000 records/s or more on one core, and memory
independent of the record count (the peak at all the records within 10% of the tenth's).
Each run's own seconds per validator (from its validation.json) are printed below it.

--distinct-answers is the worst case for the grounding check, which then reads every answer
(about 14 µs each here) where the default folder's repeats hit its caches; it holds a folder
that no build writes over a few hundred images (a build writes at most three records a sample,
so LLM-written answers come with as many images to decode).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RECORDS_PER_S = 25_000
RECORDS_FILE = Path("instruct") / "anomaly_instruct.json"


def script() -> list[str]:
    installed = Path(sys.executable).parent / "build-dataset"
    return (
        [str(installed)]
        if installed.is_file()
        else [sys.executable, "-m", "adinstruct.builder.cli"]
    )


def distinct_answers(record: dict, index: int) -> dict:
    """The record with every gpt answer made its own, as an LLM writes them (the grounding
    check then reads each one: its caches of the banks' repeated answers never hit)."""
    record = json.loads(json.dumps(record))
    for turn, message in enumerate(record["conversations"]):
        if message["from"] == "gpt":
            shade = SHADES[index % len(SHADES)]
            message["value"] = message["value"].rstrip(".") + f", a {shade} case, {index}-{turn}."
    return record


SHADES = ("small", "faint", "clear", "slight", "sharp", "dull", "narrow", "broad")


def make_folder(base: Path, demo: Path, records: int, distinct: bool = False) -> Path:
    folder = base / f"records-{records}"
    shutil.copytree(demo, folder, symlinks=True)
    path = folder / RECORDS_FILE
    originals = json.loads(path.read_text(encoding="utf-8"))
    with path.open("w", encoding="utf-8") as handle:
        handle.write("[")
        for index in range(records):
            record = dict(originals[index % len(originals)])
            if distinct:
                record = distinct_answers(record, index)
            record["id"] = f"{record['id']}~{index}"
            handle.write(("," if index else "") + "\n" + json.dumps(record))
        handle.write("\n]\n")
    (folder / "manifest.json").unlink()  # its checksums no longer match the grown file
    return folder


def floor_seconds(folder: Path) -> float:
    """json.loads of the records file and one pass over it, timed in a subprocess."""
    done = subprocess.run(
        [sys.executable, __file__, "--floor", str(folder / RECORDS_FILE)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return float(done.stdout)


def floor_in_this_process(path: Path) -> float:
    started = time.perf_counter()
    records = json.loads(path.read_text("utf-8"))
    sum(len(r["conversations"]) for r in records)
    return time.perf_counter() - started


def run_validate(folder: Path) -> tuple[float, float, float, int]:
    """Wall seconds, CPU seconds (user + system), peak RSS in MB, exit status."""
    started = time.perf_counter()
    process = subprocess.Popen([*script(), "validate", str(folder), "--quiet"])
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, cpu, usage.ru_maxrss / 1024, os.waitstatus_to_exitcode(status)


def validator_seconds(folder: Path) -> str:
    """Each validator's own seconds in the run, and the rest (reading, start-up, the report)."""
    report = json.loads((folder / "validation.json").read_text(encoding="utf-8"))
    spent = {entry["name"]: entry["seconds"] for entry in report["validators"]}
    parts = ", ".join(f"{name} {seconds:.2f}" for name, seconds in spent.items())
    rest = report["seconds"] - sum(spent.values())
    return f"validators s: {parts}; reading and the rest {rest:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--distinct-answers", action="store_true",
        help="make every gpt answer distinct (as an LLM describer's are), not the demo's repeats",
    )  # fmt: skip
    parser.add_argument("--floor", type=Path, help=argparse.SUPPRESS)  # the floor's subprocess
    options = parser.parse_args()
    if options.floor is not None:
        print(floor_in_this_process(options.floor))
        return
    base = Path(tempfile.mkdtemp(prefix="adinstruct-bench-validate-", dir=options.workdir))
    try:
        demo = base / "demo"
        subprocess.run([*script(), "demo", "--out", str(demo), "--quiet"], check=True)
        print(f"{'records':>9} {'floor s':>8} {'validate s':>11} {'records/s':>10} "
              f"{'ratio':>6} {'cpu s':>6} {'records/cpu-s':>13} {'peak MB':>8}")  # fmt: skip
        demo_records = len(json.loads((demo / RECORDS_FILE).read_text(encoding="utf-8")))
        seconds, cpu, peak_mb, code = run_validate(demo)
        print(f"{demo_records:>9} {'':>8} {seconds:>11.2f} {'':>10} {'':>6} {cpu:>6.2f} "
              f"{'':>13} {peak_mb:>8.1f}   (the demo itself: start-up; exit {code})")  # fmt: skip
        peaks, rates = [], []
        for count in (options.records // 10, options.records):
            folder = make_folder(base, demo, count, options.distinct_answers)
            floor = floor_seconds(folder)
            seconds, cpu, peak_mb, code = run_validate(folder)
            rate = count / seconds
            peaks.append(peak_mb)
            rates.append(rate)
            print(f"{count:>9} {floor:>8.2f} {seconds:>11.2f} {rate:>10,.0f} "
                  f"{seconds / floor:>6.1f} {cpu:>6.2f} {count / cpu:>13,.0f} {peak_mb:>8.1f}"
                  f"   (exit {code})")  # fmt: skip
            print(f"{'':>9}   {validator_seconds(folder)}")
            shutil.rmtree(folder)
        print("floor: json.loads of the records file and one pass over it; ratio: validate/floor;"
              " cpu s: the validate process's user + system time")  # fmt: skip
        own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"the bench's own peak: {own_peak:.0f} MB (no child's peak can read lower)")
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
