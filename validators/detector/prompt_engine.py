"""The LLM that writes ALFA's prompts: the describe engine, its answer cache, or why there is none.

The engine reads OPENAI_API_KEY and OPENAI_BASE_URL like the describer does (OpenAI, Azure,
vLLM, Ollama); without either there is no LLM, and the caller falls back to WinCLIP's static
prompts with the returned note.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from adinstruct.builder.progress import Progress

if TYPE_CHECKING:
    from adinstruct.builder.describe.engine import Engine

NO_LLM_NOTE = (
    "no LLM configured (OPENAI_API_KEY and OPENAI_BASE_URL are unset): ALFA's prompts "
    "fall back to WinCLIP's static ensemble"
)


def prompt_engine(
    cache: Path, progress: Progress | None = None
) -> tuple[Engine | None, str | None]:
    """(engine, None) with an LLM configured, else (None, why not)."""
    from adinstruct.builder.describe.cache import AnswerCache
    from adinstruct.builder.describe.engine import Engine, EngineConfig
    from adinstruct.builder.describe.pricing import PriceTable

    config = EngineConfig()
    if not config.api_key.get_secret_value() and not config.base_url:
        return None, NO_LLM_NOTE
    return Engine(config, AnswerCache(cache), PriceTable(), progress), None
