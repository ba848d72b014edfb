"""`lwm make-qa` with a real loaded causal LM writing the question/answer pairs."""

import json

from infer_helpers import SMALL, make_model

from lwm.model.params_io import save_model


def test_make_qa_asks_a_loaded_model(tmp_path, capsys):
    from lwm.cli import main

    model_dir = save_model(make_model(SMALL), tmp_path / "model")
    documents = tmp_path / "docs.jsonl"
    sentences = " ".join(f"The {c} square moves left and bounces off the wall number {i}." for i, c in
                         enumerate(["red", "blue", "green", "yellow"] * 6))
    documents.write_text(json.dumps({"text": sentences}) + "\n")
    code = main([
        "make-qa", "--config", "configs/data/make_qa.yaml", "--qa.input", str(documents),
        "--qa.output", str(tmp_path / "qa.jsonl"), "--qa.generator", "lm",
        "--qa.model_dir", str(model_dir), "--qa.chunk_tokens", "64", "--qa.target_lengths", "[256]",
        "--qa.max_new_tokens", "8", "--qa.questions_per_example", "1",
    ])
    assert code == 0
    out = capsys.readouterr().out
    counts = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    # a random model writes no parseable pairs: every chunk was asked, and each miss is counted
    assert int(counts["chunks"]) >= 2
    assert int(counts["unparseable_outputs"]) + int(counts["pairs"]) >= int(counts["chunks"])
    assert (tmp_path / "qa.jsonl").exists()


def test_lm_generator_requires_a_model(tmp_path):
    from lwm.cli import main

    assert main(["make-qa", "--config", "configs/data/make_qa.yaml", "--qa.generator", "lm"]) == 2
