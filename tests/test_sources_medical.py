"""BMAD's six subsets in each of their three layouts, from listing to a validated build."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import trees_medical
from trees import listed
from typer.testing import CliRunner

from adinstruct.builder import sources
from adinstruct.builder.annotate import AnnotateStage
from adinstruct.builder.cli import app
from adinstruct.builder.describe.template import grid_words_in
from adinstruct.builder.errors import LayoutError
from adinstruct.builder.sources.bmad import (
    BMAD_BUILDERS,
    BMADBrain,
    BMADChest,
    BMADLiver,
)
from adinstruct.schemas import Sample

BY_NAME = {builder.name: builder for builder in BMAD_BUILDERS}
CASES = [(source, layout) for source in trees_medical.SUBSETS for layout in trees_medical.LAYOUTS]

#: Paths opened by this process while `WATCH` is set: Python's audit hook sees every open().
OPENED: list[str] = []
WATCH: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if WATCH and event == "open" and isinstance(args[0], str | Path):
        OPENED.append(str(args[0]))


sys.addaudithook(_audit)


def write(tmp_path: Path, source: str, layout: str, **options):
    folder = trees_medical.SUBSETS[source].folder
    return trees_medical.write_bmad(tmp_path / "BMAD" / folder, source, layout, **options)


@pytest.mark.parametrize(("source", "layout"), CASES, ids=[f"{s}-{layout}" for s, layout in CASES])
def test_every_layout_lists_the_planted_samples(tmp_path, source, layout):
    tree = write(tmp_path, source, layout)
    plan = trees_medical.SUBSETS[source]
    # The subset folder itself, or the BMAD folder holding it: the same samples either way.
    for root in (tree.root, tree.root.parent):
        builder = BY_NAME[source](root)
        assert builder.root == tree.root.resolve()
        expected_layout = layout if plan.has_masks or layout != "label-folders" else "readme"
        assert builder.layout == expected_layout
        samples, entries = listed(builder)
        assert entries == []
        assert set(samples) == set(tree.samples)
        for sample_id, expected in tree.samples.items():
            sample = samples[sample_id]
            assert (sample.category, sample.split, sample.label) == (
                expected.category, expected.split, expected.label,
            ), sample_id  # fmt: skip
            assert sample.modality == plan.modality and sample.source == source
            assert sample.defect_types == []  # BMAD names no anomaly types
            if expected.bbox is not None:
                (mask,) = sample.masks
                assert (tree.root / mask.path).is_file()
                assert mask.path.endswith(Path(sample.image_paths[0]).name)
            else:
                assert sample.masks == [], sample_id
            assert (tree.root / sample.image_paths[0]).is_file()
    assert {s.split for s in samples.values()} == {"train", "val", "test"}
    anomalies = [s for s in samples.values() if s.label == "anomaly"]
    assert len(anomalies) == 3 and all(bool(s.masks) == plan.has_masks for s in anomalies)


@pytest.mark.parametrize(("source", "layout"), CASES, ids=[f"{s}-{layout}" for s, layout in CASES])
def test_bad_samples_are_quarantined_with_a_reason_and_the_rest_listed(tmp_path, source, layout):
    tree = write(tmp_path, source, layout, faults=True)
    samples, entries = listed(BY_NAME[source](tree.root))
    assert set(samples) == set(tree.samples)
    assert sorted((entry.code, entry.path) for entry in entries) == sorted(tree.faults)
    for entry in entries:
        assert entry.source == source and entry.stage == "source"
        assert entry.path in entry.reason
    missing = [entry for entry in entries if entry.code == "mask_missing"]
    if trees_medical.SUBSETS[source].has_masks:
        # The Ungood image without a mask says which mask file was expected.
        expected = trees_medical.mask_path(Path(), layout, "test", "Ungood", "00030").as_posix()
        assert len(missing) == 1 and expected in missing[0].reason
    else:
        assert missing == []  # label-only: an Ungood image needs no mask


def test_a_link_out_of_the_root_is_never_opened(tmp_path):
    tree = write(tmp_path, "bmad_brain", "readme", faults=True)
    builder = BMADBrain(tree.root)
    OPENED.clear()
    WATCH.append(True)
    try:
        samples, entries = listed(builder)
        stage = AnnotateStage(roots={builder.name: str(builder.root)})
        annotated = [stage.process(sample) for sample in samples.values()]
    finally:
        WATCH.clear()
    assert [e.path for e in entries if e.code == "path_outside_root"] == ["test/good/img/00040.png"]
    assert all("00040" not in sample_id for sample_id in samples)
    assert OPENED, "the audit hook saw no file opened: the check would prove nothing"
    assert not [path for path in OPENED if "outside" in path or Path(path).name == "secret.png"]
    assert all(isinstance(result, Sample) for result in annotated)


def test_colour_mapped_rgba_masks_are_binarised_on_one_channel(tmp_path):
    tree = write(tmp_path, "bmad_brain", "label-folders")
    builder = BMADBrain(tree.root)
    samples, _ = listed(builder)
    stage = AnnotateStage(roots={builder.name: str(builder.root)})
    for sample_id, expected in tree.samples.items():
        result = stage.process(samples[sample_id])
        assert isinstance(result, Sample), result
        assert result.annotation.mode == "RGBA"
        if expected.bbox is None:
            assert result.annotation.mask_rle is None
            continue
        # Alpha is 255 everywhere: were it counted, the mask would cover the whole image.
        assert result.annotation.area_fraction < 0.1
        x0 = min(box[0] for box in result.annotation.bboxes)
        y0 = min(box[1] for box in result.annotation.bboxes)
        x1 = max(box[0] + box[2] for box in result.annotation.bboxes)
        y1 = max(box[1] + box[3] for box in result.annotation.bboxes)
        assert (x0, y0, x1 - x0, y1 - y0) == expected.bbox, sample_id


def test_a_wrong_root_says_what_was_expected(tmp_path):
    (tmp_path / "photos" / "train" / "cats").mkdir(parents=True)
    with pytest.raises(LayoutError) as raised:
        BMADLiver(tmp_path / "photos")
    message = str(raised.value)
    assert "bmad_liver" in message and "Expected" in message and "good" in message
    assert "<split>/img/{good,Ungood}" in message
    with pytest.raises(LayoutError, match="no train/, valid/ or test/ folder"):
        BMADLiver(tmp_path)


def test_splits_in_different_layouts_are_a_structural_error(tmp_path):
    tree = write(tmp_path, "bmad_liver", "readme")
    trees_medical.write_slice(tree.root / "train" / "img" / "good" / "x.png", "L")
    (tree.root / "train" / "good").rename(tree.root / "train" / "old_good")
    with pytest.raises(LayoutError, match="mix layouts"):
        BMADLiver(tree.root)


def test_names_aliases_and_cards(monkeypatch):
    for builder in BMAD_BUILDERS:
        monkeypatch.setitem(sources.BUILDERS, builder.name, builder)
        assert builder.card().name == builder.name and builder.card().title.startswith("BMAD")
        assert builder.card().commercial_use is False
        assert set(builder.layouts) <= {"readme", "label-folders", "split-folders"}
    assert sources.get_builder("brain") is BMADBrain
    assert sources.get_builder("bmad-brain") is BMADBrain
    assert sources.get_builder("chest") is BMADChest
    assert sources.get_builder("bmad-retina-oct2017").name == "bmad_retina_oct2017"


# -- end to end -------------------------------------------------------------------------------

MEDICAL_WORDS = ("abnormal", "MRI scan", "X-ray", "radiologist")
INDUSTRIAL_WORDS = ("defect", "inspector", "production", "manufactur", "quality")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("bmad")
    brain = trees_medical.write_bmad(base / "BMAD" / "Brain", "bmad_brain", "readme", faults=True)
    chest = trees_medical.write_bmad(base / "BMAD" / "Chest", "bmad_chest", "split-folders")
    out = base / "out"
    with pytest.MonkeyPatch.context() as patch:
        for builder in (BMADBrain, BMADChest):
            patch.setitem(sources.BUILDERS, builder.name, builder)
        runner = CliRunner()
        result = runner.invoke(app, [
            "build", "--source", f"brain={base / 'BMAD'}", "--source", f"chest={chest.root}",
            "--recipe", "anomaly-instruct", "--holdout", "none", "--workers", "1", "--quiet",
            "--out", str(out),
        ])  # fmt: skip
        validated = runner.invoke(app, ["validate", str(out), "--quiet"])
    return out, brain, chest, result, validated


def records_of(out: Path) -> list[dict]:
    return json.loads((out / "instruct" / "anomaly_instruct.json").read_text(encoding="utf-8"))


def test_build_of_two_subsets_speaks_like_a_radiologist(built):
    out, brain, chest, result, _ = built
    assert result.exit_code == 0, result.output
    records = records_of(out)
    assert {r["metadata"]["source"] for r in records} == {"bmad_brain", "bmad_chest"}
    samples = [json.loads(line) for line in (out / "samples.jsonl").open(encoding="utf-8")]
    assert {s["id"] for s in samples} == set(brain.samples) | set(chest.samples)
    assert {s["modality"] for s in samples} == {"mri", "xray"}
    text = " ".join(turn["value"] for r in records for turn in r["conversations"])
    for word in MEDICAL_WORDS:
        assert word in text, word
    for word in INDUSTRIAL_WORDS:
        assert word not in text.lower(), word
    quarantined = [json.loads(line) for line in (out / "quarantine.jsonl").open()]
    codes = {(entry["code"], entry["source"]) for entry in quarantined}
    assert {("mask_missing", "bmad_brain"), ("path_outside_root", "bmad_brain")} <= codes


def test_label_only_records_never_state_a_location(built):
    out, _, chest, _, _ = built
    located = {sid for sid, facts in chest.samples.items() if facts.bbox is not None}
    assert located == set()
    chest_anomalies = [
        r for r in records_of(out)
        if r["metadata"]["source"] == "bmad_chest" and r["metadata"]["anomaly"]
    ]  # fmt: skip
    assert chest_anomalies, "the build wrote no record of a label-only anomaly"
    for record in chest_anomalies:
        assert record["metadata"]["task_family"] != "localisation"
        for turn in record["conversations"]:
            if turn["from"] == "gpt":
                assert grid_words_in(turn["value"]) == [], turn["value"]
                assert "region" not in turn["value"], turn["value"]
    brain_located = [
        r for r in records_of(out)
        if (r["metadata"]["source"], r["metadata"]["task_family"]) == ("bmad_brain", "localisation")
    ]  # fmt: skip
    assert brain_located, "masked brain anomalies should be localised"


def test_validate_passes_on_the_built_folder(built):
    out, *_, validated = built
    assert validated.exit_code == 0, validated.output
    report = json.loads((out / "validation.json").read_text(encoding="utf-8"))
    assert report["error_count"] == 0, report["counts"]
    grounding = next(v for v in report["validators"] if v["name"] == "grounding")
    assert grounding["errors"] == 0
    assert any(
        f["path"] == "instruct/anomaly_instruct.json" and f["records"] for f in report["files"]
    )


def test_the_describer_prompt_speaks_to_the_modalitys_specialist(tmp_path):
    from adinstruct.builder.describe.prompt import PromptConfig, build_request

    for source, reader in (("bmad_chest", "radiologist"), ("bmad_retina_oct2017",
                           "ophthalmologist"), ("bmad_histopathology", "pathologist")):  # fmt: skip
        tree = write(tmp_path / source, source, "readme")
        builder = BY_NAME[source](tree.root)
        samples, _ = listed(builder)
        stage = AnnotateStage(roots={builder.name: str(builder.root)})
        sample = stage.process(next(s for s in samples.values() if s.label == "anomaly"))
        request = build_request(sample, builder.root, PromptConfig(model="m"), None)
        system = request.messages[0]["content"]
        user = next(p["text"] for p in request.messages[1]["content"] if p["type"] == "text")
        assert system.startswith(f"You are an experienced {reader}.")
        assert "quality inspector" not in system and "inspector" not in user
        assert "state no location" in user and "Label: abnormal" in user
