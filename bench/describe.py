"""Measure the LLM engine's throughput against its concurrency bound, and a full-cache rerun.

    python bench/describe.py [--requests 2000] [--latency 0.2] [--concurrency 8 32 64]
                             [--json FILE]

Starts the OpenAI stand-in (`tests/llm_standin.py`) as its own process with a fixed latency
per answer, so that the server's threads do not compete with the engine for this process's
interpreter, then for each concurrency level sends `--requests` structured-output requests
through `Engine.run` into a fresh cache, and runs them again from the full cache.

With a fixed latency L and C requests in flight, no engine can answer more than C / L
requests a second: that is the bound. Targets: at least 0.9 of the bound at every level, and
a rerun under 2% of the first run's time.

Importing openai and building the first client happen once per process (~0.8 s here): that
is done, and reported, before the timed runs; each run's own clients are timed. Each timed
run starts after `gc.collect()`, so that collecting one run's garbage is not billed to the
next. A measurement, not a test: it exits 0 whether or not the targets are met, and 1 when it
could not measure (the stand-in did not start, or a request failed).
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from adinstruct.builder.describe.cache import AnswerCache
from adinstruct.builder.describe.engine import Engine, EngineConfig
from adinstruct.builder.describe.pricing import PriceTable
from adinstruct.builder.describe.requests import ChatRequest, ResponseSchema

STANDIN = Path(__file__).resolve().parents[1] / "tests" / "llm_standin.py"
THROUGHPUT_TARGET = 0.9
RERUN_TARGET = 0.02
SYSTEM = (
    "You are an inspector of industrial parts. Describe the defect in the image, grounded in "
    "the facts given: its type, where it is on the 3x3 grid, what it looks like, its likely "
    "cause, its effect, and how to prevent it. Answer as JSON."
)
SCHEMA = ResponseSchema(
    name="description",
    json_schema={
        "type": "object",
        "properties": {
            name: {"type": ["string", "null"]}
            for name in ("defect_type", "location", "appearance", "likely_cause", "effect")
        }
        | {"anomaly_present": {"type": "boolean"}},
        "required": ["anomaly_present", "defect_type", "location", "appearance",
                     "likely_cause", "effect"],
        "additionalProperties": False,
    },
)  # fmt: skip


@dataclass
class Level:
    concurrency: int
    requests: int
    first_run_s: float
    throughput: float
    bound: float
    ratio: float
    rerun_s: float
    rerun_fraction: float


def make_requests(count: int, tag: str) -> list[ChatRequest]:
    return [
        ChatRequest(
            request_id=f"bench/{tag}/{index}",
            model="gpt-4o",
            response_schema=SCHEMA,
            messages=[
                {"role": "system", "content": SYSTEM},
                {
                    "role": "user",
                    "content": f"Sample {tag}-{index}: a scratch of 3% of the "
                    "area, one region, at the top left of a metal nut. Describe it.",
                },
            ],
        )
        for index in range(count)
    ]


def measure(base_url: str, workdir: Path, concurrency: int, count: int, latency: float) -> Level:
    config = EngineConfig(api_key="sk-bench-not-a-key", base_url=base_url, concurrency=concurrency)
    engine = Engine(config, AnswerCache(workdir / f"cache-{concurrency}.sqlite"), PriceTable())
    requests = make_requests(count, f"c{concurrency}")
    gc.collect()  # the previous run's garbage is not this run's cost
    start = time.perf_counter()
    first = list(engine.run(requests))
    first_run = time.perf_counter() - start
    if failed := [r for r in first if r.status != "ok"]:
        raise RuntimeError(f"{len(failed)} requests failed, e.g. {failed[0].error}")
    gc.collect()  # a full collection after the first run takes ~150 ms here
    start = time.perf_counter()
    again = list(engine.run(requests))
    rerun = time.perf_counter() - start
    if not all(r.from_cache for r in again):
        raise RuntimeError("the rerun sent requests although every answer was cached")
    bound = concurrency / latency
    throughput = count / first_run
    return Level(
        concurrency, count, round(first_run, 3), round(throughput, 1), round(bound, 1),
        round(throughput / bound, 3), round(rerun, 4), round(rerun / first_run, 4),
    )  # fmt: skip


def warm_up() -> float:
    """Import openai and build one client, as any process using the engine does once."""
    start = time.perf_counter()
    import openai

    openai.AsyncOpenAI(api_key="sk-bench-not-a-key", base_url="http://127.0.0.1:9/v1")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per answer")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()

    server = subprocess.Popen(
        [sys.executable, str(STANDIN), "--latency", str(args.latency)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    levels: list[Level] = []
    try:
        base_url = server.stdout.readline().strip()
        if not base_url.startswith("http"):
            print("the stand-in server did not start", file=sys.stderr)
            return 1
        print(f"stand-in at {base_url}, {args.latency * 1000:.0f} ms per answer")
        print(f"one-time start-up (import openai, first client): {warm_up():.2f} s, not timed")
        print(f"{'conc':>5} {'reqs':>6} {'first s':>8} {'req/s':>7} {'bound':>7} {'ratio':>6} "
              f"{'rerun s':>8} {'rerun %':>8}")  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="adinstruct-bench-describe-") as workdir:
            for concurrency in args.concurrency:
                try:
                    level = measure(
                        base_url, Path(workdir), concurrency, args.requests, args.latency
                    )
                except RuntimeError as error:
                    print(
                        f"could not measure at concurrency {concurrency}: {error}", file=sys.stderr
                    )
                    return 1
                levels.append(level)
                print(f"{level.concurrency:>5} {level.requests:>6} {level.first_run_s:>8.2f} "
                      f"{level.throughput:>7.1f} {level.bound:>7.1f} {level.ratio:>6.3f} "
                      f"{level.rerun_s:>8.3f} {100 * level.rerun_fraction:>7.2f}%")  # fmt: skip
    finally:
        server.stdin.close()
        server.wait(timeout=10)
    throughput_met = all(level.ratio >= THROUGHPUT_TARGET for level in levels)
    rerun_met = all(level.rerun_fraction < RERUN_TARGET for level in levels)
    print(f"throughput ≥ {THROUGHPUT_TARGET} of the bound at every level: "
          f"{'met' if throughput_met else 'NOT met'}")  # fmt: skip
    print(f"full-cache rerun < {RERUN_TARGET:.0%} of the first run: "
          f"{'met' if rerun_met else 'NOT met'}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([asdict(level) for level in levels], indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
