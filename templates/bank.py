"""Question and answer banks: Jinja2 files of paraphrases, found by name, shipped or the user's own.

A bank is one file, `questions/<name>.j2` or `answers/<name>.j2`, holding several paraphrases
separated by lines that read `{# --- #}` (a Jinja comment, so the file stays valid Jinja).
Each paraphrase is a template of its own; rendering collapses whitespace, so a paraphrase may
span lines. Undefined variables are errors (StrictUndefined), and so is printing a fact that is
None: a template that states a fact the sample does not have fails loudly instead of writing
"None" into a training record.

Question banks are rendered with `category` (human-readable), `modality` and `image_word`
("image" or "images"); answer banks with the facts that compose builds for the sample.

`load_bank(name, folder=...)` reads `<folder>/<name>.j2` when that file exists and the shipped
bank otherwise, so a user folder may override only some banks.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal

import jinja2

from adinstruct.builder.errors import ConfigError

Kind = Literal["questions", "answers"]
KINDS: tuple[Kind, ...] = ("questions", "answers")
SUFFIX = ".j2"
SEPARATOR = re.compile(r"^[ \t]*\{#\s*---\s*#\}[ \t]*$", re.MULTILINE)
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
#: Only compose places image tokens; a bank holding one would break the one-per-image rule.
IMAGE_TOKEN = "<image>"


class BankError(ConfigError):
    """A bank that is missing, or a paraphrase that does not parse or render."""


def _refuse_none(value: Any) -> Any:
    if value is None:
        raise BankError("a template printed a fact that is None (not known for this sample)")
    return value


# Plain text, not HTML: no autoescaping, or "'Yes'" would turn into "&#39;Yes&#39;".
ENVIRONMENT = jinja2.Environment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    finalize=_refuse_none,
    keep_trailing_newline=False,
)


@dataclass(frozen=True)
class QuestionBank:
    """The paraphrases of one bank file; `len(bank)` of them, rendered by index."""

    name: str
    kind: Kind
    #: Where the text came from: a file path, or "adinstruct.templates/<kind>/<name>.j2".
    origin: str
    text: str
    paraphrases: tuple[str, ...]
    _templates: tuple[jinja2.Template, ...] = field(repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.paraphrases)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, index: int, **context: Any) -> str:
        """Paraphrase `index` rendered with `context`, whitespace collapsed; never empty."""
        if not 0 <= index < len(self):
            raise IndexError(f"{self.origin} has {len(self)} paraphrases, not index {index}")
        try:
            rendered = self._templates[index].render(**context)
        except jinja2.UndefinedError as error:
            raise BankError(f"{self.origin}, paraphrase {index + 1}: {error}") from error
        except BankError as error:
            raise BankError(f"{self.origin}, paraphrase {index + 1}: {error}") from error
        text = " ".join(rendered.split())
        if not text:
            raise BankError(f"{self.origin}, paraphrase {index + 1} rendered empty")
        if IMAGE_TOKEN in text:
            raise BankError(f"{self.origin}, paraphrase {index + 1} holds {IMAGE_TOKEN}")
        return text


def parse_bank(text: str, *, name: str, kind: Kind, origin: str) -> QuestionBank:
    """Split a bank file into paraphrases and compile each; chunks with only comments drop out."""
    chunks = [chunk.strip() for chunk in SEPARATOR.split(text)]
    paraphrases = tuple(chunk for chunk in chunks if COMMENT.sub("", chunk).strip())
    if not paraphrases:
        raise BankError(f"{origin} holds no paraphrase (separate them with lines '{{# --- #}}')")
    templates = []
    for number, paraphrase in enumerate(paraphrases, start=1):
        try:
            templates.append(ENVIRONMENT.from_string(paraphrase))
        except jinja2.TemplateSyntaxError as error:
            raise BankError(f"{origin}, paraphrase {number}: {error.message}") from error
    return QuestionBank(
        name=name,
        kind=kind,
        origin=origin,
        text=text,
        paraphrases=paraphrases,
        _templates=tuple(templates),
    )


def list_banks(kind: Kind = "questions", folder: Path | None = None) -> list[str]:
    """Names of the shipped banks of `kind`, plus those in `folder`, sorted."""
    names = {
        entry.name[: -len(SUFFIX)]
        for entry in _shipped(kind).iterdir()
        if entry.name.endswith(SUFFIX) and entry.is_file()
    }
    if folder is not None and Path(folder).is_dir():
        names |= {path.stem for path in Path(folder).glob(f"*{SUFFIX}") if path.is_file()}
    return sorted(name for name in names if NAME.match(name))


def load_bank(name: str, folder: Path | None = None, *, kind: Kind = "questions") -> QuestionBank:
    """The bank `name`: `<folder>/<name>.j2` if it exists, else the shipped one."""
    text, origin = _read(name, folder, kind)
    return parse_bank(text, name=name, kind=kind, origin=origin)


def bank_hash(name: str, folder: Path | None = None, *, kind: Kind = "questions") -> str:
    """sha256 of the bank file's text, for provenance in the manifest."""
    text, _ = _read(name, folder, kind)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read(name: str, folder: Path | None, kind: Kind) -> tuple[str, str]:
    if kind not in KINDS:
        raise BankError(f"bank kind must be one of {KINDS}, not {kind!r}")
    if not NAME.match(name):
        # Names become file names: no separators, no "..".
        raise BankError(f"bank name {name!r} must be lower-case letters, digits and underscores")
    if folder is not None:
        path = Path(folder) / f"{name}{SUFFIX}"
        if path.is_file():
            return path.read_text(encoding="utf-8"), str(path)
    shipped = _shipped(kind) / f"{name}{SUFFIX}"
    if not shipped.is_file():
        where = f" nor in {folder}" if folder is not None else ""
        raise BankError(
            f"no {kind} bank {name!r} in adinstruct.templates/{kind}{where}; "
            f"available: {', '.join(list_banks(kind, folder))}"
        )
    return shipped.read_text(encoding="utf-8"), f"adinstruct.templates/{kind}/{name}{SUFFIX}"


def _shipped(kind: Kind) -> Traversable:
    # importlib.resources, not __file__: the banks must be found inside a wheel or a zip too.
    return resources.files("adinstruct.templates") / kind
