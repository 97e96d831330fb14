"""Built output folders for validator tests: the real demo build, and validators run over it.

The sample facts come from `validators.folder.load_context`, the runner's own reader, so the
tests check validators against exactly what `build-dataset validate` gives them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from adinstruct.builder.demo import generate_demo_tree
from adinstruct.builder.instruct import InstructConfig
from adinstruct.builder.pipeline import BuildConfig, SourceSpec, build
from adinstruct.builder.progress import Progress
from adinstruct.validators.base import Finding, Validator
from adinstruct.validators.folder import find_records_files
from adinstruct.validators.runner import run_validators


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
    """Every finding of these validators (instances, as configured) on the folder, through the
    runner as `build-dataset validate` calls them, uncapped (the reader's own, not)."""
    findings: list[Finding] = []
    run_validators(
        root, find_records_files(root), list(validators), Progress(),
        max_findings_per_code=1, on_finding=findings.append, started=0.0,
    )  # fmt: skip
    names = {validator.name for validator in validators}
    return [finding for finding in findings if finding.validator in names]


def console_script() -> Path:
    """The installed `build-dataset`, as a user runs it."""
    script = Path(sys.executable).parent / "build-dataset"
    assert script.is_file(), f"{script} is missing: install the package (pip install -e .)"
    return script


#: The environment without OpenAI settings: the demo must need no key and no network.
NO_LLM = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI")}


def run_demo(out: Path) -> Path:
    """`build-dataset demo --out OUT` as the README runs it; the folder it built."""
    result = subprocess.run(
        [console_script(), "demo", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300, env=NO_LLM,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out
