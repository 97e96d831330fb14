"""VisA: the raw release (split CSVs, id-valued masks) and the `VisA_pytorch/1cls` MVTec-style copy.

Raw release:
    split_csv/1cls.csv                 object,split,label,image,mask (paths relative to the root)
    <cat>/Data/Images/{Anomaly,Normal}/*.JPG, <cat>/Data/Masks/Anomaly/*.png
    <cat>/image_anno.csv               image,label,mask (label: normal, or defect names)

Mask pixel values are defect ids, named per category by the release's id-to-class table
(data/visa_id2class.json). The MVTec-style copy made by the release's prepare script keeps
only binarised masks under ground_truth/bad/, so its defect names are lost.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path, PurePosixPath

from adinstruct.builder.errors import ConfigError, PathEscapeError
from adinstruct.builder.sources.base import SampleOrQuarantine, SourceBuilder
from adinstruct.builder.sources.mvtec_layout import (
    MVTecStyle,
    category_folders,
    iter_mvtec_category,
)
from adinstruct.schemas import MaskRef

SPLIT_FILES = ("1cls", "2cls_fewshot", "2cls_highshot")
CSV_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
PYTORCH_STYLE = MVTecStyle(unnamed_defect_folders=frozenset({"bad"}))


@cache
def id_to_class() -> dict[str, dict[int, str]]:
    text = resources.files("adinstruct.builder.sources").joinpath("data/visa_id2class.json")
    table = json.loads(text.read_text(encoding="utf-8"))["categories"]
    return {category: {int(k): v for k, v in names.items()} for category, names in table.items()}


def split_defect_names(label: str) -> list[str]:
    return [name.strip() for name in label.split(",") if name.strip() and name.strip() != "normal"]


class VisA(SourceBuilder):
    name = "visa"
    aliases = ("visa_pytorch", "visa-pytorch")
    layouts = {
        "raw": "split_csv/1cls.csv and <cat>/Data/Images/{Normal,Anomaly}/*.JPG with "
        "<cat>/Data/Masks/Anomaly/*.png (the raw release)",
        "pytorch-1cls": "the VisA_pytorch/1cls copy: <cat>/train/good/, <cat>/test/{good,bad}/ "
        "and <cat>/ground_truth/bad/",
    }

    def __init__(self, root: Path | str, split_file: str = "1cls") -> None:
        if split_file not in SPLIT_FILES:
            raise ConfigError(f"visa: split file must be one of {', '.join(SPLIT_FILES)}")
        self.split_file = split_file
        super().__init__(root)

    def detect_layout(self) -> str:
        if (self.root / "split_csv").is_dir():
            if not (self.root / "split_csv" / f"{self.split_file}.csv").is_file():
                raise self.layout_error(f"split_csv/{self.split_file}.csv is missing")
            return "raw"
        if category_folders(self.root, PYTORCH_STYLE):
            return "pytorch-1cls"
        if category_folders(self.root / "1cls", PYTORCH_STYLE):
            # Pointed at VisA_pytorch/ itself: the copy keeps its categories under 1cls/.
            self.root = (self.root / "1cls").resolve()
            return "pytorch-1cls"
        if any((folder / "Data" / "Images").is_dir() for folder in self.root.iterdir()):
            raise self.layout_error("category folders found but split_csv/ is missing")
        raise self.layout_error()

    def iter_samples(self) -> Iterator[SampleOrQuarantine]:
        if self.layout == "pytorch-1cls":
            for category_root in category_folders(self.root, PYTORCH_STYLE):
                yield from iter_mvtec_category(self, category_root, PYTORCH_STYLE)
            return
        yield from self.iter_raw()

    def iter_raw(self) -> Iterator[SampleOrQuarantine]:
        split_csv = f"split_csv/{self.split_file}.csv"
        anno_by_category: dict[str, dict[str, list[str]]] = {}
        try:
            text = self.read_index(self.root / split_csv)
        except PathEscapeError as error:
            raise self.layout_error(str(error)) from None
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = {"object", "split", "label", "image", "mask"} - set(reader.fieldnames or ())
        if missing:
            raise self.layout_error(f"{split_csv} lacks the columns {sorted(missing)}")
        for row_number, row in enumerate(reader, start=2):
            category = row["object"].strip()
            if category not in anno_by_category:
                anno_by_category[category] = self.read_image_anno(category)
            yield self.raw_row(row, f"{split_csv} line {row_number}", anno_by_category[category])

    def raw_row(
        self, row: dict[str, str], where: str, defect_names: dict[str, list[str]]
    ) -> SampleOrQuarantine:
        category, image_rel = row["object"].strip(), row["image"].strip()
        mask_rel = (row.get("mask") or "").strip()
        try:
            image = self.resolve_indexed(image_rel)
        except PathEscapeError as error:
            return self.escape_entry(error, where, image_rel)
        try:
            mask = self.resolve_indexed(mask_rel) if mask_rel else None
        except PathEscapeError as error:
            return self.escape_entry(error, where, mask_rel)
        image_rel = self.rel(image)
        if not image.is_file():
            return self.quarantine(
                "image_missing", f"{where} names {image_rel}, which does not exist", image_rel
            )
        split = CSV_SPLITS.get(row["split"].strip().lower())
        if split is None:
            return self.quarantine(
                "bad_index_row", f"{where} has split {row['split']!r}; expected train or test",
                image_rel,
            )  # fmt: skip
        if row["label"].strip().lower() == "normal":
            return self.make_sample(
                category=category, split=split, label="normal", images=[image_rel]
            )
        if mask is None or not mask.is_file():
            shown = self.rel(mask) if mask is not None else "an empty mask column"
            return self.quarantine(
                "mask_missing",
                f"{where}: anomalous image {image_rel} has no mask ({shown} does not exist)",
                image_rel, self.sample_id(image_rel),
            )  # fmt: skip
        return self.make_sample(
            category=category,
            split=split,
            label="anomaly",
            images=[image_rel],
            masks=[MaskRef(path=self.rel(mask), value_names=id_to_class().get(category))],
            defect_types=defect_names.get(image_rel, []),
        )

    def read_image_anno(self, category: str) -> dict[str, list[str]]:
        """image path -> defect names, from <cat>/image_anno.csv when the release has it."""
        try:
            # The category comes from the split CSV, so it is checked like any indexed path.
            text = self.read_index(self.resolve_indexed(f"{category}/image_anno.csv"))
        except (PathEscapeError, FileNotFoundError):
            return {}  # the defect names then come from the mask pixels alone
        names: dict[str, list[str]] = {}
        for row in csv.DictReader(io.StringIO(text, newline="")):
            image = PurePosixPath((row.get("image") or "").strip().replace("\\", "/"))
            if not image.parts:
                continue
            # Some copies write the path relative to the category folder.
            key = image if image.parts[0] == category else PurePosixPath(category, image)
            names[key.as_posix()] = split_defect_names(row.get("label") or "")
        return names
