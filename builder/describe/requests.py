"""One request to an OpenAI-compatible chat endpoint and its outcome, as the engine sees them.

A request is plain data: the engine sends it, caches its answer under `cache_key()`, and never
needs to know what a sample is. The key covers everything that shapes the answer (model,
messages with images by content hash, response schema, generation parameters).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]+);base64,(?P<payload>.+)$", re.DOTALL)


class ResponseSchema(BaseModel):
    """A JSON Schema the answer must follow (OpenAI structured outputs, strict)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    json_schema: dict[str, Any]


class ChatRequest(BaseModel):
    # Frozen because the cache key is computed once and kept: the describer and the engine
    # both need it, and hashing the base64 images twice per request is wasted work.
    model_config = ConfigDict(extra="forbid", frozen=True)

    _cache_key: str | None = PrivateAttr(default=None)

    #: Who asked (a sample id, or "prompts/<category>" for detector prompts); not in the key.
    request_id: str
    model: str
    #: OpenAI chat messages; images as {"type": "image_url", "image_url": {"url": data URL,
    #: "detail": "low"|"high"|"auto"}} parts.
    messages: list[dict[str, Any]]
    response_schema: ResponseSchema | None = None
    temperature: float | None = 0.2
    max_tokens: int | None = 800
    seed: int | None = None

    def cache_key(self) -> str:
        """sha256 over everything that shapes the answer, with each image by its content hash."""
        if self._cache_key is None:
            self._cache_key = self._compute_cache_key()
        return self._cache_key

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False):
        copy = super().model_copy(update=update, deep=deep)
        copy._cache_key = None  # a copy with other fields must not inherit this request's key
        return copy

    def _compute_cache_key(self) -> str:
        shaped = {
            "model": self.model,
            "messages": _hash_images(self.messages),
            "response_schema": self.response_schema.model_dump() if self.response_schema else None,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }
        canonical = json.dumps(shaped, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _hash_images(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _hash_images(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_hash_images(item) for item in value]
    if isinstance(value, str) and (match := DATA_URL.match(value)):
        digest = hashlib.sha256(match.group("payload").encode("ascii")).hexdigest()
        return f"data:{match.group('mime')};sha256,{digest}"
    return value


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0


class ChatResult(BaseModel):
    """The outcome of one request, fresh or from the cache."""

    model_config = ConfigDict(extra="forbid")

    request_id: str
    cache_key: str
    status: Literal["ok", "refused", "error"]
    #: The answer's text (JSON text when a response schema was given).
    content: str | None = None
    refusal: str | None = None
    finish_reason: str | None = None
    error: str | None = Field(default=None, description="Why the request failed for good.")
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    from_cache: bool = False
    attempts: int = 0
