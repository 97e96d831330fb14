"""bench/reproduce.py, run as a subprocess on synthetic MVTec AD and VisA trees in their exact
layouts, with a tiny random open_clip model saved to disk as a config JSON and a .pt file.

Random weights reproduce nothing; what is checked is that every test image goes through the
real source builders and the real scorer, and that the table has its shape: every category,
each dataset's mean beside WinCLIP's published figures, and the ALFA columns (filled from the
OpenAI stand-in, or saying why they are missing).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("open_clip")

from detector_models import TINY_ARCH, save_tiny_open_clip
from llm_standin import StandinServer, last_user_text
from trees import write_mvtec_ad, write_visa_benchmark

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "reproduce.py"
NO_LLM = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI")}
METRICS = ("image AUROC", "pixel AUROC", "AUPRO")
#: (dataset, category) -> test images in the trees below.
EXPECTED_ROWS = {
    ("mvtec_ad", "bottle"): 4,  # 1 good, broken_large, contamination 000 and 001
    ("mvtec_ad", "grid"): 2,
    ("visa", "candle"): 7,  # 3 normal and 4 anomalous test images
    ("visa", "capsules"): 7,
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    write_mvtec_ad(root / "mvtec_anomaly_detection")
    write_visa_benchmark(root / "VisA_20220922")
    tiny = save_tiny_open_clip(root / "model")
    return root, tiny


def reproduce(setup, tmp_path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
    root, tiny = setup
    figures = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--mvtec", str(root / "mvtec_anomaly_detection"),
         "--visa", str(root / "VisA_20220922"), "--weights", str(tiny.weights),
         "--arch", str(tiny.config), "--batch-size", "3", "--pixel-size", "64",
         "--cache", str(tmp_path / "llm.sqlite3"), "--json", str(figures)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result, json.loads(figures.read_text())


def markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert set(lines[1]) <= set("|-"), lines[1]  # the separator row
    return split[0], split[2:]


def check_rows(header: list[str], rows: list[list[str]]) -> dict[tuple[str, str], list[str]]:
    assert all(len(row) == len(header) for row in rows), rows
    by_key = {(row[0], row[1]): row for row in rows}
    expected_keys = [*EXPECTED_ROWS]
    assert list(by_key) == [*expected_keys[:2], ("mvtec_ad", "mean"), *expected_keys[2:],
                            ("visa", "mean")]  # fmt: skip
    for key, images in EXPECTED_ROWS.items():
        assert by_key[key][2] == str(images)
    assert by_key["mvtec_ad", "mean"][2] == "6" and by_key["visa", "mean"][2] == "14"
    published = [header.index(f"WinCLIP paper {name}") for name in METRICS]
    assert [by_key["mvtec_ad", "mean"][i] for i in published] == ["91.8", "85.1", "64.6"]
    assert [by_key["visa", "mean"][i] for i in published] == ["78.1", "79.6", "56.8"]
    assert all(by_key[key][i] == "–" for key in EXPECTED_ROWS for i in published)
    number = re.compile(r"^\d{1,3}\.\d$")
    for key in EXPECTED_ROWS:  # every category has both classes and masks: all defined
        static = [by_key[key][header.index(f"static {name}")] for name in METRICS]
        assert all(number.match(cell) for cell in static), (key, static)
    return by_key


def test_without_an_llm_the_table_says_why_alfa_is_missing(setup, tmp_path):
    result, figures = reproduce(setup, tmp_path, NO_LLM)
    header, rows = markdown_table(result.stdout)
    assert header == ["dataset", "category", "test images",
                      *(f"static {name}" for name in METRICS), "ALFA",
                      *(f"WinCLIP paper {name}" for name in METRICS)]  # fmt: skip
    by_key = check_rows(header, rows)
    alfa = header.index("ALFA")
    assert {row[alfa] for row in by_key.values()} == {
        "missing: no LLM configured (set OPENAI_API_KEY or OPENAI_BASE_URL)"
    }
    assert f"open_clip:{TINY_ARCH}@" in result.stdout
    assert "mvtec_ad: 6 test images" in result.stdout and "0 unreadable" in result.stdout
    # The JSON holds the same figures as the table.
    bottle = figures["datasets"][0]["categories"][0]
    assert bottle["category"] == "bottle" and set(bottle) == {"category", "images", "static"}
    cell = by_key["mvtec_ad", "bottle"][header.index("static image AUROC")]
    assert f"{100 * bottle['static']['image AUROC']:.1f}" == cell


def prompt_responder(body: dict) -> str:
    name = re.search(r"Object category: ([\w ]+)\.", last_user_text(body))[1]
    return json.dumps({"normal": [f"a photo of a flawless {name}"],
                       "anomalous": [f"a photo of a {name} with a crack"]})  # fmt: skip


def test_with_an_llm_the_alfa_columns_are_filled(setup, tmp_path):
    with StandinServer(responder=prompt_responder) as server:
        env = {**NO_LLM, "OPENAI_API_KEY": "sk-test-reproduce", "OPENAI_BASE_URL": server.base_url}
        result, figures = reproduce(setup, tmp_path, env)
        asked = sorted(
            re.search(r"Object category: ([\w ]+)\.", last_user_text(body))[1]
            for body in server.chat_bodies()
        )
    assert asked == ["bottle", "candle", "capsules", "grid"]
    header, rows = markdown_table(result.stdout)
    assert [f"ALFA {name}" for name in METRICS] == header[6:9]
    by_key = check_rows(header, rows)
    for key in EXPECTED_ROWS:
        alfa = [by_key[key][header.index(f"ALFA {name}")] for name in METRICS]
        assert all(re.match(r"^\d{1,3}\.\d$", cell) for cell in alfa), (key, alfa)
    assert figures["alfa_missing"] is None
    assert "ALFA" in figures["datasets"][1]["categories"][0]
