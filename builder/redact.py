"""Keep secrets out of everything adinstruct writes: the manifest's command line above all."""

from __future__ import annotations

import re

SECRET_OPTION = re.compile(r"^--?[\w-]*(key|token|secret|password|auth)[\w-]*$", re.IGNORECASE)
SECRET_ASSIGNMENT = re.compile(
    r"^(--?[\w-]*(?:key|token|secret|password|auth)[\w-]*=).+$", re.IGNORECASE
)
# Credentials that identify themselves wherever they appear (OpenAI and Hugging Face styles).
SECRET_VALUE = re.compile(r"\b(sk-[A-Za-z0-9_-]{8,}|hf_[A-Za-z0-9]{8,})\b")
REDACTED = "***"


def redact_text(text: str) -> str:
    return SECRET_VALUE.sub(REDACTED, text)


def redact_command(argv: list[str]) -> list[str]:
    """The command line with the values of secret-looking options replaced by ***."""
    redacted: list[str] = []
    hide_next = False
    for argument in argv:
        if hide_next:
            redacted.append(REDACTED)
            hide_next = False
        elif match := SECRET_ASSIGNMENT.match(argument):
            redacted.append(match.group(1) + REDACTED)
        elif SECRET_OPTION.match(argument):
            redacted.append(argument)
            hide_next = True
        else:
            redacted.append(redact_text(argument))
    return redacted
