"""The synthetic world: determinism, physics invariants, questions that match the simulation,
needles at the requested depth, splits and the exports (video manifest, passkey chat)."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lwm.config import ConfigError
from lwm.config.synthetic import PALETTE, SyntheticWorldConfig
from lwm.data.synthetic import (
    BACKGROUND,
    CITIES,
    QUESTION_KINDS,
    Collision,
    Shape,
    WallHit,
    filler_sentences,
    generate_world,
    make_passkey_document,
    passkey_chat_records,
    passkey_drill_records,
    simulate,
    write_videos,
)

# Several sizes at once: small and large frames, 1-3 shapes, short and long videos.
CONFIGS = {
    "small": SyntheticWorldConfig(seed=3, num_videos=24, num_documents=4, document_sentences=20),
    "large": SyntheticWorldConfig(seed=5, num_videos=12, num_frames=16, frame_size=64,
                                  shape_size=(12, 18), speed=(2, 6), num_documents=0),
    "pairs": SyntheticWorldConfig(seed=7, num_videos=40, num_frames=12, min_shapes=2,
                                  max_shapes=2, num_documents=0),
}


@pytest.fixture(scope="module")
def worlds():
    return {name: generate_world(config) for name, config in CONFIGS.items()}


def all_videos(worlds):
    return [video for world in worlds.values() for video in world.videos]


def mask(shape: Shape, xy, frame_size: int) -> np.ndarray:
    """The shape's pixels in the frame, computed here independently of the module's sprites."""
    rows, cols = np.mgrid[:frame_size, :frame_size]
    x, y = int(xy[0]), int(xy[1])
    inside = (cols >= x) & (cols < x + shape.size) & (rows >= y) & (rows < y + shape.size)
    if shape.kind == "circle":
        centre = (shape.size - 1) / 2
        inside &= (cols - x - centre) ** 2 + (rows - y - centre) ** 2 <= (shape.size / 2) ** 2
    return inside


def wall_contacts(states) -> list[tuple[int, int, str]]:
    """(frame, shape, wall) re-derived from the states: a step from frame t-1 that would end on
    or beyond a wall the shape is moving towards."""
    found = []
    for frame in range(1, states.num_frames):
        for index, shape in enumerate(states.shapes):
            high = states.frame_size - shape.size
            for axis, (low_wall, high_wall) in enumerate((("left", "right"), ("top", "bottom"))):
                step = states.velocities[frame - 1, index, axis]
                raw = states.positions[frame - 1, index, axis] + step
                if step < 0 and raw <= 0:
                    found.append((frame, index, low_wall))
                elif step > 0 and raw >= high:
                    found.append((frame, index, high_wall))
    return found


# ---------------------------------------------------------------------------------------------
# Config


def test_default_config_validates():
    SyntheticWorldConfig().validate()
    for config in CONFIGS.values():
        config.validate()


def test_config_loads_from_yaml_with_overrides(tmp_path):
    from lwm.config import load_config

    path = tmp_path / "world.yaml"
    path.write_text("seed: 3\nshape_size: [6, 10]\nspeed: [1, 2]\ncolours: [red, blue, green]\n"
                    "document_chars: 2000\n")
    config = load_config(SyntheticWorldConfig, path, ["--num_frames", "12"])
    assert (config.seed, config.shape_size, config.speed, config.num_frames) == (3, (6, 10), (1, 2), 12)
    assert config.colours == ("red", "blue", "green") and config.document_chars == 2000
    with pytest.raises(ConfigError, match="speed max 7"):
        load_config(SyntheticWorldConfig, path, ["--speed", "[1, 7]"])


@pytest.mark.parametrize("changes,words", [
    ({"frame_size": 16, "shape_size": (8, 12)}, ["frame_size=16", "too small", "shape_size"]),
    ({"shape_size": (2, 8)}, ["shape_size min 2", "frame_size/8"]),
    ({"speed": (1, 8)}, ["speed max 8", "pass through"]),
    ({"max_shapes": 4, "frame_size": 32, "shape_size": (8, 16)}, ["too small", "4 shapes"]),
    ({"colours": ("red", "pink", "blue")}, ["colours", "distinct names"]),
    ({"colours": ("red", "blue")}, ["2 colours", "max_shapes=3"]),
    ({"kinds": ("triangle",)}, ["kinds"]),
    ({"num_frames": 1}, ["num_frames=1"]),
    ({"held_out_fraction": 1.0}, ["held_out_fraction=1.0"]),
    ({"needles_per_document": 0}, ["needles_per_document=0"]),
    ({"document_chars": 0}, ["document_chars=0"]),
    ({"frame_size": 33}, ["frame_size=33", "even"]),
])
def test_bad_configs_name_the_field(changes, words):
    config = dataclasses.replace(SyntheticWorldConfig(), **changes)
    with pytest.raises(ConfigError) as error:
        config.validate()
    for word in words:
        assert word in str(error.value)
    with pytest.raises(ConfigError):
        generate_world(config)


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_world_and_other_seeds_differ(worlds):
    config = CONFIGS["small"]
    again = generate_world(config)
    first = worlds["small"]
    for a, b in zip(first.videos, again.videos):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.states.positions, b.states.positions)
        assert (a.caption, a.qa) == (b.caption, b.qa)
    assert first.documents == again.documents
    other = generate_world(dataclasses.replace(config, seed=4))
    assert not all(np.array_equal(a.frames, b.frames) for a, b in zip(first.videos, other.videos))
    assert [d.text for d in first.documents] != [d.text for d in other.documents]
    # Item i does not depend on how many items there are.
    fewer = generate_world(dataclasses.replace(config, num_videos=5, num_documents=2))
    for a, b in zip(fewer.videos, first.videos):
        np.testing.assert_array_equal(a.frames, b.frames)
    assert [d.text for d in fewer.documents] == [d.text for d in first.documents[:2]]


# ---------------------------------------------------------------------------------------------
# Physics


def test_frames_show_the_states(worlds):
    for world in worlds.values():
        size = world.config.frame_size
        for video in world.videos:
            states = video.states
            assert video.frames.dtype == np.uint8
            assert video.frames.shape == (world.config.num_frames, size, size, 3)
            assert world.config.min_shapes <= len(states.shapes) <= world.config.max_shapes
            assert len({shape.colour for shape in states.shapes}) == len(states.shapes)
            for frame in range(states.num_frames):
                covered = np.zeros((size, size), bool)
                # Later shapes are drawn on top: check each shape where none above covers it.
                for index in reversed(range(len(states.shapes))):
                    shape = states.shapes[index]
                    xy = states.positions[frame, index]
                    assert 0 <= xy.min() and xy.max() <= size - shape.size  # inside the frame
                    pixels = mask(shape, xy, size)
                    visible = pixels & ~covered
                    assert np.all(video.frames[frame][visible] == PALETTE[shape.colour])
                    covered |= pixels
                assert np.all(video.frames[frame][~covered] == BACKGROUND)


def test_motion_bounces_and_collisions_follow_the_rules(worlds):
    for video in all_videos(worlds):
        states = video.states
        recorded_walls = [(hit.frame, hit.shape, hit.wall) for hit in states.wall_hits]
        assert recorded_walls == wall_contacts(states)
        size = states.frame_size
        collided = {(c.frame, c.first) for c in states.collisions} | \
                   {(c.frame, c.second) for c in states.collisions}
        for frame in range(1, states.num_frames):
            for index in range(len(states.shapes)):
                before, after = states.velocities[frame - 1, index], states.velocities[frame, index]
                if (frame, index) in collided:
                    continue
                for axis, walls in enumerate((("left", "right"), ("top", "bottom"))):
                    hit = any((frame, index, wall) in recorded_walls for wall in walls)
                    # A bounce reverses the component; otherwise velocity is constant.
                    assert after[axis] == (-before[axis] if hit else before[axis])
                    if not hit:
                        moved = states.positions[frame, index, axis] - \
                            states.positions[frame - 1, index, axis]
                        assert moved == before[axis]
        # Collisions: exactly the frames where two shapes' pixels start to overlap.
        expected = []
        for frame in range(1, states.num_frames):
            for i in range(len(states.shapes)):
                for j in range(i + 1, len(states.shapes)):
                    now = np.any(mask(states.shapes[i], states.positions[frame, i], size) &
                                 mask(states.shapes[j], states.positions[frame, j], size))
                    then = np.any(mask(states.shapes[i], states.positions[frame - 1, i], size) &
                                  mask(states.shapes[j], states.positions[frame - 1, j], size))
                    if now and not then:
                        expected.append(Collision(frame, i, j))
        assert list(states.collisions) == expected
    # The worlds do contain bounces and collisions.
    assert sum(len(v.states.wall_hits) for v in all_videos(worlds)) > 20
    assert sum(len(v.states.collisions) for v in all_videos(worlds)) > 5


def test_hand_made_bounce_and_head_on_collision():
    square = Shape("red", "square", 8)
    states = simulate([square], [[2, 10]], [[-3, 1]], num_frames=3, frame_size=32)
    assert states.wall_hits == (WallHit(1, 0, "left"),)
    assert states.positions[:, 0].tolist() == [[2, 10], [1, 11], [4, 12]]
    assert states.velocities[1, 0].tolist() == [3, 1]
    circle = Shape("blue", "circle", 8)
    states = simulate([square, circle], [[4, 12], [20, 12]], [[2, 0], [-2, 0]], 6, 32)
    assert states.collisions == (Collision(3, 0, 1),)
    assert states.velocities[3].tolist() == [[-2, 0], [2, 0]]
    gap = states.positions[:, 1, 0] - states.positions[:, 0, 0]
    assert gap[-1] > gap[3]  # they separate after the collision
    with pytest.raises(ValueError, match="not inside"):
        simulate([square], [[30, 0]], [[1, 0]], 2, 32)


# ---------------------------------------------------------------------------------------------
# Captions and questions


def test_every_answer_is_a_candidate_and_matches_the_simulation(worlds):
    kinds_seen = set()
    for world in worlds.values():
        for video in world.videos:
            states, frames = video.states, video.frames
            for qa in video.qa:
                kinds_seen.add(qa.kind)
                assert qa.answer in qa.candidates
                assert len(set(qa.candidates)) == len(qa.candidates) >= 2
                assert qa.chance == pytest.approx(1 / len(qa.candidates))
            by_kind = {qa.kind: qa for qa in video.qa}
            colours = {tuple(c) for c in frames[0].reshape(-1, 3)} - {BACKGROUND}
            words = ("one", "two", "three", "four", "five", "six")
            if world.config.min_shapes < world.config.max_shapes:
                assert by_kind["count"].answer == words[len(colours) - 1]
            else:  # one possible answer: not asked
                assert "count" not in by_kind
            contacts = wall_contacts(states)
            if "direction" in by_kind:
                qa = by_kind["direction"]
                index = next(i for i, s in enumerate(states.shapes) if f"the {s.name} " in qa.question)
                dx, dy = states.positions[1, index] - states.positions[0, index]
                seen = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else \
                    ("down" if dy > 0 else "up")
                assert qa.answer == seen
            if "first_wall_colour" in by_kind:
                first_frame = contacts[0][0]
                hitters = {shape for frame, shape, _ in contacts if frame == first_frame}
                assert len(hitters) == 1
                qa = by_kind["first_wall_colour"]
                assert qa.answer == states.shapes[hitters.pop()].colour
                # Among the video's own colours: only time tells which one hits first.
                assert sorted(qa.candidates) == sorted(shape.colour for shape in states.shapes)
            # One-frame kinds, read from the first frame's pixels.
            qa = by_kind["colour_present"]
            colour = next(name for name in PALETTE if f"a {name} shape" in qa.question)
            assert qa.answer == ("yes" if PALETTE[colour] in colours else "no")
            qa = by_kind["shape_of_colour"]
            subject = next(s for s in states.shapes if f"the {s.colour} shape" in qa.question)
            assert qa.answer == subject.kind and qa.candidates == ("square", "circle")
            if "first_wall_side" in by_kind:
                qa = by_kind["first_wall_side"]
                index = next(i for i, s in enumerate(states.shapes) if f"the {s.name} " in qa.question)
                mine = [(frame, wall) for frame, shape, wall in contacts if shape == index]
                assert [wall for frame, wall in mine if frame == mine[0][0]] == [qa.answer]
            if len(states.shapes) > 1:
                assert by_kind["collision"].answer == ("yes" if states.collisions else "no")
            else:
                assert "collision" not in by_kind and "first_wall_colour" not in by_kind
            # The caption names every shape and every bounce.
            for shape in states.shapes:
                assert f"{shape.name} moves" in video.caption
            assert video.caption.count("bounces off the") == len(states.wall_hits)
            assert video.caption.count("collides with") == 2 * len(states.collisions)
    assert kinds_seen == set(QUESTION_KINDS) == {
        "count", "colour_present", "shape_of_colour", "direction", "first_wall_colour",
        "first_wall_side", "collision"}


def test_text_alone_cannot_answer_the_questions():
    """The best text-only predictor (the most common answer of each exact question text in the
    training videos, else of the kind) scores about chance on held-out videos, for every kind."""
    world = generate_world(SyntheticWorldConfig(seed=11, num_videos=600, num_frames=6, num_documents=0,
                                                held_out_fraction=0.5))
    by_text, by_kind = {}, {}
    for video in world.videos_in("train"):
        for qa in video.qa:
            by_text.setdefault(qa.question, Counter())[qa.answer] += 1
            by_kind.setdefault(qa.kind, Counter())[qa.answer] += 1
    for kind, answers in by_kind.items():
        candidates = len(_candidates_of(world, kind))
        # Balanced answers: no answer of a kind is much more common than the others.
        assert max(answers.values()) / sum(answers.values()) <= 1 / candidates + 0.12, (kind, answers)
    scores, chances = {}, {}
    for video in world.videos_in("held_out"):
        for qa in video.qa:
            table = by_text.get(qa.question) or by_kind[qa.kind]
            best = max((a for a in qa.candidates), key=lambda a: (table.get(a, 0), a))
            scores.setdefault(qa.kind, []).append(best == qa.answer)
            chances.setdefault(qa.kind, []).append(qa.chance)
    for kind in scores:
        assert np.mean(scores[kind]) <= np.mean(chances[kind]) + 0.08, (kind, np.mean(scores[kind]))


def _candidates_of(world, kind):
    """The candidate set of `kind` (the largest seen: per-video sets are subsets of it)."""
    return max((qa.candidates for video in world.videos for qa in video.qa if qa.kind == kind), key=len)


def test_collision_answers_are_balanced_and_misses_counted(worlds):
    answers = [qa.answer for v in worlds["pairs"].videos for qa in v.qa if qa.kind == "collision"]
    assert len(answers) == 40
    assert 0.3 <= answers.count("yes") / len(answers) <= 0.7
    for world in worlds.values():
        assert all(isinstance(value, int) and value >= 0 for value in world.stats.values())


# ---------------------------------------------------------------------------------------------
# Passkey documents


def check_needles(document, depths):
    text = document.text
    assert text.count("special magic") == len(document.needles)
    assert len({n.city for n in document.needles}) == len(document.needles)
    longest = max(len(s) for s in re.split(r"(?<=\.) ", text)) + 1
    for needle in document.needles:
        assert text.count(needle.sentence) == 1 and text.count(needle.number) == 1
        assert re.fullmatch(r"[1-9]\d{6}", needle.number)
        assert text[needle.offset:needle.offset + len(needle.sentence)] == needle.sentence
        assert needle.offset == 0 or text[needle.offset - 2:needle.offset] == ". "
        assert needle.depth in depths
        allowed = longest + sum(len(n.sentence) + 1 for n in document.needles)
        assert abs(needle.offset - needle.depth * len(text)) <= allowed


@pytest.mark.parametrize("depth", [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
def test_single_needle_at_its_depth(depth):
    document = make_passkey_document(np.random.default_rng(0), depths=[depth], num_sentences=300)
    check_needles(document, [depth])
    # The nearest sentence boundary to the depth, measured in characters of filler.
    filler = len(document.text) - len(document.needles[0].sentence) - 1
    longest = max(len(s) for s in re.split(r"(?<=\.) ", document.text)) + 1
    assert abs(document.offset - depth * filler) <= longest / 2 + 1
    if depth == 0.0:
        assert document.offset == 0
    if depth == 1.0:
        assert document.text.endswith(document.needles[0].sentence)
    assert (document.city, document.number, document.offset) == \
        (document.needles[0].city, document.needles[0].number, document.needles[0].offset)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), count=st.integers(1, 8), chars=st.integers(200, 4000))
def test_multi_needle_documents(seed, count, chars):
    document = make_passkey_document(np.random.default_rng(seed), num_needles=count,
                                     num_chars=chars)
    assert len(document.needles) == count
    check_needles(document, [n.depth for n in document.needles])
    assert len({n.depth for n in document.needles}) == count
    assert [n.offset for n in document.needles] == sorted(n.offset for n in document.needles)
    # About `chars` long, unless the needles alone are longer (one filler sentence is kept).
    longest = max(len(s) for s in re.split(r"(?<=\.) ", document.text)) + 1
    needles = sum(len(n.sentence) + 1 for n in document.needles)
    assert 0 <= len(document.text) - max(chars, needles) <= longest


def test_filler_is_varied_and_never_looks_like_a_needle():
    sentences = filler_sentences(np.random.default_rng(1), num_sentences=400)
    text = " ".join(sentences)
    assert len(set(sentences)) > 300
    assert not re.search(r"\d|magic", text)
    assert not any(city in text for city in CITIES)
    assert len(filler_sentences(np.random.default_rng(1), num_chars=1000)) >= 10


# ---------------------------------------------------------------------------------------------
# World, splits and exports


def test_splits_hold_out_the_configured_share(worlds):
    world = worlds["small"]
    held = world.videos_in("held_out")
    assert len(held) == round(0.1 * 24) and [v.index for v in held] == [22, 23]
    assert len(world.videos_in("train")) == 22
    assert [d.split for d in world.documents] == ["train"] * 4  # round(0.4) = 0
    with pytest.raises(ValueError, match="unknown split"):
        world.videos_in("test")


def test_video_manifest_round_trips(worlds, tmp_path):
    from lwm.data.video import read_video

    world = worlds["small"]
    manifest = write_videos(world, tmp_path / "videos", split="held_out")
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [r["index"] for r in records] == [22, 23]
    for record in records:
        video = world.videos[record["index"]]
        assert record["caption"] == video.caption and record["split"] == "held_out"
        assert record["qa"] == [qa.to_dict() for qa in video.qa]
        frames = read_video(record["video"])
        assert frames.shape == video.frames.shape
        # H.264 in yuv420p blurs colour at shape edges; the picture must still match closely.
        assert np.abs(frames.astype(int) - video.frames).mean() < 12


def test_passkey_chat_records_train_with_the_chat_template(tokenizer):
    from lwm.config.data import DataConfig
    from lwm.data.chat import encode_chat_record

    world = generate_world(SyntheticWorldConfig(num_videos=0, num_documents=3,
                                                document_sentences=10, needles_per_document=2))
    records = passkey_chat_records(world)
    assert len(records) == 3
    for record, document in zip(records, world.documents):
        messages = record["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * 2
        first, second = document.needles
        assert messages[0]["content"] == f"{document.text}\nWhat is the special magic {first.city} number?"
        assert messages[1]["content"] == f"The special magic {first.city} number is: {first.number}."
        assert messages[2]["content"] == f"What is the special magic {second.city} number?"
        example = encode_chat_record(record, DataConfig(format="chat"), tokenizer, tokenizer.vocab_size)
        answer_text = tokenizer.decode(example.tokens[example.loss_mask.astype(bool)])
        assert first.number in answer_text and second.number in answer_text
        assert document.text[:50] not in answer_text
    assert passkey_chat_records(world, split="held_out") == []


def test_passkey_drills_ask_every_needle_once_and_answer_from_the_document():
    records = passkey_drill_records(4, 20, max_chars=60, needles=4, stream=3)
    lengths = []
    for record in records:
        messages = record["messages"]
        document = messages[0]["content"].split("\n")[0]
        asked = [m["content"].split("\n")[-1] for m in messages[0::2]]
        answers = [m["content"] for m in messages[1::2]]
        assert len(asked) == len(answers) == 4 == document.count("special magic")
        cities = [re.fullmatch(r"What is the special magic (\w+) number\?", q).group(1) for q in asked]
        assert len(set(cities)) == 4
        for city, answer in zip(cities, answers):
            # The answer is the needle sentence, word for word, found in the document.
            assert answer.startswith(f"The special magic {city} number is: ") and answer in document
        lengths.append(len(document))
    # Short documents of varying length, and a different stream draws different needles.
    assert max(lengths) < 400 and len(set(lengths)) > 5
    assert passkey_drill_records(4, 1, max_chars=60, needles=4, stream=2) != records[:1]
    single = passkey_drill_records(4, 30, max_chars=120)
    assert all(len(r["messages"]) == 2 for r in single)
    assert len({r["messages"][1]["content"] for r in single}) == 30
