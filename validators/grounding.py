"""Grounding: what the gpt turns claim (label, location, region count, defect name) against the
sample's facts, plus refusals, truncated answers and boilerplate repeated across records.

Claims are read the way the compose stage writes them (`builder/compose/families.py` and the
answer banks): detection and reasoning chats open with "Yes, ..." / "No, ..."; locations are
grid words ("top left and center"); counts read "one region" / "2 separate regions"; defect
names stand before "defect" ("a crack defect"). Text an LLM wrote is freer, so every check
flags only a clear contradiction and lets anything it cannot parse pass.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from adinstruct.builder.describe.template import (
    UNNAMED,
    category_name,
    grid_words_in,
    humanise,
    object_phrase,
)
from adinstruct.schemas.instruct import InstructionRecordJSON
from adinstruct.validators.base import (
    Batch,
    Finding,
    FolderContext,
    SampleFacts,
    Severity,
    Validator,
)

# Python's regex engine scans fast for a pattern that starts with a literal and slowly for one
# that starts with \b or an alternation, so searches below run on lower-cased text, start with
# a literal, and check the word boundary (and the word before) in code; a cheap `in` test
# skips most of them. Each answer is read several ways, and 25,000 records per second for all
# validators leave a few microseconds per answer.


def word_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


def starts_word(text: str, start: int) -> bool:
    return start == 0 or not text[start - 1].isalnum()


def word_before(text: str, start: int) -> str:
    words = text[max(0, start - 40) : start].split()
    return words[-1].strip("\"'*(,;:") if words else ""


def occurrences(text: str, literal: str) -> Iterator[int]:
    """Where `literal` starts a word of `text`."""
    start = text.find(literal)
    while start >= 0:
        if starts_word(text, start):
            yield start
        start = text.find(literal, start + 1)


# -- label polarity -----------------------------------------------------------------------

# "Yes," / "No." / "**No**" at the very start; "No doubt, ..." and friends are no answer.
LEADING_POLARITY = re.compile(r"^\W*(yes|no)\b(?!\s+(?:doubt|question|wonder|matter)\b)")
_FLAW = r"(?:defects?|anomal(?:y|ies)|abnormalit(?:y|ies))"
_NO_FLAW = re.compile(
    rf"no\s+(?:visible\s+|obvious\s+|apparent\s+)?{_FLAW}\b(?P<stated>(?:\s+or\s+{_FLAW})?"
    r"\s+(?:is|are|was|were|can be)\s+(?:visible|present|seen|found|detected|apparent)\b)?"
)
# Statements that the object is normal, as the normal answer banks word them: (cue, pattern,
# words the phrase must follow or None, words it must not follow).
NORMAL_CLAIMS: tuple[tuple[str, re.Pattern[str], frozenset[str] | None, frozenset[str]], ...] = (
    ("no", _NO_FLAW, None, frozenset()),
    ("free", re.compile(rf"free\s+(?:of|from)\s+(?:any\s+)?(?:visible\s+)?{_FLAW}"), None,
     frozenset({"not"})),
    ("nothing", re.compile(
        r"nothing\s+(?:about\s+it\s+)?(?:looks\s+|is\s+|appears\s+)?"
        r"(?:abnormal|anomalous|defective|unusual)"), None, frozenset()),
    ("normal condition", re.compile(r"in\s+normal\s+condition"), None, frozenset({"not"})),
    ("intact", re.compile(r"intact\b"), word_set("looks appears is"), frozenset()),
    ("normal", re.compile(r"normal\b"), word_set("looks appears is"), frozenset()),
)  # fmt: skip
# After "shows no defect", "has no anomaly", ...: a claim even without "is visible".
NO_FLAW_VERBS = word_set("shows show has have see find detect contains contain")
FLAW_STEMS = ("defect", "anomal", "abnormal")
NEGATIONS = ("no ", "not ", "without", "nothing", "free of", "neither", "nor ")


def has_negation(lowered: str) -> bool:
    """Whether any of NEGATIONS is in the text (`or`-ed `in` tests: a third of `any()`'s cost)."""
    return (
        "no " in lowered or "not " in lowered or "without" in lowered or "nothing" in lowered
        or "free of" in lowered or "neither" in lowered or "nor " in lowered
    )  # fmt: skip


def leading_polarity(lowered: str) -> str | None:
    head = lowered[:1]
    if head != "y" and head != "n" and (head.isalnum() or head == "_"):
        return None  # a word that is neither: the pattern's \W* cannot skip it
    match = LEADING_POLARITY.match(lowered)
    return match.group(1) if match else None


def normal_claims(lowered: str) -> list[tuple[int, int]]:
    """Spans of the (lower-cased) text that say the object is normal."""
    spans = []
    for cue, pattern, after, not_after in NORMAL_CLAIMS:
        if cue not in lowered:
            continue
        for match in pattern.finditer(lowered):
            start = match.start()
            if not starts_word(lowered, start):
                continue
            before = word_before(lowered, start)
            if before in not_after or (after is not None and before not in after):
                continue
            if pattern is _NO_FLAW and not match.group("stated") and before not in NO_FLAW_VERBS:
                continue  # "no defect" alone may be part of "no defect other than the crack"
            spans.append(match.span())
    return spans


# -- region counts ------------------------------------------------------------------------

_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
NUMBER_WORDS = {word: value for value, word in enumerate([*_NUMBERS, "ten", "eleven", "twelve"])}
NUMBER_WORDS["single"] = 1
COUNT_ADJECTIVES = word_set(
    "separate distinct disjoint connected different anomalous defective affected damaged"
)
# "at least two regions" states a bound, not a count.
COUNT_QUALIFIERS = word_set("least most than over up about around some approximately roughly")


def count_claims(lowered: str) -> list[int]:
    """The region counts a (lower-cased) text states: 'one region' -> 1, '2 separate
    regions' -> 2; 'at least two regions' and 'one of the regions' state none."""
    counts = []
    start = lowered.find("region")
    while start >= 0:
        at, start = start, lowered.find("region", start + 1)
        if not at or lowered[at - 1].isalnum():
            continue  # inside a word, or nothing before it
        words = lowered[at - 60 if at > 60 else 0 : at].split()
        while words and words[-1] in COUNT_ADJECTIVES:
            words.pop()
        if not words:
            continue
        word = words[-1].lstrip("(")
        # isdecimal, not isdigit: int() refuses a superscript '²'
        value = int(word) if word.isdecimal() else NUMBER_WORDS.get(word)
        if value is None:
            continue
        before = words[-2] if len(words) > 1 else ""
        if word == "single" and before == "a":
            before = words[-3] if len(words) > 2 else ""
        if before not in COUNT_QUALIFIERS:
            counts.append(value)
    return counts


# -- defect names -------------------------------------------------------------------------

# The words before "defect" name it ("a crack defect", "the broken large defects").
DEFECT_HEADS = ("defect", "abnormalit")
OTHER_KIND = re.compile(r'defect of the "([^"]+)" kind')
SLOT_WORDS = 7
SLOT_BREAK = re.compile(r"[.,;:!?()\[\]\"“”]")
# A stated name starts after the last of these.
SLOT_STOPWORDS = word_set(
    "a an the and or with of is are was were has have had this that these those it its in "
    "on at for to as but by from there here shows show see saw any some such also which "
    "what where like each every another one two several more most no not without nor "
    "could may might can i you we they"
)
# Only a name right after an article is read as a claim: "could hide other defects" is none.
ARTICLES = frozenset({"a", "an", "the"})
# Words that describe a defect without naming it ("a small surface defect").
GENERIC_WORDS = word_set(
    "small tiny large big medium minor major visible surface clear obvious single possible "
    "subtle slight noticeable cosmetic local localised localized structural manufacturing "
    "physical serious significant apparent potential kind type similar same other second "
    "first main notable typical actual real genuine evident distinct separate certain "
    "specific severe mild faint prominent"
)


def defect_slots(lowered: str) -> Iterator[tuple[str, str | None]]:
    """(stated defect name, the word before it) for each 'X defect' of a lower-cased text.

    The name is what follows the last stopword of up to seven words before "defect", leading
    adjectives dropped: "a small crack defect" -> ("crack", "a"); "could hide other defects" ->
    ("hide other", "could"); the word is None when no stopword bounds the name.
    """
    if '" kind' in lowered:
        for match in OTHER_KIND.finditer(lowered):
            yield match.group(1), "the"
    for head in DEFECT_HEADS:
        for start in occurrences(lowered, head):
            if lowered.startswith('defect of the "', start):
                continue
            words = SLOT_BREAK.split(lowered[max(0, start - 80) : start])[-1].split()
            words = words[-SLOT_WORDS:]
            before = None
            for index in range(len(words) - 1, -1, -1):
                if words[index] in SLOT_STOPWORDS:
                    before = words[index]
                    words = words[index + 1 :]
                    break
            while words and words[0] in GENERIC_WORDS:
                words = words[1:]
            yield " ".join(words), before


def plain_names(names: Iterable[str]) -> frozenset[str]:
    """The known defect names (with and without a trailing " defect") that `defect_slots`
    always reads whole when they stand right before "defect": no stopword or break in them,
    no leading generic word, at most SLOT_WORDS words. `names_only_known_defects` looks for
    just these."""
    plain = set()
    for name in names:
        for form in (name, name.removesuffix(" defect")):
            words = form.split()
            if (
                0 < len(words) <= SLOT_WORDS
                and " ".join(words) == form
                and words[0] not in GENERIC_WORDS
                and not SLOT_STOPWORDS.intersection(words)
                and not SLOT_BREAK.search(form)
            ):
                plain.add(form)
    return frozenset(plain)


def names_only_known_defects(lowered: str, plain: frozenset[str], longest: int) -> bool:
    """Whether every "X defect" of a lower-cased text has, right before "defect", a name of
    `plain` (of at most `longest` words) or a stopword ("the defect", "no defects"): then
    `defect_slots` reads a known name or none at each one, so the text names no unknown defect.
    A fast and exact shortcut for the common case; False says nothing (the full reading
    decides)."""
    for head in DEFECT_HEADS:
        start = lowered.find(head)
        while start >= 0:
            if (not start or not lowered[start - 1].isalnum()) and not lowered.startswith(
                'defect of the "', start
            ):
                # The window `defect_slots` reads, its last words as it splits them.
                words = lowered[start - 80 if start > 80 else 0 : start].rsplit(None, longest)
                if not words:
                    return False
                if words[-1] not in plain and words[-1] not in SLOT_STOPWORDS:
                    for count in range(2, min(longest, len(words)) + 1):
                        if " ".join(words[-count:]) in plain:
                            break
                    else:
                        return False
            start = lowered.find(head, start + 1)
    return True


def name_known(stated: str, names: frozenset[str]) -> bool:
    """Whether the stated name, or its tail after adjectives, is one of `names`."""
    words = stated.split()
    for start in range(len(words)):
        tail = " ".join(words[start:])
        if tail in names or f"{tail} defect" in names:
            return True
    return False


# -- location words -----------------------------------------------------------------------

# Every grid word contains one of these.
GRID_STEMS = ("top", "bottom", "left", "right", "center")
GRID_STEM_SIZES = tuple((stem, len(stem)) for stem in GRID_STEMS)
BLANK = "§"  # what a name holding a grid word is replaced by before grid words are searched


def grid_window(lowered: str) -> tuple[int, int] | None:
    """The span from the first to the last grid stem, widened to whole words, or None.

    `grid_words_in` on that span finds what it finds on the whole text (every grid word holds
    a stem, and the span starts and ends at word edges), at a fraction of the cost.
    """
    find, rfind = lowered.find, lowered.rfind
    first, last = len(lowered), -1
    for stem, size in GRID_STEM_SIZES:
        at = find(stem)
        if at >= 0:
            if at < first:
                first = at
            end = rfind(stem) + size
            if end > last:
                last = end
    if last < 0:
        return None
    while first > 0 and lowered[first - 1].isalnum():
        first -= 1
    while last < len(lowered) and lowered[last].isalnum():
        last += 1
    return first, last


# -- refusals and truncation --------------------------------------------------------------

REFUSAL_ANYWHERE = re.compile(
    r"\bas an ai\b|\bas a language model\b|\bi'?m sorry\b|\bi am sorry\b|\bi apologi[sz]e\b"
)
# "I cannot be sure of the cause, but ..." hedges; "I cannot analyse images." refuses.
REFUSAL_START = re.compile(
    r"^\W*(?:i\s+(?:cannot|can't|can not|won't|am unable|am not able)|i'm\s+(?:unable|not able)"
    r"|unfortunately,?\s+i\b)(?![^.!?]*\bbut\b)"
)
TERMINAL = ".!?"
CLOSERS = "\"')]}”’»*"
PAIRS = (("(", ")"), ("[", "]"), ("{", "}"), ("“", "”"))
PAIRED = '()[]{}“”"'  # any of these, and truncation() counts the pairs
# Short answers ("Yes", "B") are complete without a full stop.
MIN_WORDS_FOR_TRUNCATION = 4


def is_refusal(lowered: str) -> bool:
    # Each alternative of REFUSAL_ANYWHERE holds one of these: the regex runs on few answers.
    if (
        "sorry" in lowered or "apologi" in lowered or "as an ai" in lowered
        or "as a language model" in lowered
    ) and REFUSAL_ANYWHERE.search(lowered):  # fmt: skip
        return True
    return lowered.lstrip(" *\"'")[:1] in ("i", "u") and bool(REFUSAL_START.match(lowered))


def has_paired(text: str) -> bool:
    """Whether any character of PAIRED is in the text (`or`-ed `in` tests: half a regex's cost)."""
    return (
        '"' in text or "(" in text or ")" in text or "[" in text or "]" in text or "{" in text
        or "}" in text or "“" in text or "”" in text
    )  # fmt: skip


def truncation(text: str) -> str | None:
    """Why an answer looks cut off, or None."""
    stripped = text.rstrip()
    mid_sentence = stripped.rstrip(CLOSERS)[-1:] not in TERMINAL
    paired = has_paired(stripped)
    if not (mid_sentence or paired):
        return None  # most answers: a full stop and no bracket, whatever their length
    if stripped.count(" ") < MIN_WORDS_FOR_TRUNCATION - 1:
        return None
    if mid_sentence:
        return f"ends mid-sentence ({stripped[-30:]!r})"
    if paired:
        for opening, closing in PAIRS:
            if stripped.count(opening) != stripped.count(closing):
                return f"unbalanced {opening}{closing}"
        if stripped.count('"') % 2:
            return 'an unbalanced "'
    return None


# -- names of a category ------------------------------------------------------------------


@dataclass(eq=False)  # hashed by identity: one per (source, category) and run, a cache key
class Vocabulary:
    """The names of one (source, category): to search for as claims, and to blank out."""

    defect_names: frozenset[str]  # humanised, lower case
    release_names: frozenset[str]  # every category of the source
    category_names: frozenset[str]  # lower case: "capsule", "metal nut", "a metal nut"
    # Defect and category names that hold a grid word ("misplaced label top"), longest first.
    grid_names: re.Pattern[str] | None
    # The defect names `names_only_known_defects` looks for, and the most words one has.
    plain_names: frozenset[str] = frozenset()
    plain_words: int = 0


def names_holding_grid_words(names: Iterable[str]) -> re.Pattern[str] | None:
    holding = sorted({name for name in names if grid_words_in(name)}, key=len, reverse=True)
    if not holding:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(name) for name in holding) + r")(?!\w)")


def humanised_names(raw_names: Iterable[str]) -> set[str]:
    names = {humanise(raw).lower() for raw in raw_names}
    return {name for name in names if name not in UNNAMED}


class HeavyHitters:
    """Misra-Gries counts of answer hashes, in memory that does not grow with the records: every
    answer added more than added/(capacity+1) times is kept, and its count is underestimated by
    at most that much (exact while fewer than `capacity` distinct answers were seen)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.records = 0
        self.counts: dict[int, int] = {}
        #: key -> (record id, turn index) where the answer was first seen
        self.first_record: dict[int, tuple[str, int]] = {}

    def add(self, key: int, record_id: str, turn: int) -> None:
        if key in self.counts:
            self.counts[key] += 1
        elif len(self.counts) < self.capacity:
            self.counts[key] = 1
            self.first_record[key] = (record_id, turn)
        else:
            for other in list(self.counts):
                self.counts[other] -= 1
                if not self.counts[other]:
                    del self.counts[other], self.first_record[other]

    def frequent(self, share: float) -> list[tuple[int, int]]:
        """Answers in more than `share` of the records (by their lower-bound count)."""
        return [(key, n) for key, n in self.counts.items() if n > share * self.records]


class CacheUse:
    """Whether a cache is worth asking, judged once a batch from its own counts.

    A hit saves reading an answer (10-15 µs); a miss costs its key, an entry made and one
    evicted, and the memory that churns (a few µs a record, measured). In a folder an LLM
    wrote no two answers are alike, so when fewer than MIN_HIT_RATE of a window of lookups hit,
    the caller goes around the cache, and one batch in PROBE_EVERY asks it still, to see
    whether answers repeat again (a later file may be the banks').
    """

    WINDOW = 1024  # lookups
    MIN_HIT_RATE = 0.05
    PROBE_EVERY = 16  # batches

    def __init__(self, cache: Any) -> None:
        self.cache = cache  # a functools.lru_cache wrapper
        self.paying = True
        self.batches = self.hits = self.lookups = 0

    def reset(self) -> None:
        """After the cache was cleared: its counts start again."""
        self.paying, self.batches, self.hits, self.lookups = True, 0, 0, 0

    def worth_asking(self) -> bool:
        hits, misses, _, _ = self.cache.cache_info()
        lookups = hits + misses
        # Judged over a window while asked, and on each probe batch while stepped aside.
        if lookups - self.lookups >= (self.WINDOW if self.paying else 1):
            self.paying = hits - self.hits >= self.MIN_HIT_RATE * (lookups - self.lookups)
            self.hits, self.lookups = hits, lookups
        self.batches += 1
        return self.paying or self.batches % self.PROBE_EVERY == 0


#: A finding to be, before it knows its record: (severity, code, message).
Spec = tuple[Severity, str, str]


@dataclass(eq=False, slots=True)  # hashed by identity (a cache key): one per distinct value
class _Subject:
    """What an answer is checked against, all its findings depend on but its text: the facts
    and names that samples share (the normal ones of a category share one subject, so that a
    bank's phrasing is read once for all of them)."""

    vocabulary: Vocabulary
    source: str  # the record's metadata, as the messages name it
    category: str
    anomaly: bool
    known: bool  # the sample is in samples.jsonl, so its facts can be checked
    located: bool  # it has a mask with regions in grid cells, so locations can be checked
    grid_cells: tuple[str, ...]
    region_count: int


#: One answer, checked: its findings, the label findings (first answers only), and the digest
#: it is counted under for boilerplate (None for an empty answer). Plain tuples, as these are
#: made once an answer: a frozen dataclass's __init__ costs a microsecond.
Checked = tuple[tuple[Spec, ...], tuple[Spec, ...], int | None]
#: The answers of one record, checked: every finding in order, and the (digest, turn) of each
#: distinct answer, to count for boilerplate.
CheckedRecord = tuple[tuple[Spec, ...], tuple[tuple[int, int], ...]]
EMPTY_ANSWER: Checked = ((), (), None)
#: "turn 1", "turn 3", ...: the names of the answers' turns, made once.
TURN_NAMES = tuple(f"turn {index}" for index in range(64))


class GroundingValidator(Validator):
    """Every claim of the gpt turns against the sample facts, and answer hygiene.

    An empty answer is the conversation check's `empty_turn`, so it gets no finding here.
    """

    name = "grounding"

    def __init__(
        self,
        *,
        boilerplate_share: float = 0.25,
        boilerplate_min_records: int = 20,
        boilerplate_capacity: int = 255,
        cache_size: int = 4096,
    ) -> None:
        self.boilerplate_share = boilerplate_share
        self.boilerplate_min_records = boilerplate_min_records
        self.boilerplate_capacity = boilerplate_capacity
        self.cache_size = cache_size
        self.answers_by_family: dict[str, HeavyHitters] = {}
        #: family -> file -> records (defaultdicts: a Counter's += costs three times as much)
        self.files_by_family: dict[str, defaultdict[str, int]] = {}
        self._vocabularies: dict[tuple[str, str, tuple[str, ...]], Vocabulary] = {}
        self._subjects: dict[tuple[object, ...], _Subject] = {}
        self._context: FolderContext | None = None
        # Answers repeat (the banks' phrasings, boilerplate, one sample asked several ways), and
        # reading one costs tens of microseconds: each distinct answer is read once for each
        # subject, and each distinct set of a record's answers is assembled once, in caches of
        # a fixed size, so that memory stays flat however many records there are.
        # Where no answer repeats (an LLM's), the caches step aside (`CacheUse`).
        self.subject = lru_cache(maxsize=cache_size)(self.make_subject)
        self.checked = lru_cache(maxsize=cache_size)(self.check_answer)
        self.checked_record = lru_cache(maxsize=cache_size)(self.check_answers)
        self._answer_cache_use = CacheUse(self.checked)
        self._record_cache_use = CacheUse(self.checked_record)
        self._read_answer: Callable[[str, int, bool, _Subject], Checked] = self.checked

    # -- per record ---------------------------------------------------------------------

    def check(
        self, record: InstructionRecordJSON, file: str, context: FolderContext
    ) -> Iterable[Finding]:
        return self.check_batch(Batch("instruction_record", file, 0, [record]), context)

    def check_batch(self, batch: Batch, context: FolderContext) -> Iterable[Finding]:
        if context is not self._context:
            self._context, self._vocabularies, self._subjects = context, {}, {}
            for cache in (self.subject, self.checked, self.checked_record):
                cache.cache_clear()
            self._answer_cache_use.reset()
            self._record_cache_use.reset()
        file, samples = batch.file, context.samples
        subject_of = self.subject
        checked_record = (
            self.checked_record if self._record_cache_use.worth_asking() else self.check_answers
        )
        self._read_answer = (
            self.checked if self._answer_cache_use.worth_asking() else self.check_answer
        )
        hitters_of = self.answers_by_family
        in_batch: dict[str, int] = {}  # family -> records, added to the counts once a batch
        findings: list[Finding] = []
        for record in batch.records:
            meta = record["metadata"]
            sample_id, source, category, anomaly = (
                meta["sample_id"], meta["source"], meta["category"], meta["anomaly"]
            )  # fmt: skip
            facts, subject = subject_of(sample_id, source, category, anomaly)
            if facts is not samples.get(sample_id):  # samples.jsonl was read on since
                subject_of.cache_clear()
                facts, subject = subject_of(sample_id, source, category, anomaly)
            turns = record["conversations"]
            # The record fits its model: the turns alternate from a human one, so the answers
            # are the odd turns.
            if len(turns) == 2:
                specs, votes = checked_record(subject, turns[1]["value"])
            else:
                specs, votes = checked_record(
                    subject, *[turns[i]["value"] for i in range(1, len(turns), 2)]
                )
            family = meta["task_family"]
            hitters = hitters_of.get(family) or self.new_family(family)
            in_batch[family] = in_batch.get(family, 0) + 1
            counts = hitters.counts
            for key, turn in votes:
                if key in counts:  # HeavyHitters.add's common case, without the call
                    counts[key] += 1
                else:
                    hitters.add(key, record["id"], turn)
            for severity, code, message in specs:
                findings.append(
                    self.finding(severity, code, message, file=file, record_id=record["id"])
                )
        for family, records in in_batch.items():
            hitters_of[family].records += records
            self.files_by_family[family][file] += records
        return findings

    def make_subject(
        self, sample_id: str, source: str, category: str, anomaly: bool
    ) -> tuple[SampleFacts | None, _Subject]:
        """The facts of `sample_id` in the current context, and the subject of its records
        with this metadata: one object for every sample alike (interned, a bounded number)."""
        assert self._context is not None
        facts = self._context.samples.get(sample_id)
        vocabulary = self.vocabulary(self._context, source, category, facts)
        if facts is None:
            value: tuple[object, ...] = (vocabulary, source, category, anomaly, False, False, (), 0)
        else:
            cells, regions = facts.grid_cells, facts.region_count
            located = facts.has_mask and regions > 0 and bool(cells)
            anomaly = facts.label == "anomaly"
            value = (vocabulary, source, category, anomaly, True, located, cells, regions)
        subject = self._subjects.get(value)
        if subject is None:
            if len(self._subjects) >= self.cache_size:
                self._subjects.clear()  # older subjects stay valid, just no longer shared
            subject = self._subjects[value] = _Subject(*value)  # type: ignore[arg-type]
        return facts, subject

    def check_answers(self, subject: _Subject, *answers: str) -> CheckedRecord:
        """The answers of a record (the odd turns, in order) against their subject."""
        checked = self._read_answer
        if len(answers) == 1:  # most records: one answer, without the general assembly
            specs, label, vote = checked(answers[0], 1, True, subject)
            return specs + label, ((vote, 1),) if vote is not None else ()
        read = [checked(text, 2 * n + 1, n == 0, subject) for n, text in enumerate(answers)]
        every = [spec for specs, _, _ in read for spec in specs]
        if read:
            every += read[0][1]
        # One vote per distinct answer of a record, so that a share is a share of records.
        distinct = {  # the first turn of a repeat wins
            vote: 2 * n + 1
            for n, (_, _, vote) in reversed(list(enumerate(read)))
            if vote is not None
        }
        return tuple(every), tuple(distinct.items())

    def check_answer(self, text: str, index: int, first: bool, subject: _Subject) -> Checked:
        """Everything of one answer (turn `index`), from its text and its subject alone."""
        lowered = text.lower()
        stripped = lowered.strip()
        if not stripped:
            return EMPTY_ANSWER  # the conversation check's empty_turn says so, once
        where = TURN_NAMES[index] if index < len(TURN_NAMES) else f"turn {index}"
        specs = self.hygiene(where, text, lowered)
        words = None
        if subject.known:
            if subject.anomaly:  # its grid words, read once for its claims and its label
                words = self.grid_words(subject.vocabulary, lowered)
            specs += self.claims(subject, where, lowered, words)
        label = self.label(subject, where, lowered, words) if first else ()
        # The hash is Python's own: counts live for one run, and 8 bytes cost no text.
        return tuple(specs), tuple(label), hash(stripped)

    def vocabulary(
        self, context: FolderContext, source: str, category: str, facts: SampleFacts | None
    ) -> Vocabulary:
        sample_names: tuple[str, ...] = ()
        if facts is not None:
            source, category, sample_names = facts.source, facts.category, facts.defect_types
        # Keyed by the sample's own names too, in case the context lacks some of them.
        key = (source, category, sample_names)
        vocabulary = self._vocabularies.get(key)
        if vocabulary is None:
            raw = set(context.defect_names.get((source, category), ())) | set(sample_names)
            release = set(raw)
            for (other_source, _), names in context.defect_names.items():
                if other_source == source:
                    release |= names
            categories = {category, humanise(category), category_name(category)}
            categories = {name.lower() for name in categories | {object_phrase(category)}}
            humanised = humanised_names(raw)
            plain = plain_names(humanised)
            vocabulary = self._vocabularies[key] = Vocabulary(
                defect_names=frozenset(humanised),
                release_names=frozenset(humanised_names(release)),
                category_names=frozenset(categories),
                grid_names=names_holding_grid_words(
                    {name.lower() for name in raw} | humanised | categories
                ),
                plain_names=plain,
                plain_words=max((len(name.split()) for name in plain), default=0),
            )
        return vocabulary

    def hygiene(self, where: str, text: str, lowered: str) -> list[Spec]:
        """Refusals and truncation of a non-empty answer."""
        specs: list[Spec] = []
        if is_refusal(lowered):
            specs.append(("error", "refusal", f"{where} refuses: {text[:80]!r}"))
        reason = truncation(text)
        if reason:
            specs.append(("warning", "truncated_answer", f"{where} looks truncated: {reason}"))
        return specs

    def label(
        self, subject: _Subject, where: str, lowered: str, words: list[str] | None = None
    ) -> list[Spec]:
        """The first answer's yes/no (or its plain claim) against the sample's label."""
        polarity = leading_polarity(lowered)
        if polarity is not None:
            if (polarity == "yes") == subject.anomaly:
                return []
            truth = "an anomalous" if subject.anomaly else "a normal"
            message = f"{where} answers {polarity!r} on {truth} image"
        elif subject.anomaly:
            if not self.claims_normal(subject.vocabulary, lowered, words):
                return []
            message = f"{where} says the object is normal on an anomalous image"
        else:
            stated = self.stated_defect(subject.vocabulary, lowered)
            if stated is None:
                return []
            message = f"{where} states a {stated!r} defect on a normal image"
        return [("error", "label_contradiction", message)]

    def claims_normal(
        self, vocabulary: Vocabulary, lowered: str, words: list[str] | None = None
    ) -> bool:
        """Whether the text says the object is normal and says nothing of a defect. `words`
        are its grid words, if read already: a stated location is something of a defect."""
        if words and vocabulary.grid_names is None:
            # Exactly what the reading below decides: no claim holds a grid word, and blanking
            # claims keeps a word's edges, so the rest states those words too. (A name that
            # holds a grid word could start to match once a claim beside it is blanked.)
            return False
        spans = normal_claims(lowered)
        if not spans:
            return False
        rest = lowered
        for start, end in spans:
            rest = rest[:start] + " " * (end - start) + rest[end:]
        if any(stem in rest for stem in FLAW_STEMS) or self.grid_words(vocabulary, rest):
            return False  # "the rest of it looks normal" next to a stated defect
        return not any(name in rest for name in vocabulary.defect_names)

    def stated_defect(self, vocabulary: Vocabulary, lowered: str) -> str | None:
        """A defect name of the category stated plainly ('with a crack defect'), if any."""
        if "defect" not in lowered or has_negation(lowered):
            return None  # "no sign of a crack defect" is no claim
        for stated, before in defect_slots(lowered):
            if before in ARTICLES and name_known(stated, vocabulary.defect_names):
                return stated
        return None

    def claims(
        self, subject: _Subject, where: str, lowered: str, words: list[str] | None = None
    ) -> list[Spec]:
        """Location words, region counts and defect names of one answer of a known sample;
        locations are checked when its mask has regions in grid cells (`located`). `words`
        are an anomaly's grid words, if read already."""
        counts = count_claims(lowered) if "region" in lowered else []
        if not subject.anomaly:
            # A normal image has no anomalous region (its object may still have a "top", so
            # its grid words are not read) and no defect name to check.
            return [
                ("error", "count_mismatch", f"{where} states {count} region(s); the mask has 0")
                for count in dict.fromkeys(counts)
                if count != 0
            ]
        if words is None:
            words = self.grid_words(subject.vocabulary, lowered)
        specs: list[Spec] = []
        if not subject.located:
            if words or counts:
                stated = ", ".join([*dict.fromkeys(words), *(f"{n} region(s)" for n in counts)])
                message = f"{where} states {stated} but the sample has no mask to support it"
                specs.append(("error", "location_without_mask", message))
        else:
            cells = subject.grid_cells
            wrong = [word for word in dict.fromkeys(words) if word not in cells]
            if wrong:
                message = (
                    f"{where} states {', '.join(wrong)}; the mask's grid cells are "
                    f"{', '.join(cells)}"
                )
                specs.append(("error", "location_mismatch", message))
            expected = subject.region_count
            for count in dict.fromkeys(counts):
                if count != expected:
                    message = f"{where} states {count} region(s); the mask has {expected}"
                    specs.append(("error", "count_mismatch", message))
        if "defect" in lowered or "abnormalit" in lowered:
            specs += self.defect_names(subject, where, lowered)
        return specs

    def defect_names(self, subject: _Subject, where: str, lowered: str) -> list[Spec]:
        vocabulary = subject.vocabulary
        if (
            vocabulary.plain_names
            and '" kind' not in lowered  # OTHER_KIND's names: the full reading
            and names_only_known_defects(lowered, vocabulary.plain_names, vocabulary.plain_words)
        ):
            return []
        specs: list[Spec] = []
        for stated, before in defect_slots(lowered):
            if (
                before not in ARTICLES
                or not stated
                or stated in vocabulary.category_names  # "a capsule defect" names no defect
                or name_known(stated, vocabulary.defect_names)
            ):
                continue
            if name_known(stated, vocabulary.release_names):
                severity: Severity = "error"
                what = "a defect of another category of the release"
            elif vocabulary.defect_names:
                severity, what = "warning", "not a defect name of the release"
            else:
                continue  # the release names no defects here: nothing to compare with
            message = (
                f"{where} names {stated!r}, {what}; {subject.source}/{subject.category} "
                f"has {sorted(vocabulary.defect_names)}"
            )
            specs.append((severity, "unknown_defect_name", message))
        return specs

    @staticmethod
    def grid_words(vocabulary: Vocabulary, lowered: str) -> list[str]:
        """Grid words of a lower-cased text once names holding one are blanked: the defect
        'misplaced label top' states no location."""
        window = grid_window(lowered)
        if window is None:
            return []
        pattern = vocabulary.grid_names
        if pattern is not None:
            lowered = pattern.sub(BLANK, lowered)
            window = grid_window(lowered)
            if window is None:
                return []
        return grid_words_in(lowered[window[0] : window[1]])

    # -- across records -----------------------------------------------------------------

    def new_family(self, family: str) -> HeavyHitters:
        """The answer counts of a task family seen for the first time (`check_batch` counts
        each record's answers there, and the records of each file)."""
        hitters = self.answers_by_family[family] = HeavyHitters(self.boilerplate_capacity)
        self.files_by_family[family] = defaultdict(int)
        return hitters

    def finish(self, context: FolderContext) -> Iterable[Finding]:
        findings = []
        for family, hitters in sorted(self.answers_by_family.items()):
            if hitters.records < self.boilerplate_min_records:
                continue
            files = self.files_by_family[family]
            file = max(files, key=files.__getitem__)  # the file with most of them (the first)
            frequent = hitters.frequent(self.boilerplate_share)
            for key, count in sorted(frequent, key=lambda item: -item[1]):
                first, turn = hitters.first_record[key]
                share = count / hitters.records
                findings.append(
                    self.finding(
                        "warning",
                        "repeated_boilerplate",
                        f"the answer of turn {turn} of record {first} appears in at least "
                        f"{count} of {hitters.records} {family} records ({share:.0%}, "
                        f"more than {self.boilerplate_share:.0%})",
                        file=file,
                        record_id=first,
                    )
                )
        return findings
