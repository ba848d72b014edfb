"""Chat and video question answering with LWM's chat template and a persistent KV cache.

The first turn renders `<s>You are a helpful assistant. USER: {question}\\n<vision>…</vision>
ASSISTANT:` (the vision span only when a video is given: its frames sampled uniformly,
VQ-encoded, each frame's codes followed by `<eof>`, the last by `<eov>`, all as vision
tokens). Later turns append ` USER: {question} ASSISTANT:` to the conversation; the answers
the model generated stay in it as the ids it produced, each ended by `</s>` as in training.
Every turn is one request to `lwm.infer.engine.Engine` (one slot) whose prompt is the whole
conversation: the slot still holds it, so the engine's prefix reuse prefills only the new turn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lwm.config.data import ChatTemplateConfig, DataConfig
from lwm.data.chat import encode_conversation
from lwm.infer.cache import InferenceModel
from lwm.infer.engine import Engine
from lwm.infer.generate import check_text_vocabulary
from lwm.infer.requests import CacheOverflowError, Request
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
    """A conversation with one model; each `ask` appends a turn and answers it.

    `cache_size` positions (prompt turns and answers together, rounded up to the cache
    granularity) are allocated at the start; None sizes them for the first turn alone. A turn
    that would not fit raises `CacheOverflowError` naming the size. Turn `i` samples with seed
    `seed + i`.
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
        self.model = engine
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.sampling = sampling
        self.template = template
        self.seed = seed
        self.engine: Engine | None = None if cache_size is None else self._engine(cache_size)
        self.ids: list[int] = []  # the conversation so far, every answer ended by </s>
        self.flags: list[bool] = []
        self.turns: list[Turn] = []
        self._data_config = DataConfig(chat=template, vision=engine.config.vision)
        self._continuation_config = dataclasses.replace(
            self._data_config, chat=dataclasses.replace(template, system="", add_bos=False)
        )

    def _engine(self, positions: int) -> Engine:
        return Engine(self.model, slots=1, queue_size=1, slot_size=positions)

    @property
    def cached_tokens(self) -> int:
        """Tokens of the conversation so far (prompts and answers, each answer's `</s>` included)."""
        return len(self.ids)

    @property
    def cache_size(self) -> int | None:
        """Positions the conversation may fill (None until the first turn when sized by it)."""
        return None if self.engine is None else self.engine.slot_size

    def turn_tokens(self, question: str, vision_codes: np.ndarray | None = None) -> tuple[list[int], list[bool]]:
        """Ids and vision flags the next turn appends (the whole prompt on the first turn)."""
        vision = None
        if vision_codes is not None:
            if not self.model.config.has_vision:
                raise ValueError("this model has no vision vocabulary (model.vision_vocab_size is 0): it cannot read video")
            vision = np.asarray(vision_codes).reshape(-1).tolist()
        message = [{"role": "user", "content": question, "vision": vision}]
        config = self._data_config if not self.turns else self._continuation_config
        example = encode_conversation(message, self.tokenizer, config, self.model.config.vocab_size,
                                      generation_prompt=True)
        return [int(token) for token in example.tokens], [bool(flag) for flag in example.is_vision]

    def ask(self, question: str, vision_codes: np.ndarray | None = None) -> str:
        """Appends the question (and optional video codes) and returns the generated answer."""
        ids, flags = self.turn_tokens(question, vision_codes)
        prompt_ids, prompt_flags = self.ids + ids, self.flags + flags
        if self.engine is None:
            self.engine = self._engine(len(prompt_ids) + self.max_new_tokens)
        needed = len(prompt_ids) + self.max_new_tokens
        if needed > self.engine.slot_size:
            raise CacheOverflowError(
                f"this turn needs {needed} cache positions but the cache holds {self.engine.slot_size}: "
                f"start with a larger cache.max_len (the conversation so far uses {self.cached_tokens})"
            )
        request = Request(tuple(prompt_ids), tuple(prompt_flags), max_tokens=self.max_new_tokens,
                          sampling=self.sampling, seed=self.seed + len(self.turns), stop_ids=self.stop_ids)
        [completion] = self.engine.generate([request])
        answer_ids = list(completion.tokens)
        # The answer stays in the conversation as the ids chosen, closed by </s> as in training
        # (also when it was cut by max_new_tokens or ended by another stop id).
        self.ids = prompt_ids + answer_ids + [self.tokenizer.eos_id]
        self.flags = prompt_flags + [False] * (len(answer_ids) + 1)
        answer = self.tokenizer.decode(answer_ids).strip()
        self.turns.append(Turn(question, answer, len(ids), len(answer_ids), completion.finish_reason == "stop"))
        return answer


class LwmChatSession(ChatSession):
    """A `ChatSession` for LWM's released models (`lwm convert jax2lwm`): prompts are built by
    `lwm.data.lwm_layout` exactly as LWM's `vision_chat` builds them (BOS before each encoded
    piece, every frame ended by `<eov>`), with LWM's LLaMA tokenizer (`LwmTokenizer`)."""

    def turn_tokens(self, question: str, vision_codes: np.ndarray | None = None) -> tuple[list[int], list[bool]]:
        """Ids and vision flags the next turn appends (LWM's whole prompt on the first turn)."""
        from lwm.data.lwm_layout import chat_prompt, followup_prompt

        if vision_codes is not None and not self.model.config.has_vision:
            raise ValueError("this model has no vision vocabulary (model.vision_vocab_size is 0): it cannot read video")
        if not self.turns:
            return chat_prompt(self.tokenizer, question, vision_codes)
        ids, flags = followup_prompt(self.tokenizer, question)
        if vision_codes is not None:
            raise ValueError("LWM's prompt holds the video in the first turn only")
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
