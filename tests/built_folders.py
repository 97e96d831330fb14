"""Built output folders for validator tests: the real demo build, and validators run over it.

The sample facts come from `validators.folder.load_context`, the runner's own reader, so the
tests check validators against exactly what `build-dataset validate` gives them.
"""

from __future__ import annotations

import json
from pathlib import Path

from adinstruct.builder.demo import generate_demo_tree
from adinstruct.builder.instruct import InstructConfig
from adinstruct.builder.pipeline import BuildConfig, SourceSpec, build
from adinstruct.schemas import InstructionRecord
from adinstruct.validators.base import Finding, Validator
from adinstruct.validators.folder import load_context


def build_demo_folder(out: Path, *, release: Path | None = None, image_size: int = 256) -> Path:
    """The demo release built with the anomaly-instruct recipe (template describer).

    The release goes to `release` (default: out/source/demo, where `build-dataset demo` puts it).
    """
    release = release or out / "source" / "demo"
    generate_demo_tree(release, seed=0, image_size=image_size)
    build(
        BuildConfig(
            sources=[SourceSpec(name="demo", root=release)],
            out=out,
            workers=1,
            instruct=InstructConfig(),
        )
    )
    return out


def validate_records(root: Path, *validators: Validator) -> list[Finding]:
    """Every instruct/*.json record through `check`, then `finish`, as the runner calls them."""
    context = load_context(root)
    findings: list[Finding] = []
    for path in sorted((root / "instruct").glob("*.json")):
        file = path.relative_to(root).as_posix()
        for raw in json.loads(path.read_text(encoding="utf-8")):
            record = InstructionRecord.model_validate(raw)
            for validator in validators:
                findings += validator.check(record, file, context)
    for validator in validators:
        findings += validator.finish(context)
    return findings
