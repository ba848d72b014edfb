"""`lwm chat`, `lwm generate` and `lwm needle` on small checkpoints made by the tests."""

import json
from pathlib import Path

import pytest

import lwm.cli as cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "infer"
SMALL_CACHE = ["--cache.prefill_chunk", "16", "--cache.key_chunk", "16"]


@pytest.fixture
def run_cli(monkeypatch):
    if "lwm.cli.infer" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", cli.COMMAND_MODULES + ("lwm.cli.infer",))
    return cli.main


def test_help_shows_examples(run_cli, capsys):
    for command in ("chat", "generate", "needle"):
        with pytest.raises(SystemExit) as exit_info:
            run_cli([command, "--help"])
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_chat_answers_a_question(run_cli, model_dir, capsys):
    code = run_cli(["chat", "--config", str(CONFIGS / "chat-tiny.yaml"), "--model", str(model_dir),
                    "--question", "Hello, who are you?", "--cache.max_len", "256",
                    "--sampling.max_new_tokens", "8", *SMALL_CACHE])
    out = capsys.readouterr().out
    assert code == 0 and "USER: Hello, who are you?" in out and "ASSISTANT:" in out and "1 turns" in out


def test_interactive_video_chat_keeps_the_conversation(run_cli, model_dir, vq_dir, clip_path, monkeypatch, capsys):
    questions = iter(["What moves in the video?", "Which way?"])

    def fake_input(prompt=""):
        try:
            return next(questions)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    code = run_cli(["chat", "--config", str(CONFIGS / "chat-tiny.yaml"), "--model", str(model_dir),
                    "--video", str(clip_path), "--load.vq", str(vq_dir), "--load.vq_resolution", "8",
                    "--interactive", "--cache.max_len", "256", "--sampling.max_new_tokens", "8", *SMALL_CACHE])
    out = capsys.readouterr().out
    assert code == 0 and "4 frames" in out and out.count("ASSISTANT:") == 2 and "2 turns" in out


def test_generate_writes_an_image(run_cli, model_dir, vq_dir, tmp_path, capsys):
    from PIL import Image

    output = tmp_path / "square.png"
    code = run_cli(["generate", "--config", str(CONFIGS / "generate-tiny.yaml"), "--model", str(model_dir),
                    "--load.vq", str(vq_dir), "--load.vq_resolution", "8", "--prompt", "a red square",
                    "--output", str(output), "--cache.max_len", "256", *SMALL_CACHE])
    assert code == 0 and output.is_file()
    assert Image.open(output).size == (8, 8)
    assert "1 frame(s)" in capsys.readouterr().out


def test_needle_runs_and_resumes(run_cli, model_dir, tmp_path, capsys):
    haystack = tmp_path / "book.txt"
    haystack.write_text(" ".join(f"The river bends for the {i}th time near the old mill." for i in range(150)),
                        encoding="utf-8")
    args = ["needle", "--config", str(CONFIGS / "needle-tiny.yaml"), "--model", str(model_dir),
            "--haystack", str(haystack), "--output-dir", str(tmp_path / "needle"),
            "--needle.context_min", "240", "--needle.context_max", "240", "--needle.context_intervals", "1",
            "--needle.depth_intervals", "2", "--needle.rounds", "1", "--needle.max_new_tokens", "8", *SMALL_CACHE]
    assert run_cli(args) == 0
    out = capsys.readouterr().out
    assert "2 new cells, 0 resumed" in out and "digits in place" in out
    results = json.loads((tmp_path / "needle" / "results.json").read_text())["results"]
    assert len(results) == 2 and (tmp_path / "needle" / "heatmap.png").is_file()
    assert run_cli(args) == 0
    assert "0 new cells, 2 resumed" in capsys.readouterr().out


def test_config_errors_name_the_field(run_cli, model_dir, tmp_path, capsys):
    code = run_cli(["needle", "--config", str(CONFIGS / "needle-tiny.yaml"), "--model", str(model_dir)])
    assert code == 2 and "needle.haystack" in capsys.readouterr().err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    code = run_cli(["needle", "--config", str(CONFIGS / "needle-tiny.yaml"), "--model", str(model_dir),
                    "--haystack", str(bad)])
    assert code == 2 and "not UTF-8" in capsys.readouterr().err
    code = run_cli(["chat", "--config", str(CONFIGS / "chat-tiny.yaml"), "--model", str(model_dir),
                    "--video", "clip.mp4", "--question", "?"])
    assert code == 2 and "load.vq" in capsys.readouterr().err
