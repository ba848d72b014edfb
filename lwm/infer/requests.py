"""What callers of the engine hand it and get back: requests, outputs, handles, errors.

`lwm.infer.engine` runs them; the server (`lwm.serve`) builds and reads them. Nothing here
touches a model.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Sequence

from lwm.errors import LwmError
from lwm.infer.sampling import SamplingParams


class RequestError(LwmError, ValueError):
    """A request the engine cannot run as given (too long for a slot, no tokens, bad settings)."""


class CacheOverflowError(RequestError):
    """A prompt (with the answer it may grow to) longer than the KV cache or slot holds; the
    message gives both sizes and the setting that allocates more (`cache.max_len`)."""


class QueueFull(LwmError):
    """Every slot is busy and the waiting queue holds `queue_size` requests already."""


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability and the most likely alternatives at its position.

    `top_ids`/`top_logprobs` hold `TOP_LOGPROBS` entries, most likely first.
    """

    token: int
    logprob: float
    top_ids: tuple[int, ...]
    top_logprobs: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Request:
    """One generation: prompt ids (and vision flags), limits and sampling.

    `logprobs`: whether records of the chosen tokens are returned; `echo_logprobs`: also of the
    prompt's tokens. `stop_ids` end the answer and are not part of it; `stop_strings` need the
    engine's `detokenize` and cut the text before the first one.
    """

    prompt_ids: tuple[int, ...]
    prompt_is_vision: tuple[bool, ...] | None = None
    max_tokens: int = 16
    sampling: SamplingParams = SamplingParams()
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    logprobs: bool = False
    echo_logprobs: bool = False


@dataclasses.dataclass(frozen=True)
class Output:
    """What a request produced since its previous output (or, when `finished`, in all).

    `tokens`/`logprobs`: the new tokens and (if asked) their records; `text`: the whole answer
    so far (with `detokenize`); `prompt_logprobs`: records of the prompt's tokens (first output
    only, with `echo_logprobs`; the first token's entry is None); `cached_tokens`: prompt tokens
    reused from a slot; `finish_reason`: "stop", "length", "cancelled" or "error" when finished.
    """

    tokens: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] | None = None
    text: str = ""
    finished: bool = False
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None = None
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Completion:
    """A finished request, all outputs merged."""

    tokens: tuple[int, ...]
    text: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    logprobs: tuple[TokenLogprob, ...] | None
    prompt_logprobs: tuple[TokenLogprob | None, ...] | None


class Handle:
    """The caller's side of a submitted request: its outputs, in order, and `cancel()`.

    Outputs go to `on_output` when given (called on the engine's thread; keep it short), otherwise
    into a queue read by `outputs()` / `result()`.
    """

    def __init__(self, request: Request, on_output: Callable[[Output], None] | None):
        self.request = request
        self._on_output = on_output
        self._queue: queue.Queue[Output] = queue.Queue()
        self.cancelled = threading.Event()
        self.done = threading.Event()

    def cancel(self) -> None:
        """Stops the request (a disconnected client): its slot is freed at the next step."""
        self.cancelled.set()

    def _emit(self, output: Output) -> None:
        if output.finished:
            self.done.set()
        if self._on_output is not None:
            self._on_output(output)
        else:
            self._queue.put(output)

    def outputs(self, timeout: float | None = None):
        """Yields outputs until the finished one (only without `on_output`)."""
        while True:
            output = self._queue.get(timeout=timeout)
            yield output
            if output.finished:
                return

    def result(self, timeout: float | None = None) -> Completion:
        """Waits for the end and merges the outputs."""
        return merge_outputs(list(self.outputs(timeout)))


def merge_outputs(outputs: Sequence[Output]) -> Completion:
    """One `Completion` from a request's outputs."""
    tokens: list[int] = []
    records: list[TokenLogprob] | None = None
    for output in outputs:
        tokens += output.tokens
        if output.logprobs is not None:
            records = (records or []) + list(output.logprobs)
    first, last = outputs[0], outputs[-1]
    return Completion(tuple(tokens), last.text, last.finish_reason or "error", first.prompt_tokens,
                      first.cached_tokens, None if records is None else tuple(records), first.prompt_logprobs)
