"""Light by default: the core imports and runs without the heavy extras, which load lazily."""

from __future__ import annotations

import subprocess
import sys
import textwrap

HEAVY = ("torch", "torchvision", "open_clip", "transformers", "ray")

#: Imports every core module with the heavy packages made unimportable, as on a plain install,
#: then runs the CLI's cheapest command; prints the heavy modules that got loaded anyway.
CHILD = textwrap.dedent(
    f"""
    import importlib, sys
    HEAVY = {HEAVY!r}

    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HEAVY:
                raise ImportError(f"{{name}} is not installed (blocked by the test)")
            return None

    sys.meta_path.insert(0, Refuse())
    for module in [
        "adinstruct.builder.cli", "adinstruct.builder.pipeline", "adinstruct.builder.recipes",
        "adinstruct.builder.gate", "adinstruct.validators.runner",
        "adinstruct.validators.registry", "adinstruct.validators.detector",
        "adinstruct.validators.detector.metrics", "adinstruct.builder.report.report",
        "adinstruct.builder.export.llava", "adinstruct.builder.export.push",
        "adinstruct.data_cards.card",
    ]:
        importlib.import_module(module)
    from adinstruct.validators.registry import get_validators
    get_validators()  # every registered validator, instantiated
    from typer.testing import CliRunner
    from adinstruct.builder.cli import app
    result = CliRunner().invoke(app, ["sources"])
    assert result.exit_code == 0, result.output
    print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in HEAVY))
    """
)


def test_the_core_imports_and_runs_without_torch_or_the_other_extras():
    result = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED []" in result.stdout


#: What `validate` imports, in a fresh interpreter: every validator, the CLI, then a run.
VALIDATE_CHILD = textwrap.dedent(
    """
    import sys
    from adinstruct.builder.cli import app
    from adinstruct.validators.registry import get_validators
    import adinstruct.builder.annotate as annotate
    get_validators()
    print("LOADED", sorted(set(sys.argv[1:]) & set(sys.modules)))
    for name in annotate.__all__:  # every lazily exported name resolves
        getattr(annotate, name)
    """
)
#: Modules a clean folder's validation does without: start-up is part of every validate run
#: (imports are a fifth of it), and jsonschema runs only on a record that does not fit.
NOT_FOR_VALIDATION = (
    "jsonschema", "jinja2", "adinstruct.builder.annotate.stage",
    "adinstruct.builder.compose.compose", "adinstruct.builder.describe.llm",
)  # fmt: skip


def test_validation_imports_no_stage_and_no_json_schema_library():
    result = subprocess.run(
        [sys.executable, "-c", VALIDATE_CHILD, *NOT_FOR_VALIDATION],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED []" in result.stdout, result.stdout
