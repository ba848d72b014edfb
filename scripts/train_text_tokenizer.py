"""Trains the project's small SentencePiece text tokenizer (`lwm/assets/tokenizer.model`).

The training text is generated here, deterministically, with no downloads: sentences about
coloured shapes moving in a plain world (the synthetic video demo), questions and answers and
chat turns about them, numbers, needle-in-a-haystack passkey sentences ("The special magic
{city} number is: {7 digits}.") and generic English prose from a small grammar and
frequency-weighted common English words.

The model is LLaMA-like: BPE with byte fallback (any UTF-8 text encodes), digits split, no text
normalisation, unk=0, bos=1, eos=2, pad=3, and `<vision>` / `</vision>` reserved as
user-defined symbols (always one piece each). Unlike LLaMA it adds no dummy-prefix space, so
`decode(encode(text)) == text` exactly.

    python scripts/train_text_tokenizer.py                      # rewrites lwm/assets/tokenizer.model
    python scripts/train_text_tokenizer.py --out /tmp/t.model --vocab-size 512 --sentences 5000
"""

from __future__ import annotations

import argparse
import io
import random
from collections.abc import Iterator
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "lwm" / "assets" / "tokenizer.model"
VISION_SYMBOLS = ("<vision>", "</vision>")

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black", "cyan",
          "magenta", "pink", "brown", "gray", "teal", "gold"]
SHAPES = ["square", "circle", "triangle", "rectangle", "ball", "star", "diamond", "hexagon",
          "ring", "cross", "disk", "block"]
MOTIONS = ["moves", "slides", "bounces", "falls", "rises", "drifts", "rolls", "spins", "jumps",
           "glides", "turns", "speeds up", "slows down", "stops", "wobbles", "shrinks", "grows"]
DIRECTIONS = ["left", "right", "up", "down", "to the left", "to the right", "toward the top",
              "toward the bottom", "diagonally", "toward the center", "along the edge",
              "across the frame", "in a circle", "back and forth"]
PLACES = ["the top wall", "the bottom edge", "the left side", "the right side", "the corner",
          "the center", "the floor", "the ceiling", "the other shape", "the border"]
BACKGROUNDS = ["plain black", "plain white", "dark gray", "light gray", "deep blue", "pale green"]
CITIES = ["Tokyo", "Paris", "London", "Berlin", "Madrid", "Rome", "Cairo", "Lagos", "Nairobi",
          "Mumbai", "Delhi", "Dhaka", "Beijing", "Shanghai", "Seoul", "Bangkok", "Jakarta",
          "Manila", "Sydney", "Melbourne", "Auckland", "Toronto", "Montreal", "Vancouver",
          "Chicago", "Boston", "Seattle", "Denver", "Houston", "Miami", "Atlanta", "Phoenix",
          "Dallas", "Austin", "Portland", "Mexico City", "Lima", "Bogota", "Santiago", "Quito",
          "Buenos Aires", "Sao Paulo", "Rio de Janeiro", "Lisbon", "Dublin", "Oslo", "Stockholm",
          "Helsinki", "Copenhagen", "Amsterdam", "Brussels", "Vienna", "Prague", "Warsaw",
          "Budapest", "Athens", "Istanbul", "Tehran", "Baghdad", "Riyadh", "Dubai", "Doha",
          "Karachi", "Kabul", "Tashkent", "Almaty", "Hanoi", "Taipei", "Osaka", "Kyoto",
          "Singapore", "Kuala Lumpur", "Zurich", "Geneva", "Munich", "Hamburg", "Milan",
          "Naples", "Barcelona", "Valencia", "Marseille", "Lyon", "Edinburgh", "Glasgow",
          "Casablanca", "Tunis", "Accra", "Dakar", "Kinshasa", "Johannesburg", "Cape Town"]
NAMES = ["Anna", "Ben", "Clara", "David", "Elena", "Farid", "Grace", "Hiro", "Isabel", "James",
         "Kofi", "Lena", "Marco", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Samuel", "Tara",
         "Umar", "Vera", "Wei", "Yusuf", "Zoe"]
NOUNS = ["house", "river", "garden", "letter", "window", "road", "village", "teacher", "doctor",
         "book", "table", "morning", "evening", "winter", "summer", "mountain", "forest", "city",
         "market", "question", "answer", "story", "friend", "family", "child", "door", "field",
         "bridge", "train", "ship", "song", "music", "paper", "water", "fire", "light", "voice",
         "machine", "picture", "idea", "problem", "reason", "minute", "hour", "week", "year",
         "country", "island", "kitchen", "school", "office", "student", "library", "painting",
         "window", "bottle", "clock", "street", "lake", "harbor", "castle", "farm", "horse",
         "bird", "dog", "cat", "tree", "flower", "stone", "sea", "sky", "cloud", "storm", "rain"]
ADJECTIVES = ["old", "new", "small", "large", "quiet", "busy", "bright", "dark", "warm", "cold",
              "long", "short", "happy", "tired", "careful", "strange", "simple", "beautiful",
              "narrow", "wide", "heavy", "light", "early", "late", "famous", "hidden", "empty",
              "full", "green", "distant", "gentle", "sudden", "important", "ordinary", "curious"]
VERBS_PAST = ["walked", "opened", "closed", "found", "lost", "wrote", "read", "watched",
              "carried", "followed", "remembered", "forgot", "painted", "built", "visited",
              "crossed", "answered", "asked", "noticed", "described", "repaired", "cleaned",
              "bought", "sold", "heard", "saw", "left", "reached", "climbed", "explained"]
ADVERBS = ["slowly", "quickly", "quietly", "carefully", "suddenly", "finally", "often",
           "never", "always", "sometimes", "again", "together", "alone", "early", "late"]
CONNECTORS = ["and then", "but", "because", "while", "after that", "so", "although", "before",
              "when", "until", "since", "as soon as"]
PREPOSITIONS = ["near", "behind", "beside", "under", "above", "across", "through", "along",
                "around", "inside", "outside", "toward", "past", "beyond", "between"]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve", "twenty", "thirty", "hundred", "thousand"]

# Frequent English words, most frequent first; sampled with Zipf-like weights for generic text.
COMMON_WORDS = """the of and to a in is it you that he was for on are with as I his they be at one
have this from or had by hot word but what some we can out other were all there when up use your
how said an each she which do their time if will way about many then them write would like so
these her long make thing see him two has look more day could go come did number sound no most
people my over know water than call first who may down side been now find any new work part take
get place made live where after back little only round man year came show every good me give our
under name very through just form sentence great think say help low line differ turn cause much
mean before move right boy old too same tell does set three want air well also play small end put
home read hand port large spell add even land here must big high such follow act why ask men
change went light kind off need house picture try us again animal point mother world near build
self earth father head stand own page should country found answer school grow study still learn
plant cover food sun four between state keep eye never last let thought city tree cross farm
hard start might story saw far sea draw left late run while press close night real life few
north open seem together next white children begin got walk example ease paper group always
music those both mark often letter until mile river car feet care second book carry took science
eat room friend began idea fish mountain stop once base hear horse cut sure watch color face
wood main enough plain girl usual young ready above ever red list though feel talk bird soon
body dog family direct pose leave song measure door product black short numeral class wind
question happen complete ship area half rock order fire south problem piece told knew pass since
top whole king space heard best hour better true during hundred five remember step early hold
west ground interest reach fast verb sing listen six table travel less morning ten simple
several vowel toward war lay against pattern slow center love person money serve appear road map
rain rule govern pull cold notice voice unit power town fine certain fly fall lead cry dark
machine note wait plan figure star box noun field rest correct able pound done beauty drive stood
contain front teach week final gave green oh quick develop ocean warm free minute strong special
mind behind clear tail produce fact street inch multiply nothing course stay wheel full force
blue object decide surface deep moon island foot system busy test record boat common gold
possible plane stead dry wonder laugh thousand ago ran check game shape equate miss brought heat
snow tire bring yes distant fill east paint language among""".split()


def common_word_sentence(rng: random.Random) -> str:
    """A sentence of frequent English words (no grammar, realistic word frequencies)."""
    length = rng.randint(5, 18)
    weights = [1.0 / (rank + 10) for rank in range(len(COMMON_WORDS))]
    words = rng.choices(COMMON_WORDS, weights, k=length)
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "?", "!", ";", ","])


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def shape_sentence(rng: random.Random) -> str:
    """One sentence about the synthetic world of coloured shapes."""
    color, shape = rng.choice(COLORS), rng.choice(SHAPES)
    templates = [
        lambda: f"The {color} {shape} {rng.choice(MOTIONS)} {rng.choice(DIRECTIONS)}.",
        lambda: f"{_a(color).capitalize()} {shape} bounces off {rng.choice(PLACES)}.",
        lambda: f"A {color} {shape} starts at x={rng.randint(0, 63)}, y={rng.randint(0, 63)} "
                f"and {rng.choice(MOTIONS)} {rng.choice(DIRECTIONS)}.",
        lambda: f"In frame {rng.randint(1, 400)}, the {color} {shape} is near {rng.choice(PLACES)}.",
        lambda: f"The background is {rng.choice(BACKGROUNDS)} and {rng.randint(1, 5)} shapes move on it.",
        lambda: f"The {shape} moves {rng.randint(1, 9)} pixels per frame with velocity "
                f"({rng.randint(-4, 4)}, {rng.randint(-4, 4)}).",
        lambda: f"After {rng.randint(2, 60)} frames the {color} {shape} hits {rng.choice(PLACES)} "
                f"and {rng.choice(MOTIONS)} {rng.choice(DIRECTIONS)}.",
        lambda: f"There are {rng.choice(NUMBER_WORDS)} {color} {shape}s and one "
                f"{rng.choice(COLORS)} {rng.choice(SHAPES)}.",
        lambda: f"The video shows {_a(color)} {shape} and {_a(rng.choice(COLORS))} "
                f"{rng.choice(SHAPES)} on a {rng.choice(BACKGROUNDS)} background.",
    ]
    return rng.choice(templates)()


def qa_sentence(rng: random.Random) -> str:
    """A question with its answer, sometimes in the chat format around a vision span."""
    color, shape = rng.choice(COLORS), rng.choice(SHAPES)
    direction = rng.choice(DIRECTIONS)
    pairs = [
        (f"What color is the {shape}?", f"The {shape} is {color}."),
        (f"Which way does the {color} {shape} move?", f"It moves {direction}."),
        ("How many shapes are in the video?", f"There are {rng.randint(1, 6)} shapes."),
        (f"Does the {shape} bounce?", rng.choice(["Yes, it bounces off the wall.", "No, it does not."])),
        ("Describe the video.", f"{_a(color).capitalize()} {shape} {rng.choice(MOTIONS)} {direction}."),
        ("What happens next?", f"The {color} {shape} {rng.choice(MOTIONS)} {direction}."),
        (f"What is {rng.randint(2, 99)} plus {rng.randint(2, 99)}?", f"The answer is {rng.randint(4, 198)}."),
    ]
    question, answer = rng.choice(pairs)
    style = rng.random()
    if style < 0.4:
        return (f"You are a helpful assistant. USER: {question}\n<vision></vision> "
                f"ASSISTANT: {answer}")
    if style < 0.7:
        return f"Question: {question} Answer: {answer}"
    return f"Q: {question}\nA: {answer}"


def needle_sentence(rng: random.Random) -> str:
    """Needle-in-a-haystack sentences and their questions."""
    city = rng.choice(CITIES)
    digits = "".join(str(rng.randint(0, 9)) for _ in range(7))
    options = [
        f"The special magic {city} number is: {digits}.",
        f"What is the special magic {city} number?",
        f"The special magic {city} number is {digits}.",
        f"Remember it. The pass key is {rng.randint(10000, 99999)}. Remember it.",
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.",
        f"Based on the content of the book, what is the special magic {city} number?",
    ]
    return rng.choice(options)


def prose_sentence(rng: random.Random) -> str:
    """Generic English from a small grammar, with names, numbers, dates and punctuation."""
    name, other = rng.choice(NAMES), rng.choice(NAMES)
    noun, noun2 = rng.choice(NOUNS), rng.choice(NOUNS)
    adjective = rng.choice(ADJECTIVES)
    templates = [
        lambda: f"{name} {rng.choice(VERBS_PAST)} the {adjective} {noun} {rng.choice(ADVERBS)}.",
        lambda: f"The {adjective} {noun} stood {rng.choice(PREPOSITIONS)} the {noun2}, "
                f"{rng.choice(CONNECTORS)} nobody {rng.choice(VERBS_PAST)} it.",
        lambda: f"\"Where is the {noun}?\" asked {name}. \"{rng.choice(PREPOSITIONS).capitalize()} "
                f"the {noun2},\" said {other}.",
        lambda: f"In {rng.randint(1800, 2030)}, {name} {rng.choice(VERBS_PAST)} "
                f"{rng.randint(2, 500)} {noun}s in the {adjective} {noun2}.",
        lambda: f"It was {_a(adjective)} {rng.choice(['morning', 'evening', 'night', 'day'])}; "
                f"{name} and {other} {rng.choice(VERBS_PAST)} the {noun} {rng.choice(ADVERBS)}.",
        lambda: f"{name}'s {noun} wasn't {adjective}, but it was {rng.choice(ADJECTIVES)} enough.",
        lambda: f"On {rng.choice(['Monday', 'Tuesday', 'Friday', 'Sunday'])}, "
                f"{rng.randint(1, 28)} {rng.choice(['March', 'June', 'October', 'January'])}, "
                f"the {noun} cost ${rng.randint(1, 999)}.{rng.randint(0, 99):02d}.",
        lambda: f"Chapter {rng.randint(1, 40)}: The {adjective.capitalize()} {noun.capitalize()}",
        lambda: f"{name} said that the {noun} (and the {noun2}) would be {adjective} "
                f"{rng.choice(CONNECTORS)} the {rng.choice(NOUNS)} {rng.choice(VERBS_PAST)} them.",
        lambda: f"She {rng.choice(VERBS_PAST)} {rng.choice(NUMBER_WORDS)} {noun}s - "
                f"{rng.randint(10, 99)}% of them {adjective} - {rng.choice(ADVERBS)}!",
    ]
    return rng.choice(templates)()


def corpus(num_sentences: int, seed: int = 0) -> Iterator[str]:
    """The deterministic training text: a mix of the generators above, one sentence per line, with
    occasional multi-sentence paragraphs."""
    rng = random.Random(seed)
    generators = [(shape_sentence, 0.25), (qa_sentence, 0.15), (needle_sentence, 0.1),
                  (prose_sentence, 0.3), (common_word_sentence, 0.2)]
    functions, weights = zip(*generators)
    for _ in range(num_sentences):
        count = 1 if rng.random() < 0.7 else rng.randint(2, 5)
        yield " ".join(rng.choices(functions, weights)[0](rng) for _ in range(count))


def train(out: Path, vocab_size: int = 2048, num_sentences: int = 60000, seed: int = 0) -> Path:
    """Trains the tokenizer on `corpus(num_sentences, seed)` and writes the model to `out`."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=corpus(num_sentences, seed),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        user_defined_symbols=list(VISION_SYMBOLS),
        unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>",
        max_sentence_length=4096,
        num_threads=1,  # single-threaded training is reproducible
        minloglevel=2,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(model.getvalue())
    return out


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the .model")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--sentences", type=int, default=60000, help="training lines to generate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = train(args.out, args.vocab_size, args.sentences, args.seed)
    print(f"wrote {path} ({path.stat().st_size} bytes, vocab {args.vocab_size})")


if __name__ == "__main__":
    main()
