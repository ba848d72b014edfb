"""Needle in a haystack: single- and multi-needle retrieval over a grid of lengths × depths.

LWM's procedure on any UTF-8 text. A needle, "The special magic {city} number is: {7 digits}.",
goes in at a sentence boundary at the given depth of the haystack (the insertion point backs up
to the end of the previous sentence); the question, "What is the special magic {city}
number?", follows the document in LWM's chat template; the model answers greedily; an answer is
correct when the digits appear in it.

- Single needle: one cell per (context length, depth, round).
- Multi-needle: one cell per (context length, round); `num_needles` needles at distinct depths
  drawn from the depth grid, `retrieve` of them asked for at once; each asked needle is scored
  on its own (per-needle accuracy) and counted at its depth in the heatmap.

Context lengths are `linspace(context_min, context_max, context_intervals)` and depths
`linspace(0, 100, depth_intervals)` percent. The prompt of a cell is exactly `context_length`
tokens: template and question, needles, and as much haystack as fits (the haystack repeats
when it is shorter, and the report says how often). Every cell's needles come from its own
seed, so a rerun that resumes from `results.json` (finished cells are skipped) asks the same
questions. The core takes any `generate(prompt_ids) -> answer_text` callable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config.data import ChatTemplateConfig
from lwm.config.infer import NeedleConfig
from lwm.data.passkey import NEEDLE, QUESTION_ONE

QUESTION_MANY = "What are the special magic numbers for {cities}?"
INSTRUCTION = "Don't give information outside the document or repeat your findings. Keep your response short and direct."
CITIES = (
    "Chicago", "Yangon", "Antananarivo", "Colombo", "Almaty", "Sydney", "Mexico City", "Seattle", "Lagos",
    "Amsterdam", "Belgrade", "Cairo", "Baghdad", "Damascus", "Kigali", "Dakar", "Sofia", "Victoria",
    "Tashkent", "Mumbai", "Barcelona", "Amman", "Toronto", "Bratislava", "Johannesburg", "Thimphu",
    "Bangkok", "Santiago", "San Francisco", "Paris", "Rabat", "Copenhagen", "Madrid", "Ho Chi Minh City",
    "Sarajevo", "Delhi", "Istanbul", "Khartoum", "Helsinki", "Doha", "Kuala Lumpur", "Budapest",
    "Shanghai", "Moscow", "Los Angeles", "Oslo", "Berlin", "Bangalore", "Tokyo", "Melbourne",
    "Port Louis", "Lisbon", "Nairobi", "Kampala", "Lima", "Maputo", "Vancouver", "Dubai", "Jakarta",
    "Yerevan", "Beirut", "Athens", "Bucharest", "Brussels", "Tunis", "Astana", "Seoul", "Buenos Aires",
    "Vienna",
)
RESULTS_FILE = "results.json"
HEATMAP_FILE = "heatmap.png"
_SENTENCE_ENDS = (".", "!", "?", ".\"", "!\"", "?\"")


@dataclasses.dataclass(frozen=True)
class Needle:
    """One inserted fact: its city, its 7-digit number and its depth in percent."""

    city: str
    number: str
    depth: float


@dataclasses.dataclass(frozen=True)
class NeedleCell:
    """One question of the grid: what is inserted where, and what is asked."""

    context_length: int
    depth_index: int  # the depth grid index of a single needle; -1 for multi-needle cells
    round: int
    needles: tuple[Needle, ...]
    asked: tuple[str, ...]

    @property
    def key(self) -> str:
        """Identifies the cell in `results.json` (for resuming)."""
        return f"{self.context_length}/{self.depth_index}/{self.round}"

    def question(self) -> str:
        """The retrieval question."""
        if len(self.asked) == 1:
            return QUESTION_ONE.format(city=self.asked[0])
        cities = ", ".join(self.asked[:-1]) + ", and " + self.asked[-1]
        return QUESTION_MANY.format(cities=cities)


@dataclasses.dataclass
class NeedleReport:
    """What a run produced: every result (resumed ones included) and where they are."""

    results: list[dict[str, Any]]
    results_path: Path
    heatmap_path: Path | None
    new_cells: int
    resumed_cells: int
    haystack_repeats: int

    @property
    def accuracy(self) -> float:
        """Mean per-needle accuracy over all asked needles."""
        scores = [score for result in self.results for score in result["correct"]]
        return float(np.mean(scores)) if scores else float("nan")

    @property
    def digit_accuracy(self) -> float:
        """Mean share of digits in place (`digits_right`) over all asked needles; chance is ~0.1."""
        scores = [digits_right(result["response"], number) for result in self.results for number in result["answers"]]
        return float(np.mean(scores)) if scores else float("nan")


def needle_grid(settings: NeedleConfig) -> tuple[list[int], list[float]]:
    """Context lengths (tokens) and depths (percent) of the grid, as LWM spaces them."""
    lengths = np.round(np.linspace(settings.context_min, settings.context_max, settings.context_intervals))
    depths = np.linspace(0.0, 100.0, settings.depth_intervals)
    return sorted({int(length) for length in lengths}), [round(float(depth), 3) for depth in depths]


def score_answer(answer: str, number: str) -> bool:
    """Correct when the needle's digits appear in the answer (LWM's substring scoring)."""
    return number in answer


def digits_right(answer: str, number: str) -> float:
    """Share of the needle's digits in place in the answer's best-matching run of digits.

    A diagnostic beside LWM's all-or-nothing score: a model that copies five of seven digits is
    learning to retrieve and scores 5/7 here, while guessing scores about 0.1 (one digit in ten).
    With several needles asked at once, each is matched against every run in the answer.
    """
    runs = re.findall(r"\d+", answer)
    return max((sum(a == b for a, b in zip(run, number)) / len(number) for run in runs), default=0.0)


def _random_number(rng: np.random.Generator) -> str:
    return str(int(rng.integers(1_000_000, 10_000_000)))


def make_cells(settings: NeedleConfig) -> list[NeedleCell]:
    """Every cell of the grid, each drawn from its own seed (independent of run order)."""
    lengths, depths = needle_grid(settings)
    cells = []
    multi = settings.num_needles > 1
    for length in lengths:
        for depth_index in ([-1] if multi else range(len(depths))):
            for round_index in range(settings.rounds):
                rng = np.random.default_rng([settings.seed, length, depth_index + 1, round_index])
                cities = [str(city) for city in rng.choice(CITIES, size=settings.num_needles, replace=False)]
                if multi:
                    chosen = rng.choice(len(depths), size=settings.num_needles, replace=False)
                    needle_depths = [depths[int(index)] for index in chosen]
                else:
                    needle_depths = [depths[depth_index]]
                needles = tuple(Needle(city, _random_number(rng), depth) for city, depth in zip(cities, needle_depths))
                asked_index = sorted(rng.choice(len(needles), size=settings.retrieve, replace=False).tolist())
                asked = tuple(needles[index].city for index in asked_index)
                cells.append(NeedleCell(length, depth_index, round_index, needles, asked))
    return cells


def encode_continuation(tokenizer: Any, text: str) -> list[int]:
    """Ids of `text` as the tokenizer splits it right after the end of a sentence.

    Encoding `"." + text` and dropping the ids of `"."` keeps a leading space attached to the
    next word whether or not the tokenizer adds a dummy prefix; if the ids of `"."` are not a
    prefix, `text` is encoded alone.
    """
    period = tokenizer.encode(".")
    joint = tokenizer.encode("." + text)
    if joint[: len(period)] == period:
        return joint[len(period):]
    return tokenizer.encode(text)


class Haystack:
    """The haystack text as ids (encoded once), with the positions that end a sentence."""

    def __init__(self, text: str, tokenizer: Any):
        if not text.strip():
            raise ValueError("the haystack text is empty")
        self.ids = np.asarray(encode_continuation(tokenizer, " " + text.strip()), np.int32)
        piece = getattr(tokenizer, "id_to_piece", None)
        ends: dict[int, bool] = {}
        for token in np.unique(self.ids).tolist():
            text_of = piece(token) if piece is not None else tokenizer.decode([token])
            ends[token] = text_of.replace("\u2581", " ").rstrip().endswith(_SENTENCE_ENDS)
        self.sentence_end = np.asarray([ends[token] for token in self.ids.tolist()], bool)
        self.repeats = 1

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The first `count` ids (repeating the text when it is shorter) and sentence-end flags."""
        repeats = max(1, math.ceil(count / len(self.ids)))
        self.repeats = max(self.repeats, repeats)
        ids = np.tile(self.ids, repeats)[:count]
        ends = np.tile(self.sentence_end, repeats)[:count]
        return ids, ends


def sentence_boundary(ends: np.ndarray, point: int) -> int:
    """The last position at or before `point` that starts a sentence (0 when none does)."""
    previous = np.nonzero(ends[:point])[0]
    return int(previous[-1]) + 1 if previous.size else 0


def build_prompt(
    cell: NeedleCell,
    haystack: Haystack,
    tokenizer: Any,
    template: ChatTemplateConfig = ChatTemplateConfig(),
) -> tuple[list[int], list[int]]:
    """The prompt ids of a cell (exactly `context_length` tokens) and each needle's position.

    `<s>{system}{user_prefix}{haystack with needles} {question} {instruction}{assistant_prefix}`.
    """
    prefix = ([tokenizer.bos_id] if template.add_bos else []) + tokenizer.encode(
        template.system + template.user_prefix.rstrip())
    suffix = encode_continuation(tokenizer, f" {cell.question()} {INSTRUCTION}{template.assistant_prefix}")
    needle_ids = [encode_continuation(tokenizer, " " + NEEDLE.format(city=n.city, number=n.number)) for n in cell.needles]
    budget = cell.context_length - len(prefix) - len(suffix) - sum(len(ids) for ids in needle_ids)
    if budget < 1:
        raise ValueError(
            f"context length {cell.context_length} is too short for the template, question and "
            f"needles ({cell.context_length - budget + 1} tokens); raise needle.context_min"
        )
    context, ends = haystack.take(budget)
    points = []
    for needle in cell.needles:
        # Depth 100 too backs up to a sentence start: the cut haystack usually ends mid-sentence.
        points.append(sentence_boundary(ends, int(budget * needle.depth / 100)))
    pieces, positions, previous = [], [0] * len(points), 0
    offset = len(prefix)
    for index in sorted(range(len(points)), key=lambda i: (points[i], i)):
        pieces.append(context[previous:points[index]].tolist())
        offset += points[index] - previous
        positions[index] = offset
        pieces.append(needle_ids[index])
        offset += len(needle_ids[index])
        previous = points[index]
    pieces.append(context[previous:].tolist())
    ids = prefix + [token for piece in pieces for token in piece] + suffix
    return ids, positions


def _settings_fingerprint(settings: NeedleConfig, haystack_ids: np.ndarray, template: ChatTemplateConfig) -> dict[str, Any]:
    return {
        "num_needles": settings.num_needles, "retrieve": settings.retrieve, "seed": settings.seed,
        "haystack_tokens": int(len(haystack_ids)), "haystack_head": [int(t) for t in haystack_ids[:16]],
        "system": template.system,
    }


def _write_json(path: Path, data: Any) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    os.replace(temporary, path)


def load_results(path: Path, fingerprint: dict[str, Any]) -> list[dict[str, Any]]:
    """Finished results of an earlier run with the same settings (none if the file is absent)."""
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); move it away to start over") from error
    if data.get("settings") != fingerprint:
        raise ValueError(
            f"{path} was written with different settings {data.get('settings')} (now {fingerprint}): "
            f"use another needle.output_dir, or delete the file to start over"
        )
    return list(data.get("results", []))


def run_needle_eval(
    generate: Callable[[list[int]], str],
    tokenizer: Any,
    haystack_text: str,
    settings: NeedleConfig,
    output_dir: str | Path,
    *,
    template: ChatTemplateConfig = ChatTemplateConfig(),
    progress: bool = True,
    max_new_cells: int | None = None,
    heatmap: bool = True,
) -> NeedleReport:
    """Runs (or resumes) the grid: asks every unfinished cell, scores it, saves after each.

    `generate(prompt_ids) -> answer_text` is any model (greedy, for LWM's protocol).
    Results go to `output_dir/results.json` and the depth × length heatmap to
    `output_dir/heatmap.png`. `max_new_cells` stops after that many new cells (the rest are
    left for a rerun).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    haystack = Haystack(haystack_text, tokenizer)
    fingerprint = _settings_fingerprint(settings, haystack.ids, template)
    results_path = output_dir / RESULTS_FILE
    results = load_results(results_path, fingerprint)
    finished = {result["key"] for result in results}
    cells = make_cells(settings)
    todo = [cell for cell in cells if cell.key not in finished]
    if max_new_cells is not None:
        todo = todo[:max_new_cells]
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc="needle", unit="cell")
    for cell in todo:
        ids, positions = build_prompt(cell, haystack, tokenizer, template)
        answer = generate(ids)
        by_city = {needle.city: needle for needle in cell.needles}
        results.append({
            "key": cell.key,
            "context_length": cell.context_length,
            "round": cell.round,
            "prompt_tokens": len(ids),
            "needles": [
                {**dataclasses.asdict(needle), "position": position}
                for needle, position in zip(cell.needles, positions)
            ],
            "asked": list(cell.asked),
            "asked_depths": [by_city[city].depth for city in cell.asked],
            "answers": [by_city[city].number for city in cell.asked],
            "response": answer,
            "correct": [score_answer(answer, by_city[city].number) for city in cell.asked],
            "digits_right": [digits_right(answer, by_city[city].number) for city in cell.asked],
        })
        _write_json(results_path, {"settings": fingerprint, "results": results})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(acc=f"{np.mean([c for r in results for c in r['correct']]):.2f}")
    if bar is not None:
        bar.close()
    if not results_path.is_file():
        _write_json(results_path, {"settings": fingerprint, "results": results})
    heatmap_path = plot_heatmap(results, output_dir / HEATMAP_FILE) if heatmap and results else None
    return NeedleReport(results, results_path, heatmap_path, len(todo), len(finished), haystack.repeats)


def accuracy_grid(results: Sequence[dict[str, Any]]) -> tuple[list[int], list[float], np.ndarray]:
    """Per-needle accuracy by (depth, context length): lengths, depths, matrix (NaN if empty)."""
    lengths = sorted({int(result["context_length"]) for result in results})
    depths = sorted({float(depth) for result in results for depth in result["asked_depths"]})
    total = np.zeros((len(depths), len(lengths)))
    count = np.zeros((len(depths), len(lengths)))
    for result in results:
        column = lengths.index(int(result["context_length"]))
        for depth, correct in zip(result["asked_depths"], result["correct"]):
            row = depths.index(float(depth))
            total[row, column] += float(correct)
            count[row, column] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return lengths, depths, matrix


def plot_heatmap(results: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """The standard needle heatmap: depth (rows, 0% on top) × context length, green = found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LinearSegmentedColormap

    lengths, depths, matrix = accuracy_grid(results)
    colormap = LinearSegmentedColormap.from_list("needle", ["#F0496E", "#EBB839", "#0CD79F"])
    width = max(5.0, 0.6 * len(lengths) + 2.5)
    height = max(3.5, 0.45 * len(depths) + 1.5)
    figure, axis = plt.subplots(figsize=(width, height))
    image = axis.imshow(np.ma.masked_invalid(matrix), cmap=colormap, vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_xticks(range(len(lengths)))
    axis.set_xticklabels([_short_length(length) for length in lengths], rotation=45, ha="right")
    axis.set_yticks(range(len(depths)))
    axis.set_yticklabels([f"{depth:g}" for depth in depths])
    axis.set_xlabel("context length (tokens)")
    axis.set_ylabel("needle depth (%)")
    found = [c for r in results for c in r["correct"]]
    axis.set_title(title or f"needle retrieval: {np.mean(found):.1%} of {len(found)} needles")
    if matrix.size <= 400:
        for row in range(matrix.shape[0]):
            for column in range(matrix.shape[1]):
                if not np.isnan(matrix[row, column]):
                    axis.text(column, row, f"{matrix[row, column]:.2f}", ha="center", va="center", fontsize=7)
    figure.colorbar(image, ax=axis, label="accuracy")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _short_length(length: int) -> str:
    if length >= 1_000_000 and length % 1_000_000 == 0:
        return f"{length // 1_000_000}M"
    if length >= 1000:
        return f"{length / 1000:g}K"
    return str(length)
