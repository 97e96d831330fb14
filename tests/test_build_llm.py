"""`build --recipe anomaly-instruct --describer openai` through the CLI, against a stand-in
OpenAI server on 127.0.0.1: records for every sample, a kill and a rerun that pays for no
completed request twice, a dry run that sends nothing, and a key that leaks nowhere."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import trees
from llm_standin import StandinServer, last_user_text

API_KEY = "sk-test-DO-NOT-LEAK-8c1f9e2a7b"


def grounded_responder(body: dict) -> str:
    """Answers that follow the facts the prompt states, as a good model would."""
    text = last_user_text(body)
    anomaly = "- Label: anomaly" in text
    return json.dumps({
        "anomaly_present": anomaly,
        "defect_type": "defect" if anomaly else None,
        "location": None,
        "appearance": "A visible irregularity on the surface." if anomaly else None,
        "likely_cause": "Handling during production." if anomaly else None,
        "effect": "It may weaken the part." if anomaly else None,
        "prevention": "Careful handling." if anomaly else None,
        "object_description": None if anomaly else "A clean part with no visible defect.",
    })  # fmt: skip


def body_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def completed(server: StandinServer) -> Counter[str]:
    return Counter(
        body_key(r.body) for r in server.requests
        if r.path == "/v1/chat/completions" and r.status == 200
    )  # fmt: skip


def build_command(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(Path(sys.executable).parent / "build-dataset"), "build",
        "--source", f"mvtec={root}", "--out", str(out), "--recipe", "anomaly-instruct",
        "--describer", "openai", "--model", "gpt-4o-mini", "--workers", "1", "--quiet",
        "--concurrency", "2", *extra,
    ]  # fmt: skip


def environment(server: StandinServer) -> dict[str, str]:
    return {**os.environ, "OPENAI_API_KEY": API_KEY, "OPENAI_BASE_URL": server.base_url}


@pytest.fixture
def release(tmp_path):
    return trees.write_mvtec_ad(tmp_path / "mvtec")


def test_llm_build_survives_a_kill_without_paying_twice(release, tmp_path):
    out = tmp_path / "out"
    with StandinServer(latency_s=0.3, responder=grounded_responder) as server:
        first = subprocess.Popen(
            build_command(release.root, out), env=environment(server),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while sum(completed(server).values()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        before_rerun = completed(server)
        assert 3 <= sum(before_rerun.values()) < len(release.samples)

        rerun = subprocess.run(
            build_command(release.root, out), env=environment(server),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert rerun.returncode == 0, rerun.stderr
        answered = completed(server)
        # A request whose answer was on the wire at the kill is sent again (it never reached
        # the cache); no more than the requests in flight (--concurrency 2) may repeat.
        repeated = sum(count - 1 for count in answered.values() if count > 1)
        assert repeated <= 2
        assert len(answered) == len(release.samples)

        # Everything is cached now: a third run sends nothing at all.
        sent_before = len(server.chat_bodies())
        again = subprocess.run(
            build_command(release.root, out), env=environment(server),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert len(server.chat_bodies()) == sent_before
        usage = server.answered_usage()
        assert all(header == f"Bearer {API_KEY}" for header in server.authorization_headers)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["llm_usage"]["cache_hits"] == len(release.samples)
    records = json.loads((out / "instruct" / "anomaly_instruct.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").open()]
    assert len(samples) == len(release.samples)
    assert {r["metadata"]["sample_id"] for r in records} == set(release.samples)
    assert all(s["describer"] == "openai:gpt-4o-mini" for s in samples)
    assert usage, "the stand-in answered nothing"
    # The key is nowhere in what the build wrote: outputs, manifest, cache, logs.
    for path in out.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    assert API_KEY not in rerun.stderr + rerun.stdout + again.stderr + again.stdout


def test_manifest_costs_add_up_to_the_usage_the_server_sent(release, tmp_path):
    out = tmp_path / "out"
    with StandinServer(responder=grounded_responder) as server:
        result = subprocess.run(
            build_command(release.root, out), env=environment(server),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        usage = server.answered_usage()
    totals = json.loads((out / "manifest.json").read_text())["llm_usage"]
    assert totals["requests"] == len(usage) == len(release.samples)
    assert totals["input_tokens"] == sum(u["prompt_tokens"] for u in usage)
    assert totals["output_tokens"] == sum(u["completion_tokens"] for u in usage)
    assert totals["cost_usd"] > 0


def test_dry_run_prices_the_requests_and_sends_nothing(release, tmp_path):
    out = tmp_path / "out"
    with StandinServer(responder=grounded_responder) as server:
        result = subprocess.run(
            build_command(release.root, out, "--dry-run"), env=environment(server),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert server.requests == []
    assert f"{len(release.samples)} requests" in result.stdout
    assert "$" in result.stdout
    assert not (out / "samples.jsonl").exists() and not (out / "manifest.json").exists()


def test_batch_mode_builds_the_same_records(release, tmp_path):
    online, batched = tmp_path / "online", tmp_path / "batched"
    with StandinServer(responder=grounded_responder) as server:
        for out, extra in ((online, ()), (batched, ("--batch", "--batch-poll", "0.05"))):
            result = subprocess.run(
                build_command(release.root, out, *extra), env=environment(server),
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
        assert server.batch_creations == 1
        # The batched build sent no chat request of its own: only the online build did.
        online_posts = [r for r in server.requests if r.method == "POST" and "chat" in r.path]
        assert len(online_posts) == len(release.samples)
    assert (batched / "instruct" / "anomaly_instruct.json").read_bytes() == (
        online / "instruct" / "anomaly_instruct.json"
    ).read_bytes()
    manifest = json.loads((batched / "manifest.json").read_text())
    assert manifest["llm_usage"]["requests"] == len(release.samples)
