"""A plain (non-editable) install gives a working `build-dataset` in the `adinstruct` namespace."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOREIGN_TOP_LEVEL = ("builder", "schemas", "templates", "validators", "data_cards", "tests")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (built,) = out.glob("adinstruct-*.whl")
    return built


@pytest.mark.slow
def test_wheel_installs_only_the_adinstruct_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert not top_level & set(FOREIGN_TOP_LEVEL), top_level
    for data_file in (
        "adinstruct/schemas/sample.schema.json",
        "adinstruct/builder/sources/data/visa_id2class.json",
        "adinstruct/data_cards/sources.json",
        "adinstruct/templates/describe_user.j2",
        "adinstruct/builder/cli.py",
        "adinstruct/builder/describe/template.py",
        "adinstruct/builder/compose/compose.py",
        "adinstruct/templates/questions/detection.j2",
    ):
        assert data_file in names, data_file
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "build-dataset = adinstruct.builder.cli:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


@pytest.mark.slow
def test_plain_install_runs_build_dataset(wheel, tmp_path):
    venv = tmp_path / "venv"
    # System site-packages lend the dependencies; the wheel itself goes into the venv.
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    where = subprocess.run(
        [python, "-c", "import adinstruct.builder, sys; print(adinstruct.builder.__file__)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert str(venv) in where
    result = subprocess.run(
        [venv / "bin" / "build-dataset", "sources"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "mvtec_ad" in result.stdout and "CC-BY-NC-SA-4.0" in result.stdout
    # The README's main command, from the installed wheel alone: every template, bank and
    # catalog file it needs is packaged (an editable install would hide a missing one).
    demo = subprocess.run(
        [venv / "bin" / "build-dataset", "demo", "--out", str(tmp_path / "demo"), "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    for name in ("instruct/anomaly_instruct.json", "benchmark/mmad.json", "hf/README.md",
                 "report.html"):  # fmt: skip
        assert (tmp_path / "demo" / name).is_file(), name


@pytest.mark.slow
def test_every_package_of_the_tree_is_in_the_wheel(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    roots = {"builder": "adinstruct/builder", "schemas": "adinstruct/schemas",
             "templates": "adinstruct/templates", "validators": "adinstruct/validators",
             "data_cards": "adinstruct/data_cards"}  # fmt: skip
    for folder, installed in roots.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).as_posix()
            wanted = f"{installed}/{relative}/__init__.py".replace("/./", "/")
            assert wanted in names, f"{init.parent} is not packaged: add it to pyproject"
