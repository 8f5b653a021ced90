"""VisualWebArena's scoring rules as pure functions: answers, URLs, required page contents, image queries.

Two behaviours, chosen per call with ``mode``: ``"fixed"`` (default) and ``"official"`` (VWA's rules,
bugs included, so scores compare with published numbers). Official mode tokenises as VWA does, with
nltk's own word tokenizer (see ``official_tokens`` for the one place it can differ from VWA's punkt data).

Differences of ``fixed`` from VWA (numbers refer to the bug list in shared/vwa/EVALUATORS.md):

1. Phrase matching (must_include, must_exclude, one_of, VQA answers) is one rule for every reference,
   single- or multi-token: the reference must occur in the prediction with no letter or digit glued
   to its start, and no digit glued to its end (``id=4208`` does not match ``id=42081``, ``$80`` does
   not match ``$800``) (bugs 1, 2). Numbers are compared after dropping thousands separators, and a
   trailing ``.00`` is allowed (``1200`` matches ``$1,200``; ``30000`` matches ``30000.00``) (bugs 1, 4).
   A sentence full stop does not stick to a number (``21`` matches ``21. thanks``) (bug 3).
   must_include and one_of accept a plural ``s``/``es`` after a word (``croc`` matches ``crocs``);
   must_exclude does not (excluding ``Art`` does not hit ``ArtisanVideos``).
   one_of no longer matches inside a word (``round`` does not match ``around``) (bug 5).
2. Surrounding whitespace is stripped from answers, page texts and references before comparing (not in
   EVALUATORS.md's list, a fix of the same kind): whitespace around a text carries no meaning, and a page
   text read with ``textContent`` keeps the markup's line breaks and indentation, so VWA fails
   ``exact_match`` on a correct page for how its HTML is indented, and on an answer with a stray space.
3. required_contents applies every key it has (their product), not the first of an if/elif chain,
   so must_exclude counts next to must_include (bug 6).
4. A whole-page locator (``""``) is compared against the HTML with entities unescaped (``&amp;`` -> ``&``)
   (bug 7); ``lambda:`` is removed as a prefix, not as a character set (bug 8).
5. required_values: ``<`` and ``>`` are strict (bug 9).
6. page_image_query multiplies every query's score (bug 10); a VQA answer must match as a phrase,
   so ``no`` is not found in "i don't know" (bug 11).
7. url_match ``GOLD in PRED``: the reference must end at a boundary of the predicted URL
   (``/82896`` does not match ``/828961``) (bug 12).
8. fuzzy_match "N/A" takes part in the product instead of overwriting it (bug 13); with no judge
   configured, a fuzzy reference that exact matching cannot settle leaves the task "needs_judge"
   rather than failed.
9. A reference image that cannot be read (reddit 184's hostless ``media/...``) is skipped, not fatal (bug 15).

Bug 14 (the Postmill latest-comment helpers) lives in ``envs.web.site_helpers``.
"""

from __future__ import annotations

import functools
import html
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from data_tools.errors import UserFacingError

MODES = ("fixed", "official")
OR_SEPARATOR = " |OR| "
PASS, FAIL, NEEDS_JUDGE, UNSUPPORTED = "pass", "fail", "needs_judge", "unsupported"

# judge(prediction, reference, intent) -> True when the prediction means the reference
FuzzyJudge = Callable[[str, str, str], bool]


class EvaluationConfigError(UserFacingError, ValueError):
    """An evaluation block that cannot be scored; names the task field and the fix."""


@dataclass
class Verdict:
    """A 0/1 outcome with its status; ``needs_judge``/``unsupported`` mean "undecided", not failed."""

    status: str = PASS
    notes: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        return 1.0 if self.status == PASS else 0.0

    def combine(self, other: Verdict) -> Verdict:
        """The product of two verdicts: a fail beats undecided, undecided beats pass."""
        order = (FAIL, UNSUPPORTED, NEEDS_JUDGE, PASS)
        status = min(self.status, other.status, key=order.index)
        return Verdict(status, self.notes + other.notes)


def verdict(passed: bool, note: str = "") -> Verdict:
    return Verdict(PASS if passed else FAIL, [note] if note and not passed else [])


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise EvaluationConfigError(f"unknown evaluator mode {mode!r}; use one of {', '.join(MODES)}")
    return mode


# ----------------------------------------------------------------------------------------- text rules


def clean_answer(text: str, mode: str = "fixed") -> str:
    """Drop one pair of surrounding quotes (``'`` first, as VWA) and lowercase (fixed: also strip whitespace)."""
    text = str(text).strip() if mode == "fixed" else str(text)
    for quote in ("'", '"'):
        if text.startswith(quote) and text.endswith(quote):
            text = text[1:-1]
            break
    return text.strip().lower() if mode == "fixed" else text.lower()


@functools.cache
def _nltk_tokenizers() -> tuple[Any, Any]:
    """nltk's punkt sentence splitter (no trained parameters) and its Treebank word tokenizer, built once."""
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer(), NLTKWordTokenizer()


def official_tokens(text: str) -> list[str]:
    """The tokens of VWA's ``nltk.word_tokenize(text)``: punkt sentences, each split by nltk's word tokenizer.

    ``word_tokenize`` splits sentences with punkt's trained English model, which is nltk data that is
    downloaded separately (and never at test time here). Sentences matter because the word tokenizer
    splits a period off only at a sentence's end (``it is pink. thanks`` -> ``pink``, ``.``). Here punkt's
    own algorithm runs with no trained parameters instead. On lowercased text (VWA lowercases before it
    tokenizes) the two differ only where the trained parameters decide. (1) A word the English model lists
    as an abbreviation (~150: ``mrs``, ``st``, ``bros``, ``ft``, ``u.s``, ``l``, ...), or a hyphenated word
    whose last part is one (``2x-l``), with text after it: VWA keeps ``st.`` as one token, this gives
    ``st``, ``.``. (2) After a number, VWA ends a sentence before four rare words (``administrators``,
    ``b-week``, ``r-revised``, ``z-holiday``) and this does not. Of the 1,102 distinct answer and
    reference strings in VWA's 910 task configurations, 6 tokenise differently (``st. patrick's day``,
    ``super smash bros. series``), and no must_include or must_exclude reference changes between one
    token and several (tests/test_web_evaluators.py pins both).
    """
    sentences, words = _nltk_tokenizers()
    return [token for sentence in sentences.tokenize(text) for token in words.tokenize(sentence)]


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def _normalise_numbers(text: str) -> str:
    return _THOUSANDS.sub("", text)


def contains_phrase(prediction: str, reference: str, allow_plural: bool = False) -> bool:
    """The fixed phrase rule (see the module docstring); both sides are lowercased first."""
    prediction, reference = _normalise_numbers(prediction.lower()), _normalise_numbers(reference.lower().strip())
    if not reference:
        return True
    start = r"(?<![0-9a-z])" if reference[0].isalnum() else ""
    end = ""
    if reference[-1].isdigit():
        end = r"(?:(?=\.0+(?!\d))|(?!\d)(?!\.\d))"
    elif reference[-1].isalpha():
        end = r"(?:e?s)?(?![0-9a-z])" if allow_plural else r"(?![0-9a-z])"
    return re.search(start + re.escape(reference) + end, prediction) is not None


def must_include(prediction: str, reference: str, mode: str = "fixed") -> bool:
    """Any ``|OR|`` alternative of ``reference`` is in the prediction."""
    return any(_included(prediction, option, mode) for option in reference.split(OR_SEPARATOR))


def _included(prediction: str, reference: str, mode: str, allow_plural: bool = True) -> bool:
    if mode == "fixed":
        return contains_phrase(clean_answer(prediction, mode), clean_answer(reference, mode), allow_plural)
    prediction, reference = clean_answer(prediction, mode), clean_answer(reference, mode)
    if len(official_tokens(reference)) == 1:
        return reference in official_tokens(prediction)
    return reference in prediction


def must_exclude(prediction: str, reference: str, mode: str = "fixed") -> bool:
    """True when ``reference`` is absent from the prediction (no ``|OR|`` here, as in VWA)."""
    return not _included(prediction, reference, mode, allow_plural=False)


def exact_match(prediction: str, reference: str, mode: str = "fixed") -> bool:
    return clean_answer(prediction, mode) == clean_answer(reference, mode)


def one_of(prediction: str, references: Sequence[str], mode: str = "fixed") -> bool:
    if mode == "fixed":
        return any(
            contains_phrase(clean_answer(prediction), clean_answer(ref), allow_plural=True) for ref in references
        )
    return any(clean_answer(ref, mode) in clean_answer(prediction, mode) for ref in references)


def fuzzy_match(
    prediction: str,
    reference: Any,
    intent: str,
    judge: FuzzyJudge | None,
    mode: str = "fixed",
    string_note: str = "",
) -> Verdict:
    """``"N/A"`` (an unanswerable task): exact match, else the judge; a list: the judge on every item.

    For ``"N/A"`` the judge compares the prediction with ``string_note``, the task's stated reason why it
    cannot be done (VWA's ``llm_ua_match`` asks the same), or with ``"N/A"`` when the task has none.
    """
    if reference == "N/A":
        if exact_match(prediction, "N/A", mode):
            return Verdict(PASS)
        return _judged(prediction, [string_note or "N/A"], intent, judge)
    return _judged(prediction, [reference] if isinstance(reference, str) else list(reference), intent, judge)


def _judged(prediction: str, references: Sequence[str], intent: str, judge: FuzzyJudge | None) -> Verdict:
    """The judge's verdict on every reference (their product); undecided when no judge is configured."""
    if judge is None:
        return Verdict(NEEDS_JUDGE, [f"fuzzy_match {list(references)!r} needs a judge; pass fuzzy_judge= to score it"])
    result = Verdict(PASS)
    for item in references:
        result = result.combine(verdict(judge(prediction, item, intent), f"judge rejected {item!r}"))
    return result


def string_match(
    answer: str,
    references: Mapping[str, Any],
    intent: str = "",
    judge: FuzzyJudge | None = None,
    mode: str = "fixed",
    string_note: str = "",
) -> Verdict:
    """The product over VWA's reference_answers keys (exact_match, must_include, must_exclude, one_of, fuzzy_match).

    ``string_note`` is the task's ``eval.string_note``: for a ``"N/A"`` fuzzy_match, the reason the task
    cannot be done, which the judge compares the prediction with.
    """
    check_mode(mode)
    # as VWA: the answer is cleaned once up front, and exact_match/must_include/must_exclude clean it
    # again (so a second pair of quotes goes too); one_of and the judge see it cleaned once
    cleaned = clean_answer(answer, mode)
    result = Verdict(PASS)
    for key, value in references.items():
        if key == "exact_match":
            result = result.combine(verdict(exact_match(cleaned, value, mode), f"answer is not exactly {value!r}"))
        elif key == "must_include":
            for item in value:
                result = result.combine(verdict(must_include(cleaned, item, mode), f"answer lacks {item!r}"))
        elif key == "must_exclude":
            for item in value:
                result = result.combine(verdict(must_exclude(cleaned, item, mode), f"answer contains {item!r}"))
        elif key == "one_of":
            result = result.combine(verdict(one_of(answer, value, mode), f"answer has none of {value!r}"))
        elif key == "fuzzy_match" and mode == "official" and value == "N/A":
            # VWA bug 13: the product so far survives only when it is 1 and the answer is exactly N/A;
            # otherwise the judge's verdict replaces it
            if not (result.status == PASS and exact_match(cleaned, "N/A", mode)):
                result = _judged(cleaned, [string_note or "N/A"], intent, judge)
        elif key == "fuzzy_match":
            result = result.combine(fuzzy_match(cleaned, value, intent, judge, mode, string_note))
        else:
            raise EvaluationConfigError(
                f"unknown reference_answers key {key!r}; "
                "use exact_match, must_include, must_exclude, one_of or fuzzy_match"
            )
    return result


# ------------------------------------------------------------------------------------------------ URLs


def clean_url(url: str) -> str:
    url = str(url).replace("localhost", "127.0.0.1")
    return url[:-1] if url.endswith("/") else url


def url_match(prediction: str, reference: str, note: str | None = "EXACT", mode: str = "fixed") -> Verdict:
    """``EXACT`` (default): the URL is one of the ``|OR|`` references; ``GOLD in PRED``: a reference is in it."""
    check_mode(mode)
    predicted = clean_url(prediction)
    references = [clean_url(ref) for ref in reference.split(OR_SEPARATOR)]
    note = note or "EXACT"
    if note == "EXACT":
        return verdict(predicted in references, f"url {predicted} is not one of {references}")
    if note == "GOLD in PRED":
        if mode == "official":
            return verdict(any(ref in predicted for ref in references), f"no reference URL in {predicted}")
        found = any(
            re.search(re.escape(ref) + (r"(?![0-9A-Za-z])" if ref[-1:].isalnum() else ""), predicted)
            for ref in references
            if ref
        )
        return verdict(found, f"no reference URL ends at a boundary in {predicted}")
    raise EvaluationConfigError(f"unknown url_note {note!r}; use EXACT or 'GOLD in PRED'")


# ---------------------------------------------------------------------------------- required contents


def parse_number(text: str) -> float:
    """VWA's str_2_int: strip, drop commas; NaN when it is not a number."""
    try:
        return float(str(text).strip().replace(",", ""))
    except ValueError:
        return math.nan


def required_value(content: str, condition: str, mode: str = "fixed") -> bool:
    """``condition`` is like ``"< 70"``, ``">= 3"``, ``"== 2"``; the content must be a number satisfying it."""
    value = parse_number(content)
    match = re.fullmatch(r"\s*(<=|>=|==|<|>)\s*(.+?)\s*", condition)
    if match is None:
        raise EvaluationConfigError(f"required_values {condition!r} must be '<op> <number>' with op in <= >= == < >")
    op, target = match.group(1), parse_number(match.group(2))
    if math.isnan(value) or math.isnan(target):
        return False
    tolerance = 1e-8
    strict = mode == "fixed"
    return {
        "<=": value <= target + tolerance,
        ">=": value >= target - tolerance,
        "==": abs(value - target) <= tolerance,
        "<": value < target - tolerance if strict else value <= target + tolerance,
        ">": value > target + tolerance if strict else value >= target - tolerance,
    }[op]


def required_contents(
    content: str, contents: Mapping[str, Any], judge: FuzzyJudge | None = None, intent: str = "", mode: str = "fixed"
) -> Verdict:
    """Score one program_html target's text; fixed applies every key, official only the first (VWA's elif)."""
    check_mode(mode)
    keys = [
        k for k in ("exact_match", "must_include", "must_exclude", "required_values", "fuzzy_match") if k in contents
    ]
    unknown = set(contents) - set(keys)
    if unknown:
        raise EvaluationConfigError(
            f"unknown required_contents key(s) {sorted(unknown)}; see VWA's program_html format"
        )
    if mode == "official":
        keys = keys[:1]
    result = Verdict(PASS)
    for key in keys:
        value = contents[key]
        items = value if isinstance(value, list) else [value]
        for item in items:
            if key == "exact_match":
                ok = exact_match(content, item, mode)
            elif key == "must_include":
                ok = must_include(content, item, mode)
            elif key == "must_exclude":
                ok = must_exclude(content, item, mode)
            elif key == "required_values":
                ok = required_value(content, item, mode)
            else:
                for option in item.split(OR_SEPARATOR):
                    result = result.combine(fuzzy_match(content, option, intent, judge, mode))
                continue
            result = result.combine(verdict(ok, f"{key} {item!r} failed on {content[:200]!r}"))
    return result


def unescape_page_html(page_html: str, mode: str = "fixed") -> str:
    """The whole-page text a ``""`` locator compares against (fixed: entities unescaped)."""
    return html.unescape(page_html) if mode == "fixed" else page_html


def lambda_locator_script(locator: str, mode: str = "fixed") -> str:
    """The script of a ``lambda:`` locator (official: ``str.lstrip("lambda:")``, which eats a character set, bug 8)."""
    if mode == "official":
        return locator.lstrip("lambda:")  # noqa: B005  (VWA bug 8, reproduced)
    return locator.removeprefix("lambda:")


# -------------------------------------------------------------------------------------- page images


def vqa_answer_found(outputs: Sequence[str], answer: str, mode: str = "fixed") -> bool:
    """Whether any VQA output gives ``answer`` (official: as a substring, so ``no`` is in "i don't know", bug 11)."""
    answer = str(answer).lower()
    if mode == "official":
        return any(answer in output.lower() for output in outputs)
    return any(contains_phrase(output.lower(), answer) for output in outputs)


def image_queries_product(so_far: Verdict, query: Verdict, mode: str = "fixed") -> Verdict:
    """page_image_query's score after one more query (official: the last query's alone, bug 10)."""
    return query if mode == "official" else so_far.combine(query)
