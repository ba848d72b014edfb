"""RULER's scoring (`scripts/eval/synthetic/constants.py` and `evaluate.py`).

A prediction is first cleaned as RULER does (stripped; control characters become newlines).
- `string_match_all` (every synthetic task): the share of references that appear in the
  prediction, case-insensitively, averaged over samples, in percent.
- `string_match_part` (QA): 1 when any reference appears, averaged over samples, in percent.
  (lm-eval-harness's port takes the maximum over samples instead of the mean; this follows
  RULER's `scripts/eval/synthetic/constants.py`.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(prediction: str) -> str:
    """RULER's cleaning of a prediction: strip, control characters to newlines, strip."""
    return _CONTROL.sub("\n", prediction.strip()).strip()


def match_all(prediction: str, references: Sequence[str]) -> float:
    """The share (0..1) of `references` found in one prediction, ignoring case."""
    text = postprocess(prediction).lower()
    return sum(reference.lower() in text for reference in references) / len(references)


def match_part(prediction: str, references: Sequence[str]) -> float:
    """1.0 when any reference is found in one prediction, ignoring case; else 0.0."""
    text = postprocess(prediction).lower()
    return float(any(reference.lower() in text for reference in references))


def reference_hits(prediction: str, references: Sequence[str]) -> list[bool]:
    """For each reference, whether the cleaned prediction contains it (ignoring case)."""
    text = postprocess(prediction).lower()
    return [reference.lower() in text for reference in references]


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """RULER's metric for the synthetic tasks, in percent (rounded to 2 decimals as RULER does)."""
    scores = [match_all(p, r) for p, r in zip(predictions, references, strict=True)]
    return round(100.0 * sum(scores) / len(scores), 2)


def string_match_part(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """RULER's metric for QA, in percent (rounded to 2 decimals)."""
    scores = [match_part(p, r) for p, r in zip(predictions, references, strict=True)]
    return round(100.0 * sum(scores) / len(scores), 2)


def score(prediction: str, references: Sequence[str], metric: str) -> float:
    """One sample's score (0..1) under `metric` ("all" or "part")."""
    if metric == "all":
        return match_all(prediction, references)
    if metric == "part":
        return match_part(prediction, references)
    raise ValueError(f"metric {metric!r}: use 'all' or 'part'")
