"""The main job on its embedded default, runnable on one CPU machine: the whole system learning.

1. Generates the synthetic world (`lwm.data.synthetic`): bouncing-shape videos with captions
   and question/answer pairs, and passkey documents.
2. Trains the tiny VQ tokenizer on the world's frames (`lwm.train.vq`) and tokenizes videos
   (caption→video, video→caption, video→QA chat) and passkey chats into two token stores with
   the data layer's encoders (`ExampleEncoder`).
3. Trains the tiny vision-language model with ring attention over fake CPU devices through
   `lwm.train.loop.train`: a `pretrain` stage on everything, then a `chat` stage (from the
   pretrained weights) on QA and passkey chats plus captioning.
4. Evaluates and reports in `logging.output_dir` (`lwm.demo.evaluate`, `lwm.demo.report`): loss curves, the needle
   heatmap, video-QA accuracy against chance and a text-only baseline, next-frame accuracy
   against copying the last frame, and a generated continuation of a held-out video.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config import ConfigError, TrainRunConfig
from lwm.config.train import StageConfig
from lwm.data.records import ExampleEncoder
from lwm.data.store import TokenStoreWriter
from lwm.data.synthetic import generate_world, passkey_chat_records, passkey_drill_records
from lwm.data.text_tokenizer import load_text_tokenizer
from lwm.demo.config import EXAMPLE_KINDS, MARKER_FILE, DemoConfig
from lwm.demo.evaluate import evaluate
from lwm.demo.report import write_report
from lwm.eval.needle import INSTRUCTION
from lwm.model.vqgan_convert import load_vq_tokenizer
from lwm.train.loop import train
from lwm.train.vq import reconstruction_error, train_vq


def _say(message: str, start: float) -> None:
    print(f"[demo {time.perf_counter() - start:6.1f}s] {message}", flush=True)


def processor_name() -> str:
    """The CPU's model name (`lscpu`'s "Model name"): XLA's CPU kernels, and so every figure of
    the demo, differ between processors."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown processor"


def _prepare_output(output_dir: Path) -> None:
    """Clears the output folder of an earlier demo run (only one that holds the demo's marker)."""
    if output_dir.exists() and any(output_dir.iterdir()):
        if not (output_dir / MARKER_FILE).is_file():
            raise ConfigError(f"logging.output_dir={output_dir} exists and is not a demo output folder "
                              f"(no {MARKER_FILE}); choose an empty or new folder")
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / MARKER_FILE).write_text(json.dumps({"status": "running"}))


def train_tokenizer(config: DemoConfig, world: Any, output_dir: Path) -> Any:
    """Trains the VQ tokenizer on the training videos' frames; returns the loaded tokenizer."""

    frames = np.concatenate([video.frames for video in world.videos_in("train")])
    vq_config = dataclasses.replace(
        config.vq, checkpoint=dataclasses.replace(config.vq.checkpoint, dir=str(output_dir / "vq")))
    result = train_vq(vq_config, frames=frames)
    held_out = np.concatenate([video.frames for video in world.videos_in("held_out")] or [frames[:8]])
    mse = reconstruction_error(result.model, held_out)
    print(f"  VQ: {result.steps} steps on {len(frames)} frames, held-out reconstruction MSE {mse:.4f}, "
          f"metrics {json.dumps({k: round(v, 4) for k, v in result.metrics.items()})}")
    tokenizer = load_vq_tokenizer(result.run_dir, batch_size=64)
    tokenizer.metrics = {"vq_reconstruction_mse": mse, **result.metrics}
    return tokenizer


def data_configs(config: DemoConfig) -> dict[str, Any]:
    """The data sections the examples are encoded with (vision+text both ways, and chat)."""
    base = dataclasses.replace(config.data, segments=())
    return {
        "text_to_video": dataclasses.replace(base, format="vision_text", fields="caption,vision"),
        "video_to_text": dataclasses.replace(base, format="vision_text", fields="vision,caption"),
        "chat": dataclasses.replace(base, format="chat", fields=""),
    }


def _with_instruction(record: dict[str, Any]) -> dict[str, Any]:
    """Passkey questions as the needle evaluation asks them: on the document's line, followed
    by its instruction (`lwm.eval.needle.INSTRUCTION`)."""
    return {"messages": [
        {**message, "content": message["content"].replace("\n", " ") + " " + INSTRUCTION}
        if message["role"] == "user" else message for message in record["messages"]]}


def encode_world(config: DemoConfig, world: Any, codes: dict[int, np.ndarray], text_tokenizer: Any,
                 split: str = "train") -> dict[str, list[Any]]:
    """TokenExamples of one split, by kind (`EXAMPLE_KINDS`), made by the data layer's `ExampleEncoder`."""

    encoders = {name: ExampleEncoder(data, text_tokenizer) for name, data in data_configs(config).items()}
    examples: dict[str, list[Any]] = {kind: [] for kind in EXAMPLE_KINDS}
    rng = np.random.default_rng([config.seed, 5])
    for video in world.videos_in(split):
        record = {"caption": video.caption, "vision": codes[video.index].reshape(-1).tolist()}
        examples["text_to_video"].append(encoders["text_to_video"](record))
        examples["video_to_text"].append(encoders["video_to_text"](record))
        if video.qa:
            # Every question about the video in one conversation (random order): the video's
            # tokens are read once for all its answers.
            messages = []
            for position in rng.permutation(len(video.qa)):
                qa = video.qa[int(position)]
                messages += [{"role": "user", "content": qa.question}, {"role": "assistant", "content": qa.answer}]
            examples["video_qa"].append(encoders["chat"]({"messages": messages, "vision": record["vision"]}))
    data = config.demo_data
    passkeys = {
        "passkey": passkey_chat_records(world, split),
        "passkey_short": passkey_drill_records(config.seed, data.short_passkeys if split == "train" else 0,
                                               max_chars=data.short_document_chars),
        "recall": passkey_drill_records(config.seed, data.recall_drills if split == "train" else 0,
                                        max_chars=data.recall_chars, needles=data.recall_needles, stream=3),
    }
    for kind, records in passkeys.items():
        for record in records:
            examples[kind].append(encoders["chat"](_with_instruction(record) if data.passkey_instruction else record))
    return examples


def write_store(path: Path, examples: list[Any], config: DemoConfig, text_tokenizer: Any) -> dict[str, int]:
    """Writes examples into a token store; returns its counts."""
    with TokenStoreWriter.create(path, tokenizer_name="lwm/assets/tokenizer.model",
                                 text_vocab_size=text_tokenizer.vocab_size,
                                 vision_vocab_size=config.model.vision_vocab_size,
                                 metadata={"format": "mixed", "codebook_size": config.model.codebook_size,
                                           "tokens_per_frame": config.model.tokens_per_frame}) as writer:
        for example in examples:
            writer.append(example)
    return {"examples": len(examples), "tokens": int(sum(len(example) for example in examples))}


def build_stores(config: DemoConfig, examples: dict[str, list[Any]], text_tokenizer: Any,
                 output_dir: Path) -> dict[str, dict[str, int]]:
    """The pretraining and chat stores, of the kinds `demo_data` names for each."""
    rng = np.random.default_rng(config.data.seed)
    too_long = {kind: sum(len(e) > config.data.seq_len for e in items) for kind, items in examples.items()}
    if any(too_long.values()):
        print(f"  warning: examples longer than data.seq_len={config.data.seq_len} are split: {too_long}")
    pretrain = [e for kind in config.demo_data.pretrain_kinds for e in examples[kind]]
    chat = [e for kind in config.demo_data.chat_kinds for e in examples[kind]]
    stores = {}
    for name, items in (("pretrain", pretrain), ("chat", chat)):
        order = rng.permutation(len(items))
        stores[name] = write_store(output_dir / "stores" / name, [items[i] for i in order], config, text_tokenizer)
    return stores


def training_config(config: DemoConfig, output_dir: Path) -> TrainRunConfig:
    """The plain `TrainRunConfig` of the two stages (pretrain, then chat from its weights)."""
    fields = {field.name: getattr(config, field.name) for field in dataclasses.fields(TrainRunConfig)}
    stages = [StageConfig(name="pretrain", steps=config.train.steps,
                          store_path=str(output_dir / "stores" / "pretrain"))]
    if config.demo_data.chat_steps > 0:
        stages.append(StageConfig(name="chat", steps=config.demo_data.chat_steps, lr=config.demo_data.chat_lr,
                                  store_path=str(output_dir / "stores" / "chat")))
    fields["stages"] = tuple(stages)
    fields["logging"] = dataclasses.replace(config.logging, output_dir=str(output_dir))
    fields["checkpoint"] = dataclasses.replace(config.checkpoint, directory="", init_from="")
    return TrainRunConfig(**fields)


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Runs the whole pipeline and returns the report's numbers (also in `results.json`)."""
    start = time.perf_counter()
    output_dir = Path(config.logging.output_dir)
    _prepare_output(output_dir)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    now = time.perf_counter()
    _say("1/5 generating the synthetic world", start)
    synthetic = dataclasses.replace(config.synthetic, document_chars=config.demo_data.document_chars)
    world = generate_world(synthetic)
    print(f"  {len(world.videos)} videos ({len(world.videos_in('held_out'))} held out), "
          f"{len(world.documents)} passkey documents, stats {world.stats}")
    now = lap("world", now)

    _say("2/5 training the VQ tokenizer and tokenizing", start)
    vq_tokenizer = train_tokenizer(config, world, output_dir)
    _say("  encoding every video with the VQ tokenizer", start)
    all_frames = np.concatenate([video.frames for video in world.videos])
    all_codes = vq_tokenizer.encode(all_frames).reshape(len(world.videos), synthetic.num_frames, -1)
    codes = {video.index: all_codes[position] for position, video in enumerate(world.videos)}
    text_tokenizer = load_text_tokenizer(config.data.tokenizer or None)
    _say("  encoding examples (caption->video, video->caption, video QA, passkey chats and drills)", start)
    examples = encode_world(config, world, codes, text_tokenizer)
    _say("  writing the pretrain and chat token stores", start)
    stores = build_stores(config, examples, text_tokenizer, output_dir)
    lengths = {kind: int(np.mean([len(e) for e in items])) if items else 0 for kind, items in examples.items()}
    print(f"  examples {({k: len(v) for k, v in examples.items()})}, mean tokens {lengths}, stores {stores}")
    now = lap("tokenize", now)

    _say(f"3/5 training the vision-language model ({config.train.steps} pretrain + "
         f"{config.demo_data.chat_steps} chat steps, attention={config.model.attention}, mesh={config.mesh})", start)
    results = train(training_config(config, output_dir))
    model_dir = results[-1].model_dir if results else output_dir / "chat" / "model"
    pretrained_dir = results[0].model_dir if len(results) > 1 else None
    now = lap("train", now)

    _say("4/5 evaluating", start)
    numbers = evaluate(config, world, codes, vq_tokenizer, text_tokenizer, model_dir, output_dir,
                                  data_configs(config)["chat"], progress=lambda message: _say(f"  {message}", start),
                       pretrained_dir=pretrained_dir)
    now = lap("evaluate", now)

    _say("5/5 writing the report", start)
    numbers["seed"] = config.seed
    numbers["processor"] = processor_name()
    numbers["cpu_count"] = os.cpu_count()
    numbers["data"] = {"examples": {k: len(v) for k, v in examples.items()}, "mean_tokens": lengths,
                       "stores": stores, "world_stats": world.stats}
    numbers["vq"] = {k: float(v) for k, v in getattr(vq_tokenizer, "metrics", {}).items()}
    numbers["timings_s"] = {**timings, "total": round(time.perf_counter() - start, 1)}
    report = write_report(numbers, output_dir)
    (output_dir / MARKER_FILE).write_text(json.dumps({"status": "done"}))
    for name, bar in numbers["bars"].items():
        print(f"  bar {name}: {bar['value']:.3f} vs {bar['threshold']:.3f} -> {'MET' if bar['met'] else 'not met'}")
    _say(f"done: report {report}", start)
    return numbers
