"""The base of every source adapter: recognise the layout, then list samples without pixels.

A builder is a thin class over a pure listing of a folder. Subclasses fill in
`detect_layout()` and `iter_samples()`; the base resolves the root, keeps the licence facts,
and makes the quarantine entries and sample ids the same for every release.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import ClassVar

from adinstruct.builder.errors import LayoutError, PathEscapeError
from adinstruct.builder.paths import resolve_inside
from adinstruct.data_cards.catalog import SourceCard, source_card
from adinstruct.schemas import MaskRef, QuarantineEntry, Sample
from adinstruct.schemas.records import Label, Modality, Split

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

SampleOrQuarantine = Sample | QuarantineEntry


def is_image(path: Path) -> bool:
    # Releases and their copies mix cases (.JPG in VisA, .PNG in some MVTec copies).
    return (
        path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name so that builds are deterministic."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_image(p)), key=lambda p: p.name)


def subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)  # fmt: skip


class SourceBuilder(ABC):
    """One release on disk. Construct with its root; construction checks the layout."""

    #: The builder's name is also its key in the source catalog (data_cards/sources.json),
    #: which holds the licence, homepage and citation: one place for every release's terms.
    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    #: Layout id -> what the builder expects there; shown by `build-dataset sources` and in
    #: the error when a root matches none of them.
    layouts: ClassVar[dict[str, str]]

    def __init__(self, root: Path | str) -> None:
        given = Path(root).expanduser()
        if not given.is_dir():
            raise LayoutError(f"{self.name}: source root {given} does not exist or is not a folder")
        self.root = given.resolve()
        self.layout = self.detect_layout()

    @abstractmethod
    def detect_layout(self) -> str:
        """Return the id of the layout found at self.root, or raise `self.layout_error()`."""

    @abstractmethod
    def iter_samples(self) -> Iterator[SampleOrQuarantine]:
        """Yield samples (and quarantine entries for unpairable files) lazily, in a stable order."""

    @classmethod
    def card(cls) -> SourceCard:
        return source_card(cls.name)

    @property
    def title(self) -> str:
        return self.card().title

    # -- helpers shared by every release -------------------------------------------------

    def layout_error(self, found: str = "") -> LayoutError:
        expected = "; or ".join(self.layouts.values())
        detail = f" ({found})" if found else ""
        return LayoutError(
            f"{self.name}: {self.root} is not a {self.title} root{detail}. Expected {expected}."
        )

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def sample_id(self, image_relative: str) -> str:
        return f"{self.name}/{PurePosixPath(image_relative).with_suffix('').as_posix()}"

    def make_sample(
        self,
        *,
        category: str,
        split: Split,
        label: Label,
        images: Iterable[str],
        masks: Iterable[MaskRef] = (),
        defect_types: Iterable[str] = (),
        modality: Modality = "rgb",
        group: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> Sample:
        image_paths = list(images)
        return Sample(
            id=self.sample_id(image_paths[0]),
            source=self.name,
            category=category,
            split=split,
            label=label,
            defect_types=[d for d in defect_types if d],
            image_paths=image_paths,
            masks=list(masks),
            modality=modality,
            view_count=len(image_paths),
            group=group,
            extra=extra or {},
        )

    def quarantine(
        self, code: str, reason: str, path: str | None = None, sample_id: str | None = None
    ) -> QuarantineEntry:
        return QuarantineEntry(
            stage="source", code=code, reason=reason, source=self.name, path=path,
            sample_id=sample_id,
        )  # fmt: skip

    def resolve_indexed(self, relative: str) -> Path:
        """A path named by an index file (CSV, JSON), checked to stay inside the root.

        Raises PathEscapeError; callers turn it into a quarantine entry and never open the file.
        """
        return resolve_inside(self.root, relative)

    def read_index(self, path: Path) -> str:
        """The text of an index or config file of the release, refusing one linked from outside.

        Raises PathEscapeError (for per-category files, which the caller quarantines) or
        OSError; the file's name is in both messages.
        """
        if not path.resolve().is_relative_to(self.root):
            raise PathEscapeError(f"{self.rel(path)} is a link to a file outside the source root")
        return path.read_text(encoding="utf-8-sig")

    def escape_entry(self, error: PathEscapeError, index_file: str, relative: str):
        return self.quarantine(
            "path_outside_root",
            f"{index_file} names {relative!r}, which is outside the source root: {error}",
            path=relative,
        )
