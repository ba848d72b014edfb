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


def test_engine_text_generator_equals_lwm_text_generator(inference_model, tokenizer):
    """The engine as the needle evaluation's generator answers like `TextGenerator` (greedy)."""
    from serve_helpers import SLOT_SIZE, SLOTS

    from lwm.infer.engine import Engine, text_generator
    from lwm.infer.generate import TextGenerator

    reference = TextGenerator(inference_model, tokenizer, max_prompt_tokens=64, max_new_tokens=8)
    # The server's shapes, so the compiled steps are shared with the other tests.
    engine = Engine(inference_model, slots=SLOTS, slot_size=SLOT_SIZE, queue_size=4)
    generate = text_generator(engine, tokenizer.decode, max_new_tokens=8, stop_ids=(tokenizer.eos_id,))
    for text in ("The haystack begins here", "The haystack begins here and goes on"):
        ids = tokenizer.encode(text, add_bos=True)
        assert generate(ids) == reference(ids)
    assert engine.prefix_hits == 1 and engine.free_slots() == SLOTS
