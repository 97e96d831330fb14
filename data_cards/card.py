"""The dataset card (README.md) of a Hugging Face export, from the manifest and the catalog.

The YAML header is built as data and written with `yaml.safe_dump` (never by templating text),
so a title with a colon or a licence id like ``n<1K`` cannot break it; `card.md.j2` renders the
body. Everything the card states comes from the manifest (what was built, how, and what the
validation found) or the source catalog (titles, licences, citations); absolute paths and the
command line stay out of it, as they describe the machine that built it, not the dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict

from adinstruct.data_cards.catalog import (
    LICENSE_RESTRICTIVENESS,
    FormatCitation,
    SourceCard,
    format_citations,
    load_catalog,
    strictest_license,
)
from adinstruct.schemas import Manifest, SourceInfo

__all__ = ["ExportedConfig", "ExportedSplit", "card_license", "render_card", "size_category"]

#: The Hub's licence ids (huggingface.co/docs/hub/repositories-licenses) for the catalog's.
HUB_LICENSES: dict[str, str] = {
    "CC0-1.0": "cc0-1.0",
    "PDDL-1.0": "pddl",
    "MIT": "mit",
    "Apache-2.0": "apache-2.0",
    "CDLA-Permissive-2.0": "cdla-permissive-2.0",
    "CC-BY-4.0": "cc-by-4.0",
    "CC-BY-SA-4.0": "cc-by-sa-4.0",
    "CC-BY-NC-4.0": "cc-by-nc-4.0",
    "CC-BY-NC-SA-4.0": "cc-by-nc-sa-4.0",
    "CC-BY-ND-4.0": "cc-by-nd-4.0",
    "CC-BY-NC-ND-4.0": "cc-by-nc-nd-4.0",
    "other": "other",
    "unknown": "unknown",
}

#: The Hub's size buckets: (upper bound, exclusive; label).
SIZE_BUCKETS: tuple[tuple[float, str], ...] = (
    (1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
    (1e7, "1M<n<10M"), (1e8, "10M<n<100M"), (1e9, "100M<n<1B"), (1e10, "1B<n<10B"),
    (1e11, "10B<n<100B"), (1e12, "100B<n<1T"), (float("inf"), "n>1T"),
)  # fmt: skip

#: What a row of each config is, and the Hub task it serves.
CONFIGS: dict[str, tuple[str, str]] = {
    "instruct": (
        "a LLaVA-OneVision training conversation: `id`, `image`, `conversations` "
        "(`from`/`value` turns), `metadata`, and the `mask` it was grounded on",
        "image-text-to-text",
    ),
    "detection": (
        "an Anomaly-OV detection item (`test_data.json`): `image`, `anomaly`",
        "visual-question-answering",
    ),
    "reasoning": (
        "a VisA-D&R style multi-turn item (`visa_dr.json`): `image`, `questions`, reference "
        "`answers`",
        "visual-question-answering",
    ),
    "mmad": (
        "an MMAD multiple-choice item (`mmad.json`): `key`, `image`, `conversation` (`Options` "
        "as JSON text), `mask`, few-shot template paths",
        "visual-question-answering",
    ),
    "samples": (
        "a sample as released, with its annotation (mask RLE, boxes, grid cells) and "
        "description: `image`, `mask`, `annotation`, `description`",
        "image-classification",
    ),
}
#: The papers whose formats each config follows (keys of the catalog's `formats`).
FORMATS_OF: dict[str, tuple[str, ...]] = {
    "instruct": ("anomaly_ov", "llava_onevision"),
    "detection": ("anomaly_ov",),
    "reasoning": ("anomaly_ov",),
    "mmad": ("mmad",),
}
#: The builders that draw their images (adinstruct.builder.demo) rather than read a release.
SYNTHETIC_SOURCES = frozenset({"demo", "demo_holdout"})
#: The builders whose samples are point clouds, shown as rendered views.
THREE_D_SOURCES = frozenset({"mvtec_3d_ad", "real3d_ad"})
#: Every config states locations with the 3x3-grid words of these papers.
GRID_FORMATS = ("anomalygpt", "myriad")


class ExportedSplit(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    rows: int
    path: str  # glob relative to the card, e.g. data/instruct/train-*


class ExportedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    splits: list[ExportedSplit]

    @property
    def rows(self) -> int:
        return sum(split.rows for split in self.splits)


class CardLicense(BaseModel):
    spdx: str  # the catalog's id
    hub: str  # the Hub's id
    governing: list[str]  # the sources whose terms it follows


def card_license(manifest: Manifest) -> CardLicense:
    """The most restrictive licence of the sources: of what the manifest recorded at build time
    and what the catalog says now, whichever is stricter (a catalog corrected since the build
    must not be overruled by the older reading)."""
    catalog = load_catalog()
    by_source: dict[str, set[str]] = {}
    for source in manifest.sources:
        known = catalog.get(source.name)
        ids = {source.license} | ({known.license} if known else set())
        # An id the catalog cannot rank (a licence it does not list) is bespoke terms to it.
        by_source[source.name] = {i if i in LICENSE_RESTRICTIVENESS else "other" for i in ids}
    if not by_source:
        return CardLicense(spdx="unknown", hub="unknown", governing=[])
    spdx = strictest_license(set().union(*by_source.values()))
    governing = [name for name, ids in by_source.items() if spdx in ids]
    if not governing:  # share-alike and non-commercial terms of different sources combined
        governing = [
            name for name, ids in by_source.items() if ids & {"CC-BY-SA-4.0", "CC-BY-NC-4.0"}
        ]
    return CardLicense(spdx=spdx, hub=HUB_LICENSES[spdx], governing=governing)


def size_category(rows: int) -> str:
    return next(label for bound, label in SIZE_BUCKETS if rows < bound)


def render_card(manifest: Manifest, configs: Sequence[ExportedConfig]) -> str:
    """README.md of an export: the Hub's YAML header, then what the dataset is and how it was
    made. `configs` in the order written; the first is the default."""
    if not configs:
        raise ValueError("a card needs at least one config")
    catalog = load_catalog()
    license_ = card_license(manifest)
    header = _header(manifest, configs, license_, catalog)
    context = {
        "header": yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000),
        "pretty_name": header["pretty_name"],
        "configs": [(config, *CONFIGS[config.name]) for config in configs],
        "sources": [(source, catalog.get(source.name)) for source in manifest.sources],
        "license": license_,
        "license_urls": _license_urls(manifest, catalog),
        "build": _build_facts(manifest),
        "validation": manifest.validation,
        "quarantined": _quarantine_entries(manifest),
        "citations": _citations(manifest, configs, catalog),
        "synthetic": any(source.name in SYNTHETIC_SOURCES for source in manifest.sources),
        "three_d": {
            "sources": [s.name for s in manifest.sources if s.name in THREE_D_SOURCES],
            "views": (manifest.config.get("annotate") or {}).get("views", 4),
        },
    }
    return _template().render(**context)


def _header(
    manifest: Manifest, configs: Sequence[ExportedConfig], license_: CardLicense,
    catalog: dict[str, SourceCard],
) -> dict[str, Any]:  # fmt: skip
    titles = [_title(source, catalog) for source in manifest.sources]
    header: dict[str, Any] = {"license": license_.hub}
    if license_.hub == "other":
        # The Hub asks a bespoke licence for a name and a link; the body lists each source's.
        header["license_name"] = "source-terms"
        links = [catalog[name].license_url for name in license_.governing if name in catalog]
        link = next((link for link in links if link), None)
        if link is not None:
            header["license_link"] = link
    tasks = sorted({CONFIGS[config.name][1] for config in configs})
    header |= {
        "pretty_name": f"Anomaly instructions from {' + '.join(titles) or 'no source'}",
        "language": ["en"],
        "task_categories": tasks,
        "size_categories": [size_category(sum(config.rows for config in configs))],
        "source_datasets": [f"extended|{source.name}" for source in manifest.sources],
        "tags": ["anomaly-detection", "industrial-inspection", "visual-instruction-tuning"],
        "configs": [
            {
                "config_name": config.name,
                "data_files": [{"split": s.name, "path": s.path} for s in config.splits],
                **({"default": True} if index == 0 else {}),
            }
            for index, config in enumerate(configs)
        ],
    }
    return header


def _title(source: SourceInfo, catalog: dict[str, SourceCard]) -> str:
    known = catalog.get(source.name)
    return known.title if known else source.name


def _license_urls(manifest: Manifest, catalog: dict[str, SourceCard]) -> dict[str, str | None]:
    urls = {}
    for source in manifest.sources:
        known = catalog.get(source.name)
        urls[source.name] = source.license_url or (known.license_url if known else None)
    return urls


def _build_facts(manifest: Manifest) -> dict[str, Any]:
    config = manifest.config
    instruct = config.get("instruct") or {}
    compose = instruct.get("compose") or {}
    return {
        "version": manifest.toolkit_version,
        "seed": config.get("seed"),
        "limit": config.get("limit"),
        "grid_min_share": (config.get("annotate") or {}).get("grid_min_share"),
        "recipes": instruct.get("recipes") or [],
        "describer": instruct.get("describer"),
        "model": instruct.get("model"),
        "held_out": instruct.get("held_out") or [],
        "compose": _settings(compose.get("config") or {}),
        "banks": compose.get("banks") or {},
        "prompt_templates": instruct.get("prompt_templates") or {},
        "benchmark": _settings(instruct.get("benchmark") or {}),
        "llm": manifest.llm_usage,
    }


def _settings(settings: dict[str, Any]) -> str:
    """'records_per_sample 2; families detection 1.0, ...': the values that are set."""
    parts = []
    for key, value in sorted(settings.items()):
        if value in (None, "", {}, []):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{name} {setting}" for name, setting in value.items())
        parts.append(f"{key} {value}")
    return "; ".join(parts)


def _quarantine_entries(manifest: Manifest) -> int | None:
    for output in manifest.outputs:
        if output.path == "quarantine.jsonl":
            return output.records
    return None


def _citations(
    manifest: Manifest, configs: Sequence[ExportedConfig], catalog: dict[str, SourceCard]
) -> list[tuple[str, str | None, str]]:
    """(title, BibTeX or None, what it is cited for): each source, then each format used."""
    cited: list[tuple[str, str | None, str]] = []
    for source in manifest.sources:
        known = catalog.get(source.name)
        title = known.title if known else source.name
        cited.append((title, known.citation if known else None, "A release this is built from."))
    formats = format_citations()
    used = [name for config in configs for name in FORMATS_OF.get(config.name, ())]
    for name in dict.fromkeys([*used, *GRID_FORMATS]):
        paper: FormatCitation = formats[name]
        cited.append((paper.title, paper.citation, paper.used_for))
    return cited


def _cell(value: Any) -> str:
    """A Markdown table cell: pipes escaped, one line."""
    return str(value).replace("|", "\\|").replace("\n", " ")


@cache
def _template() -> jinja2.Template:
    text = resources.files("adinstruct.data_cards").joinpath("card.md.j2").read_text("utf-8")
    environment = jinja2.Environment(
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the render, not the card
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )
    environment.filters["cell"] = _cell
    return environment.from_string(text)
