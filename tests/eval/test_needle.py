"""Needle in a haystack: prompt construction, scoring on a model whose answers are known,
multi-needle accuracy, resuming, the heatmap, and a real small model through the pipeline."""

import json
import re

import numpy as np
import pytest

from lwm.config.infer import NeedleConfig
from lwm.eval.needle import (
    Haystack,
    build_prompt,
    digits_right,
    encode_continuation,
    make_cells,
    needle_grid,
    run_needle_eval,
    score_answer,
)

HAYSTACK = " ".join(
    f"Chapter {index // 10} line {index} tells of rivers, hills and quiet towns." for index in range(200)
)
NEEDLE_PATTERN = re.compile(r"The special magic (.+?) number is: (\d{7})\.")


def _settings(**changes) -> NeedleConfig:
    base = dict(haystack="unused", context_min=200, context_max=400, context_intervals=2, depth_intervals=3,
                rounds=2, max_new_tokens=8)
    return NeedleConfig(**{**base, **changes})


class Reader:
    """A 'model' that reads the prompt and answers with the numbers of the cities it is asked
    about (optionally only the first); it counts its calls."""

    def __init__(self, tokenizer, first_only: bool = False):
        self.tokenizer = tokenizer
        self.first_only = first_only
        self.calls = 0

    def __call__(self, prompt_ids):
        self.calls += 1
        text = self.tokenizer.decode(prompt_ids)
        numbers = {city: number for city, number in NEEDLE_PATTERN.findall(text)}
        question = text[text.rindex("What"):]
        asked = [city for city in numbers if city in question]
        asked.sort(key=question.index)
        if self.first_only:
            asked = asked[:1]
        return "It is " + " and ".join(numbers[city] for city in asked) + "."


def test_grid_and_scoring():
    lengths, depths = needle_grid(_settings(context_intervals=3, depth_intervals=5))
    assert lengths == [200, 300, 400] and depths == [0.0, 25.0, 50.0, 75.0, 100.0]
    assert score_answer("The number is 1234567.", "1234567")
    assert not score_answer("The number is 123456.", "1234567")
    assert digits_right("It is 1234567.", "1234567") == 1.0
    assert digits_right("It is 1239567, or 12.", "1234567") == 6 / 7
    assert digits_right("no digits here", "1234567") == 0.0
    cells = make_cells(_settings())
    assert len(cells) == 2 * 3 * 2
    assert all(len(cell.needles[0].number) == 7 for cell in cells)
    assert make_cells(_settings()) == cells  # every cell is drawn from its own seed


def test_prompt_is_exact_length_with_needle_at_a_sentence_boundary(tokenizer):
    haystack = Haystack(HAYSTACK, tokenizer)
    for cell in make_cells(_settings()):
        ids, positions = build_prompt(cell, haystack, tokenizer)
        assert len(ids) == cell.context_length
        text = tokenizer.decode(ids)
        assert text.startswith("You are a helpful assistant. USER: ")
        assert text.endswith(" ASSISTANT:")
        needle = cell.needles[0]
        sentence = f"The special magic {needle.city} number is: {needle.number}."
        assert sentence in text and f"What is the special magic {needle.city} number?" in text
        before = tokenizer.decode(ids[:positions[0]])
        if needle.depth == 0:
            assert before.endswith("USER:")
        else:
            assert before.endswith(".")  # a sentence boundary
        # the needle sits at its depth of the haystack, less at most one sentence (20 tokens here)
        prefix = 1 + len(tokenizer.encode("You are a helpful assistant. USER:"))
        needle_tokens = len(encode_continuation(tokenizer, " " + sentence))
        question_start = text.rindex(" What is")
        suffix = len(encode_continuation(tokenizer, text[question_start:]))
        budget = len(ids) - prefix - suffix - needle_tokens
        offset = positions[0] - prefix
        assert 0 <= budget * needle.depth / 100 - offset < 21


def test_a_reader_scores_perfectly_and_a_blind_model_scores_zero(tokenizer, tmp_path):
    report = run_needle_eval(Reader(tokenizer), tokenizer, HAYSTACK, _settings(), tmp_path / "a", progress=False)
    assert report.accuracy == 1.0 and report.new_cells == 12
    blind = run_needle_eval(lambda ids: "I do not know.", tokenizer, HAYSTACK, _settings(), tmp_path / "b",
                            progress=False)
    assert blind.accuracy == 0.0
    assert report.digit_accuracy == 1.0 and blind.digit_accuracy == 0.0
    rng = np.random.default_rng(0)
    guesser = run_needle_eval(lambda ids: f"It is {rng.integers(1_000_000, 10_000_000)}.", tokenizer, HAYSTACK,
                              _settings(rounds=8), tmp_path / "c", progress=False)
    assert guesser.accuracy == 0.0 and 0.03 < guesser.digit_accuracy < 0.2  # one digit in ten
    png = report.heatmap_path.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000


def test_multi_needle_scores_each_asked_needle(tokenizer, tmp_path):
    settings = _settings(num_needles=3, retrieve=2, depth_intervals=4)
    report = run_needle_eval(Reader(tokenizer, first_only=True), tokenizer, HAYSTACK, settings, tmp_path,
                             progress=False)
    assert len(report.results) == 2 * 2  # cells: lengths x rounds
    for result in report.results:
        assert len(result["needles"]) == 3 and len({n["depth"] for n in result["needles"]}) == 3
        assert result["correct"] == [True, False]
    assert report.accuracy == 0.5


def test_rerun_resumes_and_skips_finished_cells(tokenizer, tmp_path):
    reader = Reader(tokenizer)
    first = run_needle_eval(reader, tokenizer, HAYSTACK, _settings(), tmp_path, progress=False, max_new_cells=5)
    assert reader.calls == 5 and first.new_cells == 5
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["results"]) == 5
    second = run_needle_eval(reader, tokenizer, HAYSTACK, _settings(), tmp_path, progress=False)
    assert reader.calls == 12 and second.resumed_cells == 5 and second.new_cells == 7
    third = run_needle_eval(reader, tokenizer, HAYSTACK, _settings(), tmp_path, progress=False)
    assert reader.calls == 12 and third.new_cells == 0 and len(third.results) == 12
    with pytest.raises(ValueError, match="different settings"):
        run_needle_eval(reader, tokenizer, HAYSTACK, _settings(seed=7), tmp_path, progress=False)


def test_short_haystack_repeats_and_says_so(tokenizer, tmp_path):
    report = run_needle_eval(Reader(tokenizer), tokenizer, "One short sentence. Another one.", _settings(rounds=1),
                             tmp_path, progress=False)
    assert report.haystack_repeats > 1 and report.accuracy == 1.0


def test_small_model_runs_through_the_pipeline(sharded_engine, tokenizer, tmp_path):
    from lwm.infer.generate import TextGenerator

    generator = TextGenerator(sharded_engine, tokenizer, max_prompt_tokens=248, max_new_tokens=8)
    settings = _settings(context_min=240, context_max=240, context_intervals=1, depth_intervals=2, rounds=1)
    report = run_needle_eval(generator, tokenizer, HAYSTACK, settings, tmp_path, progress=False)
    assert len(report.results) == 2 and generator.cache_size == 256 and generator.engine.prefix_hits == 1
    for result in report.results:
        assert isinstance(result["response"], str) and result["prompt_tokens"] == 240
        assert result["correct"] == [score_answer(result["response"], result["answers"][0])]
        assert result["digits_right"] == [digits_right(result["response"], result["answers"][0])]
    assert np.isfinite(report.accuracy) and report.heatmap_path.is_file()
