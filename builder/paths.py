"""Resolve paths named by a release's index files without ever leaving the release root."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from adinstruct.builder.errors import PathEscapeError


def resolve_inside(root: Path, relative: str) -> Path:
    """Return root/relative, refusing absolute paths, `..` escapes and links that leave root.

    `root` must already be resolved (absolute, no links), which every builder does once.
    """
    if not relative or "\x00" in relative:
        raise PathEscapeError(f"empty or invalid path {relative!r}")
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(relative).drive:
        raise PathEscapeError(f"absolute path {relative!r} is not inside the source root")
    candidate = root.joinpath(*posix.parts)
    # resolve() follows symlinks, so a link inside the tree that points outside is caught too.
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise PathEscapeError(f"path {relative!r} leads outside the source root {root}")
    return resolved


def relative_posix(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()
