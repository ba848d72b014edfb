"""Continuous batching over a fixed set of KV-cache slots, with prefix reuse.

The engine owns one `KVCache` of `slots` rows (each row a slot of `slot_size` positions, the
positions split over the mesh's `sp` devices as everywhere in `lwm.infer`). Requests wait in a
bounded queue; a free slot takes the next one. Every iteration of the loop is one call of
`InferenceModel.extend` over all slots: a decoding slot feeds its last sampled token, a slot
still reading its prompt feeds its next chunk (`prefill_chunk` tokens), an idle slot feeds
nothing (new length 0); the step is as wide as the longest pending prompt part (a power of four,
at most a chunk). So waiting prompts are prefilled chunk by chunk between the decode steps
of the running ones, and a long prompt never stalls the others for more than one chunk. Each
slot finishes on its own (`max_tokens`, a stop id such as EOS, a stop string, a full row, or a
cancelled request) and frees its slot at once.

**Prefix reuse.** A freed slot keeps the tokens it holds (their keys and values stay in the
cache). A new request goes to the free slot whose held tokens share the longest prefix with its
prompt (token ids and vision flags both equal); that row's length is set to the shared prefix and
only the rest is prefilled. At least the prompt's last token is always fed again, since its
hidden state gives the first logits. **Eviction**: when no free slot shares a prefix, the least
recently used free slot (the one freed longest ago) is taken and its tokens are dropped.
Running slots are never evicted.

**Log-probabilities** come from the same float32 logits the tokens are chosen from: for every
chosen token its log-probability and the `TOP_LOGPROBS` most likely alternatives; with
`echo_logprobs`, the same for every prompt token after the first (from the hidden states of the
prefill). Records of the tokens a slot holds are kept with it, so an echoing request that hits a
prefix still receives the log-probabilities of the reused tokens.

Sampling is `lwm.infer.sampling`'s, per request (temperature, top-k, top-p); a request's random
key is `fold_in(key(seed), step)`, so a seeded request draws the same tokens whatever else runs.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lwm.infer.cache import InferenceModel, KVCache
from lwm.infer.requests import (
    CacheOverflowError,
    Completion,
    Handle,
    Output,
    QueueFull,
    Request,
    RequestError,
    TokenLogprob,
)
from lwm.infer.sampling import sample_tokens

logger = logging.getLogger(__name__)

# Alternatives kept per token; OpenAI's completions accept logprobs <= 5, chat top_logprobs <= 20.
TOP_LOGPROBS = 20


@functools.partial(jax.jit, static_argnums=(2,))
def _logprob_stats(logits_NV, chosen_N, top):
    """Log-probabilities of the chosen ids and the `top` most likely ids per row."""
    logprobs_NV = jax.nn.log_softmax(logits_NV.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(logprobs_NV, jnp.maximum(chosen_N, 0)[:, None], axis=-1)[:, 0]
    top_lp, top_ids = jax.lax.top_k(logprobs_NV, top)
    return chosen, top_ids, top_lp


_argmax = jax.jit(lambda logits_SV: jnp.argmax(logits_SV, axis=-1).astype(jnp.int32))
_sample = jax.jit(sample_tokens, static_argnums=(2,))


@dataclasses.dataclass
class _Running:
    handle: Handle
    prompt_ids: np.ndarray
    prompt_flags: np.ndarray
    fed: int  # prompt tokens in the row so far
    cached: int  # prompt tokens reused from the slot
    key: jax.Array
    generated: list[int] = dataclasses.field(default_factory=list)
    prompt_records: list[TokenLogprob | None] | None = None
    next_feed: int | None = None  # sampled token still to be written into the row
    next_record: TokenLogprob | None = None  # its record, kept with the slot once written
    sent_prompt: bool = False
    text: str = ""


@dataclasses.dataclass
class _Slot:
    index: int
    ids: list[int] = dataclasses.field(default_factory=list)  # tokens the row holds, in order
    flags: list[bool] = dataclasses.field(default_factory=list)
    records: list[TokenLogprob | None] = dataclasses.field(default_factory=list)
    running: _Running | None = None
    freed_at: int = 0

    def drop(self) -> None:
        self.ids, self.flags, self.records = [], [], []


def _bucket(count: int) -> int:
    """The smallest power of four >= count (>= 1): step and batch sizes that compile once each."""
    size = 1
    while size < count:
        size *= 4
    return size


def _common_prefix(a_ids, a_flags, b_ids, b_flags) -> int:
    n = min(len(a_ids), len(b_ids))
    if n == 0:
        return 0
    same = (np.asarray(a_ids[:n]) == np.asarray(b_ids[:n])) & (np.asarray(a_flags[:n]) == np.asarray(b_flags[:n]))
    mismatch = np.flatnonzero(~same)
    return int(mismatch[0]) if mismatch.size else n


class Engine:
    """Continuous batching over `slots` rows of one KV cache (see the module docstring).

    `model`: an `InferenceModel` (its mesh and chunk sizes are used); `slot_size`: positions per
    slot (prompt plus answer), rounded up to the cache granularity; `queue_size`: requests that
    may wait for a slot; `detokenize`: ids → text, needed for stop strings and `Output.text`.

    Run `start()` for a background thread (the server), or call `generate(requests)` from one
    thread without starting (the command-line tools: `lwm.infer.generate.TextGenerator` and
    `generate_text`, `lwm.infer.video_qa.ChatSession`).
    """

    def __init__(
        self,
        model: InferenceModel,
        *,
        slots: int = 8,
        slot_size: int = 2048,
        queue_size: int = 64,
        prefill_chunk: int | None = None,
        detokenize: Callable[[Sequence[int]], str] | None = None,
    ):
        if slots <= 0 or queue_size <= 0:
            raise ValueError(f"slots={slots} and queue_size={queue_size} must be positive")
        self.model = model
        self.slot_size = model.round_cache_size(slot_size)
        self.prefill_chunk = prefill_chunk or model.prefill_chunk_size
        self.detokenize = detokenize
        self.cache: KVCache = model.init_cache(slots, self.slot_size)
        self.lengths = np.zeros(slots, np.int32)  # host copy of cache.lengths
        self.hidden_SE = jnp.zeros((slots, model.config.hidden_size), jnp.dtype(model.config.dtype))
        self.slots = [_Slot(index) for index in range(slots)]
        self.waiting: queue.Queue[Handle] = queue.Queue(maxsize=queue_size)
        self._queue_size = queue_size
        self._wake = threading.Condition()
        self._clock = itertools.count(1)
        self._seeds = np.random.default_rng()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._paused = threading.Event()
        self.steps = 0
        self.prefix_hits = 0

    # ------------------------------------------------------------------ submitting

    def check(self, request: Request) -> None:
        """Raises `RequestError` when the request cannot run in a slot."""
        if not request.prompt_ids:
            raise RequestError("the prompt has no tokens")
        if request.max_tokens < 0:
            raise RequestError(f"max_tokens={request.max_tokens} must be >= 0")
        if request.prompt_is_vision is not None and len(request.prompt_is_vision) != len(request.prompt_ids):
            raise RequestError("prompt_is_vision must have one flag per prompt token")
        ids = np.asarray(request.prompt_ids, np.int64)
        flags = np.zeros(len(ids), bool) if request.prompt_is_vision is None else np.asarray(request.prompt_is_vision)
        config = self.model.config
        for name, mask, vocab in (("text", ~flags, config.vocab_size), ("vision", flags, config.vision_vocab_size)):
            bad = ids[mask & ((ids < 0) | (ids >= vocab))]
            if bad.size:
                raise RequestError(f"prompt {name} token ids {bad[:3].tolist()} are outside the {name} "
                                   f"vocabulary [0, {vocab})")
        needed = len(request.prompt_ids) + request.max_tokens
        if needed > self.slot_size:
            raise CacheOverflowError(
                f"the prompt ({len(request.prompt_ids)} tokens) plus max_tokens ({request.max_tokens}) "
                f"exceed the context of {self.slot_size} tokens; shorten the prompt or lower max_tokens"
            )
        if request.stop_strings and self.detokenize is None:
            raise RequestError("stop strings need an engine with a detokenizer")

    def submit(self, request: Request, on_output: Callable[[Output], None] | None = None) -> Handle:
        """Queues a request; raises `RequestError` for a bad one and `QueueFull` when full."""
        self.check(request)
        handle = Handle(request, on_output)
        try:
            self.waiting.put_nowait(handle)
        except queue.Full:
            raise QueueFull(f"every slot is busy and {self._queue_size} requests are waiting; retry later") from None
        with self._wake:
            self._wake.notify()
        return handle

    def free_slots(self) -> int:
        """Slots not running a request."""
        return sum(slot.running is None for slot in self.slots)

    def stats(self) -> dict:
        """Slots, queue and counters (what `/health` reports)."""
        return {"slots": len(self.slots), "free_slots": self.free_slots(), "waiting": self.waiting.qsize(),
                "slot_size": self.slot_size, "steps": self.steps, "prefix_hits": self.prefix_hits}

    # ------------------------------------------------------------------ running

    def start(self) -> None:
        """Runs the loop in a background thread until `stop()`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve_forever, name="lwm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ends the background loop (running requests are cancelled)."""
        self._stop.set()
        with self._wake:
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for slot in self.slots:
            if slot.running is not None:
                self._finish(slot, "cancelled")

    def pause(self) -> None:
        """Holds the background loop between steps (requests keep queueing) until `resume()`."""
        self._paused.set()

    def resume(self) -> None:
        """Lets a paused loop run again."""
        self._paused.clear()
        with self._wake:
            self._wake.notify()

    def _serve_forever(self) -> None:
        while not self._stop.is_set():
            if self._paused.is_set() or not self.step():
                with self._wake:
                    if (self.waiting.empty() or self._paused.is_set()) and not self._stop.is_set():
                        self._wake.wait(timeout=0.5)

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """Runs requests to the end on the calling thread (no background loop) and returns them."""
        if self._thread is not None:
            return [handle.result() for handle in [self.submit(request) for request in requests]]
        handles, pending = [], list(requests)
        while pending or any(not handle.done.is_set() for handle in handles):
            while pending and not self.waiting.full():
                handles.append(self.submit(pending.pop(0)))
            self.step()
        return [handle.result() for handle in handles]

    def step(self) -> bool:
        """One iteration: admit waiting requests, run one extend over all slots, sample.

        Returns whether anything ran. Errors fail the running requests, not the loop.
        """
        self._drop_cancelled()
        self._admit()
        running = [slot for slot in self.slots if slot.running is not None]
        if not running:
            return False
        try:
            self._run_step(running)
        except Exception as error:  # a failed step must not take the server down with it
            logger.exception("engine step failed")
            for slot in running:
                if slot.running is not None:
                    self._finish(slot, "error", error=str(error))
                slot.drop()
            self.lengths[:] = 0
            self.cache = self.model.init_cache(len(self.slots), self.slot_size)
            self.hidden_SE = jnp.zeros_like(self.hidden_SE)
        return True

    # ------------------------------------------------------------------ internals

    def _drop_cancelled(self) -> None:
        for slot in self.slots:
            if slot.running is not None and slot.running.handle.cancelled.is_set():
                self._finish(slot, "cancelled")

    def _pick_slot(self, ids: np.ndarray, flags: np.ndarray, echo: bool) -> tuple[_Slot, int] | None:
        best, best_reuse = None, -1
        for slot in self.slots:
            if slot.running is not None:
                continue
            common = _common_prefix(slot.ids, slot.flags, ids, flags)
            # Feed at least the prompt's last token: its hidden state gives the first logits.
            reuse = min(common, len(ids) - 1)
            if echo:  # a reused token's log-probability must be on record (the first has none)
                reuse = min(reuse, common - 1) if common else 0
                missing = [i for i in range(1, reuse + 1) if slot.records[i] is None]
                reuse = missing[0] - 1 if missing else reuse
            reuse = max(reuse, 0)
            if reuse > best_reuse or (reuse == best_reuse and slot.freed_at < best.freed_at):
                best, best_reuse = slot, reuse
        return None if best is None else (best, best_reuse)

    def _admit(self) -> None:
        changed = False
        while self.free_slots():
            try:
                handle = self.waiting.get_nowait()
            except queue.Empty:
                break
            if handle.cancelled.is_set():
                handle._emit(Output(finished=True, finish_reason="cancelled"))
                continue
            request = handle.request
            ids = np.asarray(request.prompt_ids, np.int32)
            flags = (np.asarray(request.prompt_is_vision, bool) if request.prompt_is_vision is not None
                     else np.zeros(len(ids), bool))
            slot, reuse = self._pick_slot(ids, flags, request.echo_logprobs)
            self.prefix_hits += reuse > 0
            # An echoing request also takes the record of the first token it feeds again (its
            # log-probability came from the hidden state of the token before, which stays).
            kept_records = slot.records[:reuse + 1] if reuse else [None]
            slot.ids, slot.flags, slot.records = slot.ids[:reuse], slot.flags[:reuse], slot.records[:reuse]
            self.lengths[slot.index] = reuse
            seed = request.seed if request.seed is not None else int(self._seeds.integers(2**31))
            slot.running = _Running(
                handle, ids, flags, fed=reuse, cached=reuse, key=jax.random.key(seed),
                prompt_records=list(kept_records) if request.echo_logprobs else None,
            )
            changed = True
        if changed:
            lengths = jax.device_put(jnp.asarray(self.lengths), self.cache.lengths.sharding)
            self.cache = KVCache(self.cache.k, self.cache.v, lengths)

    def _run_step(self, running: list[_Slot]) -> None:
        pending = max((len(slot.running.prompt_ids) - slot.running.fed for slot in running), default=0)
        # The step is as wide as the longest pending prompt part, rounded up to a power of four (few
        # compiled shapes) and at most one chunk: a prefix hit that leaves a few tokens to read, or
        # decoding alone (width 1), does not pay for a whole chunk.
        width = min(self.prefill_chunk, _bucket(pending))
        rows = len(self.slots)
        ids_ST = np.zeros((rows, width), np.int32)
        flags_ST = np.zeros((rows, width), bool)
        new_S = np.zeros(rows, np.int32)
        room = self.slot_size - self.lengths
        chunk_start: dict[int, int] = {}
        for slot in running:
            run = slot.running
            if run.fed < len(run.prompt_ids):
                count = min(width, len(run.prompt_ids) - run.fed)
                ids_ST[slot.index, :count] = run.prompt_ids[run.fed:run.fed + count]
                flags_ST[slot.index, :count] = run.prompt_flags[run.fed:run.fed + count]
                chunk_start[slot.index] = run.fed
            elif run.next_feed is not None:
                count = 1
                ids_ST[slot.index, 0] = run.next_feed
            else:
                continue
            assert count <= room[slot.index], "admission checks that prompt and answer fit"
            new_S[slot.index] = count
        self.cache, hidden_STE, self.hidden_SE = self.model.extend(self.cache, ids_ST, flags_ST, new_S, self.hidden_SE)
        self.steps += 1
        self._prompt_logprobs(running, chunk_start, new_S, hidden_STE)
        producing = []
        for slot in running:
            run, count = slot.running, int(new_S[slot.index])
            if count == 0:
                continue
            slot.ids += ids_ST[slot.index, :count].tolist()
            slot.flags += flags_ST[slot.index, :count].tolist()
            self.lengths[slot.index] += count
            if slot.index in chunk_start:
                start = chunk_start[slot.index]
                known = run.prompt_records or []
                slot.records += [known[p] if p < len(known) else None for p in range(start, start + count)]
                run.fed += count
                if run.fed < len(run.prompt_ids):
                    continue
            else:  # the token fed this step; its record was made when it was chosen
                slot.records.append(run.next_record)
                run.next_feed, run.next_record = None, None
            producing.append(slot)
        if producing:
            self._produce(producing)

    def _prompt_logprobs(self, running, chunk_start, new_S, hidden_STE) -> None:
        """Records of prompt tokens predicted inside this step's chunks (echoing requests)."""
        picks, targets, owners = [], [], []
        for slot in running:
            run = slot.running
            if run.prompt_records is None or slot.index not in chunk_start:
                continue
            start, count = chunk_start[slot.index], int(new_S[slot.index])
            for offset in range(count):
                position = start + offset
                if position + 1 < len(run.prompt_ids):  # the last prompt position predicts the answer
                    picks.append((slot.index, offset))
                    targets.append(int(run.prompt_ids[position + 1]))
                    owners.append((slot, position + 1))
        if not picks:
            return
        size = _bucket(len(picks))  # few distinct shapes to compile
        index = np.asarray(picks + [picks[0]] * (size - len(picks)))
        hidden_NE = hidden_STE[index[:, 0], index[:, 1]]
        logits_NV = self.model.logits(hidden_NE, "text")
        chosen, top_ids, top_lp = jax.device_get(
            _logprob_stats(logits_NV, jnp.asarray(targets + [0] * (size - len(picks)), jnp.int32), TOP_LOGPROBS))
        for row, (slot, position) in enumerate(owners):
            record = TokenLogprob(targets[row], float(chosen[row]), tuple(top_ids[row].tolist()),
                                  tuple(top_lp[row].tolist()))
            run = slot.running
            while len(run.prompt_records) <= position:
                run.prompt_records.append(None)
            run.prompt_records[position] = record

    def _produce(self, producing: list[_Slot]) -> None:
        """Chooses the next token of every slot in `producing` from the same logits."""
        logits_SV = self.model.logits(self.hidden_SE, "text")
        chosen_S = np.array(jax.device_get(_argmax(logits_SV)))
        for slot in producing:
            run = slot.running
            params = run.handle.request.sampling
            if not params.greedy:
                key = jax.random.fold_in(run.key, len(run.generated))
                chosen_S[slot.index] = int(_sample(logits_SV[slot.index:slot.index + 1], key, params)[0])
        want = any(slot.running.handle.request.logprobs for slot in producing)
        stats = jax.device_get(_logprob_stats(logits_SV, jnp.asarray(chosen_S), TOP_LOGPROBS)) if want else None
        for slot in producing:
            run = slot.running
            request = run.handle.request
            record = None
            if stats is not None:
                lp, ids, tops = stats
                record = TokenLogprob(int(chosen_S[slot.index]), float(lp[slot.index]),
                                      tuple(ids[slot.index].tolist()), tuple(tops[slot.index].tolist()))
            self._advance(slot, int(chosen_S[slot.index]), record if request.logprobs else None, record)

    def _first_fields(self, run: _Running) -> dict:
        if run.sent_prompt:
            return {}
        run.sent_prompt = True
        records = None
        if run.prompt_records is not None:
            records = list(run.prompt_records) + [None] * (len(run.prompt_ids) - len(run.prompt_records))
            records[0] = None
            records = tuple(records)
        return {"prompt_tokens": len(run.prompt_ids), "cached_tokens": run.cached, "prompt_logprobs": records}

    def _advance(self, slot: _Slot, token: int, record: TokenLogprob | None, kept: TokenLogprob | None) -> None:
        run = slot.running
        request = run.handle.request
        if request.max_tokens == 0:  # echo only: the prompt's records, no answer
            self._finish(slot, "length")
            return
        if token in request.stop_ids:
            self._finish(slot, "stop")
            return
        run.generated.append(token)
        finish = None
        if self.detokenize is not None:
            try:
                text = self.detokenize(run.generated)
            except Exception as error:  # fails this request alone
                self._finish(slot, "error", error=f"cannot detokenize the answer: {error}")
                return
            for stop in request.stop_strings:
                cut = text.find(stop)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            run.text = text
        if finish is None and (len(run.generated) >= request.max_tokens or self.lengths[slot.index] >= self.slot_size):
            finish = "length"
        output = Output(tokens=(token,), logprobs=(record,) if record is not None else None, text=run.text,
                        **self._first_fields(run))
        if finish is not None:
            run.handle._emit(output)
            self._finish(slot, finish)
            return
        run.next_feed, run.next_record = token, kept
        run.handle._emit(output)

    def _finish(self, slot: _Slot, reason: str, error: str | None = None) -> None:
        run = slot.running
        slot.running = None
        slot.freed_at = next(self._clock)
        run.handle._emit(Output(text=run.text, finished=True, finish_reason=reason, error=error,
                                **self._first_fields(run)))


def wait_idle(engine: Engine, timeout: float = 10.0) -> bool:
    """Waits until no slot runs and nothing waits (for tests and benchmarks)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if engine.free_slots() == len(engine.slots) and engine.waiting.empty():
            return True
        time.sleep(0.01)
    return False
