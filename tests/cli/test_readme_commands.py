"""Every command README.md shows, and every example in a subcommand's `--help`, runs as written.

The commands are parsed out of README.md (its ```bash blocks and the `lwm ...` code spans of its
tables) and out of the `examples:` of each subcommand's description, so these tests follow the
documents. Each command goes through `lwm.cli.main` in-process up to loading its config, which
is where every field, override and preset is checked; the loading then stops (`ConfigLoaded`)
before any work. Commands with placeholders (`HF_DIR`, `...`) are only parsed. The README's own
videos path (train a VQ tokenizer, tokenize, train, generate) runs for real in a slow test.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

import lwm.config
from lwm.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PLACEHOLDER = re.compile(r"^(\.\.\.|[A-Z][A-Z0-9_]*)$")


def _strip_comment(line: str) -> str:
    """The line without a trailing `# comment` (a `#` outside quotes)."""
    quote = None
    for index, char in enumerate(line):
        if char in "\"'" and quote in (None, char):
            quote = None if quote == char else char
        elif char == "#" and quote is None and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def shell_commands(text: str) -> list[str]:
    """Commands of a shell snippet: continuation lines joined, comments and blank lines dropped."""
    commands, pending = [], ""
    for raw in text.splitlines():
        line = _strip_comment(raw)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line:
            commands.append(line)
    return commands


def readme_commands() -> list[str]:
    """`lwm ...`, `make ...` and `scripts/...` commands of README.md, in order, without repeats."""
    text = README.read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        found += shell_commands(block)
    found += [span for span in re.findall(r"`((?:\.venv/bin/)?lwm [^`]+)`", text)]
    commands = []
    for command in found:
        command = command.removeprefix(".venv/bin/")
        if command.split()[0] in ("lwm", "make") or command.startswith("scripts/"):
            if command not in commands:
                commands.append(command)
    return commands


def help_examples() -> list[str]:
    """The `lwm ...` lines under `examples:` / `example:` of every subcommand's description."""
    parser = build_parser()
    subparsers = next(action for action in parser._actions if hasattr(action, "choices") and action.choices)
    commands = []
    seen_parsers = set()
    for sub in subparsers.choices.values():
        if id(sub) in seen_parsers:
            continue
        seen_parsers.add(id(sub))
        description = sub.description or ""
        match = re.search(r"examples?:\n(.*)", description, flags=re.S)
        if match:
            commands += [c for c in shell_commands(match.group(1)) if c.startswith("lwm ")]
    return commands


class ConfigLoaded(BaseException):
    """Raised by the patched `load_config` once the config has loaded: the command stops there."""

    def __init__(self, config):
        super().__init__("config loaded")
        self.config = config


@pytest.fixture
def stop_at_config(monkeypatch):
    """`load_config` loads for real (every check runs), then stops the command."""
    real = lwm.config.load_config
    loaded = []

    def load_then_stop(cls, path, overrides=(), *args, **kwargs):
        config = real(cls, path, overrides, *args, **kwargs)
        loaded.append((cls, path, list(overrides)))
        raise ConfigLoaded(config)

    monkeypatch.setattr(lwm.config, "load_config", load_then_stop)
    return loaded


def _has_placeholder(argv: list[str]) -> bool:
    return any(PLACEHOLDER.match(token) for token in argv)


def check_command(command: str, stop_at_config, capsys) -> None:
    """Parses `command`; config-driven ones load their config (fields, overrides, preset)."""
    if command.startswith("make "):
        makefile = (ROOT / "Makefile").read_text()
        for target in command.split()[1:]:
            assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"no make target {target}"
        return
    if command.startswith("scripts/"):
        script = ROOT / command.split()[0]
        assert script.is_file(), f"{script} does not exist"
        return
    argv = shlex.split(command)[1:]
    parser = build_parser()
    subcommands = next(a for a in parser._actions if hasattr(a, "choices") and a.choices).choices
    assert argv[0] in subcommands, f"`lwm {argv[0]}` is not a command"
    if len(argv) == 1:
        return  # a command named in prose (`lwm chat`, `lwm wm ...`): that it exists is the claim
    if _has_placeholder(argv):
        if "..." not in argv:
            parser.parse_known_args(argv)
        return
    args, _ = parser.parse_known_args(argv)
    if getattr(args, "config", None):
        assert (ROOT / args.config).is_file(), f"{args.config} does not exist"
    if not hasattr(args, "config"):
        return  # a path-taking command (inspect-store, convert): parsing is what can be checked
    capsys.readouterr()
    try:
        code = main(argv)
    except ConfigLoaded:
        assert stop_at_config
        return
    pytest.fail(f"`{command}` exited with {code} before its config loaded: "
                f"{capsys.readouterr().err.strip()}")


README_COMMANDS = readme_commands()
HELP_EXAMPLES = help_examples()


def test_the_documents_hold_commands():
    assert len(README_COMMANDS) >= 15 and any(c.startswith("lwm tokenize") for c in README_COMMANDS)
    assert len(HELP_EXAMPLES) >= 15 and any(c.startswith("lwm chat") for c in HELP_EXAMPLES)


@pytest.mark.parametrize("command", README_COMMANDS)
def test_readme_command(command, stop_at_config, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    check_command(command, stop_at_config, capsys)


@pytest.mark.parametrize("command", HELP_EXAMPLES)
def test_help_example(command, stop_at_config, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    check_command(command, stop_at_config, capsys)


def test_every_command_has_help(capsys):
    parser = build_parser()
    subcommands = next(a for a in parser._actions if hasattr(a, "choices") and a.choices).choices
    for name in subcommands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0, name
        assert f"usage: lwm {name}" in capsys.readouterr().out


def test_readme_plan_command_runs(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    command = next(c for c in README_COMMANDS if c.startswith("lwm plan"))
    assert main(shlex.split(command)[1:]) == 0
    assert "fits" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The README's own-videos path, for real, with tiny settings appended.

TINY = {
    "train-vq": ["--train.steps", "2", "--train.warmup_steps", "1", "--train.batch_size", "2",
                 "--checkpoint.every", "2", "--train.log_every", "1"],
    "tokenize": ["--workers", "1", "--progress_bar", "false", "--num_frames", "2"],
    "train": ["--train.steps", "2", "--train.warmup_steps", "0", "--data.batch_size", "8",
              "--data.seq_len", "512"],
    "generate": [],
}


def own_videos_block() -> list[str]:
    text = README.read_text()
    section = text[text.index("### From the demo to your own videos"):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return shell_commands(block)


@pytest.mark.slow
def test_readme_own_videos_path_runs(tmp_path, monkeypatch, capsys):
    from lwm.data.store import TokenStore
    from lwm.data.video import write_video

    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    rng = np.random.default_rng(0)
    (tmp_path / "videos").mkdir()
    (tmp_path / "data" / "clips").mkdir(parents=True)
    lines = []
    for index in range(3):
        frames = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
        write_video(tmp_path / "videos" / f"{index}.mp4", frames, fps=4)
        write_video(tmp_path / "data" / "clips" / f"{index:04d}.mp4", frames, fps=4)
        lines.append(f'{{"video": "clips/{index:04d}.mp4", "caption": "clip {index}"}}\n')
    (tmp_path / "data" / "clips.jsonl").write_text("".join(lines))
    for command in own_videos_block():
        argv = shlex.split(command)[1:]
        assert main(argv + TINY[argv[0]]) == 0, command
    store = TokenStore(tmp_path / "data" / "clips-store")
    assert store.verify()["tokens"] >= 1
    assert len(store) == 6  # both directions of each clip
    assert (tmp_path / "square.png").is_file() or list(tmp_path.glob("square*.png"))
