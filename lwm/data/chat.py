"""Chat template: conversations → tokens with loss on assistant answers only.

The default (`data.chat`) reproduces LWM's prompt,
`<s>You are a helpful assistant. USER: {question}\\n<vision>…</vision> ASSISTANT: {answer}</s>`,
and repeats ` USER: … ASSISTANT: …</s>` for later turns. Loss covers each answer and the `</s>`
after it; the system text, questions, markers and vision spans carry none.

Text between special ids is encoded as one string so that tokens match what the tokenizer
gives the whole prompt (sentencepiece joins a leading space to the next word); the loss
boundary falls where the prompt's own encoding ends. If a tokenizer merges tokens across
that boundary (the prompt's ids are not a prefix of the joint ids), the pieces are encoded
separately instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lwm.config.data import ChatTemplateConfig, DataConfig
from lwm.data.store import TokenExample
from lwm.data.tokens import RecordProblem, TokenBuilder, TokenizerLike, check_text_ids, vision_span

ROLES = ("system", "user", "assistant")


def _encode_run(tokenizer: TokenizerLike, pieces: list[tuple[str, bool]]) -> list[tuple[list[int], bool]]:
    """Encodes consecutive text pieces jointly, keeping each piece's loss flag on its tokens."""
    if len(pieces) == 1:
        return [(list(tokenizer.encode(pieces[0][0])), pieces[0][1])]
    joint = list(tokenizer.encode("".join(text for text, _ in pieces)))
    result, done, prefix = [], 0, ""
    for text, loss in pieces[:-1]:
        prefix += text
        ids = list(tokenizer.encode(prefix))
        if joint[: len(ids)] != ids or len(ids) < done:
            return [(list(tokenizer.encode(text)), loss) for text, loss in pieces]
        result.append((joint[done: len(ids)], loss))
        done = len(ids)
    result.append((joint[done:], pieces[-1][1]))
    return result


class _Renderer:
    """Collects text pieces and id spans, encoding each run of text when an id span interrupts."""

    def __init__(self, tokenizer: TokenizerLike, text_vocab_size: int) -> None:
        self.tokenizer = tokenizer
        self.text_vocab_size = text_vocab_size
        self.builder = TokenBuilder()
        self.pending: list[tuple[str, bool]] = []

    def text(self, text: str, loss: bool) -> None:
        if text:
            self.pending.append((text, loss))

    def ids(self, ids: Any, is_vision: Any, loss: bool, *, content: bool = False) -> None:
        self.flush()
        self.builder.add(ids, is_vision, loss, content=content)

    def flush(self) -> None:
        if not self.pending:
            return
        for ids, loss in _encode_run(self.tokenizer, self.pending):
            checked = check_text_ids(ids, self.text_vocab_size, "tokenizer output for a chat turn")
            self.builder.add_text(checked, loss)
        self.pending = []

    def build(self) -> TokenExample:
        self.flush()
        return self.builder.build()


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise RecordProblem("bad_chat", "expected a non-empty list of {role, content} messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise RecordProblem("bad_chat", f"message {index}: expected an object with role and content")
        if message["role"] not in ROLES:
            raise RecordProblem("bad_chat", f"message {index}: role {message['role']!r} is not one of {ROLES}")
        if not isinstance(message["content"], str):
            raise RecordProblem("wrong_type", f"message {index}: content must be a string")
        if message["role"] == "system" and index != 0:
            raise RecordProblem("bad_chat", f"message {index}: a system message may only come first")
    turns = [m for m in messages if m["role"] != "system"]
    for index, message in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise RecordProblem(
                "bad_chat", f"turn {index} is {message['role']!r}, expected {expected!r}: turns must "
                            f"alternate user, assistant, … starting with user")
    return messages


def encode_conversation(
    messages: Sequence[dict[str, Any]],
    tokenizer: TokenizerLike,
    config: DataConfig,
    text_vocab_size: int,
    *,
    generation_prompt: bool = False,
) -> TokenExample:
    """Renders alternating user/assistant messages (optionally a leading system message).

    A message may carry `"vision": [flat VQ codes]`, placed after its text as in LWM. With
    `generation_prompt=True` the conversation must end on a user turn and the result ends with
    the assistant marker (the prompt for decoding); otherwise loss is on the assistant turns.
    """
    template: ChatTemplateConfig = config.chat
    last_role = messages[-1]["role"] if messages else None
    if generation_prompt and last_role != "user":
        raise ValueError(f"a generation prompt must end on a user turn, not {last_role!r}")
    renderer = _Renderer(tokenizer, text_vocab_size)
    if template.add_bos:
        renderer.ids([tokenizer.bos_id], False, False)
    system = template.system
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    renderer.text(system, False)
    for message in messages:
        if message["role"] == "user":
            renderer.text(template.user_prefix + message["content"], False)
            if message.get("vision") is not None:
                renderer.text(template.vision_separator, False)
                ids, is_vision = vision_span(
                    message["vision"], tokenizer=tokenizer, tokens_per_frame=config.tokens_per_frame,
                    codebook_size=config.codebook_size, what=config.vision_field)
                renderer.ids(ids, is_vision, False, content=True)
            renderer.text(template.assistant_prefix, False)
        else:
            renderer.text(template.answer_prefix + message["content"], True)
            if template.eos_after_answer:
                renderer.ids([tokenizer.eos_id], False, True)
    return renderer.build()


def encode_chat_record(
    record: dict[str, Any], config: DataConfig, tokenizer: TokenizerLike, text_vocab_size: int
) -> TokenExample:
    """A chat JSONL record → example; raises `RecordProblem` for a malformed conversation.

    A top-level `data.vision_field` in the record belongs to the first user turn.
    """
    if config.messages_field not in record:
        raise RecordProblem("missing_field", f"field {config.messages_field!r} is missing "
                                             f"(record has: {', '.join(list(record)[:8])})")
    messages = [dict(m) if isinstance(m, dict) else m for m in record[config.messages_field]] \
        if isinstance(record[config.messages_field], list) else record[config.messages_field]
    messages = _check_messages(messages)
    turns = [m for m in messages if m["role"] != "system"]
    if turns[-1]["role"] != "assistant":
        raise RecordProblem("bad_chat", "the conversation ends on a user turn: nothing to learn "
                                        "from its last question; end with an assistant answer")
    if not any(m["content"].strip() for m in turns if m["role"] == "assistant"):
        raise RecordProblem("empty_example", "every assistant answer is empty")
    if config.vision_field in record and record[config.vision_field] is not None:
        if any(m.get("vision") is not None for m in turns):
            raise RecordProblem("bad_chat", f"vision given both in field {config.vision_field!r} "
                                            f"and inside a message")
        turns[0]["vision"] = record[config.vision_field]
    return encode_conversation(messages, tokenizer, config, text_vocab_size)


def chat_prompt(
    question: str,
    tokenizer: TokenizerLike,
    config: DataConfig,
    text_vocab_size: int,
    *,
    vision: Any = None,
    history: Sequence[dict[str, Any]] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Ids and vision flags of a decoding prompt: `history`, then `question`, then the marker."""
    messages = [dict(m) for m in history] + [{"role": "user", "content": question, "vision": vision}]
    example = encode_conversation(_check_messages(messages), tokenizer, config, text_vocab_size,
                                  generation_prompt=True)
    return example.tokens, example.is_vision
