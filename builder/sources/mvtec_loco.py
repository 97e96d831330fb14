"""MVTec LOCO AD: logical and structural anomalies, with a folder of masks per image.

    <cat>/train/good/000.png, <cat>/validation/good/000.png
    <cat>/test/{good,logical_anomalies,structural_anomalies}/000.png
    <cat>/ground_truth/<type>/000/000.png, 001.png ...   one PNG per annotated defect
    <cat>/defects_config.json   defect_name, pixel_value, saturation_threshold, relative_saturation

A mask's non-zero pixels carry its defect's `pixel_value`, so the defect names come from the
pixels (the annotate stage reads them through the config's value table).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from adinstruct.builder.errors import PathEscapeError
from adinstruct.builder.sources.base import (
    SampleOrQuarantine,
    SourceBuilder,
    list_images,
    subfolders,
)
from adinstruct.builder.sources.mvtec_layout import SPLIT_FOLDERS
from adinstruct.schemas import MaskRef

ANOMALY_FOLDERS = {"logical_anomalies": "logical", "structural_anomalies": "structural"}


class MVTecLOCO(SourceBuilder):
    name = "mvtec_loco"
    aliases = ("loco", "mvtec-loco")
    layouts = {
        "categories": "<cat>/train/good/, <cat>/test/{good,logical_anomalies,"
        "structural_anomalies}/, <cat>/ground_truth/<type>/<stem>/*.png and "
        "<cat>/defects_config.json under the root",
    }

    def detect_layout(self) -> str:
        if self.category_roots():
            return "categories"
        if self.is_category(self.root):
            return "single-category"
        raise self.layout_error("no category folder with test/logical_anomalies or "
                                "test/structural_anomalies")  # fmt: skip

    @staticmethod
    def is_category(folder: Path) -> bool:
        return any((folder / "test" / name).is_dir() for name in ANOMALY_FOLDERS)

    def category_roots(self) -> list[Path]:
        return [folder for folder in subfolders(self.root) if self.is_category(folder)]

    def iter_samples(self) -> Iterator[SampleOrQuarantine]:
        roots = [self.root] if self.layout == "single-category" else self.category_roots()
        for category_root in roots:
            yield from self.iter_category(category_root)

    def read_defects_config(self, category_root: Path) -> dict[int, str] | SampleOrQuarantine:
        config = category_root / "defects_config.json"
        try:
            entries = json.loads(self.read_index(config))
            return {int(entry["pixel_value"]): str(entry["defect_name"]) for entry in entries}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, PathEscapeError) as error:
            return self.quarantine(
                "bad_defects_config",
                f"{self.rel(config)} is not a list of {{defect_name, pixel_value}}: {error}",
                path=self.rel(config),
            )

    def iter_category(self, category_root: Path) -> Iterator[SampleOrQuarantine]:
        category = category_root.name
        value_names = self.read_defects_config(category_root)
        if not isinstance(value_names, dict):
            yield value_names  # the config's quarantine entry; masks are then binarised only
            value_names = {}
        for split_folder, split in SPLIT_FOLDERS.items():
            for class_folder in subfolders(category_root / split_folder):
                anomaly_type = ANOMALY_FOLDERS.get(class_folder.name)
                for image in list_images(class_folder):
                    image_rel = self.rel(image)
                    if anomaly_type is None:
                        yield self.make_sample(
                            category=category, split=split, label="normal", images=[image_rel]
                        )
                        continue
                    mask_folder = category_root / "ground_truth" / class_folder.name / image.stem
                    masks = list_images(mask_folder)
                    if not masks:
                        yield self.quarantine(
                            "mask_missing",
                            f"anomalous image {image_rel} has no masks: expected PNG files in "
                            f"{self.rel(mask_folder)}/",
                            path=image_rel,
                            sample_id=self.sample_id(image_rel),
                        )
                        continue
                    yield self.make_sample(
                        category=category,
                        split=split,
                        label="anomaly",
                        images=[image_rel],
                        masks=[
                            MaskRef(path=self.rel(mask), value_names=value_names or None)
                            for mask in masks
                        ],
                        extra={"anomaly_type": anomaly_type},
                    )
