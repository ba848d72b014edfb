"""The OpenAI wire format: request parsing into engine requests, responses and errors.

Fields follow OpenAI's API reference for `/v1/completions` and `/v1/chat/completions`, with
vLLM's `top_k` extension and its tokenizer endpoints' shapes, which lm-eval-harness's
`local-completions` reads (`choices[].logprobs.{tokens, token_logprobs, top_logprobs,
text_offset}`; with `echo` the prompt's tokens come first and the first has no log-probability).
Nothing here runs a model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

from lwm.infer.requests import Completion, Request, TokenLogprob
from lwm.infer.sampling import SamplingParams

MAX_STOP_STRINGS = 4
MAX_COMPLETION_LOGPROBS = 5
MAX_CHAT_TOP_LOGPROBS = 20
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class APIError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        """The JSON body."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 naming the parameter."""
    return APIError(400, message, param=param, code=code)


# ---------------------------------------------------------------------------------- fields


def _get(body: dict, name: str, kinds: tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds:
        raise bad_request(f"'{name}' must be {' or '.join(kind.__name__ for kind in kinds)}, not a boolean", name)
    if not isinstance(value, kinds):
        raise bad_request(f"'{name}' must be {' or '.join(kind.__name__ for kind in kinds)}, "
                          f"not {type(value).__name__}", name)
    return value


def _int(body: dict, name: str, default: int | None, low: int | None = None, high: int | None = None) -> int | None:
    value = _get(body, name, (int,), default)
    if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise bad_request(f"'{name}'={value} must be {bounds}", name)
    return value


def _float(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = float(_get(body, name, (int, float), default))
    if not low <= value <= high:
        raise bad_request(f"'{name}'={value} must be between {low} and {high}", name)
    return value


@dataclasses.dataclass(frozen=True)
class Settings:
    """Per-request generation settings shared by both endpoints."""

    max_tokens: int | None
    sampling: SamplingParams
    seed: int | None
    stop: tuple[str, ...]
    n: int
    stream: bool
    include_usage: bool


def parse_settings(body: dict, *, max_tokens_names: Sequence[str]) -> Settings:
    """Sampling, limits, stop strings, `n` and streaming of a request body."""
    max_tokens = None
    for name in max_tokens_names:
        value = _int(body, name, None, 0)
        if value is not None:
            max_tokens = value
    temperature = _float(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _float(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise bad_request("'top_p' must be above 0 (1 keeps every token)", "top_p")
    top_k = _int(body, "top_k", 0, -1)
    stop = body.get("stop")
    if stop is None:
        stops: tuple[str, ...] = ()
    elif isinstance(stop, str):
        stops = (stop,)
    elif isinstance(stop, list) and all(isinstance(item, str) for item in stop):
        stops = tuple(stop)
    else:
        raise bad_request("'stop' must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_STRINGS or any(not item for item in stops):
        raise bad_request(f"'stop' takes up to {MAX_STOP_STRINGS} non-empty strings", "stop")
    stream_options = _get(body, "stream_options", (dict,), {})
    return Settings(
        max_tokens=max_tokens,
        sampling=SamplingParams(temperature=temperature, top_k=max(top_k, 0), top_p=top_p),
        seed=_int(body, "seed", None),
        stop=stops,
        n=_int(body, "n", 1, 1, 16),
        stream=bool(_get(body, "stream", (bool,), False)),
        include_usage=bool(stream_options.get("include_usage", False)),
    )


def prompt_list(body: dict) -> list[str | list[int]]:
    """`prompt` as a list of strings or token-id lists (OpenAI takes all four forms)."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(item, int) and not isinstance(item, bool) for item in prompt):
            return [list(prompt)]
        if all(isinstance(item, str) for item in prompt):
            return list(prompt)
        if all(isinstance(item, list) and item and all(isinstance(token, int) and not isinstance(token, bool)
                                                       for token in item) for item in prompt):
            return [list(item) for item in prompt]
    raise bad_request("'prompt' must be a string, a list of strings, a list of token ids or a list of "
                      "non-empty token-id lists", "prompt")


def engine_request(ids: Sequence[int], flags: Sequence[bool] | None, settings: Settings, max_tokens: int,
                   stop_ids: Sequence[int], *, index: int, logprobs: bool, echo: bool) -> Request:
    """The engine request of one choice (choice `index` draws with seed + index)."""
    seed = None if settings.seed is None else settings.seed + index
    return Request(tuple(int(token) for token in ids), None if flags is None else tuple(bool(f) for f in flags),
                   max_tokens=max_tokens, sampling=settings.sampling, seed=seed, stop_ids=tuple(stop_ids),
                   stop_strings=settings.stop, logprobs=logprobs, echo_logprobs=echo)


# ---------------------------------------------------------------------------------- tokens


class TokenText:
    """Token strings as clients see them: SentencePiece pieces with `▁` as a space and byte
    pieces (`<0x0A>`) as their character; answer text that keeps a leading space."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def piece(self, token: int) -> str:
        """The text of one token."""
        text = self._cache.get(token)
        if text is None and not 0 <= token < self.tokenizer.vocab_size:
            text = ""  # a row of a model's padded vocabulary that no text maps to
        if text is None:
            piece = self.tokenizer.id_to_piece(token)
            match = _BYTE_PIECE.match(piece)
            if match:
                value = int(match.group(1), 16)
                text = chr(value) if value < 128 else piece
            else:
                text = piece.replace("\u2581", " ")
            self._cache[token] = text
        return text

    def continuation(self, ids: Sequence[int]) -> str:
        """Text of generated ids, with the leading space SentencePiece's decode drops."""
        # Ids of a model's padded vocabulary beyond the tokenizer's have no text.
        ids = [token for token in ids if 0 <= token < self.tokenizer.vocab_size]
        text = self.tokenizer.decode(ids)
        if ids and self.tokenizer.id_to_piece(ids[0]).startswith("\u2581") and not text.startswith(" "):
            text = " " + text
        return text


def _top_dict(record: TokenLogprob, count: int, text: TokenText) -> dict[str, float]:
    # vLLM's convention: the `count` most likely tokens and the chosen one.
    top = {text.piece(token): lp for token, lp in zip(record.top_ids[:count], record.top_logprobs[:count])}
    top.setdefault(text.piece(record.token), record.logprob)
    return top


def completion_logprobs(records: Sequence[TokenLogprob | None], tokens: Sequence[int], count: int,
                        text: TokenText, offset: int = 0) -> dict:
    """OpenAI's legacy `logprobs` object; a None record (the prompt's first token) has none."""
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token, record in zip(tokens, records):
        piece = text.piece(token)
        out["tokens"].append(piece)
        out["token_logprobs"].append(None if record is None else record.logprob)
        out["top_logprobs"].append(None if record is None else _top_dict(record, count, text))
        out["text_offset"].append(offset)
        offset += len(piece)
    return out


def chat_logprobs(records: Sequence[TokenLogprob], count: int, text: TokenText) -> dict:
    """The chat `logprobs` object: `{"content": [{token, logprob, bytes, top_logprobs}]}`."""
    def entry(token: int, logprob: float) -> dict:
        piece = text.piece(token)
        return {"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8"))}

    content = []
    for record in records:
        item = entry(record.token, record.logprob)
        item["top_logprobs"] = [entry(token, lp) for token, lp in zip(record.top_ids[:count], record.top_logprobs[:count])]
        content.append(item)
    return {"content": content}


def usage(completions: Sequence[Completion], prompt_tokens: int) -> dict:
    """Token counts of a response (the prompt counted once per prompt, answers all)."""
    generated = sum(len(completion.tokens) for completion in completions)
    cached = sum(completion.cached_tokens for completion in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": generated, "total_tokens": prompt_tokens + generated,
            "prompt_tokens_details": {"cached_tokens": cached}}
