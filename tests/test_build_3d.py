"""MVTec 3D-AD and Real3D-AD from their trees to validated folders, through the real pipeline.

Three builds of the synthetic trees (`trees_3d`: both PCD flavours, the xyz TIFF, and broken
files the annotate stage must reject):

- both 3D sources trained on (anomaly-instruct), four views;
- MVTec 3D-AD trained on and a 2D release held out, through the `build-dataset` CLI with
  `--views 9`, validated by the build's own gate and by `build-dataset validate`;
- both 3D sources held out and benchmarked (visa-dr), a 2D release trained on.

The builds with Real3D-AD skip the gate at the end of the build (`validate_output=False`):
today's integrity and grounding validators read a sample's images and mask from its
`image_paths` and `masks`, which for Real3D-AD are the point cloud and nothing; the gate would
move every Real3D-AD record out. Their `build-dataset validate` results are asserted in
tests marked xfail until the validators read `render_paths` (see the report of issue #7).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import trees_3d
from PIL import Image
from typer.testing import CliRunner

from adinstruct.builder.annotate.render import BACKGROUND
from adinstruct.builder.cli import app
from adinstruct.builder.demo import generate_mvtec_tree
from adinstruct.builder.instruct import InstructConfig
from adinstruct.builder.pipeline import BuildConfig, SourceSpec, build
from adinstruct.schemas import Sample

REAL3D_POINTS = 20_000
BOTH = ["anomaly-instruct", "visa-dr"]
pytestmark = pytest.mark.slow
CLOUD_SUFFIXES = {".pcd", ".tiff", ".tif"}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("releases")
    mvtec3d = trees_3d.write_mvtec_3d(base / "mvtec3d", faults=True, broken=True)
    real3d = trees_3d.write_real3d(base / "real3d", faults=True, broken=True,
                                   points=REAL3D_POINTS)  # fmt: skip
    generate_mvtec_tree(base / "mvtec", n_images=12, image_size=64, categories=2)
    return mvtec3d, real3d, base / "mvtec"


def validate(out: Path):
    return CliRunner().invoke(app, ["validate", str(out), "--quiet"])


@pytest.fixture(scope="module")
def trained(trees, tmp_path_factory):
    """Both 3D sources trained on, 4 views; the folder and its `build-dataset validate`."""
    mvtec3d, real3d, _ = trees
    out = tmp_path_factory.mktemp("trained")
    build(BuildConfig(
        sources=[SourceSpec(name="mvtec3d", root=mvtec3d.root),
                 SourceSpec(name="real3d", root=real3d.root)],
        out=out, workers=1, validate_output=False,
        instruct=InstructConfig(recipes=["anomaly-instruct"], holdout=[]),
    ))  # fmt: skip
    return out, validate(out)


@pytest.fixture(scope="module")
def cli_built(trees, tmp_path_factory):
    """MVTec 3D-AD trained on (9 views), the 2D release held out, through the CLI."""
    mvtec3d, _, mvtec = trees
    out = tmp_path_factory.mktemp("cli")
    result = CliRunner().invoke(app, [
        "build", "--source", f"mvtec3d={mvtec3d.root}", "--source", f"mvtec={mvtec}",
        "--recipe", "anomaly-instruct", "--recipe", "visa-dr", "--holdout", "mvtec",
        "--views", "9", "--workers", "1", "--quiet", "--out", str(out),
    ])  # fmt: skip
    return out, result, validate(out)


@pytest.fixture(scope="module")
def benchmarked(trees, tmp_path_factory):
    """Both 3D sources held out and benchmarked, the 2D release trained on."""
    mvtec3d, real3d, mvtec = trees
    out = tmp_path_factory.mktemp("benchmarked")
    build(BuildConfig(
        sources=[SourceSpec(name="mvtec", root=mvtec),
                 SourceSpec(name="mvtec3d", root=mvtec3d.root),
                 SourceSpec(name="real3d", root=real3d.root)],
        out=out, workers=1, validate_output=False,
        instruct=InstructConfig(recipes=BOTH, holdout=["mvtec3d", "real3d"]),
    ))  # fmt: skip
    return out, validate(out)


def load(out: Path, name: str):
    return json.loads((out / name).read_text(encoding="utf-8"))


def samples_of(out: Path) -> dict[str, Sample]:
    lines = (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()
    return {sample.id: sample for sample in map(Sample.model_validate_json, lines)}


def quarantined(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "quarantine.jsonl").open(encoding="utf-8")]


def object_pixels(path: Path) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return int((pixels != np.array(BACKGROUND, dtype=np.uint8)).any(axis=-1).sum())


def first_turn(record: dict) -> str:
    return record["conversations"][0]["value"]


def assert_no_cloud_and_no_highlight(out: Path) -> None:
    placed = [path for path in (out / "images").rglob("*") if path.is_file()]
    assert placed
    assert not [path for path in placed if path.suffix.lower() in CLOUD_SUFFIXES]
    assert not [path for path in placed if "highlight" in path.name]
    # No record shows a cloud or a highlight view (samples.jsonl keeps the release's own paths
    # in image_paths and extra, as provenance, but no highlight view either).
    assert "highlight" not in (out / "samples.jsonl").read_text(encoding="utf-8")
    for name in ("instruct/anomaly_instruct.json", "benchmark/test_data.json",
                 "benchmark/visa_dr.json", "benchmark/mmad.json"):  # fmt: skip
        if not (out / name).is_file():
            continue
        text = (out / name).read_text(encoding="utf-8")
        assert "highlight" not in text, name
        assert not [s for s in CLOUD_SUFFIXES if f'{s}"' in text.lower()], name
    # The describer's files went with the work folder.
    assert not (out / ".adinstruct-work").exists()


# -- both 3D sources trained on ---------------------------------------------------------


def test_renders_lie_under_images_renders_and_show_the_object(trained):
    out, _ = trained
    samples = samples_of(out)
    assert {s.source for s in samples.values()} == {"mvtec_3d_ad", "real3d_ad"}
    for source in ("mvtec_3d_ad", "real3d_ad"):
        views = sorted((out / "images" / source).glob("*/renders/**/view_*.png"))
        assert views, source
        for path in views:
            assert object_pixels(path) > 1_000, path
    for sample in samples.values():
        assert sample.view_count == 4
        views = [path for path in sample.render_paths if path.split("/")[1:2] == ["renders"]]
        assert len(views) == 4, sample.id
        for path in sample.render_paths:
            assert (out / "images" / sample.source / path).is_file()
    assert_no_cloud_and_no_highlight(out)
    manifest = load(out, "manifest.json")
    assert manifest["config"]["annotate"]["views"] == 4


def test_records_list_every_view_in_order_with_one_token_each(trained):
    out, _ = trained
    samples = samples_of(out)
    records = load(out, "instruct/anomaly_instruct.json")
    by_source = Counter(record["metadata"]["source"] for record in records)
    assert by_source["real3d_ad"] > 0 and by_source["mvtec_3d_ad"] > 0
    for record in records:
        sample = samples[record["metadata"]["sample_id"]]
        images = record["image"]
        expected = [f"{sample.source}/{path}" for path in sample.render_paths]
        if sample.source == "mvtec_3d_ad":
            # The rgb first: its gt mask is what the location words describe.
            expected = [f"{sample.source}/{sample.image_paths[0]}", *expected]
            assert len(images) == 6 and images[1].endswith(".png") and "/depth/" in images[1]
        else:
            assert len(images) == 4
        assert images == expected
        assert [Path(path).name for path in images[-4:]] == [f"view_{i:02d}.png" for i in range(4)]
        prefix = "<image>\n" * len(images)
        assert first_turn(record).startswith(prefix) and first_turn(record).count("<image>") == len(
            images
        )
        for turn in record["conversations"][1:]:
            assert "<image>" not in turn["value"]


def test_records_speak_of_views_and_name_the_picture_a_location_is_on(trained):
    out, _ = trained
    samples = samples_of(out)
    records = load(out, "instruct/anomaly_instruct.json")
    questions = " ".join(first_turn(record) for record in records)
    assert "these views" in questions
    located = [r for r in records if r["metadata"]["task_family"] == "localisation"]
    assert {r["metadata"]["source"] for r in located} == {"mvtec_3d_ad", "real3d_ad"}
    for record in records:
        answers = [turn["value"] for turn in record["conversations"][1::2]]
        for answer in answers:
            assert "of the image" not in answer, answer  # 3D wording names its picture
        if record["metadata"]["task_family"] != "localisation":
            continue
        sample = samples[record["metadata"]["sample_id"]]
        expected = (
            "the colour image" if sample.source == "mvtec_3d_ad"
            else f"the {['first', 'second', 'third', 'fourth'][sample.annotation.view]} view"
        )  # fmt: skip
        assert expected in answers[0], answers[0]


def test_broken_clouds_and_label_mismatches_are_quarantined(trained, trees):
    out, _ = trained
    mvtec3d, real3d, _ = trees
    entries = quarantined(out)
    found = {(entry["code"], entry["path"]) for entry in entries if entry["stage"] == "annotate"}
    assert found == set(mvtec3d.rejected) | set(real3d.rejected)
    codes = {code for code, _ in found}
    assert {"cloud_unreadable", "point_labels_mismatch", "mask_empty"} <= codes
    unreadable = {path for code, path in found if code == "cloud_unreadable"}
    assert unreadable == {"airplane/test/7_sink.pcd", "bagel/test/hole/xyz/001.tiff"}
    for entry in entries:
        if entry["stage"] == "annotate":
            assert entry["path"] in entry["reason"]
    source_faults = {(e["code"], e["path"]) for e in entries if e["stage"] == "source"}
    assert source_faults == set(mvtec3d.faults) | set(real3d.faults)
    samples = samples_of(out)
    assert not [sid for sid in samples if "7_sink" in sid or "8_bulge" in sid]


def test_validate_reads_the_mvtec_3d_ad_part_without_error(trained):
    out, _ = trained
    report = load(out, "validation.json")
    mvtec_errors = [
        finding for finding in report["findings"]
        if finding["severity"] == "error" and "mvtec_3d_ad" in finding["message"]
    ]  # fmt: skip
    assert mvtec_errors == []


def test_the_report_draws_a_3d_folder_and_outlines_masks_on_their_measured_view(trained):
    from adinstruct.builder.report.report import measured_view, write_report

    out, _ = trained
    assert write_report(out, gallery_size=64).is_file()
    thumbnails = list((out / "report_files").rglob("*.jpg"))
    assert thumbnails
    views = [f"renders/a/view_{index:02d}.png" for index in range(4)]
    assert measured_view("real3d_ad", views, 4, 2) == "real3d_ad/renders/a/view_02.png"
    depth_first = ["a/depth/000.png", *views]
    assert measured_view("mvtec_3d_ad", depth_first, 4, 0) == "mvtec_3d_ad/renders/a/view_00.png"
    assert measured_view("real3d_ad", views, 4, None) is None


def test_validate_passes_on_the_trained_folder(trained):
    _, validated = trained
    assert validated.exit_code == 0, validated.output


# -- the CLI, with the gate: MVTec 3D-AD trained on, 9 views --------------------------------


def test_the_cli_builds_nine_views_and_the_gate_keeps_every_record(cli_built):
    out, result, _ = cli_built
    assert result.exit_code == 0, result.output
    manifest = load(out, "manifest.json")
    assert manifest["config"]["annotate"]["views"] == 9
    assert manifest["validation"]["error_count"] == 0, manifest["validation"]
    assert manifest["validation"]["quarantined_records"] == 0
    records = load(out, "instruct/anomaly_instruct.json")
    three_d = [r for r in records if r["metadata"]["source"] == "mvtec_3d_ad"]
    assert three_d and all(len(r["image"]) == 11 for r in three_d)
    assert all(first_turn(r).startswith("<image>\n" * 11) for r in three_d)
    for path in {path for r in three_d for path in r["image"]}:
        assert (out / "images" / path).is_file()
    assert_no_cloud_and_no_highlight(out)


def test_validate_passes_on_the_cli_folder(cli_built):
    out, _, validated = cli_built
    assert validated.exit_code == 0, validated.output
    assert load(out, "validation.json")["error_count"] == 0


def test_the_cli_refuses_a_view_count_other_than_4_or_9(trees, tmp_path):
    mvtec3d, _, _ = trees
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["build", "--source", f"mvtec3d={mvtec3d.root}", "--out",
                                      str(out), "--views", "5", "--quiet"])  # fmt: skip
    assert result.exit_code != 0
    assert "views" in str(result.exception) and "4 or 9" in str(result.exception)
    assert not out.exists()


def test_sources_lists_the_3d_releases_with_their_licences():
    result = CliRunner().invoke(app, ["sources"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name, licence in (("mvtec_3d_ad", "CC-BY-NC-SA-4.0"), ("real3d_ad", "CC-BY-4.0")):
        line = next(line for line in result.output.splitlines() if name in line)
        assert licence in line, line


def test_the_dataset_card_states_the_3d_release(cli_built, tmp_path):
    out, _, _ = cli_built
    exported = CliRunner().invoke(app, ["export", str(out), "--format", "hf", "--to",
                                        str(tmp_path / "hf"), "--quiet"])  # fmt: skip
    assert exported.exit_code == 0, exported.output
    card = (tmp_path / "hf" / "README.md").read_text(encoding="utf-8")
    assert "MVTec 3D-AD" in card and "bergmann2022mvtec3d" in card
    assert "cc-by-nc-sa-4.0" in card and "CC-BY-NC-SA-4.0" in card
    assert "rendered views" in card


# -- both 3D sources held out and benchmarked ----------------------------------------------


def test_the_benchmark_shows_multi_view_samples(benchmarked):
    out, _ = benchmarked
    samples = samples_of(out)
    by_first = {}
    for sample in samples.values():
        shown = [f"{sample.source}/{p}" for p in sample.render_paths]
        if sample.source == "mvtec_3d_ad":
            shown = [f"{sample.source}/{sample.image_paths[0]}", *shown]
        elif sample.source != "real3d_ad":
            continue
        by_first[shown[0]] = (sample, shown)
    detection = load(out, "benchmark/test_data.json")
    three_d = [item for item in detection if item["image"].split("/")[0] != "mvtec_ad"]
    assert {item["image"].split("/")[0] for item in three_d} == {"mvtec_3d_ad", "real3d_ad"}
    for item in three_d:
        # One path: the sample's first image (the rgb, or the first view).
        sample, shown = by_first[item["image"]]
        assert item["anomaly"] == (sample.label == "anomaly") and sample.split == "test"
        if sample.source == "real3d_ad":
            assert item["image"].endswith("/view_00.png")
        assert item["image"].split("/")[1] == sample.category  # where the script reads it
    reasoning = [item for item in load(out, "benchmark/visa_dr.json")
                 if isinstance(item["image"], list)]  # fmt: skip
    assert {item["image"][0].split("/")[0] for item in reasoning} == {"mvtec_3d_ad", "real3d_ad"}
    for item in reasoning:
        assert item["image"] == by_first[item["image"][0]][1]
        assert len(item["questions"]) == len(item["answers"]) == 4
        assert "these views" in item["questions"][0]
    mmad = load(out, "benchmark/mmad.json")
    for key, item in mmad.items():
        if key.startswith("mvtec_ad/"):
            continue
        sample, _ = by_first[key]
        for template in item["similar_templates"] + item["random_templates"]:
            template_sample, _ = by_first[template]
            assert template_sample.split != "test" and template_sample.label == "normal"
        localisation = [q for q in item["conversation"] if q["type"] == "Defect Localization"]
        for question in localisation:
            assert ("colour image" in question["Question"]) == (sample.source == "mvtec_3d_ad")
    assert any(key.startswith("real3d_ad/") for key in mmad)
    assert_no_cloud_and_no_highlight(out)
    # Training never saw a 3D source.
    records = load(out, "instruct/anomaly_instruct.json")
    assert {r["metadata"]["source"] for r in records} == {"mvtec_ad"}


def test_validate_passes_on_the_benchmarked_folder(benchmarked):
    _, validated = benchmarked
    assert validated.exit_code == 0, validated.output
