"""Source adapters, one per release, looked up by name: `get_builder("mvtec")`."""

from __future__ import annotations

from adinstruct.builder.errors import ConfigError
from adinstruct.builder.sources.base import SourceBuilder
from adinstruct.builder.sources.bmad import BMAD_BUILDERS
from adinstruct.builder.sources.folder import Folder
from adinstruct.builder.sources.mvtec_3d import MVTec3DAD
from adinstruct.builder.sources.mvtec_ad import (
    BTAD,
    MPDD,
    MVTecAD,
    SyntheticDemo,
    SyntheticDemoHoldout,
)
from adinstruct.builder.sources.mvtec_loco import MVTecLOCO
from adinstruct.builder.sources.real3d import Real3DAD
from adinstruct.builder.sources.real_iad import RealIAD
from adinstruct.builder.sources.visa import VisA

_ALL: tuple[type[SourceBuilder], ...] = (
    MVTecAD, VisA, MVTecLOCO, BTAD, MPDD, RealIAD, *BMAD_BUILDERS, MVTec3DAD, Real3DAD, Folder,
    SyntheticDemo, SyntheticDemoHoldout,
)  # fmt: skip
BUILDERS: dict[str, type[SourceBuilder]] = {builder.name: builder for builder in _ALL}


def list_builders() -> list[type[SourceBuilder]]:
    return list(BUILDERS.values())


def get_builder(name: str) -> type[SourceBuilder]:
    wanted = name.strip().lower().replace("-", "_")
    for builder in BUILDERS.values():
        if wanted == builder.name or wanted in {a.replace("-", "_") for a in builder.aliases}:
            return builder
    known = ", ".join(sorted(BUILDERS))
    raise ConfigError(f"unknown source {name!r}; known sources: {known}")


__all__ = ["BUILDERS", "SourceBuilder", "get_builder", "list_builders"]
