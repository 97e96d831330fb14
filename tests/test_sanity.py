"""`build-dataset sanity`: the reference detector over a folder built by adinstruct's pipeline.

The release is drawn in MVTec AD's layout with red defects, which the hand-built
planted-defect backbone sees exactly: its metrics must come out near 1, a label flipped by
editing samples.jsonl and a mask moved off its defect must be flagged with the right code,
and nothing else. The command line runs end to end on a tiny random open_clip model saved
to disk, with ALFA prompts from the OpenAI stand-in on 127.0.0.1 and without any LLM.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("open_clip")

from built_folders import NO_LLM, console_script  # noqa: E402
from detector_models import (  # noqa: E402
    IMAGE_HEIGHT,
    IMAGE_WIDTH,
    PlantedDefectBackbone,
    build_folder,
    save_tiny_open_clip,
    write_red_defect_tree,
)
from llm_standin import StandinServer, last_user_text  # noqa: E402

from adinstruct.builder.annotate.geometry import rle_encode  # noqa: E402
from adinstruct.builder.cli import main as cli_main  # noqa: E402
from adinstruct.schemas import Manifest  # noqa: E402
from adinstruct.schemas.export_json import load_schema  # noqa: E402
from adinstruct.validators.detector.sanity import SanityMetrics, run_sanity  # noqa: E402
from adinstruct.validators.runner import validate_folder  # noqa: E402

CATEGORIES = ("bottle", "tile")


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_red_defect_tree(tmp_path_factory.mktemp("release") / "mvtec")


@pytest.fixture(scope="module")
def built(release, tmp_path_factory) -> Path:
    return build_folder(release.root, tmp_path_factory.mktemp("built") / "out")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_open_clip(tmp_path_factory.mktemp("tiny"))


def copy_of(built: Path, target: Path) -> Path:
    shutil.copytree(built, target)
    return target


def read_samples(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]


def write_samples(folder: Path, samples: list[dict], extra_lines: tuple[str, ...] = ()) -> None:
    lines = [json.dumps(sample) for sample in samples] + list(extra_lines)
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")


def edit_sample(samples: list[dict], sample_id: str, **changes) -> dict:
    sample = next(s for s in samples if s["id"] == sample_id)
    sample.update(changes)
    return sample


def read_flags(folder: Path) -> list[dict]:
    text = (folder / "sanity" / "flags.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def error_codes(folder: Path) -> set[tuple[str, str | None]]:
    report = validate_folder(folder)
    return {(f.code, f.record_id) for f in report.findings if f.severity == "error"}


@pytest.fixture(scope="module")
def clean(built, tmp_path_factory):
    folder = copy_of(built, tmp_path_factory.mktemp("clean") / "out")
    backbone = PlantedDefectBackbone()
    report = run_sanity(folder, backbone, batch_size=4)
    return folder, report, backbone


# -- the planted backbone on an honest folder -------------------------------------------------


def test_planted_defects_give_metrics_near_one_and_no_flag(clean, release):
    folder, report, _ = clean
    metrics = SanityMetrics.model_validate_json((folder / "sanity/metrics.json").read_text())
    assert metrics == report.metrics
    assert [(row.source, row.category) for row in metrics.categories] == [
        ("mvtec_ad", category) for category in CATEGORIES
    ]
    for row in metrics.categories:
        assert (row.normal, row.anomaly, row.with_mask, row.scored) == (9, 6, 6, 15)
        assert row.by_split == {"test": 10, "train": 5}
        assert row.image_auroc == row.average_precision == row.f1_max == 1.0
        assert row.pixel_auroc > 0.99 and row.aupro > 0.97, row
        assert row.label_flags_skipped is None and row.mask_flags_skipped is None
        # The thresholds sit between the classes: normals near 0, anomalies near 1.
        assert 0 < row.anomaly_scores_low_below < row.normal_scores_high_above < 1
    assert metrics.mean.image_auroc == 1.0 and metrics.mean.pixel_categories == 2
    assert (metrics.samples, metrics.scored, metrics.unreadable) == (30, 30, 0)
    assert (metrics.backbone, metrics.prompts, metrics.pixel_size) == ("planted-defect",
                                                                       "winclip", 128)  # fmt: skip
    assert read_flags(folder) == [] and metrics.flags == {}
    assert list((folder / "sanity/maps").iterdir()) == []


def test_scoring_streams_in_batches_of_the_asked_size(clean):
    _, report, backbone = clean
    assert max(backbone.batches) <= 4
    assert sum(backbone.batches) == report.metrics.scored == 30
    # A category's last batch is partial: batches never mix categories.
    assert backbone.batches == [4, 4, 4, 3, 4, 4, 4, 3]


def test_the_manifest_gains_the_summary_and_keeps_the_rest(clean, built):
    folder, report, _ = clean
    before = json.loads((built / "manifest.json").read_text())
    after = json.loads((folder / "manifest.json").read_text())
    assert before["sanity"] is None  # a build leaves it empty
    assert after["sanity"] == report.summary()
    assert list(after) == list(before)  # every other entry kept, in its place
    assert after == {**before, "sanity": after["sanity"]}
    assert after["sanity"]["flags"] == {} and after["sanity"]["mean"]["image_auroc"] == 1.0
    Manifest.model_validate(after)
    jsonschema.validate(after, load_schema("manifest"))
    result = subprocess.run([console_script(), "validate", str(folder)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "0 errors" in result.stderr


# -- what it flags ----------------------------------------------------------------------------


def test_flipped_labels_are_flagged_with_their_codes(built, release, tmp_path):
    folder = copy_of(built, tmp_path / "out")
    samples = read_samples(folder)
    relabelled_normal = "mvtec_ad/bottle/test/paint/002"  # a defect image now called normal
    relabelled_anomaly = "mvtec_ad/tile/test/good/001"  # a clean image now called anomalous
    edit_sample(samples, relabelled_normal, label="normal", defect_types=[])
    edit_sample(samples, relabelled_anomaly, label="anomaly", defect_types=["paint"])
    write_samples(folder, samples)
    errors_before = error_codes(folder)
    report = run_sanity(folder, PlantedDefectBackbone())
    flags = read_flags(folder)
    assert {(flag["sample_id"], flag["code"]) for flag in flags} == {
        (relabelled_normal, "normal_scores_high"),
        (relabelled_anomaly, "anomaly_scores_low"),
    }
    high = next(flag for flag in flags if flag["code"] == "normal_scores_high")
    low = next(flag for flag in flags if flag["code"] == "anomaly_scores_low")
    assert high["score"] > high["threshold"] and low["score"] < low["threshold"]
    assert high["label"] == "normal" and high["image"] == "mvtec_ad/bottle/test/paint/002.png"
    assert "labelled normal but scores" in high["message"]
    for flag in flags:  # each flag's map is written, on the pixel-metric grid
        with Image.open(folder / flag["map"]) as anomaly_map:
            assert anomaly_map.size == (128, 128)
            values = np.asarray(anomaly_map)
        # The defect image's map lights up (its windows average it down from 1), the other's
        # stays dark.
        assert (values.max() > 100) == (flag["code"] == "normal_scores_high"), values.max()
    assert report.metrics.flags == {"normal_scores_high": 1, "anomaly_scores_low": 1}
    assert json.loads((folder / "manifest.json").read_text())["sanity"]["flags"] == (
        report.metrics.flags
    )
    # The labels' own validation findings are the edit's; the sanity run adds none.
    assert error_codes(folder) == errors_before


def test_a_mask_moved_off_its_defect_is_flagged(built, release, tmp_path):
    folder = copy_of(built, tmp_path / "out")
    samples = read_samples(folder)
    moved = "mvtec_ad/tile/test/paint/003"
    top, left, bottom, right = release.defects[moved]
    height, width = bottom - top, right - left
    # The same box in the opposite corner of the image, clear of the defect.
    new_top = 0 if top > IMAGE_HEIGHT / 2 else IMAGE_HEIGHT - height
    new_left = 0 if left > IMAGE_WIDTH / 2 else IMAGE_WIDTH - width
    mask = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH), dtype=bool)
    mask[new_top : new_top + height, new_left : new_left + width] = True
    assert not mask[top:bottom, left:right].any()
    sample = next(s for s in samples if s["id"] == moved)
    sample["annotation"]["mask_rle"] = rle_encode(mask).model_dump()
    write_samples(folder, samples)
    report = run_sanity(folder, PlantedDefectBackbone())
    flags = read_flags(folder)
    assert [(flag["sample_id"], flag["code"]) for flag in flags] == [(moved, "mask_misses_map")]
    assert flags[0]["score"] < flags[0]["threshold"] == 0.0
    tile = next(row for row in report.metrics.categories if row.category == "tile")
    assert tile.flags == {"mask_misses_map": 1}
    assert tile.pixel_auroc < 0.99  # the moved mask costs the category some pixel AUROC


def test_unreadable_inputs_become_flags_and_the_run_goes_on(built, tmp_path):
    folder = copy_of(built, tmp_path / "out")
    samples = read_samples(folder)
    truncated = folder / "images/mvtec_ad/bottle/test/good/000.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    outside = tmp_path / "outside.png"
    Image.new("RGB", (IMAGE_WIDTH, IMAGE_HEIGHT), (215, 45, 40)).save(outside)
    escaping = edit_sample(samples, "mvtec_ad/bottle/test/good/001")
    escaping["image_paths"] = ["../../../outside.png"]
    broken_mask = edit_sample(samples, "mvtec_ad/tile/test/paint/000")
    broken_mask["annotation"]["mask_rle"] = rle_encode(np.ones((10, 10), bool)).model_dump()
    write_samples(folder, samples, extra_lines=('{"not": "a sample"', '{"source": 3}'))
    report = run_sanity(folder, PlantedDefectBackbone())
    by_code: dict[str, list[dict]] = {}
    for flag in read_flags(folder):
        by_code.setdefault(flag["code"], []).append(flag)
    assert sorted(by_code) == ["unreadable_image", "unreadable_mask", "unreadable_sample"]
    images = {flag["sample_id"]: flag["message"] for flag in by_code["unreadable_image"]}
    assert "cannot be read" in images["mvtec_ad/bottle/test/good/000"]
    assert "outside" in images["mvtec_ad/bottle/test/good/001"]
    assert [flag["line"] for flag in by_code["unreadable_sample"]] == [31, 32]
    assert "10×10" in by_code["unreadable_mask"][0]["message"]
    metrics = report.metrics
    assert (metrics.samples, metrics.scored, metrics.unreadable) == (32, 28, 4)
    bottle, tile = metrics.categories
    assert bottle.normal == 7 and bottle.image_auroc == 1.0
    # The sample whose mask does not fit still counts at image level, not at pixel level.
    assert (tile.anomaly, tile.with_mask) == (6, 5) and tile.pixel_auroc > 0.99


# -- the command line -------------------------------------------------------------------------


def test_the_command_scores_a_folder_with_a_tiny_open_clip_model(built, tiny, tmp_path):
    folder = copy_of(built, tmp_path / "out")
    spec = tiny.local_dir_spec
    result = subprocess.run(
        [console_script(), "sanity", str(folder), "--backbone", spec, "--prompts", "alfa",
         "--batch-size", "8"],
        capture_output=True, text=True, timeout=300, env=NO_LLM,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for column in ("category", "image AUROC", "AP", "F1-max", "pixel AUROC", "AUPRO", "flags"):
        assert column in out
    table_rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [row.split("│")[2].strip() for row in table_rows] == [*CATEGORIES, "2 categories"]
    assert "flags: " in out and "sanity/flags.jsonl" in out
    # Without a key, ALFA falls back to the static prompts, and says so.
    assert "no LLM configured" in result.stderr and "no LLM configured" in out
    metrics = json.loads((folder / "sanity/metrics.json").read_text())
    assert metrics["backbone"] == spec and metrics["prompts"] == "alfa"
    assert {row["prompts"] for row in metrics["categories"]} == {"winclip"}
    assert all(0 <= row["image_auroc"] <= 1 for row in metrics["categories"])
    summary = json.loads((folder / "manifest.json").read_text())["sanity"]
    assert summary["backbone"] == "open_clip:adinstruct-tiny-vit@local-dir:tiny-dir"
    assert str(tmp_path) not in json.dumps(summary)
    assert "images scored in" in result.stderr


ALFA_ANSWER = {
    "normal": ["a photo of a flawless {0}", "a photo of a clean, even {0} surface"],
    "anomalous": ["a photo of a {0} with a crack", "a photo of a {0} with a red stain"],
}


def prompt_responder(body: dict) -> str:
    name = last_user_text(body).split("Object category: ", 1)[1].split(".", 1)[0]
    return json.dumps({key: [text.format(name) for text in texts]
                       for key, texts in ALFA_ANSWER.items()})  # fmt: skip


def run_cli(*arguments: str) -> int:
    argv = sys.argv
    sys.argv = ["build-dataset", *arguments]
    try:
        cli_main()
    except SystemExit as stop:
        return int(stop.code or 0)
    finally:
        sys.argv = argv
    return 0


def test_alfa_prompts_come_from_the_llm_once_and_then_from_the_cache(
    built, tiny, tmp_path, monkeypatch, capsys
):
    folder = copy_of(built, tmp_path / "out")
    arguments = ("sanity", str(folder), "--backbone", tiny.local_dir_spec, "--prompts", "alfa",
                 "--model", "prompt-writer", "--quiet")  # fmt: skip
    with StandinServer(responder=prompt_responder) as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-sanity")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        assert run_cli(*arguments) == 0
        bodies = server.chat_bodies()
        asked = sorted(re.search(r"Object category: (\w+)\.", last_user_text(b))[1] for b in bodies)
        assert asked == list(CATEGORIES)
        assert {body["model"] for body in bodies} == {"prompt-writer"}
        metrics = json.loads((folder / "sanity/metrics.json").read_text())
        assert {row["prompts"] for row in metrics["categories"]} == {"llm"}
        assert metrics["prompt_model"] == "prompt-writer"
        assert metrics["llm_usage"]["requests"] == 2
        assert (folder / ".cache/llm.sqlite3").is_file()
        assert run_cli(*arguments) == 0  # a rerun asks nothing: the cache answers
        assert len(server.chat_bodies()) == 2
    again = json.loads((folder / "sanity/metrics.json").read_text())
    assert again["llm_usage"]["cache_hits"] == 2 and again["llm_usage"]["requests"] == 0
    assert again["categories"] == metrics["categories"]
    assert "bottle" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("open_clip:ViT-B-16-plus-240@laion400m_e31", "'laion400m_e31' is a download tag"),
        ("hf:openai/clip-vit-base-patch32", "is not a folder"),
    ],
)
def test_a_hub_model_name_is_one_clear_line(built, spec, why, capsys):
    assert run_cli("sanity", str(built), "--backbone", spec) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert why in err and "on disk" in err
    assert not (built / "sanity").exists()


def test_without_the_detector_extra_the_command_says_what_to_install(built):
    code = (
        "import sys; sys.modules['torch'] = None; "
        "from adinstruct.builder.cli import main; "
        f"sys.argv = ['build-dataset', 'sanity', {str(built)!r}, '--backbone', 'hf:/x']; main()"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: build-dataset sanity needs the detector extra: pip install 'adinstruct[detector]'"
    )
