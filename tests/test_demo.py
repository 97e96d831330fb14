"""`build-dataset demo` from the installed script: offline, and counts match what it made."""

from __future__ import annotations

import json
import subprocess

from built_folders import NO_LLM, console_script

from adinstruct.builder.demo import generate_demo_tree, generate_holdout_tree
from adinstruct.schemas import Manifest, Sample


def test_demo_builds_a_folder_whose_counts_match_the_generated_sample(tmp_path):
    out = tmp_path / "demo"
    # No key and no network: the demo must not need either.
    result = subprocess.run(
        [console_script(), "demo", "--out", str(out), "--workers", "2"],
        capture_output=True, text=True, timeout=300, env=NO_LLM,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    generated = {
        "demo": generate_demo_tree(tmp_path / "again" / "demo", seed=0),
        "demo_holdout": generate_holdout_tree(tmp_path / "again" / "demo_holdout", seed=0),
    }
    manifest = Manifest.model_validate_json((out / "manifest.json").read_text())
    assert [source.name for source in manifest.sources] == list(generated)
    samples = [Sample.model_validate_json(line) for line in (out / "samples.jsonl").open()]
    for source in manifest.sources:
        tree = generated[source.name]
        # The synthetic content is CC0, whatever layout it imitates.
        assert source.license == "CC0-1.0"
        assert source.counts.total == tree.total
        assert source.counts.by_label == {"anomaly": tree.anomalous, "normal": tree.normal}
        assert source.counts.quarantined == 0
        expected_categories = {c.name: sum(sum(x.values()) for x in c.counts.values())
                               for c in tree.categories}  # fmt: skip
        assert source.counts.by_category == expected_categories
    assert len(samples) == sum(tree.total for tree in generated.values())
    masks = {(name, a.image): a for name, tree in generated.items()
             for c in tree.categories for a in c.anomalies}  # fmt: skip
    for sample in samples:
        if sample.label == "anomaly":
            planted = masks[(sample.source, sample.image_paths[0])]
            assert sample.defect_types == [planted.defect]
            x0 = min(b[0] for b in sample.annotation.bboxes)
            y0 = min(b[1] for b in sample.annotation.bboxes)
            assert (x0, y0) == tuple(planted.mask_bbox[:2])
    outputs = {o.path: o for o in manifest.outputs}
    assert outputs["samples.jsonl"].records == len(samples)
    # The demo runs both recipes offline: the training set from demo, every sample described
    # and composed; the benchmark from demo_holdout's test split, never trained on.
    records = json.loads((out / "instruct" / "anomaly_instruct.json").read_text())
    trained = {s.id for s in samples if s.source == "demo"}
    assert outputs["instruct/anomaly_instruct.json"].records == len(records) >= len(trained)
    assert {r["metadata"]["sample_id"] for r in records} == trained
    assert all((out / "images" / r["image"]).is_file() for r in records)
    detection = json.loads((out / "benchmark" / "test_data.json").read_text())
    held_test = [s for s in samples if s.source == "demo_holdout" and s.split == "test"]
    assert sorted(d["image"] for d in detection) == sorted(
        f"demo_holdout/{s.image_paths[0]}" for s in held_test
    )
    assert all(s.describer == "template" for s in samples if s.split == "test" or
               s.source == "demo")  # fmt: skip
    assert manifest.validation["error_count"] == 0
    assert manifest.config["instruct"]["held_out"] == ["demo_holdout"]
    assert json.loads((out / "manifest.json").read_text())["toolkit_version"]
    # It ends published: a Hugging Face folder that `datasets` loads with every part, and
    # the report (tests/test_report.py opens one in a browser).
    import datasets

    configs = datasets.get_dataset_config_names(str(out / "hf"))
    assert sorted(configs) == ["detection", "instruct", "mmad", "reasoning", "samples"]
    loaded = datasets.load_dataset(str(out / "hf"), "instruct", split="train")
    assert loaded.num_rows == len(records)
    assert sorted(loaded["id"]) == sorted(r["id"] for r in records)
    assert (out / "report.html").is_file() and any((out / "report_files").iterdir())
    # Running the demo again into the same folder replaces its synthetic trees, same bytes out.
    again = subprocess.run(
        [console_script(), "demo", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300, env=NO_LLM,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    rebuilt = Manifest.model_validate_json((out / "manifest.json").read_text())
    assert [(o.path, o.sha256) for o in rebuilt.outputs] == [
        (o.path, o.sha256) for o in manifest.outputs
    ]
