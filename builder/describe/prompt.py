"""Render one annotated sample into the chat request the `openai` describer sends.

The wording lives in Jinja2 files (`describe_system.j2`, `describe_user.j2`, shipped in
`adinstruct.templates`; a user folder may override either). This module gathers the facts the
annotation states, encodes the images as data URLs, and pairs them with a strict response schema
made from the Description model. Files are read only through `resolve_inside`.

A 3D sample is shown as its records show it (MVTec 3D-AD: the rgb, the depth image, the K
views; Real3D-AD: the K views), then, for an anomaly, its highlight views: the same views with
the anomalous points painted, which exist for the describer only.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import jinja2
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from adinstruct.builder.annotate.hashing import sha256_hex
from adinstruct.builder.describe.knowledge import THREE_D_MODALITIES
from adinstruct.builder.describe.overlay import as_rgb_array, encode_png, render_outline
from adinstruct.builder.describe.requests import ChatRequest, ResponseSchema
from adinstruct.builder.describe.template import frame_phrase
from adinstruct.builder.errors import ConfigError, PathEscapeError
from adinstruct.builder.images import CLOUD_MODALITY, split_renders
from adinstruct.builder.paths import resolve_inside
from adinstruct.schemas import Description, Sample

if TYPE_CHECKING:
    from adinstruct.builder.annotate.renders import RenderFolders

SYSTEM_TEMPLATE = "describe_system.j2"
USER_TEMPLATE = "describe_user.j2"

#: PIL format -> (MIME type, modes a server decodes as they are); anything else is re-encoded.
PASSTHROUGH = {
    "PNG": ("image/png", frozenset({"1", "L", "LA", "P", "RGB", "RGBA"})),
    "JPEG": ("image/jpeg", frozenset({"L", "RGB"})),
    # Cameras write MPO (multi-picture JPEG); its first frame is a plain JPEG stream.
    "MPO": ("image/jpeg", frozenset({"L", "RGB"})),
    "WEBP": ("image/webp", frozenset({"RGB", "RGBA"})),
}

MODALITY_WORDS = {
    "rgb": "colour photograph",
    "grey": "greyscale photograph",
    # MVTec 3D-AD's image is the rgb photograph; its depth image and views come after it.
    "depth": "colour photograph with its depth image",
    "point_cloud": "rendering of a 3D point cloud",
    "mri": "MRI slice",
    "ct": "CT slice",
    "oct": "OCT scan",
    "xray": "X-ray image",
    "histopathology": "histopathology slide",
}

#: How the user prompt names the colour the highlight views paint anomalous points in
#: (render.HIGHLIGHT, a saturated red).
HIGHLIGHT_COLOUR = "red"

#: Regions listed one by one in the prompt; more are summarised as a count.
MAX_LISTED_REGIONS = 8

# What PIL raises for bad bytes (the annotate stage's decode module lists the same).
PIL_DATA_ERRORS = (OSError, EOFError, SyntaxError, ValueError, struct.error)


class PromptConfig(BaseModel):
    """Everything that shapes the request besides the sample; all of it enters the cache key."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    detail: Literal["low", "high", "auto"] = "high"
    outline_mask: bool = True
    reference_image: bool = True
    temperature: float | None = 0.2
    max_tokens: int | None = Field(default=800, ge=1)
    seed: int | None = None
    templates_folder: Path | None = Field(
        default=None,
        description="Folder whose describe_system.j2 / describe_user.j2 replace the shipped ones; "
        "a template missing there falls back to the shipped one.",
    )


class PromptInputError(Exception):
    """A sample's image cannot be put into a request; `code` is its quarantine code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def build_request(
    sample: Sample,
    root: Path,
    config: PromptConfig,
    reference: tuple[Sample, Path] | None,
    renders: RenderFolders | None = None,
) -> ChatRequest:
    """The chat request describing `sample`, whose files lie under `root`.

    `reference` is a normal sample of the same category and its root; it is attached only
    when `config.reference_image` is set. `renders` is where annotate drew 3D samples. Raises
    PathEscapeError for a path leaving its root, PromptInputError for an image that is
    unreadable or no longer matches its annotation, and ConfigError when the reference image
    has either fault.
    """
    if sample.annotation is None:
        raise ValueError(f"sample {sample.id} has no annotation; describe runs after annotate")
    shown = shown_files(sample, root, renders)
    # The annotation's facts (size, hashes) are those of the first image records show.
    (_, image_folder, image_name), *others = shown
    data, image = _read_image(image_folder, image_name, expected_sha256=sample.annotation.sha256)

    # Order matters for cost: the system prompt and a category's reference image are the same
    # for many requests, and servers discount a repeated prefix (OpenAI prompt caching).
    image_parts: list[dict[str, Any]] = []
    attachments: list[str] = []
    if reference is not None and config.reference_image:
        image_parts.append(_image_part(_reference_url(*reference, renders), config.detail))
        attachments.append("reference")
    image_parts.append(_image_part(_data_url(data, image), config.detail))
    attachments.append(shown[0][0])
    for role, folder, name in others:
        image_parts.append(_image_part(_data_url(*_read_image(folder, name, None)), config.detail))
        attachments.append(role)
    outline_colour = None
    mask_rle = sample.annotation.mask_rle
    # A mask measured on a view (Real3D-AD) is no outline of the first image: the highlight
    # views show those defects instead.
    if (
        config.outline_mask
        and sample.label == "anomaly"
        and sample.annotation.region_count > 0
        and sample.annotation.view is None
    ):
        assert mask_rle is not None  # regions are only ever measured from a mask
        try:
            outline = render_outline(image, mask_rle)
        except ValueError as error:
            raise PromptInputError("image_changed", f"{image_name}: {error}") from error
        image_parts.append(_image_part(_png_url(outline.png), config.detail))
        attachments.append("outline")
        outline_colour = outline.colour
    if config.outline_mask and sample.label == "anomaly" and renders is not None:
        for highlight in renders.highlight_files(sample):
            name = highlight.name
            url = _data_url(*_read_image(highlight.parent, name, None))
            image_parts.append(_image_part(url, config.detail))
            attachments.append("highlight")

    environment = _environment(config.templates_folder)
    context = {
        **prompt_facts(sample),
        "attachments": attachments,
        "outline_colour": outline_colour,
        "highlight_colour": HIGHLIGHT_COLOUR,
    }
    system_text = environment.get_template(SYSTEM_TEMPLATE).render(context).strip()
    user_text = environment.get_template(USER_TEMPLATE).render(context).strip()
    # The reference comes first (shared prefix); the text then names the images in order.
    content = (
        [image_parts[0], {"type": "text", "text": user_text}, *image_parts[1:]]
        if attachments[0] == "reference"
        else [{"type": "text", "text": user_text}, *image_parts]
    )
    return ChatRequest(
        request_id=sample.id,
        model=config.model,
        messages=[
            {"role": "system", "content": system_text},
            {"role": "user", "content": content},
        ],
        response_schema=description_schema(),
        temperature=config.temperature,
        max_tokens=config.max_tokens,
        seed=config.seed,
    )


def prompt_facts(sample: Sample) -> dict[str, Any]:
    """What the annotation states about `sample`, in the words the templates use."""
    annotation = sample.annotation
    if annotation is None:
        raise ValueError(f"sample {sample.id} has no annotation")
    anomaly = sample.label == "anomaly"
    regions = [
        {"location": region.location, "area_percent": percent(region.area_fraction)}
        for region in annotation.regions
    ]
    defects = [
        {
            "name": defect.defect_type,
            "location": join_words(defect.grid_cells),
            "region_count": defect.region_count,
            "area_percent": percent(defect.area_fraction),
        }
        for defect in annotation.defects
    ]
    three_d = sample.modality in THREE_D_MODALITIES
    return {
        "source": sample.source,
        "category": humanise(sample.category),
        "label": sample.label,
        "anomaly": anomaly,
        "image_kind": MODALITY_WORDS[sample.modality],
        # 3D parts: how many views there are, and which picture the grid facts are measured on.
        "three_d": three_d,
        "view_count": sample.view_count if three_d else 1,
        "has_photo": sample.modality != "point_cloud",
        "frame": frame_phrase(sample) if three_d else "the image",
        "width": annotation.width,
        "height": annotation.height,
        # A normal sample gets no defect facts at all, so the wording cannot leak any.
        "defect_types": list(sample.defect_types) if anomaly else [],
        "has_mask": anomaly and annotation.region_count > 0,
        "location": join_words(annotation.grid_cells) if anomaly else "",
        "grid_cells": list(annotation.grid_cells) if anomaly else [],
        "region_count": annotation.region_count if anomaly else 0,
        "regions": regions[:MAX_LISTED_REGIONS] if anomaly else [],
        "unlisted_regions": max(len(regions) - MAX_LISTED_REGIONS, 0) if anomaly else 0,
        "area_percent": percent(annotation.area_fraction),
        # Per-defect facts only help when the release tells several defects apart.
        "defects": defects if anomaly and len(defects) > 1 else [],
    }


@lru_cache(maxsize=1)
def description_schema() -> ResponseSchema:
    """The Description model as an OpenAI strict structured-output schema."""
    # The openai client's own converter: every property required, optional ones as
    # anyOf [type, null], additionalProperties false, defaults dropped.
    from openai.lib._pydantic import to_strict_json_schema

    return ResponseSchema(name="description", json_schema=to_strict_json_schema(Description))


def percent(fraction: float) -> str:
    value = fraction * 100
    if value == 0:
        return "0%"
    if value < 0.01:
        return "less than 0.01%"
    return f"{value:.2f}%" if value < 10 else f"{value:.1f}%"


def join_words(words: list[str]) -> str:
    """'top left', 'top left and center', 'top, center and bottom'."""
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def humanise(name: str) -> str:
    return name.replace("_", " ").replace("-", " ")


# -- images --------------------------------------------------------------------------------


def _read_image(
    root: Path, relative: str, expected_sha256: str | None
) -> tuple[bytes, Image.Image]:
    path = resolve_inside(root.resolve(), relative)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PromptInputError(
            "image_unreadable", f"cannot read {relative}: {error.strerror or error}"
        ) from error
    if expected_sha256 is not None and sha256_hex(data) != expected_sha256:
        # The facts were measured on other pixels; describing these would ground nothing.
        raise PromptInputError(
            "image_changed",
            f"{relative} changed since it was annotated (sha256 differs); annotate it again",
        )
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, *PIL_DATA_ERRORS) as error:
        raise PromptInputError("image_unreadable", f"cannot decode {relative}: {error}") from error
    return data, image


def shown_files(
    sample: Sample, root: Path, renders: RenderFolders | None
) -> list[tuple[str, Path, str]]:
    """(role, folder, name inside it) of each image records of `sample` show, in order.

    Roles as the user template names them: "image" (the release's own image), "depth"
    (MVTec 3D-AD's depth image) and "view" (a rendered view).
    """
    if not sample.render_paths:
        return [("image", root, sample.image_paths[0])]
    if renders is None:
        raise ConfigError(f"the describer has no render folder for the 3D sample {sample.id}")
    folder = renders.views / sample.source
    files = [] if sample.modality == CLOUD_MODALITY else [("image", root, sample.image_paths[0])]
    drawn, views = split_renders(sample.render_paths, sample.view_count)  # drawn: the depth image
    files += [("depth", folder, name) for name in drawn]
    files += [("view", folder, name) for name in views]
    return files


def _reference_url(reference: Sample, root: Path, renders: RenderFolders | None = None) -> str:
    # The caller chose the reference for a whole category: a bad one is a configuration
    # problem that would spoil every request of it, not one sample's failure.
    expected = reference.annotation.sha256 if reference.annotation else None
    try:
        _, folder, name = shown_files(reference, root, renders)[0]
        return _data_url(*_read_image(folder, name, expected_sha256=expected))
    except (PathEscapeError, PromptInputError) as error:
        raise ConfigError(f"reference image for {reference.category}: {error}") from error


def _data_url(data: bytes, image: Image.Image) -> str:
    """The file's own bytes when a server takes them as they are, else a PNG re-encoding."""
    mime, modes = PASSTHROUGH.get(image.format or "", (None, frozenset()))
    if mime is not None and image.mode in modes:
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    if image.mode in {"1", "L", "LA", "P", "RGB", "RGBA"}:
        return _png_url(_save_png(image))
    return _png_url(encode_png(as_rgb_array(image)))


def _save_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def _png_url(png: bytes) -> str:
    return f"data:image/png;base64,{base64.b64encode(png).decode('ascii')}"


def _image_part(url: str, detail: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


# -- templates -----------------------------------------------------------------------------


@lru_cache(maxsize=8)
def template_hashes(templates_folder: Path | None = None) -> dict[str, str]:
    """sha256 of the describe prompt templates in use, for the manifest and the dataset card."""
    environment = _environment(templates_folder)
    hashes = {}
    for name in (SYSTEM_TEMPLATE, USER_TEMPLATE):
        source, _, _ = environment.loader.get_source(environment, name)  # type: ignore[union-attr]
        hashes[name] = hashlib.sha256(source.encode("utf-8")).hexdigest()
    return hashes


def _environment(templates_folder: Path | None) -> jinja2.Environment:
    shipped = jinja2.FunctionLoader(_shipped_template)
    loader: jinja2.BaseLoader = shipped
    if templates_folder is not None:
        if not templates_folder.is_dir():
            raise ConfigError(f"templates folder {templates_folder} does not exist")
        loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(templates_folder), shipped])
    return jinja2.Environment(
        loader=loader,
        # A misspelt variable in a user's template must fail, not render as nothing.
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def _shipped_template(name: str) -> tuple[str, None, Any] | None:
    resource = resources.files("adinstruct.templates").joinpath(name)
    if not resource.is_file():
        return None
    return resource.read_text(encoding="utf-8"), None, lambda: True
