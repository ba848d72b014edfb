"""Chat and video QA: the LWM prompt, follow-up turns appended to the cache, video frames
through the VQ tokenizer, vision generation end to end, and the written frame files."""

import numpy as np
import pytest

from lwm.infer.generate import generate_vision, split_generated, write_frames
from lwm.infer.video_qa import ChatSession, encode_video


def test_first_turn_is_the_lwm_prompt_with_vision_tokens(single_engine, tokenizer):
    session = ChatSession(single_engine, tokenizer, cache_size=256, max_new_tokens=8)
    codes = np.arange(8).reshape(2, 4) % 16
    ids, flags = session.turn_tokens("What moves?", codes)
    text_ids = [token for token, flag in zip(ids, flags) if not flag]
    assert tokenizer.decode(text_ids) == "You are a helpful assistant. USER: What moves?\n<vision></vision> ASSISTANT:"
    vision = [token for token, flag in zip(ids, flags) if flag]
    assert vision == [0, 1, 2, 3, 16, 4, 5, 6, 7, 17]  # codes, <eof>, codes, <eov>
    start = ids.index(tokenizer.vision_start_id)
    assert not flags[start] and flags[start + 1] and ids[start + 11] == tokenizer.vision_end_id


def test_follow_up_appends_to_the_conversation_and_matches_recomputing(single_engine, tokenizer):
    session = ChatSession(single_engine, tokenizer, cache_size=256, max_new_tokens=8)
    first_ids, first_flags = session.turn_tokens("Tell me about rivers.", np.arange(8) % 16)
    session.ask("Tell me about rivers.", np.arange(8) % 16)
    first = session.turns[0]
    assert session.cached_tokens == first.prompt_tokens + first.answer_tokens + 1  # the answer's </s>
    second_ids, second_flags = session.turn_tokens("And hills?")
    answer = session.ask("And hills?")
    # Only the new turn was prefilled: the slot still held the first turn and its answer.
    assert session.engine.prefix_hits == 1
    # The same conversation prefilled from scratch in one piece (the first answer as the ids the
    # model chose, closed by </s>) and decoded by the compiled loop gives the same second answer.
    history = session.ids[:first.prompt_tokens + first.answer_tokens + 1]
    assert history[:len(first_ids)] == first_ids and history[-1] == tokenizer.eos_id
    flags = first_flags + [False] * (first.answer_tokens + 1) + second_flags
    cache = single_engine.init_cache(1, 256)
    cache, hidden = single_engine.prefill(cache, [history + second_ids], [flags])
    _, _, tokens = single_engine.decode(cache, hidden, max_new_tokens=8, stop_ids=[tokenizer.eos_id])
    second_answer_ids, _ = split_generated(np.asarray(tokens)[0], [tokenizer.eos_id])
    assert tokenizer.decode(second_answer_ids).strip() == answer


def test_a_turn_that_does_not_fit_names_the_cache_size(single_engine, tokenizer):
    from lwm.errors import LwmError

    session = ChatSession(single_engine, tokenizer, cache_size=256, max_new_tokens=8)
    with pytest.raises(LwmError, match="cache holds 256"):
        session.ask("This question is far too long for the cache. " * 40)


def test_video_frames_become_codes(vq_dir, clip_path):
    from lwm.model.vqgan_convert import load_vq_tokenizer

    vq = load_vq_tokenizer(vq_dir)
    codes = encode_video(vq, clip_path, max_frames=4)
    assert codes.shape == (4, 4) and codes.dtype == np.int32
    assert codes.min() >= 0 and codes.max() < 16


def test_generate_vision_returns_frames_of_codes(single_engine, tokenizer):
    codes = generate_vision(single_engine, tokenizer, "a red square", num_frames=2, seed=3)
    assert codes.shape == (1, 2, 4)
    assert codes.min() >= 0 and codes.max() < 16


def test_frames_are_written_as_png_gif_and_mp4(tmp_path):
    from PIL import Image

    from lwm.data.video import read_video

    frames = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 3)).astype(np.uint8)
    written = write_frames(frames, tmp_path / "out.png")
    assert [path.name for path in written] == ["out_000.png", "out_001.png", "out_002.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(written[1])), frames[1])
    assert write_frames(frames[:1], tmp_path / "one.png") == [tmp_path / "one.png"]
    assert len(read_video(write_frames(frames, tmp_path / "out.gif", fps=4)[0], fps=4)) == 3
    assert len(read_video(write_frames(frames, tmp_path / "out.mp4", fps=4)[0])) == 3
    with pytest.raises(ValueError, match="unsupported suffix"):
        write_frames(frames, tmp_path / "out.bmp")
