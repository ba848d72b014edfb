"""Chat and video question answering with LWM's chat template and a persistent KV cache.

The first turn renders `<s>You are a helpful assistant. USER: {question}\\n<vision>…</vision>
ASSISTANT:` (the vision span only when a video is given: its frames sampled uniformly,
VQ-encoded, each frame's codes followed by `<eof>`, the last by `<eov>`, all as vision
tokens). Later turns append ` USER: {question} ASSISTANT:` to the cache that already holds the
conversation, so the prefix is never recomputed; the answers the model generated stay in the
cache as the ids it produced, ended by `</s>` as in training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from lwm.config.data import ChatTemplateConfig, DataConfig
from lwm.data.chat import encode_conversation
from lwm.infer.cache import InferenceModel, KVCache
from lwm.infer.generate import check_text_vocabulary, split_generated
from lwm.infer.sampling import SamplingParams


def encode_video(vq_tokenizer: Any, path: str | Path, max_frames: int = 8) -> np.ndarray:
    """VQ codes `[frames, tokens_per_frame]` of up to `max_frames` frames sampled uniformly.

    Frames are resized (short side) and center-cropped to the tokenizer's resolution. Raises
    `lwm.data.video.VideoReadError` naming the file when it cannot be read.
    """
    from lwm.data.video import read_video

    frames = read_video(path, num_frames=max_frames, size=vq_tokenizer.resolution)
    codes = vq_tokenizer.encode(frames)
    return codes.reshape(len(codes), -1).astype(np.int32)


@dataclasses.dataclass
class Turn:
    """One exchange of a conversation."""

    question: str
    answer: str
    prompt_tokens: int
    answer_tokens: int
    stopped: bool


class ChatSession:
    """A conversation with one model; each `ask` appends to the same cache.

    `cache_size` positions are allocated at the start (rounded up to the cache granularity);
    None sizes the cache for the first turn alone. A turn that would not fit raises
    `ValueError` naming the size.
    """

    def __init__(
        self,
        engine: InferenceModel,
        tokenizer: Any,
        *,
        cache_size: int | None = 4096,
        max_new_tokens: int = 256,
        sampling: SamplingParams = SamplingParams(),
        template: ChatTemplateConfig = ChatTemplateConfig(),
        seed: int = 0,
        stop_ids: Sequence[int] | None = None,
    ):
        check_text_vocabulary(engine, tokenizer)
        self.stop_ids = tuple(stop_ids) if stop_ids is not None else (tokenizer.eos_id,)
        self.engine = engine
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.template = template
        self.key = jax.random.key(seed)
        self.cache: KVCache | None = (
            engine.init_cache(1, engine.round_cache_size(cache_size)) if cache_size is not None else None
        )
        self.turns: list[Turn] = []
        self._ended_with_eos = True
        config = engine.config
        self._data_config = DataConfig(chat=template, vision=config.vision)
        self._continuation_config = dataclasses.replace(
            self._data_config, chat=dataclasses.replace(template, system="", add_bos=False)
        )

    @property
    def cached_tokens(self) -> int:
        """Positions of the cache the conversation fills."""
        return 0 if self.cache is None else int(jax.device_get(self.cache.lengths)[0])

    def turn_tokens(self, question: str, vision_codes: np.ndarray | None = None) -> tuple[list[int], list[bool]]:
        """Ids and vision flags the next turn appends (the whole prompt on the first turn)."""
        vision = None
        if vision_codes is not None:
            if not self.engine.config.has_vision:
                raise ValueError("this model has no vision vocabulary (model.vision_vocab_size is 0): it cannot read video")
            vision = np.asarray(vision_codes).reshape(-1).tolist()
        message = [{"role": "user", "content": question, "vision": vision}]
        first = not self.turns
        config = self._data_config if first else self._continuation_config
        example = encode_conversation(message, self.tokenizer, config, self.engine.config.vocab_size,
                                      generation_prompt=True)
        ids = [int(token) for token in example.tokens]
        flags = [bool(flag) for flag in example.is_vision]
        if not first and not self._ended_with_eos:
            # The previous answer was cut (max_new_tokens or another stop id): close it with </s>
            # as the training data does.
            ids, flags = [self.tokenizer.eos_id] + ids, [False] + flags
        return ids, flags

    def ask(self, question: str, vision_codes: np.ndarray | None = None) -> str:
        """Appends the question (and optional video codes) and returns the generated answer."""
        ids, flags = self.turn_tokens(question, vision_codes)
        if self.cache is None:
            self.cache = self.engine.init_cache(1, self.engine.round_cache_size(len(ids) + self.max_new_tokens))
        needed = self.cached_tokens + len(ids) + self.max_new_tokens
        if needed > self.cache.size:
            raise ValueError(
                f"this turn needs {needed} cache positions but the cache holds {self.cache.size}: "
                f"start with a larger cache.max_len (the conversation so far uses {self.cached_tokens})"
            )
        self.cache, hidden = self.engine.prefill(self.cache, [ids], [flags], description="prefill turn")
        self.key, key = jax.random.split(self.key)
        self.cache, _, tokens = self.engine.decode(
            self.cache, hidden, max_new_tokens=self.max_new_tokens, sampling=self.sampling, key=key,
            stop_ids=self.stop_ids,
        )
        row = np.asarray(jax.device_get(tokens))[0]
        answer_ids, stopped = split_generated(row, self.stop_ids)
        self._ended_with_eos = stopped and int(row[len(answer_ids)]) == self.tokenizer.eos_id
        answer = self.tokenizer.decode(answer_ids).strip()
        self.turns.append(Turn(question, answer, len(ids), len(answer_ids), stopped))
        return answer


class LwmChatSession(ChatSession):
    """A `ChatSession` for LWM's released models (`lwm convert jax2lwm`): prompts are built by
    `lwm.data.lwm_layout` exactly as LWM's `vision_chat` builds them (BOS before each encoded
    piece, every frame ended by `<eov>`), with LWM's LLaMA tokenizer (`LwmTokenizer`)."""

    def turn_tokens(self, question: str, vision_codes: np.ndarray | None = None) -> tuple[list[int], list[bool]]:
        """Ids and vision flags the next turn appends (LWM's whole prompt on the first turn)."""
        from lwm.data.lwm_layout import chat_prompt, followup_prompt

        if vision_codes is not None and not self.engine.config.has_vision:
            raise ValueError("this model has no vision vocabulary (model.vision_vocab_size is 0): it cannot read video")
        if not self.turns:
            return chat_prompt(self.tokenizer, question, vision_codes)
        ids, flags = followup_prompt(self.tokenizer, question)
        if vision_codes is not None:
            raise ValueError("LWM's prompt holds the video in the first turn only")
        if not self._ended_with_eos:
            ids, flags = [self.tokenizer.eos_id] + ids, [False] + flags
        return ids, flags


def answer_video_question(
    engine: InferenceModel,
    tokenizer: Any,
    vq_tokenizer: Any,
    video: str | Path,
    question: str,
    *,
    max_frames: int = 8,
    max_new_tokens: int = 256,
    sampling: SamplingParams = SamplingParams(),
    template: ChatTemplateConfig = ChatTemplateConfig(),
    seed: int = 0,
) -> str:
    """Samples frames of `video`, VQ-encodes them and answers `question` about them."""
    codes = encode_video(vq_tokenizer, video, max_frames)
    if codes.shape[1] != engine.config.tokens_per_frame:
        raise ValueError(
            f"the VQ tokenizer gives {codes.shape[1]} codes per frame but the model expects "
            f"model.tokens_per_frame={engine.config.tokens_per_frame}"
        )
    session = ChatSession(engine, tokenizer, cache_size=None,
                          max_new_tokens=max_new_tokens, sampling=sampling, template=template, seed=seed)
    return session.ask(question, codes)


def chat_once(
    engine: InferenceModel,
    tokenizer: Any,
    questions: Sequence[str],
    **session_options: Any,
) -> list[str]:
    """Asks the questions in one conversation (each a follow-up of the previous)."""
    session = ChatSession(engine, tokenizer, **session_options)
    return [session.ask(question) for question in questions]
