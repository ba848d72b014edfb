"""A procedurally generated world for the demo: bouncing-shape videos and passkey documents.

Videos: 1-`max_shapes` coloured squares and circles on a dark background move with constant
integer velocity, bounce off the walls (the velocity component into the wall flips and the
overshoot is mirrored back) and off each other (two shapes whose pixels start to overlap swap
velocities). Each video comes with its simulation state, a caption read from that state and
question/answer pairs whose answers come from a fixed, small candidate set, so accuracy and
chance (`1 / len(candidates)`) are well defined.

Documents (built by `lwm.data.passkey`): English-like filler sentences with "needles" ("The special magic
{city} number is: {7 digits}.") inserted at sentence boundaries at given depths, as in LWM's
needle-in-a-haystack test.

Everything is pure numpy and deterministic for the config's seed; `generate_world` is the entry
point, `write_videos` and `passkey_chat_records` export for training.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config.synthetic import PALETTE, SyntheticWorldConfig
from lwm.data.passkey import (  # noqa: F401  (part of this module's surface)
    CITIES,
    Needle,
    PasskeyDocument,
    filler_sentences,
    insert_needles,
    make_passkey_document,
    needle_sentence,
)

BACKGROUND = (16, 16, 24)
WALLS = ("left", "right", "top", "bottom")
DIRECTIONS = ("left", "right", "up", "down")
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six")
YES_NO = ("yes", "no")
SPLITS = ("train", "held_out")


# ----------------------------------------------------------------------------------------------
# Simulation


@dataclasses.dataclass(frozen=True)
class Shape:
    """A shape's look: `size` is the side of a square or the diameter of a circle, in pixels."""

    colour: str
    kind: str
    size: int

    @property
    def name(self) -> str:
        """How captions and questions call it, e.g. `red square` (colours in a video are distinct)."""
        return f"{self.colour} {self.kind}"


@dataclasses.dataclass(frozen=True)
class WallHit:
    """Shape `shape` touched or crossed `wall` while moving into frame `frame` and bounced."""

    frame: int
    shape: int
    wall: str


@dataclasses.dataclass(frozen=True)
class Collision:
    """Shapes `first` < `second` started to overlap in frame `frame` and swapped velocities."""

    frame: int
    first: int
    second: int


@dataclasses.dataclass(frozen=True)
class Simulation:
    """The state of every shape in every frame.

    `positions[t, i]` is the integer top-left corner `(x, y)` of shape `i` in frame `t` (x to
    the right, y down); `velocities[t, i]` is its velocity after frame `t`'s bounces and
    collisions, the step that carries it to frame `t + 1`. Events are in frame order.
    """

    frame_size: int
    shapes: tuple[Shape, ...]
    positions: np.ndarray  # int64 [T, N, 2]
    velocities: np.ndarray  # int64 [T, N, 2]
    wall_hits: tuple[WallHit, ...]
    collisions: tuple[Collision, ...]

    @property
    def num_frames(self) -> int:
        """Number of frames T."""
        return len(self.positions)

    def first_wall_frame(self, shape: int) -> int | None:
        """The first frame in which `shape` hits a wall, or None if it never does."""
        return next((hit.frame for hit in self.wall_hits if hit.shape == shape), None)

    def first_wall_hitter(self) -> int | None:
        """The one shape that hits a wall before all others; None if nothing hits or it is a tie."""
        if not self.wall_hits:
            return None
        frame = self.wall_hits[0].frame
        hitters = {hit.shape for hit in self.wall_hits if hit.frame == frame}
        return hitters.pop() if len(hitters) == 1 else None

    def first_walls(self, shape: int) -> tuple[str, ...]:
        """The walls `shape` hits in its first wall-hit frame (two in a corner; empty if none)."""
        frame = self.first_wall_frame(shape)
        return tuple(hit.wall for hit in self.wall_hits if hit.shape == shape and hit.frame == frame)


def direction_word(velocity: Sequence[int]) -> str:
    """`left`/`right`/`up`/`down` along the velocity's larger component (y points down)."""
    vx, vy = int(velocity[0]), int(velocity[1])
    if abs(vx) > abs(vy):
        return "right" if vx > 0 else "left"
    if abs(vy) > abs(vx):
        return "down" if vy > 0 else "up"
    raise ValueError(f"velocity {velocity} has no main direction")


@cache
def sprite(kind: str, size: int) -> np.ndarray:
    """Boolean `[size, size]` mask of a square or of a circle inscribed in the square."""
    if kind not in ("square", "circle"):
        raise ValueError(f"unknown shape kind {kind!r}; expected square or circle")
    centre = (size - 1) / 2
    rows, cols = np.mgrid[:size, :size]
    mask = (rows - centre) ** 2 + (cols - centre) ** 2 <= (size / 2) ** 2
    if kind == "square":
        mask = np.ones((size, size), bool)
    mask.setflags(write=False)  # cached and shared
    return mask


def shapes_overlap(first: Shape, first_xy: Sequence[int], second: Shape,
                   second_xy: Sequence[int]) -> bool:
    """True when the two shapes' pixel masks share at least one pixel."""
    ax, ay, bx, by = int(first_xy[0]), int(first_xy[1]), int(second_xy[0]), int(second_xy[1])
    left = ax if ax > bx else bx
    right = min(ax + first.size, bx + second.size)
    if left >= right:
        return False
    top = ay if ay > by else by
    bottom = min(ay + first.size, by + second.size)
    if top >= bottom:
        return False
    if first.kind == second.kind == "square":
        return True
    mask_a = sprite(first.kind, first.size)[top - ay:bottom - ay, left - ax:right - ax]
    mask_b = sprite(second.kind, second.size)[top - by:bottom - by, left - bx:right - bx]
    return bool(np.any(mask_a & mask_b))


def simulate(shapes: Sequence[Shape], positions: Sequence[Sequence[int]],
             velocities: Sequence[Sequence[int]], num_frames: int, frame_size: int) -> Simulation:
    """Runs the physics from initial top-left corners and velocities for `num_frames` frames.

    Each step moves every shape by its velocity; a shape that reaches or passes a wall while
    moving towards it is mirrored back inside and its velocity component flips. Then every pair
    whose masks overlap now but did not before swaps velocities (an elastic collision of equal
    masses, which reverses their relative motion so they separate again).
    """
    shapes = tuple(shapes)
    # Plain Python ints: a few shapes and frames make numpy's per-call overhead dominate.
    position = [[int(v) for v in xy] for xy in positions]
    velocity = [[int(v) for v in xy] for xy in velocities]
    if len(position) != len(shapes) or len(velocity) != len(shapes):
        raise ValueError(f"simulate: {len(shapes)} shapes but {len(position)} positions and "
                         f"{len(velocity)} velocities")
    for index, shape in enumerate(shapes):
        if not all(0 <= v <= frame_size - shape.size for v in position[index]):
            raise ValueError(f"shape {index} at {position[index]} is not inside the "
                             f"{frame_size}px frame")
    positions_out, velocities_out = [_copy(position)], [_copy(velocity)]
    pairs = [(i, j) for i in range(len(shapes)) for j in range(i + 1, len(shapes))]
    touching = {(i, j): shapes_overlap(shapes[i], position[i], shapes[j], position[j])
                for i, j in pairs}
    wall_hits: list[WallHit] = []
    collisions: list[Collision] = []
    for frame in range(1, num_frames):
        for index, shape in enumerate(shapes):
            high = frame_size - shape.size
            for axis in range(2):
                step = velocity[index][axis]
                value = position[index][axis] + step
                if step < 0 and value <= 0:
                    value, wall = -value, WALLS[2 * axis]
                elif step > 0 and value >= high:
                    value, wall = 2 * high - value, WALLS[2 * axis + 1]
                else:
                    wall = None
                position[index][axis] = value
                if wall is not None:
                    velocity[index][axis] = -step
                    wall_hits.append(WallHit(frame, index, wall))
        for i, j in pairs:
            now = shapes_overlap(shapes[i], position[i], shapes[j], position[j])
            if now and not touching[(i, j)]:
                velocity[i], velocity[j] = velocity[j], velocity[i]
                collisions.append(Collision(frame, i, j))
            touching[(i, j)] = now
        positions_out.append(_copy(position))
        velocities_out.append(_copy(velocity))
    shape_TN2 = (num_frames, len(shapes), 2)
    return Simulation(frame_size, shapes, np.array(positions_out, np.int64).reshape(shape_TN2),
                      np.array(velocities_out, np.int64).reshape(shape_TN2), tuple(wall_hits),
                      tuple(collisions))


def _copy(rows: list[list[int]]) -> list[list[int]]:
    return [list(row) for row in rows]


def render(simulation: Simulation) -> np.ndarray:
    """uint8 RGB frames `[T, H, W, 3]`: the shapes (later ones on top) on a dark background."""
    size = simulation.frame_size
    frames = np.empty((simulation.num_frames, size, size, 3), np.uint8)
    frames[:] = BACKGROUND
    for index, shape in enumerate(simulation.shapes):
        mask, colour = sprite(shape.kind, shape.size), np.array(PALETTE[shape.colour], np.uint8)
        for frame in range(simulation.num_frames):
            x, y = simulation.positions[frame, index]
            frames[frame, y:y + shape.size, x:x + shape.size][mask] = colour
    return frames


def _random_velocity(rng: np.random.Generator, speed: tuple[int, int]) -> list[int]:
    """A velocity whose main component is in `speed` and whose other one is strictly smaller."""
    main = int(rng.integers(speed[0], speed[1] + 1)) * int(rng.choice((-1, 1)))
    other = int(rng.integers(-(abs(main) - 1), abs(main)))
    return [main, other] if rng.random() < 0.5 else [other, main]


def _random_simulation(rng: np.random.Generator, config: SyntheticWorldConfig,
                       shapes: tuple[Shape, ...]) -> Simulation | None:
    """One draw of non-overlapping start positions and velocities, simulated; None if the
    shapes could not be placed apart."""
    positions: list[list[int]] = []
    for shape in shapes:
        for _ in range(100):
            xy = [int(v) for v in rng.integers(0, config.frame_size - shape.size + 1, size=2)]
            if not any(shapes_overlap(shape, xy, other, other_xy)
                       for other, other_xy in zip(shapes, positions)):
                positions.append(xy)
                break
        else:
            return None
    velocities = [_random_velocity(rng, config.speed) for _ in shapes]
    return simulate(shapes, positions, velocities, config.num_frames, config.frame_size)


def _checks(simulation: Simulation, want_collision: bool | None) -> dict[str, bool]:
    """What makes a draw answer every question cleanly (see `make_video`)."""
    return {
        "clear_start": not any(h.frame == 1 for h in simulation.wall_hits) and
                       not any(c.frame == 1 for c in simulation.collisions),
        "unique_first_wall_hit": simulation.first_wall_hitter() is not None,
        "collision_target": want_collision is None or bool(simulation.collisions) == want_collision,
    }


# ----------------------------------------------------------------------------------------------
# Captions and questions


@dataclasses.dataclass(frozen=True)
class QA:
    """A question, its answer and the fixed answer set it comes from (chance = 1/len)."""

    question: str
    answer: str
    candidates: tuple[str, ...]
    kind: str

    @property
    def chance(self) -> float:
        """Accuracy of guessing uniformly among the candidates."""
        return 1.0 / len(self.candidates)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (candidates as a list)."""
        return {"question": self.question, "answer": self.answer,
                "candidates": list(self.candidates), "kind": self.kind}


def caption(simulation: Simulation) -> str:
    """One clause per shape: its starting direction and its bounces and collisions in order,
    e.g. `A red square moves right and bounces off the right wall; a blue circle moves down.`"""
    clauses = []
    for index, shape in enumerate(simulation.shapes):
        events: list[tuple[int, str]] = [
            (hit.frame, f"bounces off the {hit.wall} wall")
            for hit in simulation.wall_hits if hit.shape == index]
        for hit in simulation.collisions:
            if index in (hit.first, hit.second):
                other = simulation.shapes[hit.second if index == hit.first else hit.first]
                events.append((hit.frame, f"collides with the {other.name}"))
        events.sort(key=lambda event: event[0])  # stable: a bounce before a same-frame collision
        clause = f"a {shape.name} moves {direction_word(simulation.velocities[0, index])}"
        if events:
            clause += " and " + ", then ".join(text for _, text in events)
        clauses.append(clause)
    text = "; ".join(clauses) + "."
    return text[0].upper() + text[1:]


# What each question kind needs from the video: one frame (what is there) or time (what happens).
QUESTION_KINDS: dict[str, str] = {
    "count": "one frame",
    "colour_present": "one frame",
    "shape_of_colour": "one frame",
    "direction": "time",
    "first_wall_side": "time",
    "first_wall_colour": "time",
    "collision": "time",
}


def make_questions(simulation: Simulation, rng: np.random.Generator,
                   config: SyntheticWorldConfig) -> tuple[list[QA], list[str]]:
    """Question/answer pairs about `simulation` and the kinds that could not be asked.

    One-frame kinds (any single frame answers them): `count` (how many shapes),
    `colour_present` (is there a shape of a colour: yes for a colour drawn from the video's,
    no for one drawn from the others, each half the time) and `shape_of_colour` (is the
    {colour} shape a square or a circle). Kinds that need time: `direction` (a shape's first
    step), `first_wall_side`, `first_wall_colour` and `collision` (two or more shapes).

    Text priors cannot answer them: every kind's answers are balanced over the world (counts,
    kinds, directions and walls by symmetry of the draws, yes/no by construction), and the
    question's words name nothing that predicts its answer (one text for every answer of
    `count`, `first_wall_colour` and `collision`; the colour or shape a question names is drawn
    independently of the answer). A kind is skipped when its answer is not well defined (no
    wall hit, a tie, a bounce in the first step).
    """
    shapes, count = simulation.shapes, len(simulation.shapes)
    checks = _checks(simulation, None)
    qa: list[QA] = []
    skipped: list[str] = []
    numbers = NUMBER_WORDS[config.min_shapes - 1:config.max_shapes]
    if len(numbers) >= 2:
        qa.append(QA("How many shapes are there?", NUMBER_WORDS[count - 1], numbers, "count"))
    else:
        skipped.append("count")
    present = [shape.colour for shape in shapes]
    absent = [colour for colour in config.colours if colour not in present]
    if absent and rng.random() < 0.5:
        colour, answer = absent[int(rng.integers(len(absent)))], "no"
    else:
        colour, answer = present[int(rng.integers(count))], "yes"
    qa.append(QA(f"Is there a {colour} shape?", answer, YES_NO, "colour_present"))
    if len(config.kinds) > 1:
        subject = shapes[int(rng.integers(count))]
        qa.append(QA(f"Is the {subject.colour} shape a {' or a '.join(config.kinds)}?", subject.kind,
                     tuple(config.kinds), "shape_of_colour"))
    else:
        skipped.append("shape_of_colour")
    subject_index = int(rng.integers(count))
    if checks["clear_start"]:
        qa.append(QA(f"Which way does the {shapes[subject_index].name} move at the start?",
                     direction_word(simulation.velocities[0, subject_index]), DIRECTIONS, "direction"))
    else:
        skipped.append("direction")
    sided = [i for i in range(count) if len(simulation.first_walls(i)) == 1]
    if sided:
        shape = sided[int(rng.integers(len(sided)))]
        qa.append(QA(f"Which wall does the {shapes[shape].name} hit first?",
                     simulation.first_walls(shape)[0], WALLS, "first_wall_side"))
    else:
        skipped.append("first_wall_side")
    first = simulation.first_wall_hitter()
    if first is None or count == 1:
        skipped.append("first_wall_colour")
    else:
        # Candidates are the video's own colours: which ones are there is one frame's
        # information, which of them hits first needs time (chance 1/count).
        qa.append(QA("What colour is the shape that hits a wall first?", shapes[first].colour,
                     tuple(present), "first_wall_colour"))
    if count > 1:
        qa.append(QA("Do any two shapes collide?", "yes" if simulation.collisions else "no",
                     YES_NO, "collision"))
    else:
        skipped.append("collision")
    return qa, skipped


@dataclasses.dataclass(frozen=True)
class Video:
    """One generated video: frames uint8 `[T, H, W, 3]`, its caption, questions and state."""

    index: int
    split: str
    frames: np.ndarray
    caption: str
    qa: list[QA]
    states: Simulation


def make_video(config: SyntheticWorldConfig, index: int, split: str = "train") -> tuple[Video, dict[str, int]]:
    """Video `index` of the world and counts of what its draws missed.

    Initial states are redrawn (up to `max_attempts`) until the first step is free of bounces
    and collisions, exactly one shape hits a wall first, and, with two or more shapes, shapes
    collide or not as drawn for this video (probability `collision_fraction`). The draw meeting
    most of these is kept; each missed one is counted in the returned dict.
    """
    rng = np.random.default_rng([config.seed, 0, index])
    count = int(rng.integers(config.min_shapes, config.max_shapes + 1))
    colours = rng.choice(len(config.colours), size=count, replace=False)
    shapes = tuple(Shape(config.colours[int(c)], config.kinds[int(rng.integers(len(config.kinds)))],
                         int(rng.integers(config.shape_size[0], config.shape_size[1] + 1)))
                   for c in colours)
    want_collision = bool(rng.random() < config.collision_fraction) if count > 1 else None
    best, best_checks = None, None
    for _ in range(config.max_attempts):
        simulation = _random_simulation(rng, config, shapes)
        if simulation is None:
            continue
        checks = _checks(simulation, want_collision)
        if best is None or sum(checks.values()) > sum(best_checks.values()):
            best, best_checks = simulation, checks
        if all(checks.values()):
            break
    if best is None:
        raise RuntimeError(f"synthetic video {index}: could not place {count} shapes apart in "
                           f"{config.max_attempts} attempts; lower shape_size or max_shapes")
    qa, skipped = make_questions(best, rng, config)
    stats = {f"missed_{name}": int(not ok) for name, ok in best_checks.items()}
    stats.update({f"skipped_question_{kind}": 1 for kind in skipped})
    return Video(index, split, render(best), caption(best), qa, best), stats


# ----------------------------------------------------------------------------------------------
# The world and its exports


@dataclasses.dataclass(frozen=True)
class World:
    """Everything `generate_world` made; `stats` counts draws that missed a balance or
    well-posedness target and questions that could not be asked."""

    config: SyntheticWorldConfig
    videos: list[Video]
    documents: list[PasskeyDocument]
    stats: dict[str, int]

    def videos_in(self, split: str) -> list[Video]:
        """The videos of `split` (`train` or `held_out`)."""
        _check_split(split)
        return [video for video in self.videos if video.split == split]

    def documents_in(self, split: str) -> list[PasskeyDocument]:
        """The documents of `split` (`train` or `held_out`)."""
        _check_split(split)
        return [document for document in self.documents if document.split == split]


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _split_of(index: int, total: int, held_out_fraction: float) -> str:
    """The last `round(fraction * total)` items are held out."""
    return "held_out" if index >= total - int(round(held_out_fraction * total)) else "train"


def generate_world(config: SyntheticWorldConfig) -> World:
    """Validates `config` and generates its videos and documents (deterministic for the seed)."""
    config.validate()
    videos: list[Video] = []
    stats: dict[str, int] = {}
    for index in range(config.num_videos):
        video, video_stats = make_video(
            config, index, _split_of(index, config.num_videos, config.held_out_fraction))
        videos.append(video)
        for key, value in video_stats.items():
            stats[key] = stats.get(key, 0) + value
    documents = []
    for index in range(config.num_documents):
        rng = np.random.default_rng([config.seed, 1, index])
        length = ({"num_chars": config.document_chars} if config.document_chars is not None
                  else {"num_sentences": config.document_sentences})
        documents.append(make_passkey_document(
            rng, num_needles=config.needles_per_document, index=index,
            split=_split_of(index, config.num_documents, config.held_out_fraction), **length))
    return World(config, videos, documents, stats)


def write_videos(world: World, folder: str | Path, *, split: str | None = None,
                 suffix: str = ".mp4", fps: float = 4.0) -> Path:
    """Writes each video (of `split`, or all) with `lwm.data.video.write_video` and a manifest
    `{folder}/manifest.jsonl`; returns the manifest's path.

    Each line is `{"video": absolute path, "caption", "qa": [{question, answer, candidates,
    kind}], "split", "index"}`. `.mp4` (H.264, near lossless) or `.gif`/`.webm`; read GIFs back
    with `read_video(path, fps=fps)`, their writer merges identical consecutive frames.
    """
    from lwm.data.video import write_video

    _check_split(split)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.jsonl"
    temporary = manifest.with_name(manifest.name + ".tmp")
    with open(temporary, "w") as handle:
        for video in world.videos:
            if split is not None and video.split != split:
                continue
            path = write_video(folder / f"{video.split}_{video.index:05d}{suffix}", video.frames, fps)
            record = {"video": str(path.resolve()), "caption": video.caption,
                      "qa": [qa.to_dict() for qa in video.qa], "split": video.split,
                      "index": video.index}
            handle.write(json.dumps(record) + "\n")
    temporary.replace(manifest)
    return manifest


def passkey_chat_records(world: World, split: str | None = None) -> list[dict[str, Any]]:
    """Chat records (`lwm.data.chat` format) asking for each document's passkeys.

    The first user turn is the document, a newline and the question about its first needle;
    a multi-needle document asks about its other needles in later turns. Answers are
    `The special magic {city} number is: {digits}.`
    """
    _check_split(split)
    records = []
    for document in world.documents:
        if split is not None and document.split != split:
            continue
        messages = []
        for turn, needle in enumerate(document.needles):
            question = needle.question if turn else document.text + "\n" + needle.question
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": needle.sentence})
        records.append({"messages": messages})
    return records


def passkey_drill_records(seed: int, count: int, *, max_chars: int, needles: int = 1,
                          stream: int = 2) -> list[dict[str, Any]]:
    """Chat records for retrieval drills, asked as `passkey_chat_records` asks (the document,
    then one turn per needle, in a random order).

    Each document holds `needles` needles (distinct cities) in filler of a length drawn
    uniformly from [0, `max_chars`] characters. Short single-needle documents are the curriculum
    that makes retrieval form (`docs/demo.md`); several needles with little filler are
    key→value associative-recall drills, where only the city tells which digits to copy.
    `stream` keeps these draws apart from the world's own documents (stream 1).
    """
    records = []
    for index in range(count):
        rng = np.random.default_rng([seed, stream, index])
        chars = int(rng.integers(0, max_chars + 1))
        document = make_passkey_document(rng, num_needles=needles, num_chars=chars, index=index)
        order = rng.permutation(len(document.needles))
        messages = []
        for turn, position in enumerate(order):
            needle = document.needles[int(position)]
            question = needle.question if turn else document.text + "\n" + needle.question
            messages.append({"role": "user", "content": question})
            messages.append({"role": "assistant", "content": needle.sentence})
        records.append({"messages": messages})
    return records
