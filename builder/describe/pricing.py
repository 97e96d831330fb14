"""Prices per model, the cost of a usage, and token estimates of requests before they are sent.

Token estimates, as a dry run uses them:

- Text: characters / 4, rounded up per text part, the rule of thumb OpenAI gives for English
  (prompts full of JSON or non-English words run nearer 3 characters a token, so this errs
  low there), plus 3 tokens per message and 3 to prime the reply (OpenAI's cookbook
  figures for the GPT-4o family), plus the response schema's JSON text / 4.
- Images, by OpenAI's published tile rule: `low` detail costs a flat base (85 tokens for
  GPT-4o); `high` scales the image to fit within 2048×2048, then down so its shortest side
  is at most 768, and costs base + per-tile × the number of 512-pixel tiles (85 + 170 × tiles
  for GPT-4o). `auto` is counted as `high`, the upper bound. The size comes from the image
  header in the data URL; an image whose size cannot be read counts as the largest `high`
  image (8 tiles). Models that price images differently (gpt-4o-mini) carry their own base
  and per-tile figures in the price table.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adinstruct.builder.describe.requests import DATA_URL, ChatRequest, Usage
from adinstruct.builder.errors import ConfigError

log = logging.getLogger(__name__)

PER_MILLION = 1_000_000
TOKENS_PER_MESSAGE = 3
REPLY_PRIMING_TOKENS = 3
#: The most 512-pixel tiles a `high` image can have: 768 × 2048 after scaling.
MAX_TILES = 8
#: Enough base64 for the header of a PNG or a JPEG with ordinary EXIF data.
HEADER_BASE64_CHARS = 64 * 1024


class ModelPrice(BaseModel):
    """USD per 1M tokens, and the image token rule of the model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0, description="Defaults to `input`.")
    output: float = Field(ge=0)
    image_base_tokens: int = Field(default=85, ge=0)
    image_tile_tokens: int = Field(default=170, ge=0)


def _price(input: float, cached: float | None, output: float, **image: int) -> ModelPrice:
    return ModelPrice(input=input, cached_input=cached, output=output, **image)


#: OpenAI list prices (standard tier, USD per 1M tokens) as published in mid-2025. A price
#: file passed by the user overrides or extends these.
BUILTIN_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": _price(2.50, 1.25, 10.00),
    "gpt-4o-2024-05-13": _price(5.00, None, 15.00),
    "gpt-4o-mini": _price(0.15, 0.075, 0.60, image_base_tokens=2833, image_tile_tokens=5667),
    "gpt-4.1": _price(2.00, 0.50, 8.00),
    "gpt-4.1-mini": _price(0.40, 0.10, 1.60),
    "gpt-4.1-nano": _price(0.10, 0.025, 0.40),
    "gpt-4-turbo": _price(10.00, None, 30.00),
    "gpt-5": _price(1.25, 0.125, 10.00),
    "gpt-5-mini": _price(0.25, 0.025, 2.00),
    "gpt-5-nano": _price(0.05, 0.005, 0.40),
    "o1": _price(15.00, 7.50, 60.00, image_base_tokens=75, image_tile_tokens=150),
    "o3": _price(2.00, 0.50, 8.00, image_base_tokens=75, image_tile_tokens=150),
    "o4-mini": _price(1.10, 0.275, 4.40),
}

#: Batch API requests cost half the standard price.
BATCH_DISCOUNT = 0.5


class PriceTable:
    """Looks a model up by exact name, then by the longest known name it extends with "-"."""

    def __init__(
        self, prices: Mapping[str, ModelPrice] | None = None, *, batch_discount: float = 0.5
    ) -> None:
        self.prices = dict(BUILTIN_PRICES if prices is None else prices)
        self.batch_discount = batch_discount
        #: Models that were priced at 0 because the table does not know them.
        self.unknown_models: set[str] = set()

    @classmethod
    def from_file(cls, path: Path) -> PriceTable:
        """The built-in table with the entries of a JSON file {"model": {"input": ...}} on top."""
        try:
            entries = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"price file {path} could not be read as JSON: {error}") from error
        if not isinstance(entries, dict):
            raise ConfigError(f"price file {path} must hold an object of model names")
        prices = dict(BUILTIN_PRICES)
        for model, entry in entries.items():
            try:
                prices[model] = ModelPrice.model_validate(entry)
            except ValidationError as error:
                raise ConfigError(
                    f"price file {path}: model {model!r} needs numbers for input and output "
                    f"(USD per 1M tokens), optionally cached_input: {error}"
                ) from error
        return cls(prices)

    def lookup(self, model: str) -> ModelPrice | None:
        if model in self.prices:
            return self.prices[model]
        # Dated snapshots ("gpt-4o-mini-2024-07-18") cost what their family costs.
        family = [name for name in self.prices if model.startswith(name + "-")]
        return self.prices[max(family, key=len)] if family else None

    def cost(self, model: str, usage: Usage, *, batch: bool = False) -> float:
        """USD for one usage; 0 (and the model noted in `unknown_models`) when unpriced."""
        price = self.lookup(model)
        if price is None:
            if model not in self.unknown_models:
                log.warning("no price for model %r: its cost counts as 0", model)
                self.unknown_models.add(model)
            return 0.0
        cached_price = price.input if price.cached_input is None else price.cached_input
        uncached = max(usage.input_tokens - usage.cached_input_tokens, 0)
        dollars = (
            uncached * price.input
            + usage.cached_input_tokens * cached_price
            + usage.output_tokens * price.output
        ) / PER_MILLION
        return dollars * (self.batch_discount if batch else 1.0)


DEFAULT_PRICES = PriceTable()


# --------------------------------------------------------------------------------------
# Token estimates
# --------------------------------------------------------------------------------------


def text_tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def image_tokens(size: tuple[int, int] | None, detail: str, price: ModelPrice | None = None) -> int:
    base = price.image_base_tokens if price else 85
    per_tile = price.image_tile_tokens if price else 170
    if detail == "low":
        return base
    if size is None:
        return base + per_tile * MAX_TILES
    return base + per_tile * high_detail_tiles(*size)


def high_detail_tiles(width: int, height: int) -> int:
    """512-pixel tiles of an image in `high` detail, after OpenAI's two downscaling steps."""
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    width, height = width * scale, height * scale
    return math.ceil(round(width, 6) / 512) * math.ceil(round(height, 6) / 512)


def image_size(url: str) -> tuple[int, int] | None:
    """Width and height from a data URL's image header; None for other URLs or bad data."""
    from PIL import Image, UnidentifiedImageError

    match = DATA_URL.match(url)
    if not match:
        return None
    payload = match.group("payload")
    # Decoding a prefix is enough for the header; a JPEG with a large EXIF block may need all.
    for chunk in (payload[:HEADER_BASE64_CHARS], payload):
        try:
            with Image.open(io.BytesIO(base64.b64decode(chunk))) as image:
                return image.size
        except (UnidentifiedImageError, OSError, SyntaxError, binascii.Error, ValueError):
            continue
    return None


def estimate_request_tokens(request: ChatRequest, prices: PriceTable | None = None) -> int:
    """Input tokens of a request before it is sent (see the module docstring for the rule)."""
    price = (prices or DEFAULT_PRICES).lookup(request.model)
    tokens = REPLY_PRIMING_TOKENS
    for message in request.messages:
        tokens += TOKENS_PER_MESSAGE
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for part in parts:
            if part.get("type") == "image_url":
                image = part.get("image_url") or {}
                detail = image.get("detail", "auto")
                tokens += image_tokens(image_size(image.get("url", "")), detail, price)
            else:
                tokens += text_tokens(str(part.get("text", "")))
    if request.response_schema is not None:
        tokens += text_tokens(json.dumps(request.response_schema.json_schema))
    return tokens


class DryRunEstimate(BaseModel):
    """What a run would send and cost, before anything is sent."""

    model_config = ConfigDict(extra="forbid")

    requests: int = 0
    cached: int = Field(default=0, description="Answered already (or repeated): no cost.")
    to_send: int = 0
    input_tokens: int = 0
    output_tokens_max: int = Field(default=0, description="Every answer at its max_tokens.")
    output_tokens_typical: int = 0
    cost_usd_max: float = 0.0
    cost_usd_typical: float = 0.0
    unknown_models: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        unknown = f"; no price for {', '.join(self.unknown_models)}" if self.unknown_models else ""
        return (
            f"{self.requests} requests: {self.cached} cached, {self.to_send} to send; "
            f"~{self.input_tokens:,} input tokens, {self.output_tokens_typical:,} output tokens "
            f"typical ({self.output_tokens_max:,} at most); "
            f"~${self.cost_usd_typical:.2f} (at most ${self.cost_usd_max:.2f}){unknown}"
        )


def estimate_run(
    requests: Iterable[ChatRequest],
    prices: PriceTable,
    is_cached: Callable[[str], bool],
    *,
    typical_output_tokens: int = 300,
    batch: bool = False,
) -> DryRunEstimate:
    """Count and price a request stream; input costs assume no prompt caching (an upper bound)."""
    estimate = DryRunEstimate()
    seen: set[str] = set()
    unknown: set[str] = set()
    for request in requests:
        estimate.requests += 1
        key = request.cache_key()
        if key in seen or is_cached(key):
            estimate.cached += 1
            continue
        seen.add(key)
        estimate.to_send += 1
        input_tokens = estimate_request_tokens(request, prices)
        most = request.max_tokens if request.max_tokens is not None else typical_output_tokens
        typical = min(most, typical_output_tokens)
        estimate.input_tokens += input_tokens
        estimate.output_tokens_max += most
        estimate.output_tokens_typical += typical
        if prices.lookup(request.model) is None:
            unknown.add(request.model)
        for output, field in ((most, "cost_usd_max"), (typical, "cost_usd_typical")):
            usage = Usage(input_tokens=input_tokens, output_tokens=output)
            cost = _quiet_cost(prices, request.model, usage, batch)
            setattr(estimate, field, getattr(estimate, field) + cost)
    estimate.unknown_models = sorted(unknown)
    return estimate


def _quiet_cost(prices: PriceTable, model: str, usage: Usage, batch: bool) -> float:
    # A dry run reports unknown models in its estimate; no warning per request needed.
    return 0.0 if prices.lookup(model) is None else prices.cost(model, usage, batch=batch)
