"""`lwm serve`'s config and command line: the shipped YAML loads, mistakes name their field."""

import os

import pytest

from lwm.cli import main
from lwm.config import ConfigError, load_config
from lwm.config.serve import ServeRunConfig

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "infer", "serve-tiny.yaml")


def test_serve_tiny_yaml_loads_with_overrides():
    config = load_config(ServeRunConfig, TINY, ["--load.model", "runs/tiny/model", "--serve.port", "9001"])
    assert config.serve.host == "127.0.0.1" and config.serve.port == 9001 and config.cache.max_len > 0


@pytest.mark.parametrize("overrides, field", [
    ([], "load.model"),
    (["--load.model", "m", "--serve.port", "70000"], "serve.port"),
    (["--load.model", "m", "--serve.slots", "0"], "serve.slots"),
    (["--load.model", "m", "--serve.video_frames", "40"], "serve.video_frames"),
    (["--load.model", "m", "--cache.max_len", "0"], "cache.max_len"),
])
def test_mistakes_name_their_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(ServeRunConfig, TINY, overrides)


def test_command_reports_a_config_error_in_one_line(capsys):
    assert main(["serve", "--config", TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "load.model" in err[0]


def test_text_generator_runs_on_the_engine_and_answers_like_a_full_forward_pass(small_model, inference_model,
                                                                                  tokenizer):
    """The needle evaluation's generator (one engine slot) gives the greedy answer a full forward
    pass per token gives, and the second prompt, sharing the first's prefix, reuses it."""
    from serve_helpers import greedy_by_forward

    from lwm.infer.generate import TextGenerator

    generate = TextGenerator(inference_model, tokenizer, max_prompt_tokens=64, max_new_tokens=8)
    for text in ("The haystack begins here", "The haystack begins here and goes on"):
        ids = tokenizer.encode(text, add_bos=True)
        assert generate(ids) == tokenizer.decode(greedy_by_forward(small_model, ids, 8, tokenizer.eos_id))
    assert generate.engine.prefix_hits == 1 and generate.engine.free_slots() == 1
