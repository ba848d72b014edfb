"""Inference commands: `lwm chat`, `lwm generate`, `lwm needle`.

Each takes `--config PATH` plus dotted overrides; the convenience flags (`--model`,
`--question`, `--video`, `--prompt`, ...) are shorthands for the overrides they name.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lwm.cli.common import add_config_command

CHAT_DESCRIPTION = """\
Chat with a model, or ask about a video: frames are sampled uniformly, VQ-encoded and placed in
LWM's chat prompt (<s>You are a helpful assistant. USER: {question}\\n<vision>...</vision>
ASSISTANT:). With --interactive, follow-up questions are read from stdin and appended to the
same KV cache (the conversation is never recomputed). The cache is split over the mesh's sp
devices, so long videos spread over many devices.

examples:
  lwm chat --config configs/infer/chat-tiny.yaml --model runs/tiny/model --question "Hello?"
  lwm chat --config configs/infer/chat-7b-1m.yaml --model ckpt/lwm-7b-1m --load.vq ckpt/vqgan \\
      --video clip.mp4 --question "What happens in this video?"
  lwm chat --config configs/infer/chat-tiny.yaml --model runs/tiny/model --interactive \\
      --sampling.temperature 0.7 --sampling.top_p 0.9
"""

GENERATE_DESCRIPTION = """\
Generate an image or a video from text with a vision-language model (LWM's procedure:
classifier-free guidance with the unconditional prompt <s><vision> batched alongside, <eof>
forced at every frame end and <eov> at the end), decode the codes with the VQ tokenizer and
write PNG (one file per frame), GIF or MP4. --generate.mode text continues a text prompt.

examples:
  lwm generate --config configs/infer/generate-tiny.yaml --model runs/vision/model \\
      --load.vq runs/vq-tiny --prompt "a red square" --output square.png
  lwm generate --config configs/infer/generate-7b.yaml --model ckpt/lwm-7b-1m --load.vq ckpt/vqgan \\
      --prompt "fireworks over the city" --generate.num_frames 8 --output fireworks.mp4
  lwm generate --config configs/infer/generate-tiny.yaml --model runs/tiny/model \\
      --generate.mode text --prompt "Once upon a time"
"""

NEEDLE_DESCRIPTION = """\
Needle-in-a-haystack retrieval on any UTF-8 text: a grid of context lengths x needle depths,
several rounds per cell, greedy answers scored by whether the needle's 7 digits appear.
--needle.num_needles N --needle.retrieve K runs the multi-needle variant (per-needle
accuracy). Results go to OUTPUT_DIR/results.json after every cell (a rerun skips finished
cells) and the depth x length heatmap to OUTPUT_DIR/heatmap.png. Long contexts spread over the
sp devices of the mesh (the KV cache is sharded).

examples:
  lwm needle --config configs/infer/needle-tiny.yaml --model runs/tiny/model --haystack book.txt
  lwm needle --config configs/infer/needle-7b-1m.yaml --model ckpt/lwm-text-1m --haystack pg.txt \\
      --needle.context_max 1048576 --needle.output_dir runs/needle-1m
  lwm needle --config configs/infer/needle-tiny.yaml --model runs/tiny/model --haystack book.txt \\
      --needle.num_needles 4 --needle.retrieve 2 --needle.depth_intervals 4
"""


def _shorthands(args: argparse.Namespace, mapping: dict[str, str]) -> list[str]:
    """Turns the convenience flags that were given into dotted overrides."""
    overrides: list[str] = []
    for attribute, key in mapping.items():
        value = getattr(args, attribute, None)
        if value is None or value is False:
            continue
        overrides += [f"--{key}", "true" if value is True else _quoted(value)]
    return overrides


def _quoted(value: Any) -> str:
    # Overrides are read as YAML scalars: quote text so "yes", "1e3" or "[a]" stay strings.
    import json

    return json.dumps(str(value))


def _setup_devices(cpu_devices: int) -> None:
    import jax

    # Fake CPU devices must be requested before JAX starts its backend.
    if cpu_devices and jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_num_cpu_devices", cpu_devices)


def _engine(config: Any):
    from lwm.infer.cache import load_inference_model

    return load_inference_model(
        config.load.model, mesh_config=config.mesh, dtype=config.load.dtype, cache_dtype=config.cache.dtype,
        prefill_chunk_size=config.cache.prefill_chunk, key_chunk_size=config.cache.key_chunk,
    )


def _is_lwm_release(config: Any) -> bool:
    # A model converted from LWM's JAX files reads LWM's prompts and LLaMA's tokenizer.
    from lwm.model.formats.lwm_checkpoint import is_lwm_release

    return bool(config.load.model) and is_lwm_release(config.load.model)


def _tokenizer(config: Any):
    if _is_lwm_release(config):
        from lwm.config import ConfigError
        from lwm.data.lwm_layout import LwmTokenizer

        if not config.load.tokenizer:
            raise ConfigError(f"load.model={config.load.model} is an LWM release: pass LLaMA's tokenizer "
                              f"as --load.tokenizer PATH/tokenizer.model")
        return LwmTokenizer(config.load.tokenizer)
    from lwm.data.text_tokenizer import load_text_tokenizer

    return load_text_tokenizer(config.load.tokenizer or None)


def _vq(config: Any):
    from lwm.model.vq_tokenizer import load_vq_tokenizer

    return load_vq_tokenizer(config.load.vq, resolution=config.load.vq_resolution)


def _run_chat(args: argparse.Namespace, overrides: list[str]) -> int:
    from lwm.config import load_config
    from lwm.config.infer import ChatRunConfig

    overrides = _shorthands(args, {"model": "load.model", "question": "chat.question", "video": "chat.video",
                                   "interactive": "chat.interactive"}) + list(overrides)
    config = load_config(ChatRunConfig, args.config, overrides)
    _setup_devices(config.cpu_devices)
    from lwm.infer.requests import CacheOverflowError
    from lwm.infer.sampling import SamplingParams
    from lwm.infer.video_qa import ChatSession, LwmChatSession, encode_video

    engine = _engine(config)
    tokenizer = _tokenizer(config)
    lwm_release = _is_lwm_release(config)
    codes = None
    if config.chat.video:
        if lwm_release:  # LWM's frame choice and preprocessing (lwm.data.lwm_layout)
            from lwm.data.lwm_layout import encode_vision

            codes = encode_vision(_vq(config), config.chat.video, config.chat.max_frames)
        else:
            codes = encode_video(_vq(config), config.chat.video, config.chat.max_frames)
        print(f"chat: {len(codes)} frames of {config.chat.video} as {codes.size} VQ codes")
    sampling = config.sampling
    session = (LwmChatSession if lwm_release else ChatSession)(
        engine, tokenizer, cache_size=config.cache.max_len or None, max_new_tokens=sampling.max_new_tokens,
        sampling=SamplingParams.of(sampling), template=config.chat.template, seed=sampling.seed,
        stop_ids=(tokenizer.eos_id, *sampling.stop_tokens),
    )
    if config.chat.question:
        print(f"USER: {config.chat.question}")
        print(f"ASSISTANT: {session.ask(config.chat.question, codes)}", flush=True)
        codes = None
    if config.chat.interactive:
        print("(empty line or Ctrl-D ends the conversation)")
        while True:
            try:
                question = input("USER: ").strip()
            except EOFError:
                break
            if not question:
                break
            try:
                answer = session.ask(question, codes)
            except CacheOverflowError as error:  # the cache is full: say so and end cleanly
                print(f"chat: {error}", file=sys.stderr)
                return 1
            codes = None
            print(f"ASSISTANT: {answer}", flush=True)
    print(f"chat: {len(session.turns)} turns, {session.cached_tokens} cached tokens")
    return 0


def _run_generate(args: argparse.Namespace, overrides: list[str]) -> int:
    from lwm.config import load_config
    from lwm.config.infer import GenerateRunConfig

    overrides = _shorthands(args, {"model": "load.model", "prompt": "generate.prompt",
                                   "output": "generate.output"}) + list(overrides)
    config = load_config(GenerateRunConfig, args.config, overrides)
    _setup_devices(config.cpu_devices)
    from lwm.infer.generate import VisionSampling, codes_to_frames, generate_text, generate_vision, write_frames
    from lwm.infer.sampling import SamplingParams

    engine = _engine(config)
    tokenizer = _tokenizer(config)
    section = config.generate
    if section.mode == "text":
        sampling = config.sampling
        result = generate_text(
            engine, tokenizer, [section.prompt], max_new_tokens=sampling.max_new_tokens,
            sampling=SamplingParams.of(sampling), stop_ids=(tokenizer.eos_id, *sampling.stop_tokens), seed=sampling.seed,
            cache_size=config.cache.max_len or None,
        )[0]
        print(section.prompt + result.text)
        return 0
    if _is_lwm_release(config):
        from lwm.config import ConfigError

        raise ConfigError(
            f"load.model={config.load.model} is an LWM release: vision generation with LWM's prompts "
            f"(lwm.data.lwm_layout.generation_prompt_ids) is not wired into lwm generate yet; "
            f"--generate.mode text works"
        )
    vq = _vq(config)
    codes = generate_vision(
        engine, tokenizer, section.prompt, num_frames=section.num_frames, image=VisionSampling.of(section.image),
        video=VisionSampling.of(section.video), seed=config.sampling.seed, cache_size=config.cache.max_len or None,
    )
    frames = codes_to_frames(vq, codes[0])
    written = write_frames(frames, section.output, fps=section.fps)
    print(f"generate: {len(frames)} frame(s) of {frames.shape[2]}x{frames.shape[1]} -> "
          + ", ".join(str(path) for path in written))
    return 0


def _run_needle(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    from lwm.config import ConfigError, load_config
    from lwm.config.infer import NeedleRunConfig

    overrides = _shorthands(args, {"model": "load.model", "haystack": "needle.haystack",
                                   "output_dir": "needle.output_dir"}) + list(overrides)
    config = load_config(NeedleRunConfig, args.config, overrides)
    haystack_path = Path(config.needle.haystack)
    try:
        haystack = haystack_path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ConfigError(f"needle.haystack={haystack_path} does not exist") from error
    except UnicodeDecodeError as error:
        raise ConfigError(f"needle.haystack={haystack_path} is not UTF-8 text ({error.reason} at byte "
                          f"{error.start})") from error
    _setup_devices(config.cpu_devices)
    import numpy as np

    from lwm.eval.needle import accuracy_grid, run_needle_eval
    from lwm.infer.generate import TextGenerator

    engine = _engine(config)
    tokenizer = _tokenizer(config)
    needle = config.needle
    max_prompt = max(config.cache.max_len - needle.max_new_tokens, needle.context_max)
    generator = TextGenerator(engine, tokenizer, max_prompt_tokens=max_prompt, max_new_tokens=needle.max_new_tokens)
    print(f"needle: cache of {generator.cache_size} positions over sp={engine.sequence_parallel} device(s) "
          f"({generator.cache_size // engine.sequence_parallel} per device)")
    report = run_needle_eval(generator, tokenizer, haystack, needle, needle.output_dir)
    if report.haystack_repeats > 1:
        print(f"needle: the haystack ({len(haystack)} characters) was repeated {report.haystack_repeats} times "
              f"to fill the longest context")
    lengths, depths, matrix = accuracy_grid(report.results)
    for column, length in enumerate(lengths):
        print(f"  {length:>9d} tokens: accuracy {float(np.nanmean(matrix[:, column])):.2f}")
    print(f"needle: {report.new_cells} new cells, {report.resumed_cells} resumed; accuracy {report.accuracy:.3f} "
          f"(digits in place {report.digit_accuracy:.3f}); "
          f"results {report.results_path}; heatmap {report.heatmap_path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `lwm chat`, `lwm generate` and `lwm needle`."""
    chat = add_config_command(
        subparsers, "chat", help="chat with a model or ask about a video", description=CHAT_DESCRIPTION,
        run=_run_chat, default_config="configs/infer/chat-tiny.yaml",
    )
    chat.add_argument("--model", help="model directory (= --load.model)")
    chat.add_argument("--question", help="the question (= --chat.question)")
    chat.add_argument("--video", help="a video file or image folder to ask about (= --chat.video)")
    chat.add_argument("--interactive", action="store_true", help="read follow-up questions from stdin")

    generate = add_config_command(
        subparsers, "generate", help="generate images or video from text", description=GENERATE_DESCRIPTION,
        run=_run_generate, default_config="configs/infer/generate-tiny.yaml",
    )
    generate.add_argument("--model", help="model directory (= --load.model)")
    generate.add_argument("--prompt", help="what to generate (= --generate.prompt)")
    generate.add_argument("--output", help=".png, .gif or .mp4 path (= --generate.output)")

    needle = add_config_command(
        subparsers, "needle", help="needle-in-a-haystack retrieval grid", description=NEEDLE_DESCRIPTION,
        run=_run_needle, default_config="configs/infer/needle-tiny.yaml",
    )
    needle.add_argument("--model", help="model directory (= --load.model)")
    needle.add_argument("--haystack", help="UTF-8 text file (= --needle.haystack)")
    needle.add_argument("--output-dir", dest="output_dir", help="results folder (= --needle.output_dir)")
