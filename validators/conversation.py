"""The conversation check: LLaVA-OneVision's rules for the turns of every instruction record.

Findings are read from the raw JSON, not the model, so that a record the model rejects as a
whole ("turn 3 is from 'human'") still gets one precise finding per broken rule. Rules (errors,
since the trainer mis-reads or drops such a record): human first, then strictly alternating
human/gpt, an even count of at least 2, exactly one `<image>` token per image in the first human
turn and none in any other, no empty (or whitespace-only) turn, and an image in every record
(Anomaly-OV's loader needs one). Style (warnings): the tokens at the front of the turn, each
followed by a newline, where LLaVA-OneVision moves a lone token anyway; no leading or trailing
whitespace. Benchmark chats get the rules that apply to them: no empty question or answer, as
many reference answers as questions, and an MMAD answer letter that is one of the options.

Almost every record breaks no rule, and is passed by a quick test of the JSON the reader
checked (`record_follows_every_rule`): its raw JSON is parsed only when some rule is broken.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from adinstruct.schemas.instruct import InstructionRecordJSON
from adinstruct.validators.base import Batch, Finding, FolderContext, RawRecord, Validator

#: The token LLaVA-OneVision replaces with the image features (as compose writes it).
IMAGE_TOKEN = "<image>"
SPEAKERS = ("human", "gpt")


def image_count(image: Any) -> int | None:
    """Images a record shows, or None when `image` is not a path or a list of paths."""
    if isinstance(image, str):
        return 1
    if isinstance(image, list) and all(isinstance(path, str) for path in image):
        return len(image)
    return None


#: "<image>\n" once per image: the prefix of a well-formed first turn, by image count.
_PREFIXES = tuple(f"{IMAGE_TOKEN}\n" * count for count in range(16))


def follows_every_rule(data: dict[str, Any]) -> bool:
    """True when the record breaks no rule (style included): the cheap path that a record the
    model rejects takes first. False only sends the record to the full check, which says what
    is wrong."""
    try:
        image, turns = data["image"], data["conversations"]
        if type(image) is str:
            images = 1
        elif type(image) is list and all(type(path) is str for path in image):
            images = len(image)
        else:
            return False
        count = len(turns)
        if count < 2 or count % 2:
            return False
        values = []
        for index in range(count):
            turn = turns[index]
            value = turn["value"]
            if type(value) is not str or turn["from"] != SPEAKERS[index % 2]:
                return False
            values.append(value)
    except (KeyError, TypeError, IndexError):
        return False
    return values_follow_every_rule(images, values)


def record_follows_every_rule(record: InstructionRecordJSON) -> bool:
    """`follows_every_rule` for a record that fits its model, whose types and turn order
    (human first, alternating, an even count of at least 2) are checked already."""
    image = record["image"]
    return values_follow_every_rule(
        1 if type(image) is str else len(image), [turn["value"] for turn in record["conversations"]]
    )


def values_follow_every_rule(images: int, values: list[str]) -> bool:
    """The rules on the turns' texts, for turns in a valid order."""
    return first_turn_follows(images, values[0]) and all(map(later_turn_follows, values[1:]))


def first_turn_follows(images: int, first: str) -> bool:
    """The rules on the first (human) turn of a record that shows `images` images."""
    if not 0 < images < len(_PREFIXES):
        return False
    prefix = _PREFIXES[images]
    if not first.startswith(prefix) or first.count(IMAGE_TOKEN) != images:
        return False
    # After its tokens the first turn may hold nothing (an image-only prompt).
    text = first[len(prefix) :]
    stripped = text.strip()
    return not stripped or stripped == text


def later_turn_follows(value: str) -> bool:
    """The rules on every turn after the first: no image token, not empty, no outer space."""
    return IMAGE_TOKEN not in value and value.strip() == value and value != ""


#: First turns come from question banks and repeat: each (image count, text) is judged once,
#: in a dict cleared when it holds this many.
FIRST_TURNS_KEPT = 4096


def turn_list(indices: list[int]) -> str:
    return ", ".join(str(index) for index in indices)


class ConversationValidator(Validator):
    name = "conversation"
    raw_kinds = frozenset({"instruction_record", "reasoning_item", "mmad_item"})

    def __init__(self) -> None:
        # first turn (with the image count when a list of images) -> whether it follows
        self._first_turns: dict[object, bool] = {}

    def check_raw(self, raw: RawRecord, context: FolderContext) -> Iterable[Finding]:
        if raw.kind == "instruction_record" and raw.fits and record_follows_every_rule(raw.data):
            return ()
        data = raw.data
        if not isinstance(data, dict):
            return ()  # not a record at all: the schema check says so
        if raw.kind == "instruction_record":
            return () if follows_every_rule(data) else self.check_conversation(raw, data)
        if raw.kind == "reasoning_item":
            return self.check_reasoning(raw, data)
        return self.check_mmad(raw, data)

    def check_batch(self, batch: Batch, context: FolderContext) -> Iterable[Finding]:
        """`record_follows_every_rule` on each record, each distinct first turn judged once."""
        findings: list[Finding] = []
        judged = self._first_turns
        later_follows = later_turn_follows
        for position, record in enumerate(batch.records):
            image, turns = record["image"], record["conversations"]
            first = turns[0]["value"]
            key = first if type(image) is str else (len(image), first)
            follows = judged.get(key)
            if follows is None:
                if len(judged) >= FIRST_TURNS_KEPT:
                    judged.clear()
                images = 1 if type(image) is str else len(image)
                follows = judged[key] = first_turn_follows(images, first)
            if follows:
                for index in range(1, len(turns)):
                    if not later_follows(turns[index]["value"]):
                        follows = False
                        break
            if not follows:
                findings += self.check_conversation(batch.raw(position), record)  # type: ignore[arg-type]
        return findings

    def error(self, raw: RawRecord, code: str, message: str) -> Finding:
        return self.finding(
            "error", code, f"{raw.where}: {message}", file=raw.file, record_id=raw.record_id
        )

    def warning(self, raw: RawRecord, code: str, message: str) -> Finding:
        return self.finding(
            "warning", code, f"{raw.where}: {message}", file=raw.file, record_id=raw.record_id
        )

    def check_conversation(self, raw: RawRecord, data: dict[str, Any]) -> list[Finding]:
        turns = data.get("conversations")
        if not isinstance(turns, list):
            return []  # missing or not a list: a schema finding
        findings: list[Finding] = []
        if len(turns) < 2:
            findings.append(self.error(
                raw, "too_few_turns",
                f"{len(turns)} turn(s); a conversation needs a human turn and a gpt answer",
            ))  # fmt: skip
        elif len(turns) % 2:
            findings.append(self.error(
                raw, "odd_turn_count",
                f"{len(turns)} turns; a conversation ends with a gpt answer, so the count is even",
            ))  # fmt: skip
        order_reported = False
        first_human: int | None = None
        values: list[tuple[int, str]] = []
        for index, turn in enumerate(turns):
            speaker = turn.get("from") if isinstance(turn, dict) else None
            value = turn.get("value") if isinstance(turn, dict) else None
            if not isinstance(speaker, str) or not isinstance(value, str):
                findings.append(self.error(
                    raw, "bad_turn",
                    f"turn {index} is not an object with string 'from' and 'value'",
                ))  # fmt: skip
                continue
            values.append((index, value))
            if speaker not in SPEAKERS:
                findings.append(self.error(
                    raw, "unknown_speaker", f"turn {index} is from {speaker!r}; use human or gpt"
                ))  # fmt: skip
                continue
            if speaker == "human" and first_human is None:
                first_human = index
            expected = SPEAKERS[index % 2]
            if speaker != expected and not order_reported:
                order_reported = True  # one broken order, one finding
                if index == 0:
                    findings.append(self.error(
                        raw, "first_turn_not_human",
                        "turn 0 is from 'gpt'; a conversation starts with the human's question",
                    ))  # fmt: skip
                else:
                    findings.append(self.error(
                        raw, "turns_not_alternating",
                        f"turn {index} is from {speaker!r} after a "
                        f"{turns[index - 1].get('from')!r} turn; turns alternate human, gpt",
                    ))  # fmt: skip
        findings.extend(self.check_values(raw, data, values, first_human))
        return findings

    def check_values(
        self, raw: RawRecord, data: dict[str, Any], values: list[tuple[int, str]],
        first_human: int | None,
    ) -> list[Finding]:  # fmt: skip
        findings: list[Finding] = []
        empty = [index for index, value in values if not value.strip()]
        if empty:
            findings.append(self.error(
                raw, "empty_turn", f"turn(s) {turn_list(empty)} are empty or only whitespace"
            ))  # fmt: skip
        images = image_count(data.get("image"))
        if images == 0:
            findings.append(self.error(
                raw, "no_image", "'image' is an empty list; every record needs an image"
            ))  # fmt: skip
        elsewhere = [
            index for index, value in values if index != first_human and IMAGE_TOKEN in value
        ]
        if elsewhere:
            findings.append(self.error(
                raw, "image_token_outside_first_turn",
                f"turn(s) {turn_list(elsewhere)} hold {IMAGE_TOKEN}; the tokens belong in the "
                "first human turn only",
            ))  # fmt: skip
        untrimmed = []
        for index, value in values:
            if index == first_human and images:
                value = value.removeprefix(f"{IMAGE_TOKEN}\n" * images)
            if value.strip() and value != value.strip():
                untrimmed.append(index)
        if first_human is not None and images is not None:
            first = next(value for index, value in values if index == first_human)
            tokens = first.count(IMAGE_TOKEN)
            if tokens != images:
                findings.append(self.error(
                    raw, "image_token_count",
                    f"the first human turn (turn {first_human}) holds {tokens} {IMAGE_TOKEN} "
                    f"token(s) for {images} image(s); give exactly one per image",
                ))  # fmt: skip
            elif images and not first.startswith(f"{IMAGE_TOKEN}\n" * images):
                findings.append(self.warning(
                    raw, "image_token_not_leading",
                    f"the {IMAGE_TOKEN} token(s) of turn {first_human} are not at its front, "
                    "each followed by a newline, where LLaVA-OneVision expects them",
                ))  # fmt: skip
        if untrimmed:
            findings.append(self.warning(
                raw, "untrimmed_turn",
                f"turn(s) {turn_list(untrimmed)} start or end with whitespace",
            ))  # fmt: skip
        return findings

    def check_reasoning(self, raw: RawRecord, data: dict[str, Any]) -> list[Finding]:
        questions, answers = data.get("questions"), data.get("answers") or []
        if not isinstance(questions, list) or not isinstance(answers, list):
            return []
        findings: list[Finding] = []
        empty = [
            f"{kind} {index}"
            for kind, texts in (("question", questions), ("answer", answers))
            for index, text in enumerate(texts)
            if isinstance(text, str) and not text.strip()
        ]
        if empty:
            findings.append(self.error(
                raw, "empty_turn", f"{', '.join(empty)} are empty or only whitespace"
            ))  # fmt: skip
        if answers and len(answers) != len(questions):
            findings.append(self.error(
                raw, "answer_count_mismatch",
                f"{len(questions)} questions but {len(answers)} reference answers; give one "
                "answer per question (or none)",
            ))  # fmt: skip
        return findings

    def check_mmad(self, raw: RawRecord, data: dict[str, Any]) -> list[Finding]:
        questions = data.get("conversation")
        if not isinstance(questions, list):
            return []
        findings: list[Finding] = []
        for index, question in enumerate(questions):
            if not isinstance(question, dict):
                continue
            text, options, answer = (
                question.get("Question"), question.get("Options"), question.get("Answer")
            )  # fmt: skip
            if isinstance(text, str) and not text.strip():
                findings.append(self.error(raw, "empty_turn", f"question {index} is empty"))
            if isinstance(options, dict) and isinstance(answer, str) and answer not in options:
                findings.append(self.error(
                    raw, "answer_not_an_option",
                    f"question {index} answers {answer!r}, which is not one of its options "
                    f"{sorted(options)}",
                ))  # fmt: skip
        return findings
