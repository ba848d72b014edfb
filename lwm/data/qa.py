"""Long-context QA data for chat finetuning (`lwm make-qa`), built the way LWM built it.

1. Documents are split at sentence boundaries into chunks of about `qa.chunk_tokens` tokens
   (`split_into_chunks`; the chunks concatenate back to the document).
2. Each chunk gets question/answer pairs from a generator: `LMQAGenerator` prompts a local
   causal LM through any `generate(prompt: str) -> str` callable and parses its output
   robustly (`parse_qa_pairs`; outputs with no usable pair are counted); the default
   `TemplateQAGenerator` needs no model and is deterministic for a seed: `plant` inserts a
   made-up fact sentence into the chunk and asks for it, `extract` asks to complete a sentence
   of the chunk.
3. Consecutive chunks (documents follow each other, separated by a blank line) are concatenated
   into contexts as long as the whole chat example stays within each target length in tokens;
   the example is the context followed by `qa.questions_per_example` questions about chunks in
   it, each answered in an assistant turn (loss on answers only, via the chat template).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config.data import DataConfig, QAConfig
from lwm.config.errors import ConfigError
from lwm.data.chat import encode_conversation
from lwm.data.records import BadRecordError, BadRecordReport, read_jsonl_lines
from lwm.data.tokens import TokenizerLike

Generate = Callable[[str], str]

DEFAULT_PROMPT = (
    "Read the passage below and write {n} question and answer pairs about facts stated in it. "
    "Write each pair as two lines:\nQuestion: ...\nAnswer: ...\n\nPassage:\n{passage}\n"
)
DOCUMENT_SEPARATOR = "\n\n"
_SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n+|$)\s*")
_ADJECTIVES = ("amber", "silent", "crimson", "hollow", "golden", "northern", "bitter", "gentle",
               "iron", "pale", "hidden", "restless", "ancient", "bright", "frozen", "quiet")
_NOUNS = ("falcon", "harbor", "lantern", "orchard", "glacier", "tower", "river", "meadow",
          "compass", "violin", "garden", "bridge", "forest", "beacon", "canyon", "mirror")
_ATTRIBUTES = ("secret number", "registration code", "catalog number", "room number")


@dataclasses.dataclass
class ChunkQA:
    """A chunk's text (possibly with a planted sentence) and its question/answer pairs."""

    text: str
    pairs: list[tuple[str, str]]


def split_sentences(text: str) -> list[str]:
    """Sentence-like spans, each keeping its trailing whitespace (they join back to `text`)."""
    return [span for span in _SENTENCE.findall(text) if span]


def split_into_chunks(text: str, tokenizer: TokenizerLike, chunk_tokens: int) -> list[str]:
    """Chunks of at most about `chunk_tokens` tokens, cut between sentences (between words for
    a longer sentence); `"".join(chunks) == text`."""
    pieces: list[tuple[str, int]] = []
    for sentence in split_sentences(text):
        count = len(tokenizer.encode(sentence))
        if count <= chunk_tokens:
            pieces.append((sentence, count))
            continue
        for word in re.findall(r"\S+\s*|\s+", sentence):
            pieces.append((word, len(tokenizer.encode(word))))
    chunks, current, current_tokens = [], "", 0
    for piece, count in pieces:
        if current and current_tokens + count > chunk_tokens:
            chunks.append(current)
            current, current_tokens = "", 0
        current += piece
        current_tokens += count
    if current:
        chunks.append(current)
    return chunks


_MARKER = r"^\s*(?:[-*#>]+\s*)?(?:\d+\s*[.)]\s*)?(?:\*\*)?\s*{word}\s*\d*\s*(?:\*\*)?\s*[:.)\-]\s*(?:\*\*)?\s*"
_QUESTION = re.compile(_MARKER.format(word=r"(?:q|question)"), re.IGNORECASE)
_ANSWER = re.compile(_MARKER.format(word=r"(?:a|answer)"), re.IGNORECASE)


def _pairs_from_json(text: str) -> list[tuple[str, str]]:
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    candidate = fenced.group(1) if fenced else text.strip()
    try:
        data = json.loads(candidate)
    except (json.JSONDecodeError, ValueError):
        return []
    items = data if isinstance(data, list) else [data]
    pairs = []
    for item in items:
        if isinstance(item, dict):
            question = item.get("question", item.get("q"))
            answer = item.get("answer", item.get("a"))
            if isinstance(question, str) and isinstance(answer, str):
                pairs.append((question, answer))
    return pairs


def parse_qa_pairs(text: str) -> list[tuple[str, str]]:
    """Question/answer pairs from an LM's free-form output.

    Accepts `Question: …` / `Answer: …` lines (also `Q1.`, `**Q:**`, numbered or bulleted,
    answers running over several lines) and JSON (`[{"question": …, "answer": …}]`, optionally
    in a code fence). Pairs with an empty side are left out.
    """
    pairs = _pairs_from_json(text)
    if not pairs:
        question: list[str] | None = None
        answer: list[str] | None = None

        def close() -> None:
            if question is not None and answer is not None:
                pairs.append((" ".join(question), " ".join(answer)))

        for line in text.splitlines():
            if (match := _QUESTION.match(line)) is not None:
                close()
                question, answer = [line[match.end():].strip()], None
            elif (match := _ANSWER.match(line)) is not None and question is not None:
                if answer is not None:
                    close()
                answer = [line[match.end():].strip()]
            elif line.strip() and question is not None:
                (answer if answer is not None else question).append(line.strip())
        close()
    cleaned = []
    for question, answer in pairs:
        question, answer = question.strip().strip("*").strip(), answer.strip().strip("*").strip()
        if question and answer:
            cleaned.append((question, answer))
    return cleaned


class TemplateQAGenerator:
    """Deterministic QA without a model (`plant` a fact and ask for it, or `extract` a sentence)."""

    def __init__(self, mode: str = "plant", pairs_per_chunk: int = 2) -> None:
        if mode not in ("plant", "extract"):
            raise ValueError(f"template QA mode {mode!r}: use 'plant' or 'extract'")
        self.mode, self.pairs_per_chunk = mode, pairs_per_chunk
        self.unparseable = 0

    def __call__(self, chunk: str, rng: np.random.Generator, taken: set[str]) -> ChunkQA:
        if self.mode == "extract":
            return self._extract(chunk, rng)
        sentences = split_sentences(chunk)
        pairs = []
        for _ in range(self.pairs_per_chunk):
            while True:  # distinct entities within an output file, so every question has one answer
                entity = (f"{_ADJECTIVES[rng.integers(len(_ADJECTIVES))]} "
                          f"{_NOUNS[rng.integers(len(_NOUNS))]} {int(rng.integers(100, 1000))}")
                if entity not in taken:
                    taken.add(entity)
                    break
            attribute = _ATTRIBUTES[rng.integers(len(_ATTRIBUTES))]
            value = str(int(rng.integers(1_000_000, 10_000_000)))
            fact = f"The {attribute} of the {entity} is {value}."
            at = int(rng.integers(len(sentences) + 1))
            spacer_before = "" if at == 0 or sentences[at - 1][-1:].isspace() else " "
            sentences.insert(at, spacer_before + fact + " ")
            pairs.append((f"What is the {attribute} of the {entity}?", fact))
        return ChunkQA("".join(sentences), pairs)

    def _extract(self, chunk: str, rng: np.random.Generator) -> ChunkQA:
        candidates = [s.strip() for s in split_sentences(chunk) if len(s.split()) >= 8]
        order = rng.permutation(len(candidates))[: self.pairs_per_chunk]
        pairs = []
        for index in sorted(order.tolist()):
            words = candidates[index].split()
            cut = len(words) // 2
            pairs.append((f'In the text, how does the sentence beginning "{" ".join(words[:cut])}" '
                          f"continue?", " ".join(words[cut:])))
        return ChunkQA(chunk, pairs)


class LMQAGenerator:
    """Asks a causal LM (`generate(prompt) -> text`) for QA pairs; counts unparseable outputs."""

    def __init__(self, generate: Generate, prompt: str = "", pairs_per_chunk: int = 2) -> None:
        self.generate = generate
        self.prompt = prompt or DEFAULT_PROMPT
        self.pairs_per_chunk = pairs_per_chunk
        self.unparseable = 0
        self.first_unparseable: list[str] = []

    def __call__(self, chunk: str, rng: np.random.Generator, taken: set[str]) -> ChunkQA:
        output = self.generate(self.prompt.format(passage=chunk, n=self.pairs_per_chunk))
        pairs = parse_qa_pairs(output)[: self.pairs_per_chunk]
        if not pairs:
            self.unparseable += 1
            if len(self.first_unparseable) < 3:
                self.first_unparseable.append(output[:200])
        return ChunkQA(chunk, pairs)


@dataclasses.dataclass
class QASummary:
    """Counts of what `make_qa` did."""

    documents: int = 0
    chunks: int = 0
    pairs: int = 0
    chunks_without_qa: int = 0
    unparseable_outputs: int = 0
    examples: dict[int, int] = dataclasses.field(default_factory=dict)
    short_contexts: int = 0
    overlong_contexts: int = 0
    contexts_without_qa: int = 0
    bad_records: dict[str, Any] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """One line per count."""
        return "\n".join(f"{key}: {value}" for key, value in dataclasses.asdict(self).items())


class _Group:
    """Consecutive chunks being gathered into one context of a target length."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, ChunkQA, int, int]] = []  # (chunk id, qa, tokens, document)
        self.tokens = 0

    def text(self) -> str:
        parts, previous = [], None
        for _, chunk, _, document in self.chunks:
            if previous is not None and document != previous:
                parts.append(DOCUMENT_SEPARATOR)
            parts.append(chunk.text)
            previous = document
        return "".join(parts).strip()


def _messages(context: str, questions: list[tuple[str, str]]) -> list[dict[str, str]]:
    messages = []
    for index, (question, answer) in enumerate(questions):
        content = f"{context}{DOCUMENT_SEPARATOR}{question}" if index == 0 else question
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    return messages


class _Assembler:
    """Builds examples of one target length from the chunk stream."""

    def __init__(self, length: int, config: QAConfig, data_config: DataConfig,
                 tokenizer: TokenizerLike, text_vocab_size: int, summary: QASummary) -> None:
        self.length, self.config, self.data_config = length, config, data_config
        self.tokenizer, self.text_vocab_size, self.summary = tokenizer, text_vocab_size, summary
        self.group, self.groups = _Group(), 0
        # Room for the template, questions and answers; checked exactly when an example is made.
        self.reserve = 64 * config.questions_per_example + 32

    def add(self, chunk_id: int, chunk: ChunkQA, tokens: int, document: int) -> Iterator[dict[str, Any]]:
        if self.group.chunks and self.group.tokens + tokens + self.reserve > self.length:
            yield from self.finish()
        self.group.chunks.append((chunk_id, chunk, tokens, document))
        self.group.tokens += tokens

    def finish(self) -> Iterator[dict[str, Any]]:
        group, self.group = self.group, _Group()
        record = self._example(group)
        while record is not None and record["num_tokens"] > self.length:
            if len(group.chunks) == 1:
                # One chunk with its questions is already over the target: it cannot be used.
                self.summary.overlong_contexts += 1
                return
            # Over the target: hand the last chunk to the next context and try again.
            last = group.chunks.pop()
            group.tokens -= last[2]
            self.group.chunks.insert(0, last)
            self.group.tokens += last[2]
            record = self._example(group)
        if record is not None:
            self.summary.examples[self.length] = self.summary.examples.get(self.length, 0) + 1
            yield record

    def _example(self, group: _Group) -> dict[str, Any] | None:
        if group.tokens < self.config.min_fill * self.length:
            self.summary.short_contexts += 1
            return None
        rng = np.random.default_rng([self.config.seed, self.length, self.groups])
        self.groups += 1
        choices = [(chunk_id, pair) for chunk_id, chunk, _, _ in group.chunks for pair in chunk.pairs]
        if not choices:
            self.summary.contexts_without_qa += 1
            return None
        picked = rng.permutation(len(choices))[: self.config.questions_per_example]
        questions = [choices[i] for i in sorted(picked.tolist())]
        messages = _messages(group.text(), [pair for _, pair in questions])
        tokens = len(encode_conversation(messages, self.tokenizer, self.data_config,
                                         self.text_vocab_size))
        first = group.chunks[0][0]
        count = len(group.chunks)
        return {"messages": messages, "target_length": self.length, "num_tokens": tokens,
                "question_chunks": [chunk_id - first for chunk_id, _ in questions],
                "question_depths": [round((chunk_id - first + 0.5) / count, 4) for chunk_id, _ in questions]}


def build_qa_examples(
    documents: Iterable[str],
    *,
    config: QAConfig,
    data_config: DataConfig,
    tokenizer: TokenizerLike,
    text_vocab_size: int,
    generator: Callable[[str, np.random.Generator, set[str]], ChunkQA],
    summary: QASummary | None = None,
) -> Iterator[dict[str, Any]]:
    """Chat records (`{"messages": [...], "target_length", "num_tokens", ...}`) for every target
    length, from documents in order; counts go into `summary`."""
    summary = summary if summary is not None else QASummary()
    assemblers = [_Assembler(length, config, data_config, tokenizer, text_vocab_size, summary)
                  for length in config.target_lengths]
    taken: set[str] = set()
    chunk_id = 0
    for document_index, document in enumerate(documents):
        summary.documents += 1
        for chunk_index, chunk in enumerate(split_into_chunks(document, tokenizer, config.chunk_tokens)):
            rng = np.random.default_rng([config.seed, document_index, chunk_index])
            qa = generator(chunk, rng, taken)
            summary.chunks += 1
            summary.pairs += len(qa.pairs)
            summary.chunks_without_qa += not qa.pairs
            tokens = len(tokenizer.encode(qa.text))
            for assembler in assemblers:
                yield from assembler.add(chunk_id, qa, tokens, document_index)
            chunk_id += 1
    for assembler in assemblers:
        yield from assembler.finish()
    summary.unparseable_outputs = int(getattr(generator, "unparseable", 0))


def _read_documents(config: QAConfig, data_config: DataConfig, report: BadRecordReport) -> Iterator[str]:
    path = config.input
    if not Path(path).is_file():
        raise FileNotFoundError(f"qa.input file {path!r} does not exist")
    for line, value in read_jsonl_lines(path):
        report.records_read += 1
        error = value if isinstance(value, BadRecordError) else None
        if error is None and not isinstance(value, dict):
            error = BadRecordError(path, line, "not_an_object", "expected a JSON object")
        elif error is None and not isinstance(value.get(config.text_field), str):
            error = BadRecordError(path, line, "missing_field",
                                   f"field {config.text_field!r} (qa.text_field) is missing or not a string")
        elif error is None and not value[config.text_field].strip():
            error = BadRecordError(path, line, "empty_example", f"field {config.text_field!r} is empty")
        if error is None:
            yield value[config.text_field]
        elif data_config.on_bad_record == "skip":
            report.add(error)
        else:
            raise error


def make_qa(
    config: QAConfig,
    data_config: DataConfig,
    tokenizer: TokenizerLike,
    text_vocab_size: int,
    *,
    generate: Generate | None = None,
    show_progress: bool = True,
) -> QASummary:
    """Reads `qa.input` documents, writes chat JSONL to `qa.output`; returns the counts."""
    if not config.output:
        raise ConfigError("qa.output is empty: name the JSONL file to write")
    if config.generator == "lm":
        if generate is None:
            raise ConfigError("qa.generator=lm needs a generate(prompt) -> str callable (a loaded "
                              "causal LM); use qa.generator=template for the model-free generator")
        generator: Any = LMQAGenerator(generate, config.prompt, config.pairs_per_chunk)
    else:
        generator = TemplateQAGenerator(config.template_mode, config.pairs_per_chunk)
    summary, report = QASummary(), BadRecordReport(data_config.bad_record_examples)
    from tqdm import tqdm

    documents = tqdm(_read_documents(config, data_config, report), desc="make-qa",
                     unit=" documents", disable=not show_progress)
    output = Path(config.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = output.with_name(output.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for record in build_qa_examples(documents, config=config, data_config=data_config,
                                        tokenizer=tokenizer, text_vocab_size=text_vocab_size,
                                        generator=generator, summary=summary):
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(temporary, output)
    summary.bad_records = report.to_dict()
    return summary
