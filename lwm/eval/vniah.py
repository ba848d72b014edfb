"""Video needle in a haystack (V-NIAH, LongVA arXiv 2406.16852), through the VQ tokenizer.

A needle frame (or a short clip of identical frames) shows a rendered number, word or shape;
it goes in at a depth of a haystack video (any local video read with `lwm.data.video`, or a
generated one of drifting coloured blobs that never shows text), the whole clip is VQ-encoded
and placed in the chat prompt with the vision layout of `lwm.infer.video_qa.ChatSession`
(LWM's `<s>You are a helpful assistant. USER: {question}\\n<vision>...</vision> ASSISTANT:`), and
the model answers greedily: correct when the needle's text (or the shape's name) is in the
answer. The grid is haystack lengths in frames x depths x rounds; results go to
`results.json` after every cell (a rerun resumes) and the depth x frames heatmap to
`heatmap.png`. Works for any model with a vision vocabulary whose `tokens_per_frame` matches
the VQ tokenizer: models trained here and LWM's vision-language models.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lwm.config.eval import VniahConfig
from lwm.errors import LwmError
from lwm.eval.ruler.haystacks import NOUNS
from lwm.eval.ruler.report import plot_grid
from lwm.eval.ruler.runner import CachedGenerator
from lwm.infer.video_qa import ChatSession

RESULTS_FILE = "results.json"
HEATMAP_FILE = "heatmap.png"
SHAPES = ("circle", "square", "triangle", "cross")
QUESTIONS = {
    "digits": "One frame of this video shows a number. What is the number?",
    "word": "One frame of this video shows a word. What is the word?",
    "shape": "One frame of this video shows a white shape. Is it a circle, a square, a triangle or a cross?",
}


class VniahError(LwmError, ValueError):
    """A V-NIAH setting or input cannot work; the message says which and how to fix it."""


@dataclasses.dataclass(frozen=True)
class VideoNeedle:
    """What the needle shows (`text`: the number, the word or the shape's name)."""

    kind: str
    text: str


def draw_needle(rng: np.random.Generator, kind: str) -> VideoNeedle:
    """A needle of `kind` ("digits": a 3-digit number, "word": a noun, "shape")."""
    if kind == "digits":
        return VideoNeedle(kind, str(int(rng.integers(100, 1000))))
    if kind == "word":
        return VideoNeedle(kind, NOUNS[int(rng.integers(len(NOUNS)))])
    if kind == "shape":
        return VideoNeedle(kind, SHAPES[int(rng.integers(len(SHAPES)))])
    raise VniahError(f"vniah.needle={kind!r}: use digits, word or shape")


def render_needle(needle: VideoNeedle, size: int) -> np.ndarray:
    """The needle frame, uint8 `[size, size, 3]`: white text or shape on black, filling the frame."""
    from PIL import Image, ImageDraw, ImageFont

    if needle.kind == "shape":
        canvas = Image.new("RGB", (64, 64))
        draw = ImageDraw.Draw(canvas)
        box = (8, 8, 56, 56)
        if needle.text == "circle":
            draw.ellipse(box, fill="white")
        elif needle.text == "square":
            draw.rectangle(box, fill="white")
        elif needle.text == "triangle":
            draw.polygon([(32, 6), (58, 56), (6, 56)], fill="white")
        else:
            draw.rectangle((26, 6, 38, 58), fill="white")
            draw.rectangle((6, 26, 58, 38), fill="white")
    else:
        font = ImageFont.load_default()
        left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), needle.text, font=font)
        canvas = Image.new("RGB", (right - left + 4, bottom - top + 4))
        ImageDraw.Draw(canvas).text((2 - left, 2 - top), needle.text, fill="white", font=font)
    # Scale to 90% of the frame width, keeping the aspect, and centre it.
    scale = 0.9 * size / max(canvas.size)
    width, height = max(1, round(canvas.size[0] * scale)), max(1, round(canvas.size[1] * scale))
    glyph = canvas.resize((width, height), Image.NEAREST)
    frame = Image.new("RGB", (size, size))
    frame.paste(glyph, ((size - width) // 2, (size - height) // 2))
    return np.asarray(frame, np.uint8)


def generated_haystack(num_frames: int, size: int, seed: int) -> np.ndarray:
    """A haystack video, uint8 `[num_frames, size, size, 3]`: coloured blobs drifting over a
    slowly changing background (no text, no white shapes)."""
    rng = np.random.default_rng([seed, 104729])
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1)
    centres = rng.uniform(0.2, 0.8, (3, 2))
    velocity = rng.uniform(-0.03, 0.03, (3, 2))
    colours = rng.uniform(40, 200, (3, 3))
    background = rng.uniform(20, 90, 3)
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for index in range(num_frames):
        image = np.broadcast_to(background * (0.8 + 0.2 * np.sin(index / 7.0)), (size, size, 3)).copy()
        for blob in range(3):
            cy, cx = (centres[blob] + velocity[blob] * index) % 1.0
            weight = np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / 0.02)[..., None]
            image = image * (1 - weight) + colours[blob] * weight
        frames[index] = np.clip(image, 0, 200).astype(np.uint8)
    return frames


def haystack_frames(settings: VniahConfig, num_frames: int, size: int) -> np.ndarray:
    """`num_frames` haystack frames: sampled uniformly from `settings.video`, or generated."""
    if not settings.video:
        return generated_haystack(num_frames, size, settings.seed)
    from lwm.data.video import read_video

    frames = read_video(settings.video, num_frames=num_frames, size=size)
    if len(frames) < num_frames:  # a short video: loop it
        frames = np.concatenate([frames] * (num_frames // max(1, len(frames)) + 1))[:num_frames]
    return frames


def insert_needle(haystack: np.ndarray, needle_frames: np.ndarray, depth: float) -> tuple[np.ndarray, int]:
    """The haystack with the needle clip at `depth` percent; returns the frames and the index of
    the needle's first frame."""
    start = int(round(depth / 100.0 * len(haystack)))
    return np.concatenate([haystack[:start], needle_frames, haystack[start:]]), start


def make_cells(settings: VniahConfig) -> list[dict[str, Any]]:
    """Every cell of the grid, each with its own seed (so a rerun asks the same questions)."""
    depths = [round(float(d), 3) for d in np.linspace(0.0, 100.0, settings.depth_intervals)]
    cells = []
    for frames in sorted(set(settings.frames)):
        for depth_index, depth in enumerate(depths):
            for round_index in range(settings.rounds):
                rng = np.random.default_rng([settings.seed, frames, depth_index, round_index])
                cells.append({"key": f"{frames}/{depth_index}/{round_index}", "frames": frames, "depth": depth,
                              "round": round_index, "needle": draw_needle(rng, settings.needle)})
    return cells


@dataclasses.dataclass
class VniahReport:
    """Every result (resumed ones included) and where they are."""

    results: list[dict[str, Any]]
    results_path: Path
    heatmap_path: Path | None
    new_cells: int
    resumed_cells: int

    @property
    def accuracy(self) -> float:
        """Share of cells answered correctly."""
        return float(np.mean([r["correct"] for r in self.results])) if self.results else float("nan")

    def by_frames(self) -> dict[int, float]:
        """Accuracy per haystack length in frames."""
        lengths = sorted({r["frames"] for r in self.results})
        return {n: float(np.mean([r["correct"] for r in self.results if r["frames"] == n])) for n in lengths}


def _write_json(path: Path, data: Any) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def run_vniah(
    engine: Any,
    tokenizer: Any,
    vq_tokenizer: Any,
    settings: VniahConfig,
    output_dir: str | Path | None = None,
    *,
    progress: bool = True,
    session_class: type[ChatSession] = ChatSession,
) -> VniahReport:
    """Runs (or resumes) the frames x depth grid and writes results and the heatmap.

    `session_class` lays out the prompt: `ChatSession` for models trained here,
    `lwm.infer.video_qa.LwmChatSession` for LWM's released models (LWM's exact layout).
    """
    if not engine.config.has_vision:
        raise VniahError("this model has no vision vocabulary (model.vision_vocab_size is 0): V-NIAH needs a "
                         "vision-language model")
    if vq_tokenizer.tokens_per_frame != engine.config.tokens_per_frame:
        raise VniahError(f"the VQ tokenizer gives {vq_tokenizer.tokens_per_frame} codes per frame but the model "
                         f"expects model.tokens_per_frame={engine.config.tokens_per_frame}: load the model's tokenizer")
    output_dir = Path(output_dir if output_dir is not None else settings.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results_path = output_dir / RESULTS_FILE
    expected = {"seed": settings.seed, "video": settings.video, "needle": settings.needle,
                "needle_frames": settings.needle_frames, "system": settings.template.system}
    results: list[dict[str, Any]] = []
    if results_path.is_file():
        data = json.loads(results_path.read_text())
        if data.get("settings") != expected:
            raise VniahError(f"{results_path} was written with other settings {data.get('settings')} (now {expected}): "
                             f"use another vniah.output_dir, or delete the file to start over")
        results = list(data.get("results", []))
    done = {r["key"] for r in results}
    todo = [cell for cell in make_cells(settings) if cell["key"] not in done]
    size = vq_tokenizer.resolution
    session = session_class(engine, tokenizer, cache_size=None, template=settings.template)
    haystacks: dict[int, np.ndarray] = {}
    generator = None
    bar = None
    if progress and todo and jax.process_index() == 0:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="vniah", unit="cell")
    for cell in todo:
        count = cell["frames"] - settings.needle_frames
        if count not in haystacks:
            haystacks[count] = vq_tokenizer.encode(haystack_frames(settings, count, size)).reshape(count, -1)
        needle_codes = vq_tokenizer.encode(render_needle(cell["needle"], size)[None]).reshape(1, -1)
        needle_codes = np.repeat(needle_codes, settings.needle_frames, axis=0)
        codes, start = insert_needle(haystacks[count], needle_codes, cell["depth"])
        ids, flags = session.turn_tokens(QUESTIONS[settings.needle], codes)
        if generator is None:  # sized for the longest clip: its text, codes and one marker per frame
            text_tokens = len(ids) - codes.size - len(codes)
            longest = max(settings.frames) * (engine.config.tokens_per_frame + 1) + text_tokens
            generator = CachedGenerator(engine, tokenizer, longest + settings.max_new_tokens + 8)
        answer = generator(ids, settings.max_new_tokens, flags)
        needle = cell["needle"]
        results.append({"key": cell["key"], "frames": cell["frames"], "depth": cell["depth"], "round": cell["round"],
                        "needle": needle.text, "needle_frame": start, "prompt_tokens": len(ids),
                        "response": answer, "correct": needle.text.lower() in answer.lower()})
        _write_json(results_path, {"settings": expected, "results": results})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not results_path.is_file():
        _write_json(results_path, {"settings": expected, "results": results})
    heatmap = plot_vniah_heatmap(results, output_dir / HEATMAP_FILE, settings.needle) if results else None
    return VniahReport(results, results_path, heatmap, len(todo), len(done))


def plot_vniah_heatmap(results: list[dict[str, Any]], path: str | Path, needle: str) -> Path:
    """Needle depth (rows, 0% on top) x haystack frames (columns), share answered correctly."""
    frames = sorted({r["frames"] for r in results})
    depths = sorted({r["depth"] for r in results})
    total = np.zeros((len(depths), len(frames)))
    count = np.zeros((len(depths), len(frames)))
    for r in results:
        total[depths.index(r["depth"]), frames.index(r["frames"])] += float(r["correct"])
        count[depths.index(r["depth"]), frames.index(r["frames"])] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    accuracy = float(np.mean([r["correct"] for r in results]))
    return plot_grid(matrix, [str(n) for n in frames], [f"{d:g}" for d in depths], path,
                     title=f"V-NIAH ({needle}): {accuracy:.1%} of {len(results)}", xlabel="haystack (frames)",
                     ylabel="needle depth (%)")
