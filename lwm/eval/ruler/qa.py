"""RULER's QA tasks on local files: SQuAD (`qa_1`) and HotpotQA (`qa_2`) format, nothing downloaded.

- SQuAD (v1.1 or v2.0 JSON): `{"data": [{"paragraphs": [{"context", "qas": [{"question",
  "answers": [{"text"}], "is_impossible"?}]}]}]}`. Unanswerable questions are skipped; the other
  paragraphs of the same article are the first distractors (as RULER does).
- HotpotQA (distractor-setting JSON): `[{"question", "answer", "context": [[title,
  [sentences]]], "supporting_facts"?}]`; a document is `"{title}\\n{sentences joined}"`. The
  question's own paragraphs are always in its context; the supporting ones are the gold.

The context is the documents (gold and distractors, shuffled) as `Document {i}:\\n{text}`,
as many as fit, then a cut further document to meet the length exactly; the answer is correct
when any reference appears in it (`string_match_part`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from lwm.errors import LwmError
from lwm.eval.ruler.prompts import Encoder, fit_size, pad_to

QA_INTRO = ("Answer the question based on the given documents. Only give me the answer and do not output any "
            "other words.\n\nThe following are given documents.")
QA_QUESTION = ("\n\nAnswer the question based on the given documents. Only give me the answer and do not output "
               "any other words.\n\nQuestion: {query}")
QA_PREFIX = " Answer:"


class QAFileError(LwmError, ValueError):
    """A QA file is missing or not in the SQuAD / HotpotQA format."""


@dataclasses.dataclass(frozen=True)
class QAQuestion:
    """One question: its answers, its own documents (always included) and the gold among them."""

    query: str
    answers: tuple[str, ...]
    documents: tuple[int, ...]
    gold: tuple[int, ...]
    related: tuple[int, ...] = ()  # preferred distractors (the same SQuAD article)


@dataclasses.dataclass(frozen=True)
class QADataset:
    """Questions and the pool of documents they draw contexts from."""

    name: str
    questions: tuple[QAQuestion, ...]
    documents: tuple[str, ...]


def _read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise QAFileError(f"{path} does not exist: give a local SQuAD or HotpotQA JSON file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise QAFileError(f"{path}: not UTF-8 JSON ({error})") from error


def load_squad(path: str | Path) -> QADataset:
    """Reads a SQuAD-format file (answerable questions only)."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise QAFileError(f"{path}: not SQuAD format (expected an object with a 'data' list of articles)")
    documents: dict[str, int] = {}
    questions: list[QAQuestion] = []
    for article_index, article in enumerate(data["data"]):
        try:
            paragraphs = article["paragraphs"]
            indices = [documents.setdefault(p["context"], len(documents)) for p in paragraphs]
            for paragraph, document in zip(paragraphs, indices):
                for qa in paragraph["qas"]:
                    answers = tuple(dict.fromkeys(a["text"] for a in qa.get("answers", [])))
                    if qa.get("is_impossible") or not answers:
                        continue
                    questions.append(QAQuestion(qa["question"], answers, (document,), (document,),
                                                tuple(i for i in indices if i != document)))
        except (KeyError, TypeError) as error:
            raise QAFileError(f"{path}: article {article_index} is not SQuAD format (missing {error})") from error
    if not questions:
        raise QAFileError(f"{path}: no answerable questions")
    return QADataset("squad", tuple(questions), tuple(documents))


def load_hotpotqa(path: str | Path) -> QADataset:
    """Reads a HotpotQA-format file (distractor setting)."""
    data = _read_json(path)
    if not isinstance(data, list):
        raise QAFileError(f"{path}: not HotpotQA format (expected a list of questions)")
    documents: dict[str, int] = {}
    questions: list[QAQuestion] = []
    for index, entry in enumerate(data):
        try:
            own = [documents.setdefault(f"{title}\n{''.join(sentences)}", len(documents))
                   for title, sentences in entry["context"]]
            titles = [title for title, _ in entry["context"]]
            supporting = {fact[0] for fact in entry.get("supporting_facts", [])}
            gold = tuple(doc for doc, title in zip(own, titles) if title in supporting) or tuple(own)
            questions.append(QAQuestion(entry["question"], (str(entry["answer"]),), tuple(own), gold))
        except (KeyError, TypeError, ValueError) as error:
            raise QAFileError(f"{path}: question {index} is not HotpotQA format ({error!r})") from error
    if not questions:
        raise QAFileError(f"{path}: no questions")
    return QADataset("hotpotqa", tuple(questions), tuple(documents))


def qa_item(dataset: QADataset, encoder: Encoder, rng: np.random.Generator, index: int, target: int):
    """(head, context ids, tail, references, gold depth, gold offset) of question `index` (cycling
    through the file) in exactly `target` prompt tokens; None when its own documents do not fit."""
    question = dataset.questions[index % len(dataset.questions)]
    head = encoder.head(QA_INTRO)
    tail = encoder.tail(QA_QUESTION.format(query=question.query), QA_PREFIX)
    own = list(question.documents)
    others = [doc for doc in question.related if doc not in own]
    rest = [doc for doc in range(len(dataset.documents)) if doc not in own and doc not in others]
    rest = [rest[int(i)] for i in rng.permutation(len(rest))]
    distractors = others + rest
    order_seed = int(rng.integers(2**31))

    def documents(count: int) -> list[int]:
        extra = [distractors[i % len(distractors)] for i in range(max(0, count - len(own)))] if distractors else []
        chosen = own + extra
        order = np.random.default_rng([order_seed, count]).permutation(len(chosen))
        return [chosen[int(i)] for i in order]

    def pieces(chosen: list[int], start: int = 0) -> list[list[int]]:
        out = []
        for i, doc in enumerate(chosen):
            out.append(encoder.piece(f"\n\nDocument {start + i + 1}:") + encoder.piece("\n" + dataset.documents[doc]))
        return out

    fixed = len(head) + len(tail)
    length_of = lambda count: fixed + sum(len(p) for p in pieces(documents(count)))  # noqa: E731
    if length_of(len(own)) > target:
        return None
    upper = len(own) + max(1, (target - fixed) // 8)
    count = fit_size(length_of, target, upper=upper, lower=len(own))
    chosen = documents(count)
    doc_pieces = pieces(chosen)
    context_ids: list[int] = []
    gold_offset = -1
    for doc, piece in zip(chosen, doc_pieces):
        if doc in question.gold and gold_offset < 0:
            gold_offset = len(context_ids)
        context_ids += piece
    filler_doc = distractors[count % len(distractors)] if distractors else own[0]
    filler = [t for p in pieces([filler_doc], start=len(chosen)) for t in p]
    context_ids = pad_to(context_ids, target - fixed, filler)
    depth = 100.0 * gold_offset / max(1, len(context_ids))
    return head, context_ids, tail, list(question.answers), depth, gold_offset
