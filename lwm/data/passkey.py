"""Passkey documents for retrieval: filler text with "needles" at chosen depths.

English-like filler sentences come from templates (no digits, no city names, no "magic"), and
needles ("The special magic {city} number is: {7 digits}.") are inserted at the sentence
boundary nearest each requested depth, as in LWM's needle-in-a-haystack test. Pure numpy,
deterministic for the generator it is given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from lwm.config.synthetic import MAX_NEEDLES

CITIES = ("Amsterdam", "Athens", "Bangkok", "Barcelona", "Berlin", "Bogota", "Budapest",
          "Cairo", "Chicago", "Dublin", "Havana", "Istanbul", "Jakarta", "Kyoto", "Lagos", "Lima",
          "Lisbon", "London", "Madrid", "Manila", "Melbourne", "Montreal", "Mumbai", "Nairobi",
          "Oslo", "Paris", "Prague", "Rome", "Santiago", "Seoul", "Stockholm", "Sydney", "Tokyo",
          "Toronto", "Vienna", "Warsaw")
assert len(CITIES) >= MAX_NEEDLES

_WORDS = {
    "colour": ("red", "green", "blue", "yellow", "grey", "silver", "amber", "violet"),
    "kind": ("square", "circle", "triangle", "disc", "block", "ring"),
    "weather": ("rain", "fog", "wind", "snow", "sunshine", "drizzle", "hail", "mist"),
    "place": ("valley", "harbour", "meadow", "market", "hillside", "garden", "courtyard",
              "shore", "plain", "forest"),
    "time": ("dawn", "noon", "dusk", "midnight", "the early morning", "the late afternoon"),
    "season": ("spring", "summer", "autumn", "winter"),
    "verb": ("drifted", "rolled", "slid", "bounced", "wandered", "glided", "tumbled"),
    "adjective": ("quiet", "bright", "heavy", "gentle", "cold", "warm", "strange", "pale"),
    "person": ("the painter", "an old sailor", "the gardener", "a traveller", "the children",
               "the baker", "a shepherd"),
}
_TEMPLATES = (
    "The {colour} {kind} {verb} slowly across the {place}.",
    "In {season} the {weather} came down over the {place} at {time}.",
    "{Person} watched a {colour} {kind} near the {place} until {time}.",
    "Nobody in the {place} remembered a {weather} as {adjective} as that one.",
    "A {adjective} {weather} lingered over the {place} for most of the day.",
    "By {time} the {kind} had {verb} back to the edge of the {place}.",
    "{Person} said the {weather} in {season} was always {adjective}.",
    "Every {kind} in the {place} turned {colour} in the {adjective} light.",
    "When the {weather} stopped, {person} walked down to the {place}.",
    "The {place} was {adjective} and still, and the {colour} {kind} did not move.",
    "Two {colour} shapes {verb} past each other without a sound.",
    "{Person} counted the shapes in the {place} twice and lost track both times.",
    "The forecast promised {weather} for the {place} by {time}.",
    "Far from the {place}, a {adjective} {kind} waited for the {weather} to pass.",
    "It was {season}, and the {weather} made the {place} look {adjective}.",
)


@dataclasses.dataclass(frozen=True)
class Needle:
    """A hidden passkey: `sentence` starts at character `offset` of the document's text."""

    city: str
    number: str
    depth: float
    offset: int

    @property
    def sentence(self) -> str:
        """The needle text, `The special magic {city} number is: {number}.`"""
        return needle_sentence(self.city, self.number)

    @property
    def question(self) -> str:
        """`What is the special magic {city} number?`"""
        return QUESTION_ONE.format(city=self.city)


@dataclasses.dataclass(frozen=True)
class PasskeyDocument:
    """Filler text with one or more needles (distinct cities), in order of offset."""

    index: int
    split: str
    text: str
    needles: tuple[Needle, ...]

    @property
    def city(self) -> str:
        """The first needle's city (the only one in a single-needle document)."""
        return self.needles[0].city

    @property
    def number(self) -> str:
        """The first needle's seven digits."""
        return self.needles[0].number

    @property
    def offset(self) -> int:
        """The first needle's character offset in `text`."""
        return self.needles[0].offset

    @property
    def depth(self) -> float:
        """The first needle's requested depth fraction."""
        return self.needles[0].depth


# LWM's needle and question; `lwm.eval.needle` asks with the same words.
NEEDLE = "The special magic {city} number is: {number}."
QUESTION_ONE = "What is the special magic {city} number?"


def needle_sentence(city: str, number: str) -> str:
    """LWM's needle: `The special magic {city} number is: {number}.`"""
    return NEEDLE.format(city=city, number=number)


def filler_sentences(rng: np.random.Generator, *, num_sentences: int | None = None,
                     num_chars: int | None = None) -> list[str]:
    """Template sentences about shapes and weather: `num_sentences` of them, or as many as make
    `num_chars` characters when joined by spaces (at least one). They hold no digits, city
    names or the word "magic", so a needle is the only match for its own text."""
    if (num_sentences is None) == (num_chars is None):
        raise ValueError("filler_sentences: give exactly one of num_sentences and num_chars")
    sentences: list[str] = []
    length = -1
    while (len(sentences) < num_sentences) if num_sentences is not None else \
            (length < num_chars or not sentences):
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        slots = {key: words[int(rng.integers(len(words)))] for key, words in _WORDS.items()}
        sentence = template.format(Person=slots["person"].capitalize(), **slots)
        sentences.append(sentence)
        length += len(sentence) + 1
    return sentences


def insert_needles(sentences: Sequence[str], needles: Sequence[tuple[str, str, float]],
                   index: int = 0, split: str = "train") -> PasskeyDocument:
    """Joins `sentences` with spaces, inserting each `(city, number, depth)` needle at the
    sentence boundary nearest to character `depth * len(filler)`; needles at one boundary keep
    their given order. Offsets are exact character positions in the returned text."""
    cities = [city for city, _, _ in needles]
    if len(set(cities)) != len(cities):
        raise ValueError(f"insert_needles: cities {cities} are not distinct")
    starts = np.concatenate([[0], np.cumsum([len(sentence) + 1 for sentence in sentences])])
    filler_length = max(0, int(starts[-1]) - 1)
    placed: dict[int, list[tuple[str, str, float]]] = {}
    for city, number, depth in needles:
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"insert_needles: depth {depth} for {city} is outside [0, 1]")
        boundary = int(np.argmin(np.abs(starts - depth * filler_length)))
        placed.setdefault(boundary, []).append((city, number, depth))
    pieces: list[str] = []
    found: list[Needle] = []
    offset = 0
    for boundary in range(len(sentences) + 1):
        for city, number, depth in placed.get(boundary, []):
            found.append(Needle(city, number, float(depth), offset))
            pieces.append(needle_sentence(city, number))
            offset += len(pieces[-1]) + 1
        if boundary < len(sentences):
            pieces.append(sentences[boundary])
            offset += len(pieces[-1]) + 1
    return PasskeyDocument(index, split, " ".join(pieces), tuple(found))


def make_passkey_document(rng: np.random.Generator, *, num_needles: int = 1,
                          depths: Sequence[float] | None = None,
                          num_sentences: int | None = None, num_chars: int | None = None,
                          index: int = 0, split: str = "train") -> PasskeyDocument:
    """A filler document with `num_needles` needles: distinct cities, distinct random 7-digit
    numbers and `depths` (random distinct fractions in [0, 1] when not given). With `num_chars`
    the whole document, needles included, is about that long (within one sentence)."""
    if not 1 <= num_needles <= len(CITIES):
        raise ValueError(f"num_needles={num_needles} must lie in [1, {len(CITIES)}]")
    if depths is None:
        depths = sorted(float(d) for d in rng.choice(1001, size=num_needles, replace=False) / 1000)
    if len(depths) != num_needles:
        raise ValueError(f"got {len(depths)} depths for {num_needles} needles")
    cities = [CITIES[int(i)] for i in rng.choice(len(CITIES), size=num_needles, replace=False)]
    numbers = [str(n) for n in rng.choice(9_000_000, size=num_needles, replace=False) + 1_000_000]
    needles = list(zip(cities, numbers, depths))
    if num_chars is not None:
        num_chars = max(1, num_chars - sum(len(needle_sentence(c, n)) + 1 for c, n, _ in needles))
    sentences = filler_sentences(rng, num_sentences=num_sentences, num_chars=num_chars)
    return insert_needles(sentences, needles, index, split)
