"""Long-context QA: chunking, robust parsing of LM output, assembly, make-qa end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lwm.config.data import DataConfig, QAConfig
from lwm.data.qa import (
    LMQAGenerator,
    TemplateQAGenerator,
    make_qa,
    parse_qa_pairs,
    split_into_chunks,
)
from lwm.data.records import BadRecordError, ExampleEncoder

TEXT = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(40))
CHAT = DataConfig(format="chat")


def test_chunks_respect_the_budget_and_rejoin(tokenizer):
    chunks = split_into_chunks(TEXT + "\n\nA second paragraph.", tokenizer, 120)
    assert "".join(chunks) == TEXT + "\n\nA second paragraph."
    assert all(len(tokenizer.encode(chunk)) <= 120 for chunk in chunks)
    assert all(chunk.rstrip().endswith(".") for chunk in chunks)  # cut between sentences
    # A sentence longer than the budget is cut between words.
    long = "word " * 100
    assert all(len(tokenizer.encode(c)) <= 20 for c in split_into_chunks(long, tokenizer, 20))


@pytest.mark.parametrize("output,pairs", [
    ("Question: Who?\nAnswer: Ann.\nQuestion: When?\nAnswer: Today.",
     [("Who?", "Ann."), ("When?", "Today.")]),
    ("1. Q: what is it?\nA: a box\n2) **Question 2:** why\n**Answer:** because\nit is",
     [("what is it?", "a box"), ("why", "because it is")]),
    ('Sure!\n```json\n[{"question": "a?", "answer": "b"}]\n```', [("a?", "b")]),
    ("- Q1. Where?\n- A1. Here.", [("Where?", "Here.")]),
    ("Question: no answer here", []),
    ("I cannot help with that.", []),
    ("Q: \nA: empty question", []),
])
def test_parse_qa_pairs(output, pairs):
    assert parse_qa_pairs(output) == pairs


def test_lm_generator_counts_unparseable_outputs():
    outputs = iter(["Question: Q1?\nAnswer: A1.", "garbage", "Q: Q3?\nA: A3."])
    prompts = []

    def generate(prompt):
        prompts.append(prompt)
        return next(outputs)

    generator = LMQAGenerator(generate, pairs_per_chunk=3)
    results = [generator(f"chunk {i}", np.random.default_rng(0), set()) for i in range(3)]
    assert [r.pairs for r in results] == [[("Q1?", "A1.")], [], [("Q3?", "A3.")]]
    assert generator.unparseable == 1 and generator.first_unparseable == ["garbage"]
    assert "chunk 1" in prompts[1] and "3 question and answer pairs" in prompts[1]


def test_template_generator_is_deterministic_and_planted_facts_answer():
    generator = TemplateQAGenerator("plant", pairs_per_chunk=2)
    first = generator("One. Two. Three.", np.random.default_rng([5, 0, 0]), set())
    second = TemplateQAGenerator("plant", 2)("One. Two. Three.", np.random.default_rng([5, 0, 0]), set())
    assert first == second
    for question, answer in first.pairs:
        assert answer in first.text and question.startswith("What is the ")
    extract = TemplateQAGenerator("extract", 1)("Short. " + "This sentence has quite a few words in it.",
                                                 np.random.default_rng(0), set())
    assert extract.pairs == [('In the text, how does the sentence beginning "This sentence has quite" '
                              'continue?', "a few words in it.")]


def run_make_qa(tmp_path, tokenizer, name, **overrides):
    documents = tmp_path / "docs.jsonl"
    documents.write_text("".join(json.dumps({"text": TEXT}) + "\n" for _ in range(3)))
    settings = dict(input=str(documents), output=str(tmp_path / name), chunk_tokens=200,
                    target_lengths=(1500, 3000), questions_per_example=2, seed=1)
    settings.update(overrides)
    config = QAConfig(**settings)
    summary = make_qa(config, CHAT, tokenizer, 261, show_progress=False)
    return config, summary, [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]


def test_make_qa_end_to_end(tmp_path, tokenizer):
    config, summary, records = run_make_qa(tmp_path, tokenizer, "qa.jsonl")
    assert summary.documents == 3 and summary.chunks == 24 and summary.pairs == 48
    assert summary.examples[1500] >= 3 and summary.examples[3000] >= 1
    assert len(records) == sum(summary.examples.values())
    encoder = ExampleEncoder(CHAT, tokenizer)
    for record in records:
        assert record["num_tokens"] <= record["target_length"]
        assert record["num_tokens"] >= config.min_fill * record["target_length"]
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2
        context = messages[0]["content"]
        for answer in (messages[1]["content"], messages[3]["content"]):
            assert answer in context  # the planted fact is in the long context
        example = encoder(record)
        assert len(example) == record["num_tokens"]
        loss_ids = example.tokens[example.loss_mask]
        answers = tokenizer.encode(" " + messages[1]["content"]) + [2] + \
            tokenizer.encode(" " + messages[3]["content"]) + [2]
        assert loss_ids.tolist() == answers
    _, _, again = run_make_qa(tmp_path, tokenizer, "again.jsonl")
    assert again == records  # deterministic for a seed
    _, _, other = run_make_qa(tmp_path, tokenizer, "other.jsonl", seed=2)
    assert other != records


def test_make_qa_bad_documents_and_lm_without_model(tmp_path, tokenizer):
    from lwm.config import ConfigError

    documents = tmp_path / "docs.jsonl"
    documents.write_text(json.dumps({"text": TEXT}) + "\n{broken\n" + json.dumps({"body": 1}) + "\n")
    config = QAConfig(input=str(documents), output=str(tmp_path / "out.jsonl"), chunk_tokens=200,
                      target_lengths=(1000,))
    with pytest.raises(BadRecordError, match=r"docs.jsonl:2: not valid JSON"):
        make_qa(config, CHAT, tokenizer, 261, show_progress=False)
    skipping = DataConfig(format="chat", on_bad_record="skip")
    summary = make_qa(config, skipping, tokenizer, 261, show_progress=False)
    assert summary.bad_records["counts"] == {"malformed_json": 1, "missing_field": 1}
    lm = QAConfig(input=str(documents), output=str(tmp_path / "out.jsonl"), generator="lm",
                  target_lengths=(2000,))
    with pytest.raises(ConfigError, match="generate"):
        make_qa(lm, skipping, tokenizer, 261, show_progress=False)
