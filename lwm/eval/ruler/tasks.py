"""RULER's 13 tasks: one generator per family, written from the paper's and the repository's
task definitions (NVIDIA/RULER `scripts/synthetic.yaml`, `scripts/data/synthetic/*.py`).

| task | family | haystack | keys / values | needles |
|---|---|---|---|---|
| niah_single_1 | retrieval | noise | words / numbers | 1 |
| niah_single_2 | retrieval | essay | words / numbers | 1 |
| niah_single_3 | retrieval | essay | words / UUIDs | 1 |
| niah_multikey_1 | retrieval | essay | words / numbers | 4 keys, 1 asked |
| niah_multikey_2 | retrieval | needles | words / numbers | every line a needle, 1 asked |
| niah_multikey_3 | retrieval | needles | UUIDs / UUIDs | every line a needle, 1 asked |
| niah_multivalue | retrieval | essay | words / numbers | 1 key, 4 values |
| niah_multiquery | retrieval | essay | words / numbers | 4 keys, all 4 asked |
| vt | multi-hop tracing | noise | 1 chain of 4 hops | 5 variables |
| cwe | aggregation | numbered word list | 10 common words | |
| fwe | aggregation | Zipf(2) coded words | 3 most frequent | |
| qa_1 / qa_2 | QA | SQuAD / HotpotQA documents | answers | gold documents |

Every item is exactly as long as its target (RULER's `max_seq_length` minus the tokens to
generate): the haystack size comes from a binary search (`fit_size`), and what a unit of
structure cannot fill is filled with that task's own neutral filler (more haystack, words
listed once, RULER's `...` noise word, a further document). Every item comes from its own seed
`(seed, task, length, index)`, so a rerun regenerates it.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

from lwm.config.data import ChatTemplateConfig
from lwm.config.eval import RULER_TASKS
from lwm.errors import LwmError
from lwm.eval.ruler import haystacks
from lwm.eval.ruler.haystacks import NOISE
from lwm.eval.ruler.prompts import Encoder, TokenStream, fit_size, pad_to, splice
from lwm.eval.ruler.qa import QADataset, qa_item

DEPTHS = tuple(int(depth) for depth in np.round(np.linspace(0, 100, 40)))  # RULER's insertion depths


class EvalError(LwmError, ValueError):
    """An evaluation setting or input file cannot work; the message says which and how to fix it."""


@dataclasses.dataclass
class Item:
    """One generated question: the prompt ids and what a right answer contains."""

    task: str
    length: int  # RULER's max_seq_length: prompt tokens + tokens to generate
    index: int
    ids: list[int]
    references: list[str]
    depths: list[float | None]  # depth (percent of the context) of what holds each reference
    positions: list[int]  # prompt offset of the piece that holds each reference (-1: none)
    metric: str  # "all" (string_match_all) or "part" (string_match_part)
    max_new_tokens: int
    context_start: int = 0  # prompt offsets of the context (for depths)
    context_end: int = 0


@dataclasses.dataclass(frozen=True)
class NiahSpec:
    """A needle-in-a-haystack variant (RULER's `niah` arguments)."""

    haystack: str  # "noise", "essay" or "needle"
    key_type: str
    value_type: str
    keys: int = 1
    values: int = 1
    queries: int = 1
    family: str = "niah"
    max_new_tokens: int = 128


@dataclasses.dataclass(frozen=True)
class VTSpec:
    """Variable tracking: `chains` chains of `hops` assignments hidden in noise."""

    chains: int = 1
    hops: int = 4
    family: str = "vt"
    max_new_tokens: int = 30


@dataclasses.dataclass(frozen=True)
class CWESpec:
    """Common words extraction: `common` words `freq_common` times each among words listed
    `freq_uncommon` times (6 and 1 below 4K tokens, as RULER does)."""

    freq_common: int = 30
    freq_uncommon: int = 3
    common: int = 10
    family: str = "cwe"
    max_new_tokens: int = 120


@dataclasses.dataclass(frozen=True)
class FWESpec:
    """Frequent words extraction: coded words with Zipf(`alpha`) counts; the 3 most frequent
    after the noise word `...` are the answer."""

    alpha: float = 2.0
    word_letters: int = 6
    family: str = "fwe"
    max_new_tokens: int = 50


@dataclasses.dataclass(frozen=True)
class QASpec:
    """Question answering over a local SQuAD- (`squad`) or HotpotQA-format (`hotpotqa`) file."""

    dataset: str
    family: str = "qa"
    max_new_tokens: int = 32


TASKS: dict[str, Any] = {
    "niah_single_1": NiahSpec("noise", "words", "numbers"),
    "niah_single_2": NiahSpec("essay", "words", "numbers"),
    "niah_single_3": NiahSpec("essay", "words", "uuids"),
    "niah_multikey_1": NiahSpec("essay", "words", "numbers", keys=4),
    "niah_multikey_2": NiahSpec("needle", "words", "numbers"),
    "niah_multikey_3": NiahSpec("needle", "uuids", "uuids"),
    "niah_multivalue": NiahSpec("essay", "words", "numbers", values=4),
    "niah_multiquery": NiahSpec("essay", "words", "numbers", queries=4),
    "vt": VTSpec(),
    "cwe": CWESpec(),
    "fwe": FWESpec(),
    "qa_1": QASpec("squad"),
    "qa_2": QASpec("hotpotqa"),
}
assert tuple(TASKS) == RULER_TASKS
SYNTHETIC_TASKS = tuple(name for name in TASKS if not name.startswith("qa_"))


class TaskContext:
    """What every generator shares: the tokenizer (through an `Encoder`), the haystacks, the
    QA files, the seed and the generation budget."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        essay: str,
        template: ChatTemplateConfig = ChatTemplateConfig(),
        seed: int = 42,
        max_new_tokens: int = 0,
        qa_datasets: dict[str, QADataset] | None = None,
    ):
        self.encoder = Encoder(tokenizer, template)
        self.essay = TokenStream.from_text(essay, tokenizer)
        self.noise = TokenStream.from_text(NOISE, tokenizer)
        self.seed = seed
        self.max_new_tokens = max_new_tokens
        self.qa_datasets = qa_datasets or {}

    def rng(self, task: str, length: int, index: int) -> np.random.Generator:
        """The generator of one item (independent of which other items are made, and when)."""
        return np.random.default_rng([self.seed, zlib.crc32(task.encode()), length, index])

    def budget(self, spec: Any) -> int:
        """Tokens to generate for a task: the configured override or RULER's per-task value."""
        return self.max_new_tokens or spec.max_new_tokens


def make_item(task: str, length: int, index: int, context: TaskContext) -> Item:
    """Item `index` of `task` at `length` tokens (prompt + generation budget)."""
    if task not in TASKS:
        raise EvalError(f"unknown task {task!r}: use any of {', '.join(TASKS)}")
    spec = TASKS[task]
    generate = {"niah": _niah_item, "vt": _vt_item, "cwe": _cwe_item, "fwe": _fwe_item, "qa": _qa_item}[spec.family]
    return generate(spec, task, length, index, context)


def _target(spec: Any, task: str, length: int, context: TaskContext, fixed: int) -> tuple[int, int]:
    gen = context.budget(spec)
    target = length - gen
    if target <= fixed:
        raise EvalError(
            f"{task} at length {length}: the template, question and needles alone take {fixed} tokens and "
            f"{gen} are kept for the answer; use lengths above {fixed + gen} (ruler.lengths)"
        )
    return target, gen


def _finish(task, length, index, head, context_ids, tail, references, depths, positions, metric, gen) -> Item:
    ids = head + context_ids + tail
    return Item(task, length, index, ids, references, depths, [len(head) + p if p >= 0 else -1 for p in positions],
                metric, gen, len(head), len(head) + len(context_ids))


# ---------------------------------------------------------------------------- retrieval

def _join_queries(queries: list[str]) -> str:
    return queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]


def niah_texts(spec: NiahSpec, query: str) -> tuple[str, str, str]:
    """RULER's niah intro, question and answer prefix (singular when one value is asked)."""
    kind = spec.value_type
    if spec.queries * spec.values == 1:
        one = kind[:-1]
        return (f"A special magic {one} is hidden within the following text. Make sure to memorize it. "
                f"I will quiz you about the {one} afterwards.\n",
                f"\nWhat is the special magic {one} for {query} mentioned in the provided text?",
                f" The special magic {one} for {query} mentioned in the provided text is")
    return (f"Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
            f"I will quiz you about the {kind} afterwards.\n",
            f"\nWhat are all the special magic {kind} for {query} mentioned in the provided text?",
            f" The special magic {kind} for {query} mentioned in the provided text are")


def needle_sentence(kind: str, key: str, value: str) -> str:
    """RULER's needle: `One of the special magic {numbers} for {key} is: {value}.`"""
    return f"One of the special magic {kind} for {key} is: {value}."


def _niah_item(spec: NiahSpec, task: str, length: int, index: int, context: TaskContext) -> Item:
    rng = context.rng(task, length, index)
    encoder = context.encoder
    num_keys = max(spec.keys, spec.queries)
    keys = haystacks.distinct_values(rng, spec.key_type, num_keys)
    flat = haystacks.distinct_values(rng, spec.value_type, num_keys * spec.values, avoid=keys)
    values = [flat[i * spec.values:(i + 1) * spec.values] for i in range(num_keys)]
    needles = [(key_index, value) for key_index, key in enumerate(keys) for value in values[key_index]]
    needles = [needles[int(i)] for i in rng.permutation(len(needles))]
    depths = sorted(float(d) for d in rng.choice(DEPTHS, size=len(needles), replace=False))
    asked = sorted(int(i) for i in rng.choice(num_keys, size=spec.queries, replace=False))
    query = _join_queries([keys[i] for i in asked])
    intro, question, prefix = niah_texts(spec, query)
    if spec.haystack == "needle":  # its lines start with their own newline
        intro = intro.rstrip("\n")
    head, tail = encoder.head(intro), encoder.tail(question, prefix)
    separator = "\n" if spec.haystack == "needle" else " "
    inserts = [(depth, encoder.piece(separator + needle_sentence(spec.value_type, keys[k], v)))
               for depth, (k, v) in zip(depths, needles)]
    fixed = len(head) + len(tail) + sum(len(ids) for _, ids in inserts)
    target, gen = _target(spec, task, length, context, fixed)
    count = fit_size(lambda n: fixed + n, target, upper=target)
    if spec.haystack == "essay":
        stream = context.essay
    elif spec.haystack == "noise":
        stream = context.noise
    else:
        stream = _distractor_stream(spec, rng, encoder, count, set(keys), set(flat))
    context_ids, offsets = splice(stream, count, inserts)
    references, ref_depths, ref_positions = [], [], []
    for key_index in asked:
        for value in values[key_index]:
            needle = needles.index((key_index, value))
            references.append(value)
            ref_depths.append(100.0 * offsets[needle] / max(1, len(context_ids)))
            ref_positions.append(offsets[needle])
    return _finish(task, length, index, head, context_ids, tail, references, ref_depths, ref_positions, "all", gen)


def _distractor_stream(spec: NiahSpec, rng, encoder: Encoder, tokens: int, keys: set[str], values: set[str]) -> TokenStream:
    """RULER's `needle` haystack: lines that are needles for other keys (never an asked key),
    with other values (never an answer)."""
    pieces: list[list[int]] = []
    total = 0
    while total < tokens:
        key = haystacks.distinct_values(rng, spec.key_type, 1, avoid=keys)[0]
        value = haystacks.distinct_values(rng, spec.value_type, 1, avoid=values)[0]
        pieces.append(encoder.piece("\n" + needle_sentence(spec.value_type, key, value), cache=False))
        total += len(pieces[-1])
    ids = np.asarray([token for piece in pieces for token in piece], np.int32)
    ends = np.zeros(len(ids), bool)
    ends[np.cumsum([len(piece) for piece in pieces]) - 1] = True
    return TokenStream(ids, ends)


# ---------------------------------------------------------------------------- multi-hop tracing

VT_INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_QUESTION = "\nQuestion: Find all variables that are assigned the value {value} in the text above."
# RULER's answer prefix, its spelling kept ("assgined"): models are compared on the same prompt.
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {count} variables are "
             "assgined the value {value}, they are: ")


def _variables(rng, count: int, avoid: set[str]) -> list[str]:
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(letters, size=5))
        if name not in avoid:
            avoid.add(name)
            names.append(name)
    return names


def _chains(rng, chains: int, hops: int, taken: set[str], values: set[str]) -> tuple[list[list[str]], list[list[str]], list[str]]:
    names = _variables(rng, chains * (hops + 1), taken)
    all_names, statements, chain_values = [], [], []
    for chain in range(chains):
        chain_names = names[chain * (hops + 1):(chain + 1) * (hops + 1)]
        value = str(int(rng.integers(10000, 100000)))
        while value in values:
            value = str(int(rng.integers(10000, 100000)))
        values.add(value)
        all_names.append(chain_names)
        chain_values.append(value)
        statements.append([f"VAR {chain_names[0]} = {value}."]
                          + [f"VAR {chain_names[j + 1]} = VAR {chain_names[j]}." for j in range(hops)])
    return all_names, statements, chain_values


def _vt_example(rng, spec: VTSpec, taken: set[str], values: set[str]) -> str:
    """RULER's one-shot example: a short noise text with its own chain, question and answer."""
    names, statements, chain_values = _chains(rng, spec.chains, spec.hops, taken, values)
    sentences = [sentence.strip() + "." for sentence in NOISE.split(".") if sentence.strip()]
    slots = sorted(int(i) for i in rng.choice(len(sentences) + 1, size=len(statements[0]), replace=True))
    for shift, (slot, statement) in enumerate(zip(slots, statements[0])):
        sentences.insert(slot + shift, statement)
    text = " ".join(sentences)
    return (VT_INTRO + text + VT_QUESTION.format(value=chain_values[0])
            + VT_PREFIX.format(count=spec.hops + 1, value=chain_values[0]) + " ".join(names[0]) + "\n\n")


def _vt_item(spec: VTSpec, task: str, length: int, index: int, context: TaskContext) -> Item:
    rng = context.rng(task, length, index)
    encoder = context.encoder
    taken: set[str] = set()
    values: set[str] = set()
    names, statements, chain_values = _chains(rng, spec.chains, spec.hops, taken, values)
    example = _vt_example(rng, spec, taken, values)
    head = encoder.head(example + VT_INTRO)
    tail = encoder.tail(VT_QUESTION.format(value=chain_values[0]),
                        VT_PREFIX.format(count=spec.hops + 1, value=chain_values[0]))
    inserts, owners = [], []
    for chain_index, chain in enumerate(statements):
        depths = sorted(float(d) for d in rng.choice(DEPTHS, size=len(chain), replace=False))
        for hop, (depth, statement) in enumerate(zip(depths, chain)):
            inserts.append((depth, encoder.piece(" " + statement)))
            owners.append((chain_index, hop))
    fixed = len(head) + len(tail) + sum(len(ids) for _, ids in inserts)
    target, gen = _target(spec, task, length, context, fixed)
    count = fit_size(lambda n: fixed + n, target, upper=target)
    context_ids, offsets = splice(context.noise, count, inserts)
    positions = [offsets[owners.index((0, hop))] for hop in range(spec.hops + 1)]
    depths = [100.0 * p / max(1, len(context_ids)) for p in positions]
    return _finish(task, length, index, head, context_ids, tail, list(names[0]), depths, positions, "all", gen)


# ---------------------------------------------------------------------------- aggregation

CWE_INTRO = ("Below is a numbered list of words. In these words, some appear more often than others. "
             "Memorize the ones that appear most often.\n")
CWE_QUESTION = "\nQuestion: What are the {count} most common words in the above list?"
CWE_PREFIX = " Answer: The top {count} words that appear most often in the list are:"


def _numbered(words: list[str]) -> str:
    return " ".join(f"{i + 1}. {word}" for i, word in enumerate(words))


def _cwe_item(spec: CWESpec, task: str, length: int, index: int, context: TaskContext) -> Item:
    # RULER's settings below 4K tokens (6 and 1 repeats, a 20-word example) also serve longer
    # lengths that the full settings do not fit with this tokenizer.
    settings = [((20, 3, 1), (6, 1))]
    if length >= 4096:
        settings.insert(0, ((40, 10, 3), (spec.freq_common, spec.freq_uncommon)))
    for example_sizes, frequencies in settings:
        item = _cwe_attempt(spec, task, length, index, context, example_sizes, frequencies)
        if item is not None:
            return item
    raise EvalError(f"cwe at length {length}: {spec.common} common words x 6 and a 20-word example do not fit; "
                    f"use a longer length (ruler.lengths)")


def _cwe_attempt(spec: CWESpec, task, length, index, context: TaskContext, example_sizes, frequencies) -> Item | None:
    rng = context.rng(task, length, index)
    encoder = context.encoder
    freq_common, freq_uncommon = frequencies
    example_words = haystacks.pseudo_words(rng, example_sizes[0])
    example_list = example_words[:spec.common] * example_sizes[1] + example_words[spec.common:] * example_sizes[2]
    example_list = [example_list[int(i)] for i in rng.permutation(len(example_list))]
    example = (CWE_INTRO + _numbered(example_list) + CWE_QUESTION.format(count=spec.common)
               + CWE_PREFIX.format(count=spec.common) + " " + _numbered(example_words[:spec.common]) + "\n")
    head = encoder.head(example + CWE_INTRO)
    tail = encoder.tail(CWE_QUESTION.format(count=spec.common), CWE_PREFIX.format(count=spec.common))
    target, gen = _target(spec, task, length, context, len(head) + len(tail))
    room = target - len(head) - len(tail)
    # Upper bound on distinct words: every entry costs at least 2 tokens (number and word).
    pool = haystacks.pseudo_words(rng, room // max(1, 2 * freq_uncommon) + spec.common + 64, avoid=example_words)
    order_seed = int(rng.integers(2**31))

    def listing(num_words: int) -> list[str]:
        words = pool[:spec.common] * freq_common + pool[spec.common:num_words] * freq_uncommon
        order = np.random.default_rng([order_seed, num_words]).permutation(len(words))
        return [words[int(i)] for i in order]

    def entry_ids(words: list[str], start: int = 0) -> list[int]:
        ids: list[int] = []
        for i, word in enumerate(words):
            ids += encoder.piece(f"{' ' if start + i else ''}{start + i + 1}.") + encoder.piece(" " + word)
        return ids

    # Pieces are concatenated, so a listing's length is a sum of cached piece lengths whatever
    # its order: the binary search never builds the lists it measures.
    word_lengths = np.cumsum([0] + [len(encoder.piece(" " + word)) for word in pool])
    number_lengths = [0]

    def numbers_length(entries: int) -> int:
        while len(number_lengths) <= entries:
            i = len(number_lengths) - 1
            number_lengths.append(number_lengths[-1] + len(encoder.piece(f"{' ' if i else ''}{i + 1}.")))
        return number_lengths[entries]

    def length_of(num_words: int) -> int:
        entries = spec.common * freq_common + (num_words - spec.common) * freq_uncommon
        words = (freq_common * word_lengths[spec.common]
                 + freq_uncommon * (word_lengths[num_words] - word_lengths[spec.common]))
        return len(head) + len(tail) + numbers_length(entries) + int(words)

    if length_of(spec.common) > target:
        return None
    num_words = fit_size(length_of, target, upper=len(pool) - 32, lower=spec.common)
    words = listing(num_words)
    context_ids = entry_ids(words)
    assert len(context_ids) == length_of(num_words) - len(head) - len(tail)
    # Fill the last gap with words listed once (fewer times than any counted word).
    filler = entry_ids(pool[num_words:num_words + 32], start=len(words))
    context_ids = pad_to(context_ids, room, filler)
    common = pool[:spec.common]
    return _finish(task, length, index, head, context_ids, tail, common, [None] * len(common),
                   [-1] * len(common), "all", gen)


FWE_INTRO = ("Read the following coded text and track the frequency of each coded word. "
             "Find the three most frequently appeared coded words.")
FWE_QUESTION = ("\nQuestion: Do not provide any explanation. Please ignore the dots '....'. What are the three "
                "most frequently appeared words in the above coded text?")
FWE_PREFIX = " Answer: According to the coded text above, the three most frequently appeared words are:"


def zipf_counts(num_words: int, vocabulary: int, alpha: float) -> np.ndarray:
    """RULER's fwe counts: `int(num_words * k^-alpha / zeta(alpha))` for ranks k = 1..vocabulary."""
    from scipy.special import zeta

    ranks = np.arange(1, vocabulary + 1, dtype=np.float64)
    return (num_words * ranks ** -alpha / zeta(alpha)).astype(np.int64)


def _fwe_item(spec: FWESpec, task: str, length: int, index: int, context: TaskContext) -> Item:
    rng = context.rng(task, length, index)
    encoder = context.encoder
    vocabulary = max(8, length // 50)  # RULER: max_seq_length // 50
    words = ["..."] + haystacks.coded_words(rng, vocabulary - 1, spec.word_letters)
    piece_lengths = np.asarray([len(encoder.piece(" " + word)) for word in words])
    head = encoder.head(FWE_INTRO)
    tail = encoder.tail(FWE_QUESTION, FWE_PREFIX)
    target, gen = _target(spec, task, length, context, len(head) + len(tail))
    fixed = len(head) + len(tail)
    num_words = fit_size(lambda n: fixed + int(zipf_counts(n, vocabulary, spec.alpha) @ piece_lengths), target,
                         upper=4 * target)
    counts = zipf_counts(num_words, vocabulary, spec.alpha)
    if counts[3] <= counts[4]:
        raise EvalError(f"fwe at length {length}: {num_words} coded words leave the third most frequent word tied "
                        f"with the fourth ({counts[3]}); use a longer length (ruler.lengths)")
    sampled = [words[rank] for rank, count in enumerate(counts) for _ in range(int(count))]
    sampled = [sampled[int(i)] for i in rng.permutation(len(sampled))]
    context_ids = [token for word in sampled for token in encoder.piece(" " + word)]
    # The noise word "..." fills the last gap: the prompt says to ignore it.
    context_ids = pad_to(context_ids, target - fixed, encoder.piece(" ..."))
    answer = words[1:4]
    return _finish(task, length, index, head, context_ids, tail, answer, [None] * 3, [-1] * 3, "all", gen)


# ---------------------------------------------------------------------------- question answering

def _qa_item(spec: QASpec, task: str, length: int, index: int, context: TaskContext) -> Item:
    dataset = context.qa_datasets.get(spec.dataset)
    if dataset is None:
        raise EvalError(f"{task} needs a local {spec.dataset} file: set ruler.{'squad' if spec.dataset == 'squad' else 'hotpotqa'} "
                        f"to its path, or leave {task} out of ruler.tasks")
    gen = context.budget(spec)
    built = qa_item(dataset, context.encoder, context.rng(task, length, index), index, length - gen)
    if built is None:
        raise EvalError(f"{task} at length {length}: the question and its gold documents alone do not fit in "
                        f"{length - gen} tokens; use longer lengths")
    head, context_ids, tail, references, depth, position = built
    return _finish(task, length, index, head, context_ids, tail, references, [depth] * len(references),
                   [position] * len(references), "part", gen)

