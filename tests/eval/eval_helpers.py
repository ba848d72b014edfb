"""Shared pieces of the evaluation tests (imported as `eval_helpers`): QA files written in the
SQuAD and HotpotQA formats as their readers define them, and reference readers."""

import json
import re
from collections import Counter

from lwm.eval.ruler.haystacks import NOISE

NEEDLE_PATTERN = re.compile(r"One of the special magic \w+ for (\S+) is: (\S+)\.")


def write_squad(path):
    """A SQuAD v2.0 file: two articles, one unanswerable question (skipped)."""
    data = {"version": "v2.0", "data": [
        {"title": "Rivers", "paragraphs": [
            {"context": "The Velka river starts in the northern hills and reaches the sea at Porto Lume.",
             "qas": [{"id": "a1", "question": "Where does the Velka river reach the sea?", "is_impossible": False,
                      "answers": [{"text": "Porto Lume", "answer_start": 60}, {"text": "at Porto Lume", "answer_start": 57}]},
                     {"id": "a2", "question": "Who named the river?", "is_impossible": True, "answers": [],
                      "plausible_answers": [{"text": "nobody", "answer_start": 0}]}]},
            {"context": "Barges on the river carried salt and timber for three centuries.",
             "qas": [{"id": "a3", "question": "What did barges carry?", "is_impossible": False,
                      "answers": [{"text": "salt and timber", "answer_start": 29}]}]}]},
        {"title": "Bells", "paragraphs": [
            {"context": f"The bell foundry of Marren cast its largest bell, Old Tomas, in winter. {NOISE}",
             "qas": [{"id": "b1", "question": "What was the largest bell called?", "is_impossible": False,
                      "answers": [{"text": "Old Tomas", "answer_start": 50}]}]}]
             + [{"context": f"Document filler {i}: the weather in the valley was mild and dry that year.",
                 "qas": []} for i in range(12)]},
    ]}
    path.write_text(json.dumps(data))
    return path


def write_hotpotqa(path):
    """A HotpotQA distractor-setting file: two questions with ten paragraphs each."""
    entries = []
    for q, (question, answer, gold) in enumerate([
        ("Which city hosts the Arlen observatory?", "Quessa", [("Arlen observatory", ["The Arlen observatory ", "stands in Quessa."])]),
        ("What colour is the Tamsin ferry?", "green", [("Tamsin ferry", ["The Tamsin ferry is painted green."])]),
    ]):
        context = gold + [(f"Filler {q}-{i}", [f"Paragraph {i} talks about hills.", " It rained."]) for i in range(9)]
        entries.append({"_id": str(q), "question": question, "answer": answer, "type": "bridge",
                        "supporting_facts": [[gold[0][0], 0]], "context": [[t, s] for t, s in context]})
    path.write_text(json.dumps(entries))
    return path


class OracleReader:
    """Answers by looking the answer up in the prompt text, as a perfect reader would."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, ids, max_new_tokens, is_vision=None):
        text = self.tokenizer.decode(list(ids))
        if "special magic" in text and "What " in text:
            question = text[text.rindex("What "):]
            pairs = NEEDLE_PATTERN.findall(text[:text.rindex("What ")])
            asked = [key for key in dict.fromkeys(k for k, _ in pairs) if key in question.split("for ", 1)[1]]
            return " ".join(v for k, v in pairs if k in asked)
        if "variable assignment" in text:
            return self._trace(text)
        if "numbered list of words" in text:
            listing = text[text.rindex("Memorize the ones that appear most often."):text.rindex("Question:")]
            counts = Counter(w for w in listing.split() if w.isalpha())
            return " ".join(w for w, _ in counts.most_common(10))
        if "coded text" in text:
            listing = text[text.rindex("coded words."):text.rindex("Question:")]
            counts = Counter(w for w in listing.split() if w.isalpha())
            return " ".join(w for w, _ in counts.most_common(3))
        if "given documents" in text:
            question = text[text.rindex("Question: ") + 10:text.rindex(" ASSISTANT")]
            return ORACLE_QA.get(question, "")
        return ""

    @staticmethod
    def _trace(text):
        body = text[text.rindex("in the following text."):]
        value = re.findall(r"assigned the value (\d+)", body)[-1]
        assignments = re.findall(r"VAR (\w+) = (VAR \w+|\d+)", body)
        found = {name for name, source in assignments if source == value}
        changed = True
        while changed:
            changed = False
            for name, source in assignments:
                if source.startswith("VAR ") and source[4:] in found and name not in found:
                    found.add(name)
                    changed = True
        return " ".join(sorted(found))


ORACLE_QA = {
    "Where does the Velka river reach the sea?": "Porto Lume",
    "What did barges carry?": "salt and timber",
    "What was the largest bell called?": "Old Tomas",
    "Which city hosts the Arlen observatory?": "Quessa",
    "What colour is the Tamsin ferry?": "green",
}


def blind_reader(ids, max_new_tokens, is_vision=None):
    """Answers without reading: a fixed guess."""
    return "I do not know; perhaps 1234567 or blue-apple."
