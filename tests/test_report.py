"""The static HTML report of a built folder, opened in a real headless Chromium.

The demo is built once for the module by the installed `build-dataset demo`. Pages are looked
at three ways: a screenshot and a DOM dump from Chromium's own command line, and a DevTools
session over `--remote-debugging-pipe` (stdlib only: NUL-separated JSON on file descriptors 3
and 4), which reports console messages with their level, uncaught exceptions, failed loads and
CSP violations, and every URL the page requests, and lets a test use the filters. Chromium's
`--enable-logging=stderr` was not enough: it logs console.error and console.log at the same
level, and a missing image not at all.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from built_folders import run_demo
from PIL import Image

from adinstruct.builder.annotate.geometry import rle_decode, rle_encode
from adinstruct.builder.io import record_line
from adinstruct.builder.report.charts import Series, area_bin, bar_chart
from adinstruct.builder.report.report import (
    FILES_DIR,
    MAX_TABLE_ROWS,
    REPORT_FILE,
    add_coverage,
    write_report,
)
from adinstruct.schemas import RLE, QuarantineEntry

PAYLOAD = "<script>alert(1)</script>"
BROWSER_TIMEOUT = 120


def chromium() -> str:
    """The browser; missing, it fails the test (CI installs it), never skips it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "chromium is not installed: the report tests open the page in a real browser; "
            "install it with `apt-get install chromium`",
            pytrace=False,
        )
    return found


def browser_flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--no-first-run"]  # fmt: skip


def run_chromium(profile: Path, *arguments: str) -> subprocess.CompletedProcess[bytes]:
    result = subprocess.run(
        [chromium(), *browser_flags(profile), *arguments],
        capture_output=True, timeout=BROWSER_TIMEOUT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result


# --------------------------------------------------------------------------------------
# A DevTools session over a pipe
# --------------------------------------------------------------------------------------


TRAMPOLINE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


def high_descriptor(descriptor: int) -> int:
    moved = fcntl.fcntl(descriptor, fcntl.F_DUPFD, 10)
    os.close(descriptor)
    return moved


#: Console calls that mean something is wrong (console.log and console.info are fine).
NOT_FINE = ("error", "warning", "assert")


class DevTools:
    """Chromium driven over `--remote-debugging-pipe`: commands on fd 3, replies on fd 4."""

    def __init__(self, profile: Path) -> None:
        commands_read, self.commands = os.pipe()
        self.replies, replies_write = os.pipe()
        self.log_path = profile.parent / "chromium.log"
        self.log = self.log_path.open("wb")
        # A small Python trampoline puts the pipe ends on descriptors 3 and 4, where Chromium
        # reads and writes (dash cannot name a descriptor above 9, so no `sh -c` here). They
        # are moved above 10 first, so that neither end sits on 3 or 4 and is overwritten.
        commands_read, replies_write = (
            high_descriptor(fd) for fd in (commands_read, replies_write)
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", TRAMPOLINE, str(commands_read), str(replies_write),
             chromium(), *browser_flags(profile), "--remote-debugging-pipe",
             "--window-size=1280,2400", "about:blank"],
            pass_fds=(commands_read, replies_write),
            stdout=subprocess.DEVNULL, stderr=self.log,
        )  # fmt: skip
        os.close(commands_read)
        os.close(replies_write)
        self.buffer = b""
        self.last_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, EOFError, RuntimeError):
            self.send("Browser.close", session=False, timeout=10)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()  # the browser this session started, by its own handle
            self.process.wait()
        os.close(self.commands)
        os.close(self.replies)
        self.log.close()

    def read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.replies], [], [], max(left, 0))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self.replies, 1 << 16)
            if not chunk:
                self.log.flush()
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise EOFError(f"Chromium closed its DevTools pipe; its log ends:\n{tail}")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        decoded = json.loads(message)
        if "method" in decoded:
            self.events.append(decoded)
        return decoded

    def send(self, method: str, params: dict | None = None, *, session: bool = True,
             timeout: float = 60) -> dict[str, Any]:  # fmt: skip
        self.last_id += 1
        message: dict[str, Any] = {"id": self.last_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self.read_message(deadline)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(event["method"] == method for event in self.events):
            self.read_message(deadline)

    def settle(self, seconds: float) -> None:
        """Keep collecting events for a while (timers the page set may still fire)."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                self.read_message(deadline)
        except TimeoutError:
            pass

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
            session=False,
        )  # fmt: skip
        self.session = attached["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable")
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired")
        self.settle(0.5)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
        })  # fmt: skip
        if "exceptionDetails" in result:
            raise AssertionError(f"the test's own script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def problems(self) -> list[str]:
        """Every console error or warning, uncaught exception, failed load, CSP violation and
        JavaScript dialog the page produced."""
        found = []
        for event in self.events:
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in NOT_FINE:
                args = params["args"]
                text = " ".join(str(arg.get("value", arg.get("description"))) for arg in args)
                found.append(f"console.{params['type']}: {text}")
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                description = details.get("exception", {}).get("description", details["text"])
                found.append(f"uncaught: {description}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                entry = params["entry"]
                where = entry.get("url", "")
                found.append(f"{entry['source']} {entry['level']}: {entry['text']} {where}")
            elif method == "Page.javascriptDialogOpening":
                found.append(f"dialog: {params.get('message')}")
        return found

    def requested_urls(self) -> list[str]:
        return [
            event["params"]["request"]["url"]
            for event in self.events
            if event["method"] == "Network.requestWillBeSent"
        ]


@pytest.fixture
def devtools(tmp_path):
    session = DevTools(tmp_path / "profile")
    yield session
    session.close()


# --------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return run_demo(tmp_path_factory.mktemp("report") / "demo")


@pytest.fixture(scope="module")
def demo_report(demo) -> Path:
    return write_report(demo)


def copy_folder(demo: Path, target: Path) -> Path:
    """The built folder without its release trees (the report never reads them) or report."""
    shutil.copytree(demo, target, ignore=shutil.ignore_patterns("source", FILES_DIR, REPORT_FILE))
    return target


def read_list(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text(encoding="utf-8"))


def write_list(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n", encoding="utf-8")


def quarantine_entries(count: int, every_source: int) -> list[QuarantineEntry]:
    """`count` entries; every `every_source`-th a source-stage path escape, the rest masks."""
    entries = []
    for index in range(count):
        if index % every_source == 0:
            entries.append(QuarantineEntry(
                stage="source", code="path_escape", source="visa",
                reason=f"split_csv/1cls.csv row {index} names ../outside/{index}.JPG, which "
                "leaves the release root", path=f"../outside/{index}.JPG",
            ))  # fmt: skip
        else:
            entries.append(QuarantineEntry(
                stage="annotate", code="mask_size_mismatch", source="mvtec_ad",
                reason=f"bottle/ground_truth/broken_large/{index:03d}_mask.png is 900×900 "
                "but its image is 1024×1024", sample_id=f"mvtec_ad/bottle/test/{index:03d}",
            ))  # fmt: skip
    return entries


@pytest.fixture(scope="module")
def planted(demo, tmp_path_factory) -> Path:
    """A copy of the demo with markup planted in its records and 1,500 quarantine entries."""
    folder = copy_folder(demo, tmp_path_factory.mktemp("planted") / "folder")
    instruct = folder / "instruct" / "anomaly_instruct.json"
    records = read_list(instruct)
    for record in records:
        record["conversations"][1]["value"] += f" {PAYLOAD}"
        record["metadata"]["category"] = f"cat{PAYLOAD}"
    write_list(instruct, records)
    samples = folder / "samples.jsonl"
    lines = []
    for line in samples.read_text().splitlines():
        sample = json.loads(line)
        if sample["defect_types"]:
            sample["defect_types"] = [f"{sample['defect_types'][0]}{PAYLOAD}"]
        lines.append(json.dumps(sample))
    samples.write_text("\n".join(lines) + "\n")
    entries = quarantine_entries(1500, every_source=5)
    entries[7].reason += f" {PAYLOAD}"
    (folder / "quarantine.jsonl").write_text("".join(record_line(e) for e in entries))
    validation = json.loads((folder / "validation.json").read_text())
    validation["findings"][0]["message"] += f" {PAYLOAD}"
    validation["findings"] += [
        {"validator": "integrity", "severity": "error", "code": "missing_image",
         "message": f"images/demo/capsule/test/crack/00{i}.png is missing",
         "file": "instruct/anomaly_instruct.json", "record_id": None}
        for i in range(2)
    ]  # fmt: skip
    (folder / "validation.json").write_text(json.dumps(validation))
    write_report(folder)
    return folder


# --------------------------------------------------------------------------------------
# Reading the DOM Chromium dumps
# --------------------------------------------------------------------------------------


class GalleryParser(HTMLParser):
    """The gallery's items: their data attributes, <img> sources and conversation turns."""

    def __init__(self) -> None:
        super().__init__()
        self.items: list[dict[str, Any]] = []
        self.item: dict[str, Any] | None = None
        self.depth = 0
        self.turn: list[str] | None = None
        self.in_said = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "article" and "item" in classes:
            self.item = {"attributes": attributes, "images": [], "turns": []}
            self.depth = 0
        if self.item is None:
            return
        if tag == "article":
            self.depth += 1
        if tag == "img":
            self.item["images"].append(attributes.get("src"))
        if tag == "li" and "turn" in classes:
            self.turn = [classes[1], ""]
            self.item["turns"].append(self.turn)
        if tag == "span" and "said" in classes:
            self.in_said = True

    def handle_endtag(self, tag: str) -> None:
        if self.item is None:
            return
        if tag == "li":
            self.turn, self.in_said = None, False
        if tag == "article":
            self.depth -= 1
            if self.depth == 0:
                self.items.append(self.item)
                self.item = None

    def handle_data(self, data: str) -> None:
        if self.turn is not None and self.in_said:
            self.turn[1] += data


# --------------------------------------------------------------------------------------
# In the browser
# --------------------------------------------------------------------------------------


def test_the_page_renders_in_chromium(demo_report, tmp_path):
    shot = tmp_path / "report.png"
    run_chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2400",
                 demo_report.as_uri())  # fmt: skip
    with Image.open(shot) as image:
        assert image.size == (1280, 2400)
        pixels = np.asarray(image.convert("RGB"))
    packed = pixels.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
    colours = len(np.unique(packed))
    # A blank or unstyled page has a handful of colours; charts, the heat map and the
    # thumbnails give thousands.
    assert colours > 2000, f"only {colours} distinct colours: is the page blank?"
    not_white = (pixels < 240).any(axis=2).mean()
    assert not_white > 0.15, f"only {not_white:.0%} of the screenshot is not white"


def test_the_gallery_shows_thumbnails_that_exist_next_to_their_conversations(
    demo, demo_report, tmp_path
):
    dom = run_chromium(tmp_path / "profile", "--dump-dom", demo_report.as_uri()).stdout.decode()
    parser = GalleryParser()
    parser.feed(dom)
    items = parser.items
    assert len(items) == 48  # the default gallery size; the demo has more records than that
    records = {r["id"]: r for r in read_list(demo / "instruct" / "anomaly_instruct.json")}
    reasoning = {r["image"]: r for r in read_list(demo / "benchmark" / "visa_dr.json")}
    for item in items:
        assert len(item["images"]) == 1, item
        source = item["images"][0]
        assert source.startswith(f"{FILES_DIR}/"), source
        assert (demo / source).is_file(), f"{source} is referenced but was not written"
        speakers = [speaker for speaker, _ in item["turns"]]
        assert speakers[:2] == ["human", "gpt"] and len(speakers) % 2 == 0, speakers
        assert all(text.strip() for _, text in item["turns"])
    # Each item shows its record's own conversation (the first answer, word for word).
    shown = Counter()
    for item in items:
        attributes = item["attributes"]
        shown[attributes["data-kind"], attributes["data-family"], attributes["data-label"]] += 1
        first_answer = item["turns"][1][1]
        if attributes["data-kind"] == "instruct":
            candidates = [r["conversations"][1]["value"] for r in records.values()]
        else:
            candidates = [r["answers"][0] for r in reasoning.values()]
        assert first_answer in candidates
    families = {r["metadata"]["task_family"] for r in records.values()}
    assert {family for _, family, _ in shown} == families | {"reasoning benchmark"}
    assert {label for _, _, label in shown} == {"anomaly", "normal"}


def test_the_report_logs_no_console_error_and_loads_only_its_own_files(demo, demo_report, devtools):
    devtools.open(demo_report.as_uri())
    assert devtools.problems() == []
    images = devtools.evaluate(
        "Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])"
    )
    assert len(images) == 48 and all(width > 0 for _, width in images), images
    requested = devtools.requested_urls()
    assert requested, "the DevTools session saw no request at all"
    folder = demo.resolve().as_uri() + "/"
    assert all(url.startswith(folder) for url in requested), requested


def test_the_console_check_catches_a_page_that_fails(tmp_path, devtools):
    broken = tmp_path / "broken.html"
    broken.write_text(
        "<!DOCTYPE html><html><body><p>broken</p><img src='missing.png'>"
        "<script>console.error('planted console error');"
        "setTimeout(function () { undefinedFunction(); }, 10);</script></body></html>"
    )
    devtools.open(broken.as_uri())
    problems = "\n".join(devtools.problems())
    assert "console.error: planted console error" in problems
    assert "undefinedFunction is not defined" in problems
    assert "ERR_FILE_NOT_FOUND" in problems and "missing.png" in problems


def test_the_filters_narrow_the_tables_and_update_their_counts(planted, devtools):
    devtools.open((planted / REPORT_FILE).as_uri())
    assert devtools.problems() == []
    count_rows = """(() => {
        const block = document.querySelector(%r);
        const rows = Array.from(block.querySelectorAll('[data-row]'));
        return [block.querySelector('[data-shown]').textContent,
                rows.filter(r => !r.hidden).length, rows.length];
    })()"""
    quarantine = count_rows % "#quarantine"
    shown, visible, total = devtools.evaluate(quarantine)
    assert (shown, visible, total) == ("1,000", 1000, 1000)
    # Entries 0, 5, 10, ... are source-stage; the table holds all 300 of them (each stage and
    # code pair gets its share of the 1,000 rows) and 700 of the 1,200 others.
    devtools.evaluate("""(() => {
        const stage = document.querySelector('#quarantine select[data-filter="stage"]');
        stage.value = 'source';
        stage.dispatchEvent(new Event('change'));
    })()""")
    assert devtools.evaluate(quarantine) == ["300", 300, 1000]
    # Typing into the search box narrows within the stage, to the reasons naming "row 1…".
    devtools.evaluate("document.querySelector('#quarantine input[data-search]').focus()")
    devtools.send("Input.insertText", {"text": "row 1"})
    expected = sum(1 for i in range(0, 1500, 5) if "row 1" in f"row {i} ")
    assert devtools.evaluate(quarantine) == [str(expected), expected, 1000]
    devtools.evaluate("""(() => {
        const stage = document.querySelector('#quarantine select[data-filter="stage"]');
        stage.value = 'annotate';
        stage.dispatchEvent(new Event('change'));
    })()""")
    shown, visible, _ = devtools.evaluate(quarantine)
    assert (shown, visible) == ("0", 0)
    assert devtools.evaluate("document.querySelector('#quarantine [data-empty]').hidden") is False
    # The findings table: one balance warning and two planted integrity errors.
    findings = count_rows % "#validation"
    assert devtools.evaluate(findings) == ["3", 3, 3]
    choose = """(() => {
        const select = document.querySelector('#validation select[data-filter="%s"]');
        select.value = '%s';
        select.dispatchEvent(new Event('change'));
        return select.value;
    })()"""
    assert devtools.evaluate(choose % ("severity", "error")) == "error"
    assert devtools.evaluate(findings) == ["2", 2, 3]
    assert devtools.evaluate(choose % ("validator", "balance")) == "balance"
    assert devtools.evaluate(findings) == ["0", 0, 3]
    assert devtools.evaluate(choose % ("severity", "")) == ""
    assert devtools.evaluate(findings) == ["1", 1, 3]


def test_record_text_is_escaped_and_never_runs(planted, devtools):
    html = (planted / REPORT_FILE).read_text(encoding="utf-8")
    assert PAYLOAD not in html
    assert html.count("<script") == 1  # the report's own
    assert html.count("&lt;script&gt;alert(1)&lt;/script&gt;") > 10
    devtools.open((planted / REPORT_FILE).as_uri())
    assert devtools.problems() == []  # no dialog, no blocked inline script
    text = devtools.evaluate("document.body.innerText")
    # Shown as text where it was planted: a conversation, a chart label, a quarantine
    # reason and a validator finding.
    for section in ("#gallery", "#counts", "#quarantine", "#validation"):
        shown = devtools.evaluate(f"document.querySelector({section!r}).textContent")
        assert PAYLOAD in shown, section
    assert PAYLOAD in text
    assert devtools.evaluate("document.querySelectorAll('script').length") == 1


def test_a_folder_without_benchmark_and_with_an_empty_quarantine_still_reports(
    demo, tmp_path, devtools
):
    folder = copy_folder(demo, tmp_path / "folder")
    shutil.rmtree(folder / "benchmark")
    (folder / "quarantine.jsonl").write_text("")
    html = write_report(folder, gallery_size=12).read_text(encoding="utf-8")
    assert "No benchmark/: no benchmark items." in html
    assert "quarantine.jsonl is empty" in html
    assert 'data-kind="benchmark"' not in html
    assert html.count('<article class="item"') == 12
    devtools.open((folder / REPORT_FILE).as_uri())
    assert devtools.problems() == []
    assert devtools.evaluate("document.querySelectorAll('#gallery img').length") == 12


def test_a_folder_with_samples_only_reports_what_is_absent(demo, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(demo / "samples.jsonl", folder / "samples.jsonl")
    html = write_report(folder).read_text(encoding="utf-8")
    for absent in ("No instruct/: no instruction records.", "No quarantine.jsonl in this folder.",
                   "No validation.json and no validation summary", "not validated"):  # fmt: skip
        assert absent in html
    assert "Samples per category" in html
    assert "Where defects lie" in html  # the masks come from the samples' RLE alone
    assert "No instruction record and no reasoning benchmark item to show." in html
    assert list((folder / FILES_DIR).iterdir()) == []


def test_images_and_masks_outside_the_folder_are_never_opened(demo, tmp_path):
    folder = copy_folder(demo, tmp_path / "folder")
    outside = tmp_path / "outside.png"
    Image.new("RGB", (64, 64), (0, 200, 0)).save(outside)
    outside_mask = tmp_path / "outside_mask.png"
    square = np.zeros((256, 256), dtype=np.uint8)
    square[100:150, 100:150] = 255  # outlined, it would change the thumbnail
    Image.fromarray(square).save(outside_mask)
    (folder / "images" / "demo" / "link.png").symlink_to(outside)
    records = read_list(folder / "instruct" / "anomaly_instruct.json")
    anomalous = next(r for r in records if r["metadata"]["mask"])
    escapes = {
        "climbs": f"../../{outside.name}",
        "links": "demo/link.png",
        "absolute": str(outside),
    }
    planted = []
    for name, image in escapes.items():
        record = json.loads(json.dumps(anomalous))
        record["id"], record["image"] = f"escape-{name}", image
        record["metadata"]["sample_id"] = f"escape-{name}"  # no sample: the mask file is read
        record["metadata"]["mask"] = f"../{outside.name}"
        planted.append(record)
    # An image inside the folder whose mask file is not: drawn, without the outline.
    mask_escape = json.loads(json.dumps(planted[0]))
    mask_escape["id"], mask_escape["image"] = "escape-mask", anomalous["image"]
    mask_escape["metadata"]["mask"] = f"../{outside_mask.name}"
    # The same image with no mask at all: what the thumbnail must look like without outline.
    control = json.loads(json.dumps(mask_escape))
    control["id"], control["metadata"]["mask"] = "control", None
    write_list(folder / "instruct" / "anomaly_instruct.json", [*planted, mask_escape, control])
    shutil.rmtree(folder / "benchmark")
    html = write_report(folder).read_text(encoding="utf-8")
    assert html.count('<article class="item"') == 5
    assert html.count("not shown: ") == 3, "each escaping image says why it is not shown"
    assert html.count("mask not outlined: ") == 1
    thumbnails = sorted((folder / FILES_DIR).iterdir())
    assert len(thumbnails) == 2  # only the image inside the folder, twice
    assert thumbnails[0].read_bytes() == thumbnails[1].read_bytes(), "an outline was drawn"
    # Had the outside image been drawn, its pure green would be in a thumbnail.
    with Image.open(thumbnails[0]) as thumbnail:
        pixels = np.asarray(thumbnail.convert("RGB")).reshape(-1, 3).astype(int)
    assert not ((pixels[:, 1] > 180) & (pixels[:, 0] < 60) & (pixels[:, 2] < 60)).any()


def test_a_folder_with_a_sanity_result_shows_the_detector_section(tmp_path, devtools):
    pytest.importorskip("torch")
    from detector_models import PlantedDefectBackbone, build_folder, write_red_defect_tree

    from adinstruct.validators.detector.sanity import run_sanity

    folder = build_folder(write_red_defect_tree(tmp_path / "release").root, tmp_path / "out")
    samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    for sample in samples:  # two defect images called normal: two flags
        if sample["id"] in ("mvtec_ad/bottle/test/paint/001", "mvtec_ad/tile/test/paint/004"):
            sample["label"], sample["defect_types"] = "normal", []
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    report = run_sanity(folder, PlantedDefectBackbone())
    assert report.flag_counts == {"normal_scores_high": 2}
    html = write_report(folder).read_text(encoding="utf-8")
    assert "No detector sanity check" not in html
    assert html.count('<article class="flag-item"') == 2
    devtools.open((folder / REPORT_FILE).as_uri())
    assert devtools.problems() == []
    section = devtools.evaluate("""(() => {
        const block = document.querySelector('#sanity');
        return {
            rows: Array.from(block.querySelectorAll('tbody tr')).map(r => r.cells[1].textContent),
            images: Array.from(block.querySelectorAll('img')).map(i => i.naturalWidth),
            shown: block.querySelector('[data-shown]').textContent,
            text: block.innerText,
        };
    })()""")
    assert section["rows"][:2] == ["bottle", "tile"]  # then the mean row
    # Each flag: the image with its mask outlined, and the map over it.
    assert len(section["images"]) == 4 and all(width > 0 for width in section["images"])
    assert section["shown"] == "2"
    assert "normal_scores_high" in section["text"]
    assert "labelled normal but scores" in section["text"]
    assert "mvtec_ad/tile/test/paint/004" in section["text"]
    folder_uri = folder.resolve().as_uri() + "/"
    assert all(url.startswith(folder_uri) for url in devtools.requested_urls())


def test_without_a_sanity_result_the_section_says_how_to_get_one(demo_report):
    html = demo_report.read_text(encoding="utf-8")
    section = html[html.index('<section id="sanity"') :]
    assert "No detector sanity check in this folder" in section
    assert "build-dataset sanity DIR --backbone" in section
    assert "flag-item" not in section


def test_the_page_references_no_web_address(demo_report):
    html = demo_report.read_text(encoding="utf-8")
    assert not re.search(r"https?://", html), re.findall(r"https?://\S{0,40}", html)
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html)
    assert references, "the page has no src or href at all"
    assert all(r.startswith(("#", f"{FILES_DIR}/")) for r in references), references
    assert "@import" not in html and "url(http" not in html


# --------------------------------------------------------------------------------------
# Without a browser
# --------------------------------------------------------------------------------------


def test_the_report_is_deterministic_and_replaces_its_files(demo, tmp_path):
    folder = copy_folder(demo, tmp_path / "folder")

    def snapshot() -> dict[str, bytes]:
        files = {p.name: p.read_bytes() for p in sorted((folder / FILES_DIR).iterdir())}
        return {REPORT_FILE: (folder / REPORT_FILE).read_bytes(), **files}

    write_report(folder, seed=3)
    first = snapshot()
    (folder / FILES_DIR / "stale.jpg").write_bytes(b"left over from an earlier run")
    write_report(folder, seed=3)
    assert snapshot() == first
    assert not list(folder.glob(f".{FILES_DIR}*")), "a staging folder was left behind"
    write_report(folder, seed=4)
    assert snapshot()[REPORT_FILE] != first[REPORT_FILE]  # another seed, another gallery


def test_a_large_quarantine_is_counted_whole_and_shown_capped(planted):
    html = (planted / REPORT_FILE).read_text(encoding="utf-8")
    rows = re.findall(r'<tr data-row data-stage="([^"]*)" data-code="([^"]*)"', html)
    assert len(rows) == MAX_TABLE_ROWS
    assert Counter(rows) == {("source", "path_escape"): 300,
                             ("annotate", "mask_size_mismatch"): 700}  # fmt: skip
    assert "1,500 entries in quarantine.jsonl" in html
    assert re.search(r">annotate</td><td class=\"mono\">mask_size_mismatch</td>"
                     r"<td class=\"num\">1,200<", html)  # fmt: skip


def test_the_heat_map_adds_each_cells_covered_share(demo):
    # The demo's own masks on 256×256 images: 8×8 pixel cells, so a cell's share is a mean.
    coverage = np.zeros((32, 32))
    expected = np.zeros((32, 32))
    for line in (demo / "samples.jsonl").read_text().splitlines():
        annotation = json.loads(line)["annotation"]
        if annotation["mask_rle"]:
            add_coverage(coverage, annotation["mask_rle"])
            mask = rle_decode(RLE.model_validate(annotation["mask_rle"]))
            expected += mask.reshape(32, 8, 32, 8).mean(axis=(1, 3))
    assert expected.sum() > 0
    np.testing.assert_allclose(coverage, expected)
    # An image whose sides do not divide by 32, and a mask touching its edges: every pixel is
    # counted once, in the cell its row and column fall into.
    rng = np.random.default_rng(0)
    mask = rng.random((70, 101)) < 0.3
    mask[0, :] = mask[:, -1] = True
    rle = rle_encode(mask)
    coverage = np.zeros((32, 32))
    add_coverage(coverage, rle.model_dump())
    rows, columns = np.nonzero(mask)
    counted = np.zeros((32, 32))
    np.add.at(counted, (rows * 32 // 70, columns * 32 // 101), 1)
    cell_pixels = np.zeros((32, 32))
    all_rows, all_columns = np.indices((70, 101)).reshape(2, -1)
    np.add.at(cell_pixels, (all_rows * 32 // 70, all_columns * 32 // 101), 1)
    np.testing.assert_allclose(coverage * cell_pixels, counted)


def test_a_chart_of_many_categories_keeps_the_largest_and_sums_the_rest():
    counts = {f"category_{i:03d}": {"anomaly": i, "normal": 2 * i} for i in range(1, 131)}
    series = (Series("normal", "normal", "normal"), Series("anomaly", "anomalous", "anomaly"))
    chart = bar_chart("Samples per category", counts, series, axis_label="samples", top=25)
    assert len(chart.bars) == 25
    assert [bar.total for bar in chart.bars[:3]] == [390, 387, 384]  # largest first
    others = chart.bars[-1]
    assert others.others and others.label.startswith("others (106 more)")
    assert others.total == sum(3 * i for i in range(1, 107))
    assert chart.ticks[-1].position == chart.plot_right and chart.ticks[0].label == "0"
    # The longest bar ends at the plot's right edge at most, and its parts add up to it.
    assert max(bar.end for bar in chart.bars) <= chart.plot_right
    assert "the other 106 summed" in chart.note


def test_mask_areas_fall_into_log_scaled_bins():
    assert area_bin(1e-7) == 0  # below the first edge: the first bin
    assert area_bin(1e-5) == 0
    assert area_bin(0.001) == 8  # 10^-3: two decades up, four bins a decade
    assert area_bin(0.0011) == 8 and area_bin(0.0018) == 9
    assert area_bin(1.0) == 19
