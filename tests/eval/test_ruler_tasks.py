"""RULER's generators: every item well formed at its exact length, reproducible from its seed;
RULER's scorers on hand-made answers; an oracle reader scores 100 on every task, a blind one ~0."""

import dataclasses
import json
import re
from collections import Counter

import numpy as np
import pytest
from eval_helpers import OracleReader, blind_reader, write_hotpotqa, write_squad

from lwm.config.eval import RulerConfig
from lwm.eval.ruler.haystacks import generated_essay
from lwm.eval.ruler.qa import QAFileError, load_hotpotqa, load_squad
from lwm.eval.ruler.report import format_table, summary, weighted_average
from lwm.eval.ruler.runner import run_ruler
from lwm.eval.ruler.scoring import string_match_all, string_match_part
from lwm.eval.ruler.tasks import TASKS, EvalError, TaskContext, make_item

LENGTHS = (1536, 2560)
GEN = 16


@pytest.fixture(scope="module")
def tokenizer():
    from lwm.data.text_tokenizer import TextTokenizer

    return TextTokenizer()


@pytest.fixture(scope="module")
def qa_datasets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    return {"squad": load_squad(write_squad(folder / "squad.json")),
            "hotpotqa": load_hotpotqa(write_hotpotqa(folder / "hotpot.json"))}


@pytest.fixture(scope="module")
def context(tokenizer, qa_datasets):
    return TaskContext(tokenizer, essay=generated_essay(0), seed=7, max_new_tokens=GEN, qa_datasets=qa_datasets)


@pytest.mark.parametrize("task", list(TASKS))
def test_items_are_well_formed(task, context, tokenizer):
    for length in LENGTHS:
        for index in range(2):
            item = make_item(task, length, index, context)
            # Exactly RULER's max_seq_length minus the generation budget (within a token).
            assert length - GEN - 1 <= len(item.ids) <= length - GEN
            assert item.ids[0] == tokenizer.bos_id
            text = tokenizer.decode(item.ids)
            assert text.startswith("You are a helpful assistant. USER: ") and " ASSISTANT: " in text
            context_text = tokenizer.decode(item.ids[item.context_start:item.context_end])
            for reference, position, depth in zip(item.references, item.positions, item.depths):
                assert reference in context_text
                if position >= 0:  # the reference sits in the piece inserted at its position
                    assert reference in tokenizer.decode(item.ids[position:position + 128])
                    assert reference not in tokenizer.decode(item.ids[item.context_start:position])
                    actual = 100 * (position - item.context_start) / (item.context_end - item.context_start)
                    assert depth == pytest.approx(actual)
            # Reproducible from its seed alone.
            assert make_item(task, length, index, context).ids == item.ids


def test_needles_distractors_never_equal_the_answer(context, tokenizer):
    for task in ("niah_multikey_1", "niah_multikey_2", "niah_multikey_3", "niah_multiquery", "niah_multivalue"):
        item = make_item(task, 2560, 0, context)
        text = tokenizer.decode(item.ids)
        question = text[text.rindex("What "):]
        pairs = re.findall(r"One of the special magic \w+ for (\S+) is: (\S+)\.", text)
        asked = {key for key, _ in pairs if key in question}
        answers = [value for key, value in pairs if key in asked]
        assert sorted(answers) == sorted(item.references)
        distractors = [value for key, value in pairs if key not in asked]
        assert not set(distractors) & set(item.references)
        if task.startswith("niah_multikey_"):
            assert len(distractors) >= 3
        if task in ("niah_multikey_2", "niah_multikey_3"):  # the whole haystack is needles
            assert len(pairs) > 20


def test_depths_follow_the_requested_grid(context):
    # niah_single_1 draws each item's depth from RULER's 40 depths; items spread over the context.
    depths = [make_item("niah_single_1", 2560, index, context).depths[0] for index in range(12)]
    assert max(depths) - min(depths) > 40


def test_aggregation_answers_are_the_most_frequent_words(context, tokenizer):
    for length in LENGTHS:
        item = make_item("cwe", length, 0, context)
        listing = tokenizer.decode(item.ids[item.context_start:item.context_end])
        counts = Counter(w for w in listing.split() if w.isalpha())
        top = counts.most_common(11)
        assert {w for w, _ in top[:10]} == set(item.references) and top[9][1] > top[10][1]
        item = make_item("fwe", length, 0, context)
        listing = tokenizer.decode(item.ids[item.context_start:item.context_end])
        counts = Counter(w for w in listing.split() if w.isalpha())
        top = counts.most_common(4)
        assert {w for w, _ in top[:3]} == set(item.references) and top[2][1] > top[3][1]


def test_vt_chain_is_in_order(context, tokenizer):
    item = make_item("vt", 2560, 1, context)
    assert len(item.references) == 5 and item.positions == sorted(item.positions)
    text = tokenizer.decode(item.ids[item.context_start:item.context_end])
    first = re.search(rf"VAR {item.references[0]} = (\d+)", text)
    assert first and f"assigned the value {first.group(1)}" in tokenizer.decode(item.ids)


def test_lengths_too_short_and_bad_files_say_what_to_do(context, tmp_path):
    with pytest.raises(EvalError, match="use lengths above"):
        make_item("niah_single_2", 60, 0, context)
    with pytest.raises(EvalError, match="unknown task"):
        make_item("niah_single_9", 1024, 0, context)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(QAFileError, match="not SQuAD format"):
        load_squad(tmp_path / "bad.json")
    with pytest.raises(QAFileError, match="does not exist"):
        load_hotpotqa(tmp_path / "missing.json")


def test_qa_readers(qa_datasets):
    squad = qa_datasets["squad"]
    assert [q.query for q in squad.questions] == ["Where does the Velka river reach the sea?",
                                                 "What did barges carry?", "What was the largest bell called?"]
    assert squad.questions[0].answers == ("Porto Lume", "at Porto Lume")
    assert len(squad.questions[0].related) == 1  # the other paragraph of its article
    hotpot = qa_datasets["hotpotqa"]
    assert hotpot.questions[1].answers == ("green",) and len(hotpot.questions[1].documents) == 10
    assert hotpot.documents[hotpot.questions[1].gold[0]] == "Tamsin ferry\nThe Tamsin ferry is painted green."


def test_scorers_on_hand_made_answers():
    # RULER's metrics: string_match_all averages the share of references found (case-insensitive).
    assert string_match_all(["The numbers are 123 and 456."], [["123", "456"]]) == 100.0
    assert string_match_all(["Only 123."], [["123", "456"]]) == 50.0
    assert string_match_all(["abc", "ABC-def"], [["abc"], ["x", "abc-DEF"]]) == 75.0
    assert string_match_all(["\x00 VAR QWERT\tVAR ASDFG"], [["qwert", "asdfg", "zxcvb"]]) == 66.67
    # string_match_part: a sample counts when any reference is found.
    assert string_match_part(["It is Porto Lume."], [["Porto Lume", "at Porto Lume"]]) == 100.0
    assert string_match_part(["Lume", "salt"], [["Porto Lume"], ["salt and timber", "salt"]]) == 50.0


def test_weighted_averages_reproduce_rulers_table():
    # LWM-Text-Chat-1M in RULER's Table 3: 4K..128K, Avg 72.8, wAvg (inc) 69.9, wAvg (dec) 75.7.
    lwm = [82.3, 78.4, 73.7, 69.1, 68.1, 65.0]
    assert round(float(np.mean(lwm)), 1) == 72.8
    assert round(weighted_average(lwm, True), 1) == 69.9
    assert round(weighted_average(lwm, False), 1) == 75.7


def _settings(tasks, **changes):
    base = dict(tasks=tuple(tasks), lengths=(1536,), samples=2, seed=3, max_new_tokens=GEN,
                squad="squad.json", hotpotqa="hotpot.json")
    return RulerConfig(**{**base, **changes})


def test_oracle_scores_100_and_blind_about_0(tokenizer, qa_datasets, tmp_path):
    tasks = list(TASKS)
    oracle = run_ruler(OracleReader(tokenizer), tokenizer, _settings(tasks), tmp_path / "oracle",
                       essay=generated_essay(0), qa_datasets=qa_datasets, progress=False, heatmaps=False)
    assert oracle.table["scores"] == {task: [100.0] for task in tasks}, oracle.table["scores"]
    blind = run_ruler(blind_reader, tokenizer, _settings(tasks), tmp_path / "blind",
                      essay=generated_essay(0), qa_datasets=qa_datasets, progress=False, heatmaps=False)
    assert blind.table["avg"] < 5.0
    text = format_table(oracle.table)
    assert "| niah_single_1 | 100.0 | 100.0 |" in text and "wAvg (inc) 100.0" in text


def test_summary_with_missing_cells():
    results = [{"task": "vt", "length": 4096, "score": 1.0}, {"task": "vt", "length": 8192, "score": 0.5},
               {"task": "cwe", "length": 4096, "score": 0.0}]
    table = summary(results, ["vt", "cwe"], [4096, 8192])
    assert table["scores"] == {"vt": [100.0, 50.0], "cwe": [0.0, None]}
    assert table["per_length"] == [50.0, 50.0] and table["avg"] == 50.0


def test_results_resume_and_extend(tokenizer, tmp_path):
    reader = OracleReader(tokenizer)
    calls = []

    def counting(ids, max_new_tokens, is_vision=None):
        calls.append(len(ids))
        return reader(ids, max_new_tokens)

    settings = _settings(["niah_single_1", "vt"], lengths=(1536,), samples=2)
    first = run_ruler(counting, tokenizer, settings, tmp_path, essay=generated_essay(0), progress=False,
                      max_new_items=3, heatmaps=False)
    keys = [r["key"] for r in json.loads(first.results_path.read_text())["results"]]
    assert keys == ["niah_single_1/1536/0", "niah_single_1/1536/1", "vt/1536/0"] and len(calls) == 3
    second = run_ruler(counting, tokenizer, settings, tmp_path, essay=generated_essay(0), progress=False)
    assert (second.new_items, second.resumed_items, len(calls)) == (1, 3, 4)
    wider = dataclasses.replace(settings, lengths=(1536, 2048), samples=1)
    third = run_ruler(counting, tokenizer, wider, tmp_path, essay=generated_essay(0), progress=False)
    assert (third.new_items, third.resumed_items) == (2, 4)
    assert third.table["lengths"] == [1536, 2048] and third.table["scores"] == {"niah_single_1": [100.0, 100.0],
                                                                                "vt": [100.0, 100.0]}
    assert set(third.heatmaps) == {"niah_single_1", "vt"} and "| vt | 100.0 | 100.0 | 100.0 |" in (
        third.table_path.read_text())
    # The same items come back (a resumed item equals a fresh one of the same seed).
    again = run_ruler(reader, tokenizer, settings, tmp_path / "fresh", essay=generated_essay(0), progress=False,
                      heatmaps=False)
    fresh = {r["key"]: r["references"] for r in again.results}
    assert all(fresh[r["key"]] == r["references"] for r in third.results if r["key"] in fresh)
    with pytest.raises(EvalError, match="other settings"):
        run_ruler(reader, tokenizer, dataclasses.replace(settings, seed=4), tmp_path, essay=generated_essay(0),
                  progress=False)


def test_heatmap_grid_bins_depths_and_labels_lengths():
    from lwm.eval.ruler.report import heatmap_grid, length_label

    results = [
        {"task": "vt", "length": 4096, "depths": [3.0, 48.0], "hits": [True, False]},
        {"task": "vt", "length": 8192, "depths": [52.0], "hits": [True]},
        {"task": "cwe", "length": 4096, "depths": [None, None], "hits": [True, False]},
    ]
    lengths, labels, matrix = heatmap_grid(results, "vt")
    assert lengths == [4096, 8192] and labels == ["0", "50"]
    assert matrix[0, 0] == 1.0 and matrix[1, 0] == 0.0 and matrix[1, 1] == 1.0 and np.isnan(matrix[0, 1])
    assert heatmap_grid(results, "cwe")[1:] == (["all"], pytest.approx(np.array([[0.5]])))
    assert [length_label(n) for n in (1536, 4096, 131072, 1048576, 512)] == ["1.5K", "4K", "128K", "1M", "512"]
