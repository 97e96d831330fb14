"""Typed errors; the command line turns each into one clear line and an exit status."""

from __future__ import annotations


class AdinstructError(Exception):
    """A structural problem that stops the run: the message names the file and the expectation."""

    exit_code = 2


class ConfigError(AdinstructError):
    """A bad command-line option or configuration value."""


class LayoutError(AdinstructError):
    """A source root that is missing or is not in any layout its builder accepts."""


class PathEscapeError(ValueError):
    """A path from a CSV or JSON index that would leave its source root. Per-sample, not fatal."""
