"""Export a built folder for the LLaVA-OneVision trainer (the one Anomaly-OV fine-tunes with).

The export folder holds::

    TO/anomaly_instruct.json   every instruct/*.json (or .jsonl) of the folder, byte for byte
    TO/datasets.yaml           the trainer's mixture file: one entry per instruction file
    TO/images/...              every image a record names, at the path the record names it
    TO/masks/...               every mask a record names (metadata.mask, mmad mask_path)
    TO/benchmark/*.json        test_data.json, visa_dr.json, mmad.json, byte for byte

Train with ``--data_path TO/datasets.yaml --image_folder TO/images``.

How the trainer resolves paths (LLaVA-NeXT ``llava/train/train.py``, ``LazySupervisedDataset``):
it reads the yaml with ``yaml.safe_load`` and opens each ``json_path`` with a bare
``open(json_path)``, so a relative ``json_path`` is taken relative to the trainer's *working
directory*, not to the yaml's folder. ``datasets.yaml`` therefore names each file by its
absolute path (the export folder resolved); move the folder and the paths must be rewritten
(or export again). Images are opened as ``os.path.join(image_folder, image)`` for each entry of
a record's ``image`` (a list is read in order, each view padded), which is why `image` stays
relative and the files go under ``TO/images``. Masks and benchmark files keep their folder
layout, so ``masks/...`` references resolve against TO as they did against the built folder.

Everything a record names is resolved (inside the built folder, and present) before anything
is written; the records files are copied unchanged, so the export's records are the folder's.
"""

from __future__ import annotations

import shutil
from pathlib import Path, PurePosixPath

import yaml

from adinstruct.builder.export import (
    BuiltFolder,
    ExportError,
    ExportSummary,
    WrittenFile,
    named_files,
    prepare_target,
)
from adinstruct.builder.images import IMAGES_DIR, Placement, place_file
from adinstruct.builder.io import atomic_writer
from adinstruct.validators.folder import RecordsFile

INSTRUCT_KIND = "instruction_record"
BENCHMARK_KINDS = ("detection_item", "reasoning_item", "mmad_item")
MIXTURE_FILE = "datasets.yaml"


def export_llava(folder: Path, to: Path, *, placement: Placement = Placement.copy) -> ExportSummary:
    """Write the folder's instruction records, mixture file, benchmark files and the images
    they name under `to`, ready for the trainer (see the module docstring)."""
    built = BuiltFolder(folder)
    instruct = built.records_files(INSTRUCT_KIND)
    benchmark = built.records_files(*BENCHMARK_KINDS)
    if not instruct and not benchmark:
        raise ExportError(
            f"{built.root} has no instruct/*.json and no benchmark/*.json to export for LLaVA: "
            "build it with --recipe anomaly-instruct (and --recipe visa-dr for the benchmark)"
        )
    plan = _Plan(built)
    for records_file in (*instruct, *benchmark):
        plan.add_records(records_file)
    target = prepare_target(built, to)

    summary = ExportSummary(format="llava", source=str(built.root), folder=str(target))
    mixture: list[str] = []
    for records_file in (*instruct, *benchmark):
        # Instruction files sit at the top, where datasets.yaml points; benchmark files keep
        # their benchmark/ folder, as the evaluation scripts are pointed at them.
        name = records_file.path
        if records_file.kind == INSTRUCT_KIND:
            name = PurePosixPath(records_file.path).name
            mixture.append(name)
        _copy_atomically(built.root / records_file.path, target / name)
        summary.files.append(_written(target, name, plan.records[records_file.path]))
    if mixture:
        _write_mixture(target, mixture)
        summary.files.append(_written(target, MIXTURE_FILE, len(mixture)))

    for relative, source in plan.placements.items():
        place_file(source, target / relative, placement)
    summary.images, summary.masks = plan.images, plan.masks
    summary.bytes = sum(file.bytes for file in summary.files) + plan.placed_bytes
    return summary


class _Plan:
    """Every file the records name, resolved and checked before anything is written."""

    def __init__(self, built: BuiltFolder) -> None:
        self.built = built
        #: export-relative target -> file in the built folder, first named first.
        self.placements: dict[str, Path] = {}
        self.records: dict[str, int] = {}
        self.images = self.masks = self.placed_bytes = 0

    def add_records(self, records_file: RecordsFile) -> None:
        count = 0
        for raw, model in self.built.records(records_file):
            named = named_files(model, raw.key)
            for reference in (*named.images, *named.templates):
                relative = f"{IMAGES_DIR}/{reference}"
                if relative not in self.placements:  # else named by an earlier record
                    self._place(relative, self.built.image(reference, raw))
                    self.images += 1
            for reference in named.masks:
                if reference not in self.placements:
                    self._place(reference, self.built.mask(reference, raw))
                    self.masks += 1
            count += 1
        self.records[records_file.path] = count

    def _place(self, relative: str, source: Path) -> None:
        self.placements[relative] = source
        self.placed_bytes += source.stat().st_size


def _copy_atomically(source: Path, target: Path) -> None:
    with source.open("rb") as reader, atomic_writer(target, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)


def _write_mixture(target: Path, names: list[str]) -> None:
    # Absolute: the trainer opens json_path relative to its working directory (module docstring).
    entries = [
        {"json_path": (target / name).as_posix(), "sampling_strategy": "all"} for name in names
    ]
    with atomic_writer(target / MIXTURE_FILE) as handle:
        yaml.safe_dump({"datasets": entries}, handle, sort_keys=False, allow_unicode=True)


def _written(target: Path, relative: str, records: int | None) -> WrittenFile:
    return WrittenFile(path=relative, records=records, bytes=(target / relative).stat().st_size)
