"""`build` end to end over synthetic MVTec AD and VisA trees with planted faults."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trees

from adinstruct.builder.errors import ConfigError
from adinstruct.builder.io import sha256_file
from adinstruct.builder.pipeline import BuildConfig, SourceSpec, build
from adinstruct.schemas import Manifest, QuarantineEntry, Sample


def read_jsonl(path: Path, model):
    with path.open(encoding="utf-8") as handle:
        return [model.model_validate_json(line) for line in handle if line.strip()]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    base = tmp_path_factory.mktemp("releases")
    return {
        "mvtec_ad": trees.write_mvtec_ad(base / "mvtec_anomaly_detection", faults=True),
        "visa": trees.write_visa_raw(base / "VisA_20220922", faults=True),
    }


def run_build(planted, out: Path, **options) -> Manifest:
    config = BuildConfig(
        sources=[SourceSpec(name=name, root=tree.root) for name, tree in planted.items()],
        out=out,
        **options,
    )
    return build(config)


@pytest.fixture(scope="module")
def built(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("built")
    manifest = run_build(planted, out, workers=1)
    return out, manifest


def test_one_sample_per_good_image_with_the_planted_facts(planted, built):
    out, _ = built
    samples = {s.id: s for s in read_jsonl(out / "samples.jsonl", Sample)}
    expected = {sid: facts for tree in planted.values() for sid, facts in tree.samples.items()}
    assert set(samples) == set(expected)
    for sample_id, facts in expected.items():
        sample = samples[sample_id]
        assert (sample.split, sample.label, sample.category) == (
            facts.split, facts.label, facts.category,
        )  # fmt: skip
        assert sorted(d.lower() for d in sample.defect_types) == sorted(facts.defect_types)
        annotation = sample.annotation
        assert annotation is not None and annotation.mode == facts.mode
        assert sample.modality == ("grey" if facts.mode == "L" else "rgb")
        if facts.bbox is None:
            assert annotation.mask_rle is None and annotation.region_count == 0
            continue
        x, y, w, h = facts.bbox
        boxes = annotation.bboxes
        union = (
            min(b[0] for b in boxes), min(b[1] for b in boxes),
            max(b[0] + b[2] for b in boxes) - min(b[0] for b in boxes),
            max(b[1] + b[3] for b in boxes) - min(b[1] for b in boxes),
        )  # fmt: skip
        assert union == (x, y, w, h), sample_id
        assert annotation.area_fraction > 0


def test_visa_masks_are_split_into_named_defects(built):
    out, _ = built
    samples = {s.id: s for s in read_jsonl(out / "samples.jsonl", Sample)}
    pcb = samples["visa/pcb1/Data/Images/Anomaly/000"].annotation
    assert [d.defect_type for d in pcb.defects] == ["Bent", "Scratch"]
    # Planted as id 1 at x 2..10, y 2..10 and id 3 at x 30..40, y 30..44.
    assert [d.bboxes for d in pcb.defects] == [[(2, 2, 8, 8)], [(30, 30, 10, 14)]]
    assert pcb.region_count == 2


def test_every_planted_fault_is_quarantined_with_a_reason(planted, built):
    out, _ = built
    entries = read_jsonl(out / "quarantine.jsonl", QuarantineEntry)
    found = {(entry.code, entry.path) for entry in entries}
    for tree in planted.values():
        for fault in tree.faults:
            assert fault in found, f"planted {fault} not in quarantine: {sorted(found)}"
    assert all(entry.reason and entry.stage in {"source", "annotate"} for entry in entries)
    assert len(entries) == sum(len(tree.faults) for tree in planted.values())
    mismatch = next(e for e in entries if e.code == "mask_size_mismatch")
    assert "32×32" in mismatch.reason and "64×64" in mismatch.reason
    assert mismatch.sample is not None and mismatch.stage == "annotate"


def test_manifest_lists_sources_outputs_and_counts(planted, built):
    out, manifest = built
    on_disk = Manifest.model_validate_json((out / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == manifest
    for output in manifest.outputs:
        path = out / output.path
        assert output.sha256 == sha256_file(path) and output.bytes == path.stat().st_size
        assert output.records == sum(1 for line in path.open() if line.strip())
    by_name = {source.name: source for source in manifest.sources}
    assert by_name["mvtec_ad"].license == "CC-BY-NC-SA-4.0"
    assert by_name["visa"].license == "CC-BY-4.0" and by_name["visa"].layout == "raw"
    assert by_name["visa"].root == str(planted["visa"].root.resolve())
    for name, tree in planted.items():
        counts = by_name[name].counts
        assert counts.total == len(tree.samples)
        assert counts.quarantined == len(tree.faults)
        anomalies = sum(1 for facts in tree.samples.values() if facts.label == "anomaly")
        assert counts.by_label.get("anomaly", 0) == anomalies
    assert manifest.stages["annotate"]["out"] == sum(len(t.samples) for t in planted.values())
    assert manifest.quarantine_codes["annotate"]["image_truncated"] == 1
    assert not (out / ".adinstruct-work").exists()


def test_two_workers_and_a_rebuild_give_the_same_bytes(planted, built, tmp_path):
    out, _ = built
    run_build(planted, tmp_path, workers=2)
    for name in ("samples.jsonl", "quarantine.jsonl"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    first = json.loads((out / "manifest.json").read_text())
    again = json.loads((tmp_path / "manifest.json").read_text())
    assert first["outputs"] == again["outputs"]


def test_limit_draws_a_seeded_subset_per_source(planted, tmp_path):
    manifest = run_build(planted, tmp_path / "a", limit=3, workers=1)
    ids_a = [s.id for s in read_jsonl(tmp_path / "a" / "samples.jsonl", Sample)]
    run_build(planted, tmp_path / "b", limit=3, workers=1)
    ids_b = [s.id for s in read_jsonl(tmp_path / "b" / "samples.jsonl", Sample)]
    assert ids_a == ids_b
    # Three drawn per source; a drawn sample may still be quarantined by annotate.
    assert manifest.stages["annotate"]["in"] == 6
    run_build(planted, tmp_path / "c", limit=3, workers=1, seed=7)
    ids_c = [s.id for s in read_jsonl(tmp_path / "c" / "samples.jsonl", Sample)]
    assert ids_c != ids_a


def test_refuses_to_write_inside_a_release(planted):
    with pytest.raises(ConfigError, match="never writes into a release"):
        run_build({"mvtec_ad": planted["mvtec_ad"]}, planted["mvtec_ad"].root / "out")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adinstruct.builder.cli", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_cli_structural_errors_are_one_line(tmp_path):
    result = cli("build", "--source", f"mvtec={tmp_path / 'nowhere'}", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: mvtec_ad: source root") and "nowhere" in result.stderr
    (tmp_path / "empty").mkdir()
    result = cli("build", "--source", f"btad={tmp_path / 'empty'}", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "Expected <id>/train/ok" in result.stderr
    result = cli("build", "--source", "kitti=/tmp", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "known sources" in result.stderr
    (tmp_path / "mv").mkdir()
    trees.write_mvtec_ad(tmp_path / "mv")
    recipe = ["--recipe", "anomaly-instruct", "--describer", "template", "--detail", "medium"]
    result = cli(
        "build", "--source", f"mvtec={tmp_path / 'mv'}", "--out", str(tmp_path / "o"), *recipe
    )
    assert result.returncode == 2 and result.stderr.startswith("error: detail:")
    assert result.stderr.strip().count("\n") == 0


def test_cli_build_writes_the_folder(planted, tmp_path):
    root = planted["mvtec_ad"].root
    result = cli("build", "--source", f"mvtec={root}", "--out", str(tmp_path), "--quiet")
    assert result.returncode == 0, result.stderr
    manifest = Manifest.model_validate_json((tmp_path / "manifest.json").read_text())
    assert manifest.command[:2] == ["build-dataset", "build"]
    assert manifest.sources[0].counts.total == len(planted["mvtec_ad"].samples)


def test_anomaly_instruct_recipe_writes_records_for_every_sample(planted, tmp_path):
    from adinstruct.builder.instruct import INSTRUCT_FILE, InstructConfig
    from adinstruct.schemas import InstructionRecord

    manifest = run_build(planted, tmp_path, workers=1, instruct=InstructConfig())
    samples = read_jsonl(tmp_path / "samples.jsonl", Sample)
    assert all(s.description is not None and s.describer == "template" for s in samples)
    records = [
        InstructionRecord.model_validate(item)
        for item in json.loads((tmp_path / INSTRUCT_FILE).read_text(encoding="utf-8"))
    ]
    assert {r.metadata.sample_id for r in records} == {s.id for s in samples}
    by_id = {s.id: s for s in samples}
    for record in records:
        sample = by_id[record.metadata.sample_id]
        assert record.metadata.anomaly == (sample.label == "anomaly")
        assert (tmp_path / "images" / record.image).is_file()
        if record.metadata.mask:
            assert (tmp_path / record.metadata.mask).is_file()
    outputs = {o.path: o for o in manifest.outputs}
    assert outputs[INSTRUCT_FILE].records == len(records)
    assert manifest.stages["compose"]["records"] == len(records)
    assert manifest.config["instruct"]["describer"] == "template"
    mixture = (tmp_path / "instruct" / "datasets.yaml").read_text()
    assert "sampling_strategy: all" in mixture and INSTRUCT_FILE in mixture


def test_recipe_options_are_checked(planted, tmp_path, monkeypatch):
    from adinstruct.builder.instruct import instruct_config

    assert instruct_config(None, None, None) is None
    with pytest.raises(ConfigError, match="need a --recipe"):
        instruct_config(None, "template", None)
    with pytest.raises(ConfigError, match="unknown recipe"):
        instruct_config("visa-dr-2", None, None)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert instruct_config("anomaly-instruct", None, None).describer == "template"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    with pytest.raises(ConfigError, match="needs --model"):
        instruct_config("anomaly-instruct", None, None)
