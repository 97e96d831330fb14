"""The source catalog: licence, homepage and citation of every release adinstruct reads."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "LICENSE_RESTRICTIVENESS",
    "FormatCitation",
    "SourceCard",
    "format_citations",
    "load_catalog",
    "most_restrictive_license",
    "source_card",
    "strictest_license",
]

# Licence ids, least restrictive first; a card built from several sources takes the last one
# present. "Restrictive" is measured against what adinstruct does with a release: it publishes a
# derived dataset (descriptions, instruction records, copied images). So no-derivatives terms rank
# above share-alike ones, since they forbid sharing the derived dataset at all, and bespoke terms
# ("other": research-only challenge rules and the like) rank above every Creative Commons licence,
# because nobody can combine them mechanically; a human must read them. "unknown" ranks highest:
# a release whose terms nobody has stated cannot be republished under any stated licence.
_LICENSE_ORDER: tuple[tuple[str, ...], ...] = (
    ("CC0-1.0", "PDDL-1.0"),  # public-domain dedications
    ("MIT", "Apache-2.0", "CDLA-Permissive-2.0"),  # permissive, attribution notices only
    ("CC-BY-4.0",),
    ("CC-BY-SA-4.0",),
    ("CC-BY-NC-4.0",),
    ("CC-BY-NC-SA-4.0",),
    ("CC-BY-ND-4.0",),
    ("CC-BY-NC-ND-4.0",),
    ("other",),
    ("unknown",),
)

LICENSE_RESTRICTIVENESS: dict[str, int] = {
    license_id: rank for rank, tier in enumerate(_LICENSE_ORDER) for license_id in tier
}
"""Rank of every licence id the catalog accepts; higher is more restrictive."""

_BIBTEX_KEY = re.compile(r"^\s*@\w+\s*\{\s*([^,\s]+)\s*,")


def _is_noncommercial(license_id: str) -> bool:
    return "-NC" in license_id


class SourceCard(BaseModel):
    """What a dataset card and a manifest say about one release."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Builder name, the key in sources.json.")
    title: str
    license: str = Field(description="SPDX id, or 'other' (bespoke terms) or 'unknown'.")
    license_url: str | None = None
    license_note: str | None = None
    homepage: str | None = None
    commercial_use: bool = Field(description="False for NC licences and wherever it is unsure.")
    gated: bool = Field(description="Access has to be requested from the authors.")
    citation: str | None = Field(
        default=None, description="BibTeX entry of the paper that introduced the release."
    )

    @model_validator(mode="after")
    def _terms_agree(self) -> SourceCard:
        if self.license not in LICENSE_RESTRICTIVENESS:
            raise ValueError(
                f"source {self.name!r}: licence {self.license!r} is not one of "
                f"{sorted(LICENSE_RESTRICTIVENESS)}"
            )
        # A card claiming commercial use under an NC licence would mislead every user who trusts it.
        if self.commercial_use and (_is_noncommercial(self.license) or self.license == "unknown"):
            raise ValueError(
                f"source {self.name!r}: commercial_use is true but the licence is {self.license}"
            )
        return self

    @property
    def citation_key(self) -> str | None:
        """The BibTeX key of `citation`, or None when the release has no paper."""
        if self.citation is None:
            return None
        match = _BIBTEX_KEY.match(self.citation)
        return match.group(1) if match else None


class FormatCitation(BaseModel):
    """A paper whose file format or convention adinstruct writes, and how to cite it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Key in the 'formats' section of sources.json.")
    title: str
    used_for: str = Field(description="What adinstruct takes from the paper.")
    url: str | None = None
    citation: str
    note: str | None = None

    @property
    def citation_key(self) -> str | None:
        match = _BIBTEX_KEY.match(self.citation)
        return match.group(1) if match else None


@cache
def _raw_catalog() -> dict:
    # importlib.resources rather than a path next to __file__, so the catalog is found inside a
    # wheel or a zipped install as well as in the source tree.
    text = resources.files("adinstruct.data_cards").joinpath("sources.json").read_text("utf-8")
    return json.loads(text)


@cache
def _sources() -> dict[str, SourceCard]:
    return {
        name: SourceCard(name=name, **entry) for name, entry in _raw_catalog()["sources"].items()
    }


@cache
def _formats() -> dict[str, FormatCitation]:
    return {
        name: FormatCitation(name=name, **entry)
        for name, entry in _raw_catalog()["formats"].items()
    }


def load_catalog() -> dict[str, SourceCard]:
    """Every release's card, keyed by builder name (parsed once, then cached)."""
    # A fresh dict each call: callers may add to it without changing what others see.
    return dict(_sources())


def source_card(name: str) -> SourceCard:
    """The card of one release; KeyError naming the known releases when `name` is not one."""
    cards = _sources()
    try:
        return cards[name]
    except KeyError:
        known = ", ".join(sorted(cards))
        raise KeyError(f"no source card for {name!r}; known sources: {known}") from None


def format_citations() -> dict[str, FormatCitation]:
    """The papers whose formats adinstruct writes, keyed by a short name (anomaly_ov, mmad, ...)."""
    return dict(_formats())


def strictest_license(license_ids: Iterable[str]) -> str:
    """The most restrictive of some licence ids, by `LICENSE_RESTRICTIVENESS`.

    Share-alike and non-commercial terms add up rather than outrank each other, so CC-BY-SA-4.0
    together with CC-BY-NC-4.0 gives CC-BY-NC-SA-4.0. A card still has to list each source's own
    licence: the combined id says what the whole may be used for, not how each part was licensed.
    """
    ids = set(license_ids)
    if not ids:
        raise ValueError("no licences given")
    unranked = sorted(ids - LICENSE_RESTRICTIVENESS.keys())
    if unranked:
        raise ValueError(f"licence ids not in the catalog's ordering: {', '.join(unranked)}")
    # Ties (MIT and Apache-2.0) go to the alphabetically last id, so the answer never depends on
    # the order in which sources were given.
    strictest = max(ids, key=lambda license_id: (LICENSE_RESTRICTIVENESS[license_id], license_id))
    if strictest in {"CC-BY-SA-4.0", "CC-BY-NC-4.0"} and {"CC-BY-SA-4.0", "CC-BY-NC-4.0"} <= ids:
        return "CC-BY-NC-SA-4.0"
    return strictest


def most_restrictive_license(names: Iterable[str]) -> str:
    """The licence a dataset built from these sources must carry: the most restrictive one.

    Ordering, most restrictive first: unknown > other (bespoke terms) > CC-BY-NC-ND >
    CC-BY-ND > CC-BY-NC-SA > CC-BY-NC > CC-BY-SA > CC-BY > permissive (MIT, Apache-2.0,
    CDLA-Permissive-2.0) > public domain (CC0, PDDL). See `strictest_license` for how share-alike
    and non-commercial terms combine.
    """
    return strictest_license(source_card(name).license for name in names)
