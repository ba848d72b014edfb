"""Evaluation of the demo model trained on the synthetic world (`lwm.data.synthetic`).

- Video QA: every candidate answer is scored by the model's log-likelihood after the chat
  prompt (forced choice); accuracy is compared with chance (`1 / len(candidates)`) and with
  the same model asked the same question without the video (a text-only baseline).
- Next-frame prediction: on held-out videos, the greedy vision-head prediction of every code of
  frames 1.. given all earlier tokens (teacher forcing), against copying the code at the same
  place in the previous frame.
- Needle retrieval: `lwm.eval.needle.run_needle_eval` with greedy cached decoding
  (`lwm.infer.generate.TextGenerator`) on filler haystacks of the world's kind.
- A continuation: the model continues a held-out video from its first frames (vision head, frame
  structure forced); ground truth and generation are decoded by the VQ tokenizer into a GIF.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from lwm.config.infer import NeedleConfig
from lwm.data.chat import encode_chat_record
from lwm.data.records import vision_span
from lwm.data.synthetic import QUESTION_KINDS, filler_sentences
from lwm.demo.report import CONTINUATION_GIF, CONTINUATION_PNG, LOSS_PNG, plot_losses
from lwm.eval.needle import accuracy_grid, run_needle_eval
from lwm.infer.cache import InferenceModel
from lwm.infer.generate import TextGenerator
from lwm.infer.sampling import SamplingParams, VisionSchedule
from lwm.model.params_io import load_model


def _forward_fn(model: Any) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """A jitted `(ids, is_vision) -> (text log-probs, vision log-probs)` of an nnx model."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, ids, flags):
        net = nnx.merge(graphdef, state)
        hidden = net.hidden_states(ids, input_is_vision_BT=flags)
        return (jax.nn.log_softmax(net.text_logits(hidden), -1),
                jax.nn.log_softmax(net.vision_logits(hidden), -1))

    def run(ids: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        text, vision = forward(state, jnp.asarray(ids, jnp.int32), jnp.asarray(flags, bool))
        return np.asarray(text), np.asarray(vision)

    return run


def _pad(rows: list[np.ndarray], length: int, fill: Any = 0) -> np.ndarray:
    out = np.full((len(rows), length), fill, dtype=np.asarray(rows[0]).dtype)
    for index, row in enumerate(rows):
        out[index, :len(row)] = row
    return out


def _sequence_scores(forward: Callable, examples: list[Any], batch: int = 16) -> list[float]:
    """Sum of log-probabilities of the loss-masked tokens of each example (text or vision head)."""
    scores: list[float] = []
    bucket = 64
    for begin in range(0, len(examples), batch):
        chunk = examples[begin:begin + batch]
        length = int(np.ceil(max(len(e) for e in chunk) / bucket) * bucket)
        rows = chunk + [chunk[-1]] * (batch - len(chunk))  # fixed batch: one compilation
        ids = _pad([e.tokens for e in rows], length)
        flags = _pad([e.is_vision for e in rows], length, False)
        text, vision = forward(ids, flags)
        for row, example in enumerate(chunk):
            total = 0.0
            for position in np.nonzero(example.loss_mask)[0]:
                table = vision if example.is_vision[position] else text
                total += float(table[row, position - 1, example.tokens[position]])
            scores.append(total)
    return scores


def video_qa_accuracy(forward: Callable, world: Any, codes: dict[int, np.ndarray], text_tokenizer: Any,
                      data_config: Any, max_questions: int = 0) -> dict[str, Any]:
    """Forced-choice accuracy on held-out questions, with and without the video, and chance."""

    questions = [(video, qa) for video in world.videos_in("held_out") for qa in video.qa]
    if max_questions:
        questions = questions[:max_questions]
    results: dict[str, Any] = {"questions": len(questions)}
    by_kind: dict[str, list[tuple[bool, bool, float]]] = {}
    for with_video in (True, False):
        examples, owners = [], []
        for number, (video, qa) in enumerate(questions):
            for candidate in qa.candidates:
                record = {"messages": [{"role": "user", "content": qa.question},
                                       {"role": "assistant", "content": candidate}]}
                if with_video:
                    record["vision"] = codes[video.index].reshape(-1).tolist()
                examples.append(encode_chat_record(record, data_config, text_tokenizer, text_tokenizer.vocab_size))
                owners.append(number)
        scores = _sequence_scores(forward, examples) if examples else []
        correct = []
        position = 0
        for number, (video, qa) in enumerate(questions):
            chosen = qa.candidates[int(np.argmax(scores[position:position + len(qa.candidates)]))]
            position += len(qa.candidates)
            correct.append(chosen == qa.answer)
        results["accuracy" if with_video else "text_only_accuracy"] = float(np.mean(correct)) if correct else float("nan")
        for (video, qa), right in zip(questions, correct):
            by_kind.setdefault(qa.kind, []).append((right, with_video, qa.chance))
    results["chance"] = float(np.mean([qa.chance for _, qa in questions])) if questions else float("nan")
    results["by_kind"] = {
        kind: {"needs": QUESTION_KINDS.get(kind, "?"), "questions": sum(1 for _, v, _ in rows if v),
               "accuracy": float(np.mean([r for r, v, _ in rows if v])),
               "text_only_accuracy": float(np.mean([r for r, v, _ in rows if not v])),
               "chance": float(np.mean([c for _, v, c in rows if v]))}
        # One-frame kinds first, then those that need time (`QUESTION_KINDS` order).
        for kind, rows in sorted(by_kind.items(), key=lambda item: _kind_order(item[0]))}
    return results


def _kind_order(kind: str) -> tuple[int, str]:
    return (list(QUESTION_KINDS).index(kind) if kind in QUESTION_KINDS else len(QUESTION_KINDS), kind)


def next_frame_accuracy(forward: Callable, world: Any, codes: dict[int, np.ndarray], text_tokenizer: Any,
                        codebook_size: int) -> dict[str, float]:
    """Teacher-forced accuracy of the codes of frames 1.. of held-out videos vs copying the last frame."""

    videos = world.videos_in("held_out")
    rows, flags = [], []
    for video in videos:
        frames = codes[video.index]
        ids, is_vision = vision_span(frames.reshape(-1), tokenizer=text_tokenizer, tokens_per_frame=frames.shape[1],
                                     codebook_size=codebook_size)
        rows.append(np.concatenate([[text_tokenizer.bos_id], ids]).astype(np.int32))
        flags.append(np.concatenate([[False], is_vision]))
    correct = copy = changed = changed_correct = total = 0
    nll = 0.0
    batch = 8
    for begin in range(0, len(rows), batch):
        chunk = list(range(begin, min(begin + batch, len(rows))))
        padded = chunk + [chunk[-1]] * (batch - len(chunk))
        length = int(np.ceil(len(rows[0]) / 64) * 64)
        _, vision = forward(_pad([rows[i] for i in padded], length), _pad([flags[i] for i in padded], length, False))
        for slot, index in enumerate(chunk):
            frames = codes[videos[index].index]
            per_frame = frames.shape[1] + 1
            for frame in range(1, len(frames)):
                first = 2 + frame * per_frame  # bos, <vision>, then frames with their end token
                logits = vision[slot, first - 1:first - 1 + frames.shape[1], :codebook_size]
                predicted = logits.argmax(-1)
                truth, previous = frames[frame], frames[frame - 1]
                # The vision head's loss over its whole vocabulary, as training computes it.
                full = vision[slot, first - 1:first - 1 + frames.shape[1]]
                nll -= float(full[np.arange(len(truth)), truth].sum())
                moved = truth != previous
                correct += int((predicted == truth).sum())
                copy += int((previous == truth).sum())
                changed += int(moved.sum())
                changed_correct += int((predicted == truth)[moved].sum())
                total += len(truth)
    return {"codes": total, "accuracy": correct / max(total, 1), "copy_last_frame_accuracy": copy / max(total, 1),
            "changed_codes": changed, "changed_accuracy": changed_correct / max(changed, 1),
            "vision_loss": nll / max(total, 1)}


def _continue_video(engine: Any, frames: np.ndarray, text_tokenizer: Any, context_frames: int) -> np.ndarray:
    """The model's greedy codes `[T - context, per_frame]` after the first `context_frames` frames."""
    config, per_frame = engine.config, frames.shape[1]
    ids, is_vision = vision_span(frames[:context_frames].reshape(-1), tokenizer=text_tokenizer,
                                 tokens_per_frame=per_frame, codebook_size=config.codebook_size)
    prompt = [text_tokenizer.bos_id] + ids[:-2].tolist() + [config.codebook_size]  # drop <eov>, </vision>
    flags = [False] + is_vision[:-2].tolist() + [True]
    todo = len(frames) - context_frames
    schedule = VisionSchedule(per_frame, config.codebook_size, todo, end_with_eov=True)
    cache = engine.init_cache(1, engine.round_cache_size(len(prompt) + schedule.total_tokens))
    cache, hidden = engine.prefill(cache, [prompt], [flags])
    _, _, tokens = engine.decode(cache, hidden, max_new_tokens=schedule.total_tokens, sampling=SamplingParams(),
                                 head="vision", schedule=schedule)
    return np.asarray(tokens)[0].reshape(todo, per_frame + 1)[:, :per_frame]


def continuation(engine: Any, videos: list[np.ndarray], text_tokenizer: Any, vq_tokenizer: Any,
                 context_frames: int, output_dir: Path) -> dict[str, Any]:
    """Greedy continuations of held-out videos (codes `[T, per_frame]` each) from their first
    frames; GIF and PNG of the first one, truth beside generation.

    Scored against copying the last given frame: copying is right on every code that stays as
    it was and wrong on every code that changes, so besides plain code accuracy the bar uses the
    balanced accuracy, the mean of the accuracy on changed and on unchanged codes (copying: 0.5).
    """
    generated_frames = len(videos[0]) - context_frames
    # Per generated frame: [changed, changed right, unchanged, unchanged right] (errors compound).
    per_frame = np.zeros((generated_frames, 4), np.int64)
    first_generated = None
    for frames in videos:
        generated = _continue_video(engine, frames, text_tokenizer, context_frames)
        first_generated = generated if first_generated is None else first_generated
        truth, last = frames[context_frames:], frames[context_frames - 1][None]
        moved = truth != last
        hit = generated == truth
        per_frame += np.stack([moved.sum(1), (hit & moved).sum(1), (~moved).sum(1), (hit & ~moved).sum(1)], 1)
    frames = videos[0]
    predicted = np.concatenate([frames[:context_frames], first_generated])
    truth_pixels = vq_tokenizer.decode(frames.reshape(len(frames), vq_tokenizer.codes_per_side, -1))
    predicted_pixels = vq_tokenizer.decode(predicted.reshape(len(frames), vq_tokenizer.codes_per_side, -1))
    _write_side_by_side(truth_pixels, predicted_pixels, context_frames, output_dir)
    changed, changed_right, unchanged, unchanged_right = (int(count) for count in per_frame.sum(0))
    total = changed + unchanged  # copying is right exactly on the unchanged codes
    changed_accuracy = changed_right / max(changed, 1)
    unchanged_accuracy = unchanged_right / max(unchanged, 1)
    return {"videos": len(videos), "context_frames": context_frames, "generated_frames": generated_frames,
            "codes": total, "code_accuracy": (changed_right + unchanged_right) / max(total, 1),
            "copy_code_accuracy": unchanged / max(total, 1),
            "changed_codes": changed, "changed_accuracy": changed_accuracy, "unchanged_accuracy": unchanged_accuracy,
            "balanced_accuracy": (changed_accuracy + unchanged_accuracy) / 2, "copy_balanced_accuracy": 0.5,
            "balanced_accuracy_by_frame": [float((c_right / max(c, 1) + u_right / max(u, 1)) / 2)
                                           for c, c_right, u, u_right in per_frame]}


def _write_side_by_side(truth: np.ndarray, predicted: np.ndarray, context: int, output_dir: Path,
                        scale: int = 4) -> None:

    gap = np.full((truth.shape[1], 2, 3), 255, np.uint8)
    pictures = []
    for index, (left, right) in enumerate(zip(truth, predicted)):
        tile = np.concatenate([left, gap, right], axis=1)
        if index >= context:  # a red bar under generated frames
            tile = np.concatenate([tile, np.zeros((2, tile.shape[1], 3), np.uint8) + [[[200, 30, 30]]]], 0)
        else:
            tile = np.concatenate([tile, np.zeros((2, tile.shape[1], 3), np.uint8)], 0)
        pictures.append(np.kron(tile.astype(np.uint8), np.ones((scale, scale, 1), np.uint8)))
    images = [Image.fromarray(p) for p in pictures]
    images[0].save(output_dir / CONTINUATION_GIF, save_all=True, append_images=images[1:], duration=400, loop=0)
    strip = np.concatenate([np.concatenate([p, np.full((p.shape[0], 4, 3), 255, np.uint8)], 1) for p in pictures], 1)
    Image.fromarray(strip.astype(np.uint8)).save(output_dir / CONTINUATION_PNG)


def needle_accuracy(engine: Any, text_tokenizer: Any, evaluation: Any, output_dir: Path, seed: int) -> dict[str, Any]:
    """The needle grid over filler haystacks of the world's kind; heatmap in `output_dir/needle`."""

    haystack = " ".join(filler_sentences(np.random.default_rng([seed, 7]), num_chars=20_000))
    settings = NeedleConfig(haystack="generated", context_min=evaluation.needle_context_min,
                            context_max=evaluation.needle_context_max,
                            context_intervals=evaluation.needle_intervals,
                            depth_intervals=evaluation.needle_depths, rounds=evaluation.needle_rounds,
                            max_new_tokens=evaluation.max_new_tokens, seed=seed,
                            output_dir=str(output_dir / "needle"))
    generate = TextGenerator(engine, text_tokenizer, max_prompt_tokens=evaluation.needle_context_max,
                             max_new_tokens=evaluation.max_new_tokens)
    report = run_needle_eval(generate, text_tokenizer, haystack, settings, output_dir / "needle", progress=True)
    lengths, depths, matrix = accuracy_grid(report.results)
    at_longest = [c for r in report.results if r["context_length"] == max(lengths) for c in r["correct"]]
    return {"accuracy": report.accuracy, "accuracy_at_trained_length": float(np.mean(at_longest)),
            "digits_right": report.digit_accuracy,
            "lengths": lengths, "depths": depths, "grid": matrix.tolist(),
            "heatmap": str(report.heatmap_path.relative_to(output_dir)) if report.heatmap_path else None,
            "example_response": report.results[0]["response"] if report.results else ""}


def evaluate(config: Any, world: Any, codes: dict[int, np.ndarray], vq_tokenizer: Any, text_tokenizer: Any,
             model_dir: Path, output_dir: Path, chat_data: Any,
             progress: Callable[[str], None] = print, pretrained_dir: Path | None = None) -> dict[str, Any]:
    """Every measurement of the report (`config` is the demo's); returns the numbers with the
    learning bars. `chat_data` is the data section chat examples were encoded with;
    `pretrained_dir`, the model before the chat stage, gives the held-out vision loss the chat
    model must not exceed."""
    model = load_model(model_dir, ("--attention", "dense"))
    forward = _forward_fn(model)
    numbers: dict[str, Any] = {"losses": plot_losses(output_dir / "metrics.jsonl", output_dir / LOSS_PNG)}
    progress("video QA (forced choice among candidates, with and without the video)")
    numbers["video_qa"] = video_qa_accuracy(forward, world, codes, text_tokenizer, chat_data,
                                            config.evaluation.max_questions)
    progress(f"  accuracy {numbers['video_qa']['accuracy']:.3f}, text-only "
             f"{numbers['video_qa']['text_only_accuracy']:.3f}, chance {numbers['video_qa']['chance']:.3f}")
    progress("next-frame codes against copying the last frame")
    numbers["next_frame"] = next_frame_accuracy(forward, world, codes, text_tokenizer, config.model.codebook_size)
    if pretrained_dir is not None:
        before = next_frame_accuracy(_forward_fn(load_model(pretrained_dir, ("--attention", "dense"))), world, codes,
                                     text_tokenizer, config.model.codebook_size)
        numbers["next_frame"]["pretrained_vision_loss"] = before["vision_loss"]
        numbers["next_frame"]["pretrained_accuracy"] = before["accuracy"]
    progress(f"  accuracy {numbers['next_frame']['accuracy']:.3f}, copy-last-frame "
             f"{numbers['next_frame']['copy_last_frame_accuracy']:.3f}; held-out vision loss "
             f"{numbers['next_frame']['vision_loss']:.3f} (after pretraining "
             f"{numbers['next_frame'].get('pretrained_vision_loss', float('nan')):.3f})")
    engine = InferenceModel(load_model(model_dir), progress=False, prefill_chunk_size=256, key_chunk_size=128)
    progress("continuation of a held-out video")
    held_out = world.videos_in("held_out") or world.videos
    numbers["continuation"] = continuation(
        engine, [codes[video.index] for video in held_out[:max(1, config.evaluation.continuation_videos)]],
        text_tokenizer, vq_tokenizer, config.evaluation.context_frames, output_dir)
    progress(f"  balanced accuracy {numbers['continuation']['balanced_accuracy']:.3f} (copying 0.5), codes "
             f"{numbers['continuation']['code_accuracy']:.3f} (copying {numbers['continuation']['copy_code_accuracy']:.3f})")
    progress("needle retrieval grid")
    numbers["needle"] = needle_accuracy(engine, text_tokenizer, config.evaluation, output_dir, config.data.seed)
    progress(f"  accuracy {numbers['needle']['accuracy']:.3f} "
             f"(at {max(numbers['needle']['lengths'])} tokens: {numbers['needle']['accuracy_at_trained_length']:.3f}; "
             f"digits in place {numbers['needle']['digits_right']:.3f})")
    numbers["bars"] = learning_bars(numbers, config.evaluation)
    return numbers


def learning_bars(numbers: dict[str, Any], evaluation: Any) -> dict[str, dict[str, Any]]:
    """Every bar as `{name: {value, threshold, met}}`. Met: value >= threshold for scores,
    value > threshold where a baseline is to be beaten, value <= threshold for the vision loss
    (the chat model's on held-out videos against the pretrained model's)."""
    qa, frame, needle, go_on = numbers["video_qa"], numbers["next_frame"], numbers["needle"], numbers["continuation"]
    bars = {
        "video_qa_uses_video": (qa["accuracy"] - qa["text_only_accuracy"], evaluation.video_margin, ">="),
        "video_qa_above_chance": (qa["accuracy"], qa["chance"] + evaluation.qa_margin, ">="),
        "next_frame_beats_copy": (frame["accuracy"], frame["copy_last_frame_accuracy"], ">"),
        "continuation_beats_copy_on_changed_codes": (go_on["balanced_accuracy"], go_on["copy_balanced_accuracy"], ">"),
        "needle_accuracy_at_trained_length": (needle["accuracy_at_trained_length"], evaluation.min_needle_accuracy,
                                              ">="),
    }
    if "pretrained_vision_loss" in frame:
        bars["vision_loss_not_forgotten"] = (frame["vision_loss"], frame["pretrained_vision_loss"], "<=")
    rules = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b}
    return {name: {"value": float(value), "threshold": float(threshold), "met": bool(rules[rule](value, threshold))}
            for name, (value, threshold, rule) in bars.items()}
