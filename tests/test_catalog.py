"""The source catalog: cards validate, licences and citations are well formed, ordering holds."""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest

from adinstruct.data_cards.catalog import (
    LICENSE_RESTRICTIVENESS,
    FormatCitation,
    SourceCard,
    format_citations,
    load_catalog,
    most_restrictive_license,
    source_card,
    strictest_license,
)

EXPECTED_SOURCES = {
    "mvtec_ad",
    "visa",
    "mvtec_loco",
    "btad",
    "mpdd",
    "real_iad",
    "folder",
    "demo",
    "demo_holdout",
    "bmad_brain",
    "bmad_liver",
    "bmad_retina_resc",
    "bmad_retina_oct2017",
    "bmad_chest",
    "bmad_histopathology",
    "mvtec_3d_ad",
    "real3d_ad",
}
EXPECTED_FORMATS = {
    "anomaly_ov",
    "llava_onevision",
    "mmad",
    "winclip",
    "alfa",
    "anomalygpt",
    "myriad",
}
# Licences a release may carry here; anything else must be argued for and added deliberately.
ALLOWED_LICENSES = {
    "CC-BY-NC-SA-4.0",
    "CC-BY-NC-4.0",
    "CC-BY-SA-4.0",
    "CC-BY-4.0",
    "CC0-1.0",
    "other",
    "unknown",
}


def parse_bibtex_entry(text: str) -> tuple[str, str, dict[str, str]]:
    """(entry type, key, fields) of exactly one BibTeX entry; AssertionError when it is not one.

    Small on purpose: enough to catch unbalanced braces, a second entry, or a missing field,
    without adding a BibTeX library to the test dependencies.
    """
    text = text.strip()
    head = re.match(r"@(\w+)\s*\{\s*([^,\s{}]+)\s*,", text)
    assert head, f"not a BibTeX entry: {text[:60]!r}"
    depth = 0
    for position, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            assert depth >= 0, f"unbalanced '}}' at {position} in {head.group(2)}"
            if depth == 0:
                assert text[position + 1 :].strip() == "", f"text after {head.group(2)}'s entry"
    assert depth == 0, f"unbalanced '{{' in {head.group(2)}"

    fields: dict[str, str] = {}
    body = text[head.end() : -1]
    position = 0
    while position < len(body):
        field = re.compile(r"\s*(\w+)\s*=\s*").match(body, position)
        if not field:
            assert body[position:].strip(" \n,") == "", (
                f"junk in {head.group(2)}: {body[position:]!r}"
            )
            break
        position = field.end()
        assert body[position] == "{", f"{head.group(2)}.{field.group(1)} is not brace-delimited"
        depth, start = 0, position
        while True:
            depth += {"{": 1, "}": -1}.get(body[position], 0)
            position += 1
            if depth == 0:
                break
        name = field.group(1).lower()
        assert name not in fields, f"{head.group(2)} repeats field {name}"
        fields[name] = body[start + 1 : position - 1]
        position = re.compile(r"\s*,?").match(body, position).end()
    return head.group(1).lower(), head.group(2), fields


def all_citations() -> list[tuple[str, str]]:
    sources = [(name, card.citation) for name, card in load_catalog().items() if card.citation]
    formats = [(name, entry.citation) for name, entry in format_citations().items()]
    return sources + formats


def test_catalog_lists_every_release_and_format() -> None:
    assert set(load_catalog()) == EXPECTED_SOURCES
    assert set(format_citations()) == EXPECTED_FORMATS


def test_every_entry_validates_from_the_packaged_json() -> None:
    raw = json.loads(
        resources.files("adinstruct.data_cards").joinpath("sources.json").read_text("utf-8")
    )
    assert set(raw) == {"sources", "formats"}
    for name, entry in raw["sources"].items():
        card = SourceCard.model_validate({"name": name, **entry})
        assert card.title and card.name == name
    for name, entry in raw["formats"].items():
        assert FormatCitation.model_validate({"name": name, **entry}).title


def test_licences_are_from_the_allowed_set_and_ranked() -> None:
    for card in load_catalog().values():
        assert card.license in ALLOWED_LICENSES, card.name
        assert card.license in LICENSE_RESTRICTIVENESS, card.name


def test_licence_urls_and_notes_where_terms_need_them() -> None:
    for card in load_catalog().values():
        if card.license.startswith("CC"):
            assert card.license_url and card.license_url.startswith("https://creativecommons.org/")
        if card.license in {"other", "unknown"}:
            assert card.license_note, f"{card.name} has bespoke or unknown terms but no note"


def test_noncommercial_and_unknown_licences_forbid_commercial_use() -> None:
    for card in load_catalog().values():
        if "-NC" in card.license or card.license in {"unknown", "other"}:
            assert card.commercial_use is False, card.name


def test_a_card_claiming_commercial_use_under_nc_is_rejected() -> None:
    entry = source_card("mvtec_ad").model_dump() | {"commercial_use": True}
    with pytest.raises(ValueError, match="commercial_use"):
        SourceCard.model_validate(entry)


def test_a_card_with_an_unranked_licence_is_rejected() -> None:
    entry = source_card("visa").model_dump() | {"license": "CC-BY-4.0-ish"}
    with pytest.raises(ValueError, match="not one of"):
        SourceCard.model_validate(entry)


@pytest.mark.parametrize(("name", "citation"), all_citations(), ids=lambda value: value[:24])
def test_every_citation_is_one_bibtex_entry_with_title_author_year(
    name: str, citation: str
) -> None:
    entry_type, key, fields = parse_bibtex_entry(citation)
    assert entry_type in {"inproceedings", "article", "misc"}, name
    assert key, name
    for required in ("title", "author", "year"):
        assert fields.get(required, "").strip(), f"{name} lacks {required}"
    assert re.fullmatch(r"(19|20)\d\d", fields["year"]), f"{name} year {fields['year']!r}"


def test_citation_keys_are_unique_across_papers() -> None:
    by_key: dict[str, str] = {}
    for _, citation in all_citations():
        _, key, fields = parse_bibtex_entry(citation)
        # The BMAD subsets share one paper, hence one entry; a key may repeat only for that.
        assert by_key.setdefault(key, fields["title"]) == fields["title"], key


def test_bmad_subsets_explain_their_inherited_terms() -> None:
    for name, card in load_catalog().items():
        if name.startswith("bmad_"):
            assert "no licence file" in card.license_note
            assert card.citation_key == "bao2024bmad"
            assert card.commercial_use is False


def test_gating_and_user_supplied_terms() -> None:
    assert source_card("real_iad").gated is True
    folder = source_card("folder")
    assert folder.license == "unknown"
    assert folder.citation is None and folder.citation_key is None
    assert "state" in folder.license_note.lower()


def test_citation_key_is_read_from_the_entry() -> None:
    assert source_card("mvtec_ad").citation_key == "bergmann2019mvtec"
    assert format_citations()["anomaly_ov"].citation_key == "xu2025towards"


def test_most_restrictive_licence_follows_the_documented_order() -> None:
    assert source_card("mvtec_ad").license == "CC-BY-NC-SA-4.0"
    assert source_card("real3d_ad").license == "CC-BY-4.0"
    assert most_restrictive_license(["real3d_ad", "mvtec_ad"]) == "CC-BY-NC-SA-4.0"
    assert most_restrictive_license(["mvtec_ad", "real3d_ad"]) == "CC-BY-NC-SA-4.0"
    assert most_restrictive_license(["mvtec_ad", "folder", "real3d_ad"]) == "unknown"
    assert most_restrictive_license(["visa"]) == "CC-BY-4.0"
    assert most_restrictive_license(iter(["bmad_chest", "mvtec_ad"])) == "other"


def test_strictest_licence_combines_share_alike_with_noncommercial() -> None:
    assert strictest_license(["CC-BY-SA-4.0", "CC-BY-NC-4.0"]) == "CC-BY-NC-SA-4.0"
    assert strictest_license(["CC-BY-4.0", "CC-BY-SA-4.0"]) == "CC-BY-SA-4.0"
    assert strictest_license(["CC-BY-NC-SA-4.0", "CC-BY-NC-ND-4.0"]) == "CC-BY-NC-ND-4.0"
    assert strictest_license(["CC0-1.0", "CC-BY-4.0"]) == "CC-BY-4.0"
    assert strictest_license(["MIT", "Apache-2.0"]) == strictest_license(["Apache-2.0", "MIT"])


def test_strictest_licence_refuses_nothing_and_unranked_ids() -> None:
    with pytest.raises(ValueError, match="no licences"):
        strictest_license([])
    with pytest.raises(ValueError, match=r"GPL-3\.0"):
        strictest_license(["CC-BY-4.0", "GPL-3.0"])


def test_unknown_source_raises_keyerror_naming_the_known_ones() -> None:
    with pytest.raises(KeyError) as raised:
        source_card("nope")
    message = str(raised.value)
    assert "nope" in message
    for name in ("mvtec_ad", "visa", "real3d_ad", "folder"):
        assert name in message
    with pytest.raises(KeyError, match="nope"):
        most_restrictive_license(["mvtec_ad", "nope"])


def test_catalog_is_cached_but_callers_get_their_own_dict() -> None:
    first, second = load_catalog(), load_catalog()
    assert first is not second
    assert first["mvtec_ad"] is second["mvtec_ad"]
    first.pop("mvtec_ad")
    assert "mvtec_ad" in load_catalog()


def test_cards_are_immutable() -> None:
    card = source_card("visa")
    with pytest.raises(ValueError, match="frozen"):
        card.license = "unknown"
