"""The FastAPI application: OpenAI's endpoints over a running `lwm.infer.engine.Engine`.

`GET /health`, `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`, and
vLLM's tokenizer endpoints (`GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize`) that
lm-eval-harness's `tokenizer_backend=remote` uses. Every error is answered in OpenAI's shape.
Requests are validated here, then queued in the engine; a client that disconnects cancels its
requests, which frees their slots.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lwm.infer.engine import Engine
from lwm.infer.requests import CacheOverflowError, Completion, Output, QueueFull, RequestError, merge_outputs
from lwm.serve.media import MediaReader, render_chat
from lwm.serve.protocol import (
    MAX_CHAT_TOP_LOGPROBS,
    MAX_COMPLETION_LOGPROBS,
    APIError,
    TokenText,
    _get,
    _int,
    bad_request,
    chat_logprobs,
    completion_logprobs,
    engine_request,
    parse_settings,
    prompt_list,
    usage,
)

_SPECIAL_TEXT = re.compile(r"(<s>|</s>)")


@dataclasses.dataclass
class ServeState:
    """Everything the endpoints use: the engine (running), tokenizers, template and limits."""

    engine: Engine
    tokenizer: Any
    media: MediaReader
    template: Any
    model_name: str = "lwm"
    api_key: str = ""
    max_body_bytes: int = 64 * 1024 * 1024
    default_max_tokens: int = 16

    def __post_init__(self) -> None:
        self.text = TokenText(self.tokenizer)
        self.created = int(time.time())


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def create_app(state: ServeState) -> FastAPI:
    """The application; starts the engine's loop on startup and stops it on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.engine.start()
        yield
        await run_in_threadpool(state.engine.stop)

    app = FastAPI(title="lwm serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = state

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(error.status_code, str(error.detail), type=kind))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):
        return _error_response(APIError(500, f"internal error: {error}", type="server_error"))

    @app.get("/health")
    async def health():
        return {"status": "ok", **state.engine.stats()}

    @app.get("/v1/models")
    async def models(request: Request):
        _authorize(state, request)
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model}")
    async def model(model: str, request: Request):
        _authorize(state, request)
        _check_model(state, {"model": model})
        return _model_card(state)

    @app.get("/tokenizer_info")
    async def tokenizer_info(request: Request):
        _authorize(state, request)
        return {"eos_token": "</s>", "bos_token": "<s>", "pad_token": None, "chat_template": None,
                "model_max_length": state.engine.slot_size, "tokenizer_class": "LlamaTokenizer"}

    @app.post("/tokenize")
    async def tokenize(request: Request):
        body = await _read_json(state, request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise bad_request("'prompt' must be a string", "prompt")
        add_special = bool(_get(body, "add_special_tokens", (bool,), True))
        tokens = _encode(state, prompt, add_special)
        return {"count": len(tokens), "max_model_len": state.engine.slot_size, "tokens": tokens}

    @app.post("/detokenize")
    async def detokenize(request: Request):
        body = await _read_json(state, request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise bad_request("'tokens' must be a list of token ids", "tokens")
        try:
            return {"prompt": state.tokenizer.decode(tokens)}
        except ValueError as error:
            raise bad_request(str(error), "tokens") from None

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await _read_json(state, request)
        _check_model(state, body)
        settings = parse_settings(body, max_tokens_names=("max_tokens",))
        prompts = prompt_list(body)
        echo = bool(_get(body, "echo", (bool,), False))
        logprobs = _int(body, "logprobs", None, 0, MAX_COMPLETION_LOGPROBS)
        for name in ("suffix", "best_of"):
            if body.get(name) not in (None, 1) and not (name == "suffix" and body.get(name) == ""):
                raise bad_request(f"'{name}' is not supported", name)
        max_tokens = settings.max_tokens if settings.max_tokens is not None else state.default_max_tokens
        prompt_ids = [_encode(state, p, True) if isinstance(p, str) else p for p in prompts]
        requests = [
            engine_request(ids, None, settings, max_tokens, (state.tokenizer.eos_id,), index=choice,
                           logprobs=logprobs is not None, echo=echo and logprobs is not None)
            for ids in prompt_ids for choice in range(settings.n)
        ]
        prompt_of = [index // settings.n for index in range(len(requests))]
        submitted = _submit(state, requests)
        info = dict(id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=state.model_name)
        prompt_text = [p if isinstance(p, str) else state.tokenizer.decode(p) for p in prompts]
        prompt_tokens = sum(len(ids) for ids in prompt_ids)

        def choice_of(index: int, completion: Completion) -> dict:
            ids = prompt_ids[prompt_of[index]]
            text = (prompt_text[prompt_of[index]] if echo else "") + completion.text
            out = None
            if logprobs is not None:
                tokens = (list(ids) if echo else []) + list(completion.tokens)
                records = (list(completion.prompt_logprobs) if echo else []) + list(completion.logprobs or ())
                out = completion_logprobs(records, tokens, logprobs, state.text)
            return {"index": index, "text": text, "logprobs": out, "finish_reason": completion.finish_reason}

        if not settings.stream:
            completions = await _collect(request, submitted)
            return {**info, "object": "text_completion",
                    "choices": [choice_of(i, c) for i, c in enumerate(completions)],
                    "usage": usage(completions, prompt_tokens)}

        async def events() -> AsyncIterator[str]:
            sent = [""] * len(requests)
            done: list[Completion | None] = [None] * len(requests)
            history: list[list[Output]] = [[] for _ in requests]
            async for index, output in _outputs(submitted):
                history[index].append(output)
                if output.finished:
                    done[index] = merge_outputs(history[index])
                prefix = prompt_text[prompt_of[index]] if echo and not sent[index] and len(history[index]) == 1 else ""
                delta, sent[index] = _delta(sent[index], output.text)
                out = None
                if logprobs is not None and (output.tokens or prefix):
                    tokens = (list(prompt_ids[prompt_of[index]]) if prefix else []) + list(output.tokens)
                    records = (list(output.prompt_logprobs or ()) if prefix else []) + list(output.logprobs or ())
                    out = completion_logprobs(records, tokens, logprobs, state.text)
                if delta or prefix or out or output.finished:
                    yield _sse({**info, "object": "text_completion", "choices": [{
                        "index": index, "text": prefix + delta, "logprobs": out,
                        "finish_reason": output.finish_reason if output.finished else None}]})
            if settings.include_usage:
                yield _sse({**info, "object": "text_completion", "choices": [],
                            "usage": usage([c for c in done if c], prompt_tokens)})
            yield "data: [DONE]\n\n"

        return _streaming(events(), submitted)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _read_json(state, request)
        _check_model(state, body)
        settings = parse_settings(body, max_tokens_names=("max_tokens", "max_completion_tokens"))
        want_logprobs = bool(_get(body, "logprobs", (bool,), False))
        top = _int(body, "top_logprobs", 0, 0, MAX_CHAT_TOP_LOGPROBS)
        if top and not want_logprobs:
            raise bad_request("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        config = state.engine.model.config
        ids, flags = await run_in_threadpool(render_chat, body.get("messages"), state.tokenizer, config,
                                             state.template, state.media)
        max_tokens = settings.max_tokens if settings.max_tokens is not None else state.engine.slot_size - len(ids)
        requests = [engine_request(ids, flags, settings, max_tokens, (state.tokenizer.eos_id,), index=choice,
                                   logprobs=want_logprobs, echo=False) for choice in range(settings.n)]
        submitted = _submit(state, requests)
        info = dict(id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=state.model_name)

        if not settings.stream:
            completions = await _collect(request, submitted)
            choices = [{
                "index": index,
                "message": {"role": "assistant", "content": completion.text.lstrip()},
                "logprobs": chat_logprobs(completion.logprobs or (), top, state.text) if want_logprobs else None,
                "finish_reason": completion.finish_reason,
            } for index, completion in enumerate(completions)]
            return {**info, "object": "chat.completion", "choices": choices,
                    "usage": usage(completions, len(ids) * settings.n)}

        async def events() -> AsyncIterator[str]:
            chunk = {**info, "object": "chat.completion.chunk"}
            for index in range(len(requests)):
                yield _sse({**chunk, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}]})
            sent = [""] * len(requests)
            history: list[list[Output]] = [[] for _ in requests]
            async for index, output in _outputs(submitted):
                history[index].append(output)
                delta, sent[index] = _delta(sent[index], output.text.lstrip())
                out = chat_logprobs(output.logprobs or (), top, state.text) if want_logprobs and output.tokens else None
                if delta or out:
                    yield _sse({**chunk, "choices": [{"index": index, "delta": {"content": delta},
                                                      "logprobs": out, "finish_reason": None}]})
                if output.finished:
                    yield _sse({**chunk, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                                      "finish_reason": output.finish_reason}]})
            if settings.include_usage:
                done = [merge_outputs(outputs) for outputs in history]
                yield _sse({**chunk, "choices": [], "usage": usage(done, len(ids) * settings.n)})
            yield "data: [DONE]\n\n"

        return _streaming(events(), submitted)

    return app


# ------------------------------------------------------------------------------------ helpers


def _model_card(state: ServeState) -> dict:
    return {"id": state.model_name, "object": "model", "created": state.created, "owned_by": "lwm",
            "max_model_len": state.engine.slot_size}


def _authorize(state: ServeState, request: Request) -> None:
    if not state.api_key:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    # Compared in constant time, so the key cannot be guessed byte by byte from response times.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), state.api_key.encode()):
        raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                       type="invalid_request_error", code="invalid_api_key")


async def _read_json(state: ServeState, request: Request) -> dict:
    _authorize(state, request)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > state.max_body_bytes:
        raise APIError(413, f"the request body ({declared} bytes) exceeds {state.max_body_bytes} bytes "
                            f"(serve.max_body_bytes)", code="request_too_large")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > state.max_body_bytes:
            raise APIError(413, f"the request body exceeds {state.max_body_bytes} bytes (serve.max_body_bytes)",
                           code="request_too_large")
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise bad_request(f"the body is not valid JSON ({error})") from None
    if not isinstance(parsed, dict):
        raise bad_request("the body must be a JSON object")
    return parsed


def _check_model(state: ServeState, body: dict) -> None:
    model = body.get("model")
    if model is not None and model != state.model_name:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {state.model_name!r}",
                       type="invalid_request_error", param="model", code="model_not_found")


def _encode(state: ServeState, text: str, add_bos: bool) -> list[int]:
    """Text to ids; the literal strings `<s>` and `</s>` are BOS and EOS (as Hugging Face's
    LLaMA tokenizer reads them), so lm-eval's remote tokenizer finds their ids."""
    ids = [state.tokenizer.bos_id] if add_bos else []
    for piece in _SPECIAL_TEXT.split(text):
        if piece == "<s>":
            ids.append(state.tokenizer.bos_id)
        elif piece == "</s>":
            ids.append(state.tokenizer.eos_id)
        elif piece:
            ids += state.tokenizer.encode(piece)
    return ids


@dataclasses.dataclass
class _Submitted:
    handles: list
    queue: asyncio.Queue


def _submit(state: ServeState, requests: Sequence) -> _Submitted:
    """Queues every request (all or none); outputs arrive on one asyncio queue as (index, output)."""
    loop = asyncio.get_running_loop()
    outputs: asyncio.Queue = asyncio.Queue()
    handles = []
    try:
        for index, request in enumerate(requests):
            def push(output, index=index):
                loop.call_soon_threadsafe(outputs.put_nowait, (index, output))

            handles.append(state.engine.submit(request, on_output=push))
    except (RequestError, QueueFull) as error:
        for handle in handles:
            handle.cancel()
        if isinstance(error, QueueFull):
            raise APIError(429, str(error), type="rate_limit_error", code="queue_full") from None
        code = "context_length_exceeded" if isinstance(error, CacheOverflowError) else None
        raise bad_request(str(error), "messages" if requests[0].prompt_is_vision is not None else "prompt",
                          code) from None
    return _Submitted(handles, outputs)


async def _outputs(submitted: _Submitted) -> AsyncIterator[tuple[int, Output]]:
    remaining = len(submitted.handles)
    while remaining:
        index, output = await submitted.queue.get()
        if output.finished:
            remaining -= 1
            if output.finish_reason == "error":
                raise APIError(500, f"generation failed: {output.error}", type="server_error")
        yield index, output


async def _collect(request: Request, submitted: _Submitted) -> list[Completion]:
    """Waits for every request; a disconnected client cancels them."""
    history: list[list[Output]] = [[] for _ in submitted.handles]
    remaining = len(submitted.handles)
    try:
        while remaining:
            try:
                index, output = await asyncio.wait_for(submitted.queue.get(), timeout=0.5)
            except TimeoutError:
                if await request.is_disconnected():
                    raise APIError(499, "client disconnected") from None
                continue
            history[index].append(output)
            if output.finished:
                remaining -= 1
                if output.finish_reason == "error":
                    raise APIError(500, f"generation failed: {output.error}", type="server_error")
    finally:
        for handle in submitted.handles:  # no-op for finished ones; frees slots of the rest
            handle.cancel()
    return [merge_outputs(outputs) for outputs in history]


def _streaming(events: AsyncIterator[str], submitted: _Submitted) -> StreamingResponse:
    async def guarded() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield event
        except APIError as error:
            yield _sse(error.body())
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or all finished): free the slots
            for handle in submitted.handles:
                handle.cancel()

    return StreamingResponse(guarded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _delta(sent: str, text: str) -> tuple[str, str]:
    """The new part of `text` after what was sent (nothing when a stop string cut it back)."""
    if text.startswith(sent):
        return text[len(sent):], text
    return "", sent
