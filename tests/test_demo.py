"""`build-dataset demo` from the installed script: offline, and counts match what it made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from adinstruct.builder.demo import generate_demo_tree
from adinstruct.schemas import Manifest, Sample


def console_script() -> Path:
    script = Path(sys.executable).parent / "build-dataset"
    assert script.is_file(), f"{script} is missing: install the package (pip install -e .)"
    return script


def test_demo_builds_a_folder_whose_counts_match_the_generated_sample(tmp_path):
    out = tmp_path / "demo"
    # No key and no network: the demo must not need either.
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    result = subprocess.run(
        [console_script(), "demo", "--out", str(out), "--workers", "2"],
        capture_output=True, text=True, timeout=300, env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    generated = generate_demo_tree(tmp_path / "again", seed=0)
    manifest = Manifest.model_validate_json((out / "manifest.json").read_text())
    (source,) = manifest.sources
    # The synthetic content is CC0, whatever layout it imitates.
    assert source.name == "demo" and source.license == "CC0-1.0"
    assert source.counts.total == generated.total
    assert source.counts.by_label == {"anomaly": generated.anomalous, "normal": generated.normal}
    assert source.counts.quarantined == 0
    expected_categories = {c.name: sum(sum(x.values()) for x in c.counts.values())
                           for c in generated.categories}  # fmt: skip
    assert source.counts.by_category == expected_categories
    samples = [Sample.model_validate_json(line) for line in (out / "samples.jsonl").open()]
    assert len(samples) == generated.total
    masks = {a.image: a for c in generated.categories for a in c.anomalies}
    for sample in samples:
        if sample.label == "anomaly":
            planted = masks[sample.image_paths[0]]
            assert sample.defect_types == [planted.defect]
            x0 = min(b[0] for b in sample.annotation.bboxes)
            y0 = min(b[1] for b in sample.annotation.bboxes)
            assert (x0, y0) == tuple(planted.mask_bbox[:2])
    outputs = {o.path: o for o in manifest.outputs}
    assert outputs["samples.jsonl"].records == generated.total
    # The demo runs the whole recipe offline: every sample described, records composed.
    records = json.loads((out / "instruct" / "anomaly_instruct.json").read_text())
    assert outputs["instruct/anomaly_instruct.json"].records == len(records) >= generated.total
    assert {r["metadata"]["sample_id"] for r in records} == {s.id for s in samples}
    assert all((out / "images" / r["image"]).is_file() for r in records)
    assert all(s.describer == "template" for s in samples)
    assert json.loads((out / "manifest.json").read_text())["toolkit_version"]
    # Running the demo again into the same folder replaces its synthetic tree, same bytes out.
    again = subprocess.run(
        [console_script(), "demo", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300, env=environment,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (
        outputs["samples.jsonl"].sha256
        == Manifest.model_validate_json((out / "manifest.json").read_text()).outputs[0].sha256
    )
