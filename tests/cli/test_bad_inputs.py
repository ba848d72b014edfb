"""Bad inputs through the `lwm` command: each fails with exit code 2 and one line naming the file
or field, prints no traceback, and changes no existing data.

Most cases run in-process (`lwm.cli.main` with capsys, no new JAX start-up); a few run as real
subprocesses to check the exit code and the absence of a traceback end to end. Every case
hashes the files under its folder before and after the command.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lwm.cli import main

ROOT = Path(__file__).resolve().parents[2]
LWM = [sys.executable, "-c", "import sys; from lwm.cli import main; sys.exit(main())"]


# ---------------------------------------------------------------------------------------------
# Helpers.


def tree_hashes(folder: Path) -> dict[str, str]:
    """Content hash of every file under `folder`."""
    hashes = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            hashes[path.relative_to(folder).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, command: str, *needles: str,
                          progress_before: bool = False) -> str:
    """Exit code 2 and stderr exactly one line `lwm COMMAND: error: ...` holding each needle.

    `progress_before`: the command may first have shown progress and what it skipped (lines
    not starting with `lwm`); the error is then the last line.
    """
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    if progress_before:
        assert [line for line in lines if line.startswith("lwm ")] == lines[-1:], err
        lines = lines[-1:]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"lwm {command}: error: "), line
    assert "Traceback" not in err
    for needle in needles:
        assert str(needle) in line, (needle, line)
    return line


def check(tmp_path, capsys, argv, command, *needles, inputs: Path | None = None,
          new_files_allowed: bool = False, progress_before: bool = False) -> str:
    """Runs a bad command and checks the error and that no data under `inputs` changed."""
    inputs = inputs or tmp_path
    before = tree_hashes(inputs)
    code, _, err = run_cli(argv, capsys)
    line = assert_one_line_error(code, err, command, *needles, progress_before=progress_before)
    after = tree_hashes(inputs)
    for name, digest in before.items():
        assert after.get(name) == digest, f"{name} changed or vanished"
    if not new_files_allowed:
        assert set(after) == set(before), f"left behind: {sorted(set(after) - set(before))}"
    return line


# ---------------------------------------------------------------------------------------------
# Fixtures: a tiny VQ tokenizer, videos, a manifest, a token store, a small model directory.


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Files shared by the cases (read-only for them: each case copies what it changes)."""
    from lwm.config.vq import VQModelConfig
    from lwm.data.video import write_video
    from lwm.model.vq_tokenizer import save_vq_checkpoint
    from lwm.model.vqgan import init_vqgan

    root = tmp_path_factory.mktemp("assets")
    vq_config = VQModelConfig(resolution=8, hidden_channels=8, channel_mult=(1, 2, 2), num_res_blocks=1,
                              z_channels=8, codebook_size=16, codebook_dim=8, norm_num_groups=4)
    save_vq_checkpoint(root / "vq", init_vqgan(vq_config, seed=0))
    rng = np.random.default_rng(0)
    for index in range(2):
        write_video(root / f"clip{index}.mp4", rng.integers(0, 255, (4, 8, 8, 3), dtype=np.uint8), fps=4)
    (root / "garbage.mp4").write_bytes(b"this is not a video")
    return root


def tokenize_args(tmp_path, assets, manifest_lines, *extra):
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(line + "\n" for line in manifest_lines))
    return ["tokenize", "--config", ROOT / "configs/data/tokenize_videos.yaml",
            "--manifest", manifest, "--vq_tokenizer", assets / "vq",
            "--data.store_path", tmp_path / "store", "--data.vision.codebook_size", "16",
            "--data.vision.tokens_per_frame", "4", "--num_frames", "2", "--workers", "1",
            "--progress_bar", "false", *extra]


def good_line(assets, index=0):
    return json.dumps({"video": str(assets / f"clip{index}.mp4"), "caption": f"clip {index}"})


def make_store(path: Path, count: int = 20) -> None:
    from lwm.data.store import TokenExample, TokenStoreWriter

    with TokenStoreWriter.create(path, tokenizer_name="test", text_vocab_size=100, chunk_tokens=16,
                                 flush_tokens=40) as writer:
        for index in range(count):
            writer.append(TokenExample.make(np.arange(index, index + 7) % 100))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small random text model directory (the project's tokenizer has 2048 ids)."""

    from lwm.config import ModelConfig
    from lwm.model.params_io import numpy_initialised_model, save_model

    config = ModelConfig(vocab_size=2048, hidden_size=32, intermediate_size=48, num_layers=2,
                         num_heads=4, num_kv_heads=2, max_seq_len=1024)
    model = numpy_initialised_model(config, 0)
    directory = tmp_path_factory.mktemp("model") / "model"
    save_model(model, directory)
    return directory


# ---------------------------------------------------------------------------------------------
# Configs: files, YAML, fields, types, overrides.

TOKENIZE_PRESET = ROOT / "configs/data/tokenize_videos.yaml"


def write_config(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_config_file_missing(tmp_path, capsys):
    check(tmp_path, capsys, ["tokenize", "--config", tmp_path / "nope.yaml"], "tokenize", "nope.yaml")


def test_config_bad_yaml(tmp_path, capsys):
    config = write_config(tmp_path, "manifest: [unclosed\nworkers: 2\n")
    check(tmp_path, capsys, ["tokenize", "--config", config], "tokenize", "run.yaml")


def test_config_not_a_mapping(tmp_path, capsys):
    config = write_config(tmp_path, "- a\n- b\n")
    check(tmp_path, capsys, ["tokenize", "--config", config], "tokenize", "run.yaml")


def test_config_unknown_field_in_file(tmp_path, capsys):
    config = write_config(tmp_path, TOKENIZE_PRESET.read_text() + "bogus_field: 1\n")
    check(tmp_path, capsys, ["tokenize", "--config", config], "tokenize", "bogus_field")


def test_config_unknown_nested_field_override(tmp_path, capsys):
    check(tmp_path, capsys, ["tokenize", "--config", TOKENIZE_PRESET, "--data.no_such_thing", "3"],
          "tokenize", "no_such_thing")


def test_config_wrong_type_override(tmp_path, capsys):
    check(tmp_path, capsys, ["tokenize", "--config", TOKENIZE_PRESET, "--num_frames", "many"],
          "tokenize", "num_frames")


def test_config_wrong_type_in_file(tmp_path, capsys):
    config = write_config(tmp_path, TOKENIZE_PRESET.read_text().replace("workers: 4", "workers: [1, 2]"))
    check(tmp_path, capsys, ["tokenize", "--config", config], "tokenize", "workers")


def test_config_override_without_value(tmp_path, capsys):
    check(tmp_path, capsys, ["tokenize", "--config", TOKENIZE_PRESET, "--workers"], "tokenize", "workers")


def test_config_value_fails_validation(tmp_path, capsys):
    check(tmp_path, capsys, ["tokenize", "--config", TOKENIZE_PRESET, "--workers", "0"], "tokenize", "workers")


def test_config_literal_out_of_choices(tmp_path, capsys):
    check(tmp_path, capsys, ["tokenize", "--config", TOKENIZE_PRESET, "--data.on_bad_record", "maybe"],
          "tokenize", "on_bad_record")


def test_config_bad_field_template(tmp_path, capsys):
    check(tmp_path, capsys, ["tokenize", "--config", TOKENIZE_PRESET, "--data.fields", "[vision,caption"],
          "tokenize", "data.fields")


def test_config_wrong_format_for_videos(tmp_path, capsys):
    check(tmp_path, capsys, ["tokenize", "--config", TOKENIZE_PRESET, "--data.format", "text",
                             "--data.fields", "caption"], "tokenize", "data.format")


def test_config_train_vq_negative_steps(tmp_path, capsys):
    check(tmp_path, capsys, ["train-vq", "--config", ROOT / "configs/vq/tiny.yaml", "--train.steps", "-1"],
          "train-vq", "steps")


def test_config_make_qa_unknown_field(tmp_path, capsys):
    check(tmp_path, capsys, ["make-qa", "--config", ROOT / "configs/data/make_qa.yaml", "--qa.colour", "red"],
          "make-qa", "colour")


def test_config_generate_wrong_type(tmp_path, capsys):
    check(tmp_path, capsys, ["generate", "--config", ROOT / "configs/infer/generate-tiny.yaml",
                             "--sampling.temperature", "hot"], "generate", "temperature")


def test_config_chat_unknown_section(tmp_path, capsys):
    check(tmp_path, capsys, ["chat", "--config", ROOT / "configs/infer/chat-tiny.yaml", "--chatty.x", "1"],
          "chat", "chatty")


# ---------------------------------------------------------------------------------------------
# Token stores: missing, a file, damaged chunks, damaged metadata, vocabulary mismatch.


def test_store_missing(tmp_path, capsys):
    check(tmp_path, capsys, ["inspect-store", tmp_path / "nowhere"], "inspect-store", "nowhere")


def test_store_path_is_a_file(tmp_path, capsys):
    (tmp_path / "store").write_text("not a store")
    check(tmp_path, capsys, ["inspect-store", tmp_path / "store"], "inspect-store", "store", "is a file")


def test_store_chunk_deleted(tmp_path, capsys):
    make_store(tmp_path / "store")
    (tmp_path / "store" / "tokens" / "c" / "3").unlink()
    check(tmp_path, capsys, ["inspect-store", tmp_path / "store", "--show", "20"], "inspect-store",
          tmp_path / "store", "array 'tokens' chunk 3", "missing")


def test_store_chunk_truncated(tmp_path, capsys):
    make_store(tmp_path / "store")
    chunk = tmp_path / "store" / "loss_mask" / "c" / "1"
    chunk.write_bytes(chunk.read_bytes()[:5])
    check(tmp_path, capsys, ["inspect-store", tmp_path / "store"], "inspect-store",
          "array 'loss_mask' chunk 1", "5 bytes")


def test_store_chunk_bytes_flipped(tmp_path, capsys):
    make_store(tmp_path / "store")
    chunk = tmp_path / "store" / "tokens" / "c" / "2"
    data = bytearray(chunk.read_bytes())
    data[0] ^= 0xFF
    chunk.write_bytes(bytes(data))
    check(tmp_path, capsys, ["inspect-store", tmp_path / "store", "--verify"], "inspect-store",
          "array 'tokens' chunk 2", progress_before=True)


def test_store_offsets_chunk_deleted(tmp_path, capsys):
    make_store(tmp_path / "store")
    (tmp_path / "store" / "offsets" / "c" / "0").unlink()
    check(tmp_path, capsys, ["inspect-store", tmp_path / "store"], "inspect-store", "array 'offsets' chunk 0")


def test_store_metadata_not_json(tmp_path, capsys):
    make_store(tmp_path / "store")
    (tmp_path / "store" / "store.json").write_text("{ torn")
    check(tmp_path, capsys, ["inspect-store", tmp_path / "store"], "inspect-store", "store.json")


def test_store_metadata_other_version(tmp_path, capsys):
    make_store(tmp_path / "store")
    metadata = json.loads((tmp_path / "store" / "store.json").read_text())
    metadata["format_version"] = 99
    (tmp_path / "store" / "store.json").write_text(json.dumps(metadata))
    check(tmp_path, capsys, ["inspect-store", tmp_path / "store"], "inspect-store", "format_version 99")


def test_store_counts_beyond_arrays(tmp_path, capsys):
    make_store(tmp_path / "store")
    metadata = json.loads((tmp_path / "store" / "store.json").read_text())
    metadata["num_tokens"] += 1000
    (tmp_path / "store" / "store.json").write_text(json.dumps(metadata))
    check(tmp_path, capsys, ["inspect-store", tmp_path / "store"], "inspect-store", "damaged")


def test_store_array_metadata_deleted(tmp_path, capsys):
    make_store(tmp_path / "store")
    (tmp_path / "store" / "is_vision" / "zarr.json").unlink()
    check(tmp_path, capsys, ["inspect-store", tmp_path / "store"], "inspect-store", "is_vision")


def test_train_refuses_a_store_with_a_deleted_chunk_before_training(tmp_path, capsys):
    make_store(tmp_path / "store")
    (tmp_path / "store" / "tokens" / "c" / "1").unlink()
    line = check(tmp_path, capsys, ["train", "--config", ROOT / "configs/tiny.yaml",
                                    "--data.store_path", tmp_path / "store", "--train.steps", "2",
                                    "--train.warmup_steps", "0", "--logging.output_dir", tmp_path / "run"],
                 "train", tmp_path / "store", "array 'tokens' chunk 1", "missing", new_files_allowed=True)
    assert "step" not in line
    assert not list((tmp_path / "run").rglob("*.orbax*")) and not list((tmp_path / "run").rglob("step*"))


def test_a_mesh_larger_than_the_cpu_says_how_to_get_fake_devices(tmp_path, capsys):
    make_store(tmp_path / "store")
    check(tmp_path, capsys, ["train", "--config", ROOT / "configs/tiny.yaml", "--data.store_path",
                             tmp_path / "store", "--mesh.sp", "16", "--model.attention", "ring",
                             "--logging.output_dir", tmp_path / "run"], "train",
          "cannot use 8 devices", "XLA_FLAGS=--xla_force_host_platform_device_count=16",
          "jax_num_cpu_devices",
          new_files_allowed=True)


def test_store_vocabulary_mismatch_when_adding(tmp_path, capsys, assets):
    argv = tokenize_args(tmp_path, assets, [good_line(assets)])
    assert main([str(a) for a in argv]) == 0
    capsys.readouterr()
    # The same store, now with codes of a 32-code book: refused before anything is appended.
    check(tmp_path, capsys, argv + ["--data.vision.codebook_size", "32"], "tokenize", "codebook_size=16",
          new_files_allowed=False)


def test_store_path_is_an_existing_file_for_tokenize(tmp_path, capsys, assets):
    (tmp_path / "store").write_text("precious")
    for overwrite in ("false", "true"):
        check(tmp_path, capsys, tokenize_args(tmp_path, assets, [good_line(assets)], "--overwrite", overwrite),
              "tokenize", "store", "existing file")


def test_store_path_is_a_foreign_directory(tmp_path, capsys, assets):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "notes.txt").write_text("mine")
    check(tmp_path, capsys, tokenize_args(tmp_path, assets, [good_line(assets)]), "tokenize",
          "not a token store")


# ---------------------------------------------------------------------------------------------
# Manifests and videos.


def test_manifest_missing(tmp_path, capsys, assets):
    argv = tokenize_args(tmp_path, assets, [])
    (tmp_path / "clips.jsonl").unlink()
    check(tmp_path, capsys, argv, "tokenize", "clips.jsonl")


def test_manifest_is_a_directory(tmp_path, capsys, assets):
    argv = tokenize_args(tmp_path, assets, [])
    (tmp_path / "clips.jsonl").unlink()
    (tmp_path / "clips.jsonl").mkdir()
    check(tmp_path, capsys, argv, "tokenize", "clips.jsonl", "directory")


def test_manifest_bad_json_line_is_an_error_by_policy(tmp_path, capsys, assets):
    argv = tokenize_args(tmp_path, assets, [good_line(assets), '{"video": oops}'],
                         "--data.on_bad_record", "error")
    check(tmp_path, capsys, argv, "tokenize", "clips.jsonl:2", "not valid JSON", new_files_allowed=True)


def test_manifest_line_not_an_object(tmp_path, capsys, assets):
    argv = tokenize_args(tmp_path, assets, ['["a", "list"]'], "--data.on_bad_record", "error")
    check(tmp_path, capsys, argv, "tokenize", "clips.jsonl:1", "JSON object", new_files_allowed=True)


def test_manifest_bad_json_line_is_skipped_and_listed(tmp_path, capsys, assets):
    argv = tokenize_args(tmp_path, assets, [good_line(assets), "{not json", good_line(assets, 1)])
    code, out, err = run_cli(argv, capsys)
    assert code == 0 and "Traceback" not in err
    assert "encoded 2 videos" in out and "(manifest line 2): not valid JSON" in out
    assert "token store holds 4 examples" in out  # both directions per video


def test_manifest_video_missing(tmp_path, capsys, assets):
    line = json.dumps({"video": str(tmp_path / "gone.mp4"), "caption": "x"})
    argv = tokenize_args(tmp_path, assets, [line], "--data.on_bad_record", "error")
    check(tmp_path, capsys, argv, "tokenize", "gone.mp4", new_files_allowed=True)


def test_manifest_video_unreadable(tmp_path, capsys, assets):
    line = json.dumps({"video": str(assets / "garbage.mp4"), "caption": "x"})
    argv = tokenize_args(tmp_path, assets, [line], "--data.on_bad_record", "error")
    check(tmp_path, capsys, argv, "tokenize", "garbage.mp4", new_files_allowed=True)


def test_manifest_record_without_video_field(tmp_path, capsys, assets):
    argv = tokenize_args(tmp_path, assets, [json.dumps({"caption": "no video"})], "--data.on_bad_record", "error")
    check(tmp_path, capsys, argv, "tokenize", "clips.jsonl:1", "'video'", new_files_allowed=True)


def test_codes_path_is_a_directory(tmp_path, capsys, assets):
    (tmp_path / "codes").mkdir()
    argv = tokenize_args(tmp_path, assets, [good_line(assets)], "--codes_path", tmp_path / "codes")
    check(tmp_path, capsys, argv, "tokenize", "codes_path", "directory")


def test_store_parent_is_a_file(tmp_path, capsys, assets):
    (tmp_path / "afile").write_text("x")
    argv = tokenize_args(tmp_path, assets, [good_line(assets)], "--data.store_path", tmp_path / "afile" / "store")
    check(tmp_path, capsys, argv, "tokenize", "afile")


def test_train_vq_video_folder_missing(tmp_path, capsys):
    check(tmp_path, capsys, ["train-vq", "--config", ROOT / "configs/vq/tiny.yaml",
                             "--data.paths", f"[{tmp_path / 'no-videos'}]",
                             "--checkpoint.dir", tmp_path / "run"], "train-vq", "no-videos")


def test_train_vq_only_unreadable_videos(tmp_path, capsys, assets):
    check(tmp_path, capsys, ["train-vq", "--config", ROOT / "configs/vq/tiny.yaml",
                             "--data.paths", f"[{assets / 'garbage.mp4'}]",
                             "--checkpoint.dir", tmp_path / "run"], "train-vq", "garbage.mp4",
          inputs=assets, progress_before=True)


# ---------------------------------------------------------------------------------------------
# Tokenizers: text (SentencePiece) and VQ.


def test_text_tokenizer_missing(tmp_path, capsys, assets):
    argv = tokenize_args(tmp_path, assets, [good_line(assets)], "--data.tokenizer", tmp_path / "no.model")
    check(tmp_path, capsys, argv, "tokenize", "no.model")


def test_text_tokenizer_garbage(tmp_path, capsys, assets):
    (tmp_path / "tokenizer.model").write_bytes(os.urandom(300))
    argv = tokenize_args(tmp_path, assets, [good_line(assets)], "--data.tokenizer", tmp_path / "tokenizer.model")
    check(tmp_path, capsys, argv, "tokenize", "tokenizer.model")


def test_text_tokenizer_garbage_for_make_qa(tmp_path, capsys):
    (tmp_path / "tokenizer.model").write_bytes(b"\x00" * 64)
    (tmp_path / "books.jsonl").write_text(json.dumps({"text": "a book"}) + "\n")
    check(tmp_path, capsys, ["make-qa", "--config", ROOT / "configs/data/make_qa.yaml",
                             "--qa.input", tmp_path / "books.jsonl", "--qa.output", tmp_path / "qa.jsonl",
                             "--data.tokenizer", tmp_path / "tokenizer.model"], "make-qa", "tokenizer.model")


def test_vq_tokenizer_missing(tmp_path, capsys, assets):
    argv = tokenize_args(tmp_path, assets, [good_line(assets)], "--vq_tokenizer", tmp_path / "no-vq")
    check(tmp_path, capsys, argv, "tokenize", "no-vq")


def test_vq_tokenizer_empty_directory(tmp_path, capsys, assets):
    (tmp_path / "vq").mkdir()
    argv = tokenize_args(tmp_path, assets, [good_line(assets)], "--vq_tokenizer", tmp_path / "vq")
    check(tmp_path, capsys, argv, "tokenize", "vq")


def copy_tree(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


def largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_vq_checkpoint_truncated_with_manifest(tmp_path, capsys, assets):
    from lwm.data.integrity import write_file_manifest

    vq = copy_tree(assets / "vq", tmp_path / "vq")
    write_file_manifest(vq)
    victim = largest_file(vq / "model")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    argv = tokenize_args(tmp_path, assets, [good_line(assets)], "--vq_tokenizer", vq)
    check(tmp_path, capsys, argv, "tokenize", str(vq), victim.name, "bytes")


def test_vq_checkpoint_truncated_without_manifest(tmp_path, capsys, assets):
    vq = copy_tree(assets / "vq", tmp_path / "vq")
    victim = largest_file(vq / "model")
    victim.write_bytes(victim.read_bytes()[:10])
    argv = tokenize_args(tmp_path, assets, [good_line(assets)], "--vq_tokenizer", vq)
    check(tmp_path, capsys, argv, "tokenize", "VQ tokenizer", str(vq))


# ---------------------------------------------------------------------------------------------
# Model directories and the KV cache.


def test_model_directory_missing(tmp_path, capsys):
    check(tmp_path, capsys, ["generate", "--config", ROOT / "configs/infer/generate-tiny.yaml",
                             "--model", tmp_path / "no-model", "--generate.mode", "text", "--prompt", "hi"],
          "generate", "no-model")


def test_model_directory_without_params(tmp_path, capsys, model_dir):
    broken = copy_tree(model_dir, tmp_path / "model")
    import shutil

    shutil.rmtree(broken / "params")
    check(tmp_path, capsys, ["generate", "--config", ROOT / "configs/infer/generate-tiny.yaml",
                             "--model", broken, "--generate.mode", "text", "--prompt", "hi"],
          "generate", "params")


def test_model_directory_truncated(tmp_path, capsys, model_dir):
    broken = copy_tree(model_dir, tmp_path / "model")
    victim = largest_file(broken / "params")
    victim.write_bytes(victim.read_bytes()[:10])
    check(tmp_path, capsys, ["generate", "--config", ROOT / "configs/infer/generate-tiny.yaml",
                             "--model", broken, "--generate.mode", "text", "--prompt", "hi"],
          "generate", str(broken))


def test_prompt_longer_than_the_cache(tmp_path, capsys, model_dir):
    # chat keeps one cache for the whole conversation (generate sizes its cache to the prompt);
    # on the tests' 8 devices the smallest cache is key_chunk 128 x sp 8 = 1024 positions.
    check(tmp_path, capsys, ["chat", "--config", ROOT / "configs/infer/chat-tiny.yaml", "--model", model_dir,
                             "--cache.max_len", "128", "--sampling.max_new_tokens", "8",
                             "--question", "word " * 1500], "chat", "cache.max_len",
          inputs=model_dir.parent)


# ---------------------------------------------------------------------------------------------
# The error shape itself: wrapped causes, Ctrl-C, --debug.


def fake_command(monkeypatch, raise_it):
    import lwm.cli.data as data_commands

    def run(args):
        raise_it()

    original = data_commands.register

    def register(subparsers):
        original(subparsers)
        subparsers.choices["inspect-store"].set_defaults(func=run)

    monkeypatch.setattr(data_commands, "register", register)


def test_a_wrapped_cause_is_found_and_printed(tmp_path, capsys, monkeypatch):
    from lwm.data.store import StoreError

    def raise_wrapped():
        try:
            raise StoreError("data/x: array 'tokens' chunk 4 is missing")
        except StoreError as error:
            raise RuntimeError("grain worker failed: 47 lines of context") from error

    fake_command(monkeypatch, raise_wrapped)
    check(tmp_path, capsys, ["inspect-store", "x"], "inspect-store", "chunk 4 is missing")


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, capsys, monkeypatch):
    def interrupt():
        raise KeyboardInterrupt

    fake_command(monkeypatch, interrupt)
    code, _, err = run_cli(["inspect-store", "x"], capsys)
    assert code == 130 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == ["lwm inspect-store: interrupted"]


def test_debug_shows_the_traceback(tmp_path, capsys):
    from lwm.data.store import StoreError

    with pytest.raises(StoreError):
        main(["inspect-store", str(tmp_path / "nowhere"), "--debug"])


def test_programming_errors_are_not_hidden(tmp_path, capsys, monkeypatch):
    def bug():
        raise ZeroDivisionError("a bug")

    fake_command(monkeypatch, bug)
    with pytest.raises(ZeroDivisionError):
        main(["inspect-store", "x"])


# ---------------------------------------------------------------------------------------------
# Real processes: the exit code and stderr end to end.


def run_process(args, tmp_path, env_extra=None, **kwargs):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env_extra or {})}
    env.pop("LWM_DEBUG", None)
    env.update(env_extra or {})
    return subprocess.run([*LWM, *map(str, args)], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120, **kwargs)


def test_process_missing_config(tmp_path):
    result = run_process(["tokenize", "--config", "nope.yaml"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "nope.yaml" in result.stderr


def test_process_damaged_store_and_lwm_debug(tmp_path):
    make_store(tmp_path / "store")
    (tmp_path / "store" / "tokens" / "c" / "0").unlink()
    result = run_process(["inspect-store", "store"], tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("lwm inspect-store: error: store: array 'tokens' chunk 0 "
                                     "(store/tokens/c/0) is missing: the store is damaged; "
                                     "re-tokenize or restore it from a copy")
    debug = run_process(["inspect-store", "store"], tmp_path, {"LWM_DEBUG": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "StoreError" in debug.stderr


def test_process_sigint_prints_one_line(tmp_path):
    # A real Ctrl-C (SIGINT) in a real process while a command works (here: a stand-in that
    # sleeps, so the signal's moment does not depend on how fast this machine is).
    script = (
        "import sys, time\n"
        "import lwm.cli.data as commands\n"
        "def busy(args):\n"
        "    print('working', flush=True)\n"
        "    time.sleep(120)\n"
        "commands._run_inspect_store = busy\n"
        "from lwm.cli import main\n"
        "sys.exit(main(['inspect-store', 'somewhere']))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert process.stdout.readline().strip() == "working"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == ["lwm inspect-store: interrupted"]
