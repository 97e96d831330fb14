"""Real-IAD: 30 categories, five camera views per physical sample, indexed by JSON files.

    realiad_jsons/<cat>.json    {"meta": {"prefix", "normal_class"}, "train": [...], "test": [...]}
    realiad_<256|512|1024|raw>/<prefix>/<image_path>   and  .../<mask_path>

Each index entry has exactly `category, anomaly_class, image_path, mask_path`; an entry is
normal when `mask_path` is null or its class equals `normal_class` ("OK"). The views of one
physical sample share a group, so that leakage checks never split them across train and test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from adinstruct.builder.errors import ConfigError, PathEscapeError
from adinstruct.builder.sources.base import SampleOrQuarantine, SourceBuilder
from adinstruct.schemas import MaskRef

RESOLUTIONS = ("1024", "512", "256", "raw")
#: The release names defects by two-letter codes (its README's table).
DEFECT_CODES = {
    "AK": "pit",
    "BX": "deformation",
    "CH": "abrasion",
    "HS": "scratch",
    "PS": "damage",
    "QS": "missing parts",
    "YW": "foreign objects",
    "ZW": "contamination",
}
PHYSICAL_SAMPLE = re.compile(r"(?:^|/)(S\d+)/")
CAMERA = re.compile(r"_(C\d)_")


class RealIAD(SourceBuilder):
    name = "real_iad"
    aliases = ("realiad", "real-iad")
    layouts = {
        "jsons": "realiad_jsons/<cat>.json beside realiad_1024/ (or realiad_512/, realiad_256/, "
        "realiad_raw/) under the root",
    }

    def __init__(self, root: Path | str, resolution: str | None = None) -> None:
        if resolution is not None and resolution not in RESOLUTIONS:
            raise ConfigError(f"real_iad: resolution must be one of {', '.join(RESOLUTIONS)}")
        self.resolution = resolution
        super().__init__(root)

    def detect_layout(self) -> str:
        self.json_dir = self.find_json_dir()
        if self.json_dir is None:
            raise self.layout_error("no realiad_jsons/*.json")
        available = [r for r in RESOLUTIONS if (self.root / f"realiad_{r}").is_dir()]
        if self.resolution is not None and self.resolution not in available:
            raise self.layout_error(f"realiad_{self.resolution}/ is missing")
        if not available:
            raise self.layout_error("no realiad_<256|512|1024|raw>/ image folder")
        self.resolution = self.resolution or available[0]
        self.image_dir = f"realiad_{self.resolution}"
        return "jsons"

    def find_json_dir(self) -> Path | None:
        # Some copies nest the index as realiad_jsons/realiad_jsons/.
        for candidate in (
            self.root / "realiad_jsons" / "realiad_jsons",
            self.root / "realiad_jsons",
        ):
            if candidate.is_dir() and any(candidate.glob("*.json")):
                return candidate
        return None

    def iter_samples(self) -> Iterator[SampleOrQuarantine]:
        assert self.json_dir is not None
        for index_file in sorted(self.json_dir.glob("*.json")):
            yield from self.iter_index(index_file)

    def iter_index(self, index_file: Path) -> Iterator[SampleOrQuarantine]:
        index_rel = self.rel(index_file)
        try:
            index = json.loads(self.read_index(index_file))
            meta = index["meta"]
            prefix, normal_class = str(meta.get("prefix") or ""), str(meta["normal_class"])
        except (ValueError, KeyError, TypeError, PathEscapeError) as error:
            yield self.quarantine(
                "bad_index", f"{index_rel} is not a Real-IAD index with meta.normal_class: {error}",
                path=index_rel,
            )  # fmt: skip
            return
        for split in ("train", "test"):
            for position, entry in enumerate(index.get(split) or []):
                where = f"{index_rel} {split}[{position}]"
                yield self.entry_sample(entry, split, prefix, normal_class, index_file.stem, where)

    def entry_sample(
        self, entry: Any, split: str, prefix: str, normal_class: str, category: str, where: str
    ) -> SampleOrQuarantine:
        if not isinstance(entry, dict) or not entry.get("image_path"):
            return self.quarantine("bad_index_row", f"{where} has no image_path", path=None)
        category = str(entry.get("category") or category)
        anomaly_class = str(entry.get("anomaly_class") or normal_class)
        image_rel_index, mask_rel_index = str(entry["image_path"]), entry.get("mask_path")
        is_normal = mask_rel_index is None or anomaly_class == normal_class
        base = PurePosixPath(self.image_dir, prefix) if prefix else PurePosixPath(self.image_dir)
        named = image_rel_index
        try:
            image = self.resolve_indexed(str(base / image_rel_index))
            named = str(mask_rel_index)
            mask = None if is_normal else self.resolve_indexed(str(base / named))
        except PathEscapeError as error:
            return self.escape_entry(error, where, named)
        image_rel = self.rel(image)
        if not image.is_file():
            return self.quarantine(
                "image_missing", f"{where} names {image_rel}, which does not exist", image_rel
            )
        extra = {"anomaly_class": anomaly_class}
        if camera := CAMERA.search(image.name):
            extra["camera"] = camera.group(1)
        physical = PHYSICAL_SAMPLE.search(image_rel_index)
        group = f"{category}/{physical.group(1)}" if physical else None
        if is_normal:
            return self.make_sample(
                category=category, split=split, label="normal", images=[image_rel],
                group=group, extra=extra,
            )  # fmt: skip
        assert mask is not None
        if not mask.is_file():
            return self.quarantine(
                "mask_missing",
                f"{where}: anomalous image {image_rel} has no mask "
                f"({self.rel(mask)} does not exist)",
                image_rel, self.sample_id(image_rel),
            )  # fmt: skip
        defect = DEFECT_CODES.get(anomaly_class, anomaly_class)
        return self.make_sample(
            category=category, split=split, label="anomaly", images=[image_rel],
            masks=[MaskRef(path=self.rel(mask), defect_type=defect)], defect_types=[defect],
            group=group, extra=extra,
        )  # fmt: skip
