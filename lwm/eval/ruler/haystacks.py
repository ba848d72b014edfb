"""RULER's haystacks and values: noise sentences, an essay, words, numbers and UUIDs.

- Noise (RULER's `repeat` haystack): "The grass is green. The sky is blue. ..." repeated.
- Essay (RULER's `essay` haystack, Paul Graham's essays there): any local UTF-8 text; a
  built-in generated essay (template sentences with no digits and no "magic") serves tests and
  the demo, so nothing is downloaded.
- Values: 7-digit numbers, `adjective-noun` words and version-4 UUIDs, as RULER draws them.
- Pseudo-words (common / frequent words extraction): pronounceable syllable strings, distinct
  and unbounded in number (RULER samples English dictionary words; a list large enough for 1M
  tokens would have to be downloaded).

Everything is drawn from a `numpy.random.Generator`, so a seed regenerates the same items.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lwm.data.passkey import filler_sentences
from lwm.errors import LwmError

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
VALUE_TYPES = ("numbers", "words", "uuids")

ADJECTIVES = (
    "able", "absent", "acid", "agile", "alert", "ample", "ancient", "angry", "arctic", "ashamed",
    "awake", "bashful", "bitter", "blank", "bold", "brave", "brief", "brisk", "broad", "busy",
    "calm", "careful", "cheerful", "chilly", "clever", "cloudy", "clumsy", "coarse", "crisp", "curious",
    "damp", "daring", "deep", "dizzy", "dusty", "eager", "early", "elated", "empty", "fancy",
    "fierce", "flat", "fluffy", "foggy", "fragile", "frosty", "funny", "gentle", "giant", "glossy",
    "grumpy", "handy", "happy", "hasty", "hollow", "honest", "humble", "hungry", "icy", "idle",
    "jolly", "juicy", "keen", "kind", "lazy", "little", "lively", "loud", "lucky", "mellow",
    "messy", "mighty", "modest", "muddy", "narrow", "neat", "nervous", "noisy", "odd", "orange",
    "pale", "plain", "polite", "proud", "puzzled", "quick", "quiet", "rapid", "rare", "rough",
    "rusty", "salty", "scary", "shaggy", "shiny", "shy", "silent", "silky", "sleepy", "slim",
    "smooth", "soft", "sour", "spicy", "steady", "sticky", "stormy", "sunny", "sweet", "swift",
    "tall", "tame", "tender", "thirsty", "tidy", "tiny", "tough", "vast", "warm", "wary",
    "weary", "wicked", "wild", "windy", "wise", "witty", "wooden", "young", "zany", "zealous",
)
NOUNS = (
    "acorn", "anchor", "apple", "arrow", "badge", "bakery", "balloon", "banjo", "barn", "basket",
    "beacon", "beetle", "bell", "bench", "bicycle", "blanket", "boat", "bottle", "bridge", "bucket",
    "button", "cabin", "camel", "candle", "canoe", "carpet", "castle", "cellar", "chair", "cherry",
    "chimney", "cliff", "clock", "cloud", "comet", "compass", "cookie", "cottage", "crayon", "crown",
    "cupboard", "curtain", "daisy", "desert", "diamond", "dolphin", "donkey", "dragon", "drum", "eagle",
    "engine", "falcon", "feather", "fence", "ferry", "fiddle", "forest", "fountain", "garden", "garlic",
    "giraffe", "glacier", "goblet", "guitar", "hammer", "harbor", "helmet", "hedgehog", "island", "jacket",
    "jelly", "kettle", "kitten", "ladder", "lantern", "lemon", "lighthouse", "lizard", "magnet", "mango",
    "meadow", "mirror", "mitten", "monkey", "mountain", "mushroom", "napkin", "needle", "notebook", "oasis",
    "octopus", "orchard", "otter", "owl", "paddle", "painting", "parrot", "peach", "pebble", "pelican",
    "pencil", "piano", "pillow", "pirate", "planet", "pocket", "pony", "pumpkin", "puppet", "quilt",
    "rabbit", "radish", "raft", "ribbon", "river", "rocket", "saddle", "sailor", "scarf", "shovel",
    "skate", "sparrow", "spider", "spoon", "squirrel", "statue", "teapot", "tiger", "tractor", "trumpet",
    "tunnel", "turtle", "umbrella", "valley", "violin", "wagon", "walnut", "whistle", "window", "zebra",
)
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "tr", "pl", "st")
_VOWELS = ("a", "e", "i", "o", "u")


def random_number(rng: np.random.Generator, digits: int = 7) -> str:
    """A number of exactly `digits` digits (RULER's needle values)."""
    return str(int(rng.integers(10 ** (digits - 1), 10 ** digits)))


def random_word(rng: np.random.Generator) -> str:
    """An `adjective-noun` word, as RULER forms its word keys and values."""
    return f"{ADJECTIVES[int(rng.integers(len(ADJECTIVES)))]}-{NOUNS[int(rng.integers(len(NOUNS)))]}"


def random_uuid(rng: np.random.Generator) -> str:
    """A version-4 UUID from the generator's bits (reproducible, unlike `uuid.uuid4`)."""
    bits = int.from_bytes(rng.bytes(16), "big")
    return str(uuid.UUID(int=bits, version=4))


def random_value(rng: np.random.Generator, kind: str) -> str:
    """A value of RULER's type `kind`: "numbers", "words" or "uuids"."""
    if kind == "numbers":
        return random_number(rng)
    if kind == "words":
        return random_word(rng)
    if kind == "uuids":
        return random_uuid(rng)
    raise ValueError(f"value type {kind!r}: use one of {', '.join(VALUE_TYPES)}")


def distinct_values(rng: np.random.Generator, kind: str, count: int, avoid: Iterable[str] = ()) -> list[str]:
    """`count` values of type `kind`, all different from each other and from `avoid`."""
    taken = set(avoid)
    values: list[str] = []
    while len(values) < count:
        value = random_value(rng, kind)
        if value not in taken:
            taken.add(value)
            values.append(value)
    return values


def pseudo_words(rng: np.random.Generator, count: int, length: int = 3, avoid: Iterable[str] = ()) -> list[str]:
    """`count` distinct pronounceable words of `length` syllables (e.g. "tobira")."""
    syllables = np.asarray([onset + vowel for onset in _ONSETS for vowel in _VOWELS])
    taken = set(avoid)
    words: list[str] = []
    while len(words) < count:
        # Draw in bulk (a 1M-token list needs ~10^5 words); duplicates are dropped in order.
        batch = rng.integers(len(syllables), size=(max(16, count - len(words)) + 8, length))
        for row in syllables[batch]:
            word = "".join(row)
            if word not in taken:
                taken.add(word)
                words.append(word)
                if len(words) == count:
                    break
    return words


def coded_words(rng: np.random.Generator, count: int, letters: int = 6) -> list[str]:
    """`count` distinct random lower-case strings of `letters` letters (RULER's fwe vocabulary)."""
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words: list[str] = []
    taken: set[str] = set()
    while len(words) < count:
        word = "".join(rng.choice(alphabet, size=letters))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def generated_essay(seed: int = 0, num_chars: int = 60_000) -> str:
    """The built-in essay haystack: template sentences about shapes and weather, in paragraphs.

    It holds no digits, no UUIDs and never the word "magic", so a needle is the only match for
    its own text. Longer contexts repeat it (the report says so).
    """
    rng = np.random.default_rng([seed, 7919])
    sentences = filler_sentences(rng, num_chars=num_chars)
    paragraphs = [" ".join(sentences[start:start + 6]) for start in range(0, len(sentences), 6)]
    return "\n".join(paragraphs)


class HaystackError(LwmError, ValueError):
    """A haystack file cannot be read; the message names the setting and the file."""


def read_text(path: str | Path, field: str) -> str:
    """A UTF-8 text file (an essay haystack); errors name the setting `field` and the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise HaystackError(f"{field}={path} does not exist") from error
    except UnicodeDecodeError as error:
        raise HaystackError(f"{field}={path} is not UTF-8 text ({error.reason} at byte {error.start})") from error
    if not text.strip():
        raise HaystackError(f"{field}={path} is empty: give a text with sentences")
    return text
