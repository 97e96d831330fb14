"""Balance warnings over a real demo build: the counts, and shares against the recipe's targets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from built_folders import build_demo_folder, validate_records

from adinstruct.builder.instruct import INSTRUCT_FILE
from adinstruct.validators.balance import BalanceValidator


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return build_demo_folder(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def folder(demo, tmp_path) -> Path:
    copy = tmp_path / "folder"
    shutil.copytree(demo, copy, ignore=shutil.ignore_patterns("source", "images", "masks"))
    return copy


def keep_records(root: Path, keep) -> None:
    path = root / INSTRUCT_FILE
    payload = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps([record for record in payload if keep(record)]), encoding="utf-8")


def test_counts_match_the_manifest_and_the_only_warning_is_the_scarce_localisation(demo):
    validator = BalanceValidator()
    findings = validate_records(demo, validator)
    manifest = json.loads((demo / "manifest.json").read_text(encoding="utf-8"))
    compose = manifest["stages"]["compose"]
    summary = validator.summary()
    assert summary["by_family"] == {
        family: compose[f"records_{family}"]
        for family in ("description", "detection", "localisation", "reasoning")
    }
    assert sum(summary["by_label"].values()) == compose["records"]
    assert summary["by_category"] == dict.fromkeys(
        ["demo/capsule", "demo/fabric", "demo/grid", "demo/washer"], 30
    )
    # Localisation suits only anomalies with a mask, so it falls short of its equal weight.
    [finding] = findings
    assert (finding.code, finding.severity) == ("family_share", "warning")
    assert "localisation has 11 of 120 records (9%)" in finding.message
    assert "recipe's family weights" in finding.message


def test_family_targets_come_from_the_manifest_recipe(folder):
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    weights = {"detection": 1.0, "description": 1.0, "localisation": 0.0, "reasoning": 1.0}
    manifest["config"]["instruct"]["compose"]["config"]["families"] = weights
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    findings = validate_records(folder, BalanceValidator())
    # 40/35/11/34 of 120 against a third each and none: every share within 10 points.
    assert findings == []


def test_without_a_manifest_every_family_gets_an_equal_share(folder):
    (folder / "manifest.json").unlink()
    keep_records(folder, lambda record: record["metadata"]["task_family"] != "reasoning")
    findings = validate_records(folder, BalanceValidator())
    shares = {f.message.split()[2]: f.message for f in findings if f.code == "family_share"}
    # 40, 35, 11 and 0 of 86 records: each more than 10 points from 25%.
    assert set(shares) == {"description", "detection", "localisation", "reasoning"}
    assert "equal family shares put it at 25%" in shares["reasoning"]


def test_a_scarce_label_and_small_categories_are_warned(folder):
    def keep(record):
        meta = record["metadata"]
        return meta["anomaly"] or (
            meta["category"] == "grid" and meta["task_family"] == "detection"
        )

    keep_records(folder, keep)  # 48 anomalous records, 5 normal; grid keeps 17, the others 12
    findings = validate_records(folder, BalanceValidator(min_category_records=15))
    assert {f.severity for f in findings} == {"warning"}
    [label] = [f for f in findings if f.code == "label_share"]
    assert "5 of 53 records (9%) are normal" in label.message
    small = {f.message.split()[1] for f in findings if f.code == "small_category"}
    assert small == {"demo/capsule", "demo/fabric", "demo/washer"}


def test_configured_source_and_family_targets_replace_the_defaults(folder):
    validator = BalanceValidator(
        family_targets={"detection": 1, "description": 1, "reasoning": 1, "localisation": 0},
        source_targets={"demo": 0.5, "visa": 0.5},
        tolerance=0.2,
    )
    findings = validate_records(folder, validator)
    assert sorted((f.code, f.message.split()[1]) for f in findings) == [
        ("source_share", "demo"),
        ("source_share", "visa"),
    ]


def test_the_families_validation_knows_are_the_compose_stage_s():
    from adinstruct.builder.compose import FAMILIES
    from adinstruct.schemas.instruct import TASK_FAMILIES

    assert FAMILIES == TASK_FAMILIES
